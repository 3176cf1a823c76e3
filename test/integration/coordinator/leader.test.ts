/**
 * The coordinator leader lease against a real redis-server: one holder at a time, a fresh
 * leadership epoch per acquisition, a released lease taken over at once, an expired one after its
 * TTL, and a holder that cannot renew in time stops acting (it never assumes it still leads).
 */
import { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { LeaderLease, WarmView } from '../../../src/coordinator/leader.ts'
import { startRedis, type RedisServer } from '../../helpers/redis.ts'
import { waitFor } from '../../helpers/wait-for.ts'

let redis: RedisServer
const clients: Redis[] = []
let prefixN = 0
beforeAll(async () => {
  redis = await startRedis()
})
afterAll(async () => {
  for (const c of clients) c.disconnect()
  await redis.dispose()
})

function client(): Redis {
  const c = new Redis(redis.port, redis.host, { maxRetriesPerRequest: 1, commandTimeout: 1000 })
  clients.push(c)
  return c
}

describe('LeaderLease', () => {
  it('one leader at a time; a released lease goes to the other at once, with a higher epoch', async () => {
    const prefix = `t${++prefixN}`
    const a = new LeaderLease({ redis: client(), id: 'a', prefix, ttlMs: 1000 })
    const b = new LeaderLease({ redis: client(), id: 'b', prefix, ttlMs: 1000 })
    a.start()
    await waitFor(() => a.leading, 'a leads')
    b.start()
    await new Promise((r) => setTimeout(r, 600))
    expect(b.leading).toBe(false)
    expect(await a.current()).toEqual({ id: 'a', epoch: a.epoch })
    const first = a.epoch
    await a.stop()
    await waitFor(() => b.leading, 'b leads')
    expect(b.epoch).toBeGreaterThan(first)
    expect(a.leading).toBe(false)
    await b.stop()
  })

  it('a holder that dies is replaced once its lease expires', async () => {
    const prefix = `t${++prefixN}`
    const ra = client()
    const a = new LeaderLease({ redis: ra, id: 'a', prefix, ttlMs: 600 })
    a.start()
    await waitFor(() => a.leading, 'a leads')
    // "Dies": stops renewing without releasing.
    ;(a as unknown as { stop(): Promise<void> }).stop = () => Promise.resolve()
    ra.disconnect()
    const b = new LeaderLease({ redis: client(), id: 'b', prefix, ttlMs: 600 })
    b.start()
    await waitFor(() => b.leading, 'b leads after the TTL')
    // a could not renew: past its safety margin it no longer counts itself as leading.
    expect(a.valid).toBe(false)
    await b.stop()
  })

  it('a stalled leader whose lease nobody took resumes; one whose lease was taken is deposed', async () => {
    const prefix = `t${++prefixN}`
    const r = client()
    const a = new LeaderLease({ redis: r, id: 'a', prefix, ttlMs: 1000 })
    a.start()
    await waitFor(() => a.leading, 'a leads')
    // Stall the event loop past the safety margin but not past the lease.
    const until = performance.now() + 850
    while (performance.now() < until) {
      // busy
    }
    expect(a.valid).toBe(false)
    await waitFor(() => a.valid, 'a resumes: the key still holds its value')
    // Now someone else takes the key (as after an expiry): a is deposed.
    const deposed = new Promise<string>((resolve) => a.once('deposed', resolve))
    await r.set(`${prefix}:leader`, 'b 99', 'PX', 5000)
    expect(await deposed).toMatch(/another coordinator|expired/)
    expect(a.valid).toBe(false)
  })

  it('a leader stalled past its lease after a newer epoch was claimed is deposed; the reason says what the renewals saw', async () => {
    const prefix = `t${++prefixN}`
    const r = client()
    const a = new LeaderLease({ redis: r, id: 'a', prefix, ttlMs: 600 })
    a.start()
    await waitFor(() => a.leading, 'a leads')
    const deposed = new Promise<string>((resolve) => a.once('deposed', resolve))
    // A standby claims an epoch (it found the key free, say, and lost the race for it).
    await r.incr(`${prefix}:leader-epoch`)
    // Past the whole lease: the key expires in Redis while this process does not run.
    const until = performance.now() + 1200
    while (performance.now() < until) {
      // busy
    }
    const reason = await deposed
    expect(reason).toMatch(
      /^the lease expired .*: last renewal \d+ ms ago, 0 failed since, longest gap between attempts (\d+) ms$/,
    )
    expect(Number(/longest gap between attempts (\d+) ms/.exec(reason)?.[1])).toBeGreaterThanOrEqual(1000)
    expect(a.leading).toBe(false)
  })

  it('a lease that lapsed while nobody claimed an epoch is re-taken by its holder, same epoch', async () => {
    const prefix = `t${++prefixN}`
    const r = client()
    const a = new LeaderLease({ redis: r, id: 'a', prefix, ttlMs: 1000 })
    a.start()
    await waitFor(() => a.leading, 'a leads')
    const epoch = a.epoch
    const retaken = new Promise<number>((resolve) => a.once('retaken', resolve))
    let deposed = ''
    a.on('deposed', (reason) => (deposed = reason))
    await r.del(`${prefix}:leader`) // as if it expired while Redis was away
    await retaken
    expect(deposed).toBe('')
    expect(a.leading).toBe(true)
    expect(a.epoch).toBe(epoch)
    expect(await a.current()).toEqual({ id: 'a', epoch })
    await waitFor(() => a.valid, 'a acts again')
    await a.stop()
  })

  it('Redis restarted from its AOF after the lease lapsed: the leader re-takes it, the standby does not lead', async () => {
    const server = await startRedis({ aof: true })
    const conn = (): Redis => {
      const c = new Redis(server.port, server.host, {
        maxRetriesPerRequest: 0,
        enableOfflineQueue: false,
        retryStrategy: () => 100,
        maxLoadingRetryTime: 100,
      })
      c.on('error', () => {})
      clients.push(c)
      return c
    }
    try {
      const a = new LeaderLease({ redis: conn(), id: 'a', prefix: 'ha', ttlMs: 600 })
      a.start()
      await waitFor(() => a.leading, 'a leads')
      // A long grace makes the race deterministic: the standby's claim waits for a's retake.
      const b = new LeaderLease({ redis: conn(), id: 'b', prefix: 'ha', ttlMs: 600, takeoverGraceMs: 10_000 })
      b.start()
      let bLed = false
      b.on('elected', () => (bLed = true))
      const retaken = new Promise<number>((resolve) => a.once('retaken', resolve))
      await server.stop('SIGKILL')
      await new Promise((r) => setTimeout(r, 1000)) // longer than the lease
      await server.restart()
      expect(await retaken).toBeGreaterThanOrEqual(600)
      expect(a.leading).toBe(true)
      expect(bLed).toBe(false)
      await b.stop()
      await a.stop()
    } finally {
      await server.dispose()
    }
  })

  it('the warm view keeps the newest leader epoch', async () => {
    const prefix = `t${++prefixN}`
    const v = new WarmView(client(), prefix)
    await v.write({ leader: 'b', leaderEpoch: 5, members: ['w0', 'w1'], owners: ['w0', null] })
    await v.write({ leader: 'a', leaderEpoch: 4, members: ['w9'], owners: [] })
    const got = await v.read()
    expect(got?.leader).toBe('b')
    expect(got?.members).toEqual(['w0', 'w1'])
  })
})
