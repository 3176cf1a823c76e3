/**
 * Coordinator high availability with real processes and a real redis-server: two `shoal
 * coordinator` replicas share `--state redis://`, one leads (lease in Redis), the other stands
 * by; workers get `--coordinator a,b` and follow the leader.
 *
 * - the leader killed: the standby leads, every worker follows, no partition moves, state exact;
 * - the leader paused (SIGSTOP) then resumed: the standby leads; the stale leader, resumed, finds
 *   its lease gone and exits without changing anything; state exact;
 * - two replicas started at once: exactly one leads;
 * - Redis unreachable: the leader cannot renew and steps down, the standby cannot take the lease:
 *   no split brain; Redis back: one leader again.
 */
import { Redis } from 'ioredis'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { ShoalClient } from '../../src/client/client.ts'
import type { ClusterStatus } from '../../src/coordinator/coordinator.ts'
import { createTransport } from '../../src/transport/index.ts'
import { freePort, killAll, startShoal, waitSettled, type ShoalProcess } from '../helpers/processes.ts'
import { startRedis, type RedisServer } from '../helpers/redis.ts'
import { expectExactState, sendCounted, type Totals } from '../helpers/totals.ts'
import { waitFor } from '../helpers/wait-for.ts'

const HEARTBEAT_MS = 200
let redis: RedisServer
let db = 0

beforeAll(async () => {
  redis = await startRedis({ aof: true })
})
afterAll(async () => {
  await redis.dispose()
})
afterEach(killAll)

interface Replica {
  port: number
  http: number
  start(until?: 'listening' | 'standby'): Promise<ShoalProcess>
}

function replica(state: string, id: string): Promise<Replica> {
  return Promise.all([freePort(), freePort()]).then(([port, http]) => ({
    port,
    http,
    start: (until: 'listening' | 'standby' = 'listening') =>
      startShoal(
        [
          'coordinator',
          '--node-id',
          id,
          '--listen',
          `127.0.0.1:${port}`,
          '--http',
          `127.0.0.1:${http}`,
          '--partitions',
          '16',
          '--heartbeat-interval',
          String(HEARTBEAT_MS),
          '--checkpoint-interval',
          '500',
          '--state',
          state,
        ],
        { SHOAL_LOG_LEVEL: 'info' },
        20_000,
        until,
      ),
  }))
}

function startWorker(coordinators: string, state: string, id: string): Promise<ShoalProcess> {
  return startShoal(
    [
      'worker',
      '--coordinator',
      coordinators,
      '--node-id',
      id,
      '--listen',
      '127.0.0.1:0',
      '--http',
      '127.0.0.1:0',
      '--threads',
      '1',
      '--heartbeat-interval',
      String(HEARTBEAT_MS),
      '--state',
      state,
    ],
    { SHOAL_LOG_LEVEL: 'info' },
  )
}

/** Settled and balanced: 3 workers own every partition, each at least its share. */
async function balanced(http: number): Promise<ClusterStatus> {
  let last: ClusterStatus | undefined
  await waitFor(
    async () => {
      last = await waitSettled(() => statusAt(http), 3)
      const counts = new Map<string, number>()
      for (const o of last.assignment.owners) if (o !== null) counts.set(o, (counts.get(o) ?? 0) + 1)
      return counts.size === 3 && [...counts.values()].every((n) => n >= 5)
    },
    'a balanced assignment',
    30_000,
  )
  return last!
}

async function statusAt(http: number): Promise<ClusterStatus> {
  const res = await fetch(`http://127.0.0.1:${http}/status`, { signal: AbortSignal.timeout(2000) })
  return (await res.json()) as ClusterStatus
}

let clients = 0
async function clientOf(...ports: number[]): Promise<ShoalClient> {
  return ShoalClient.connect({
    coordinator: ports.map((p) => `127.0.0.1:${p}`).join(','),
    transport: createTransport('tcp', { nodeId: `ha-client-${process.pid}-${++clients}`, role: 'client' }),
    retryDelayMs: 20,
  })
}

async function setup() {
  const state = `${redis.url}/${++db % 16}`
  const a = await replica(state, 'coord-a')
  const b = await replica(state, 'coord-b')
  const leader = await a.start('listening')
  const standby = await b.start('standby')
  const list = `127.0.0.1:${a.port},127.0.0.1:${b.port}`
  const workers = await Promise.all(['w0', 'w1', 'w2'].map((id) => startWorker(list, state, id)))
  await balanced(a.http)
  return { state, a, b, leader, standby, workers }
}

describe('coordinator high availability', { timeout: 120_000 }, () => {
  it('leader killed: the standby leads, workers and clients follow, no partition moves, state exact', async () => {
    const { a, b, leader, standby } = await setup()
    const before = (await statusAt(a.http)).assignment.owners
    const expected: Totals = new Map()
    // One client with both replicas, sending across the takeover.
    const cl = await clientOf(a.port, b.port)
    sendCounted(cl, 0, 5000, expected, 200)
    await cl.flush()
    leader.signal('SIGKILL')
    sendCounted(cl, 5000, 10_000, expected, 200)
    await standby.listening
    const after = await balanced(b.http)
    expect(after.assignment.owners).toEqual(before)
    await cl.flush()
    await expectExactState(cl, expected)
    await cl.close()
    const ready = await fetch(`http://127.0.0.1:${b.http}/readyz`)
    expect(ready.status).toBe(200)
    // The state store records the new leader with every partition's claim (the workers confirm
    // what they kept): a late assignment from the deposed leader can no longer be claimed.
    const r = new Redis(redis.port, redis.host, { db: db % 16 })
    try {
      const lease = (await r.get('shoal:coordinator:leader')) ?? ''
      const epoch = lease.split(' ')[1]
      expect(epoch).toMatch(/^\d+$/)
      await waitFor(async () => {
        const leaders = await Promise.all(before.map((_, p) => r.get(`{shoal:p${p}}#leader`)))
        return leaders.every((l) => l === epoch)
      }, 'every partition claimed under the new leadership epoch')
    } finally {
      r.disconnect()
    }
  })

  it('leader paused then resumed: the standby leads; the stale leader exits without changing anything', async () => {
    const { a, b, leader, standby } = await setup()
    const before = (await statusAt(a.http)).assignment.owners
    const expected: Totals = new Map()
    const cl = await clientOf(a.port)
    sendCounted(cl, 0, 5000, expected, 200)
    await cl.flush()
    await cl.close()
    leader.signal('SIGSTOP')
    await standby.listening
    await waitSettled(() => statusAt(b.http), 3)
    const cl2 = await clientOf(b.port)
    sendCounted(cl2, 5000, 8000, expected, 200)
    await cl2.flush()
    leader.signal('SIGCONT')
    const exit = await leader.exited
    expect(exit.code).toBe(3) // deposed: it found its lease gone and left
    sendCounted(cl2, 8000, 10_000, expected, 200)
    await cl2.flush()
    const after = await balanced(b.http)
    expect(after.assignment.owners).toEqual(before)
    await expectExactState(cl2, expected)
    await cl2.close()
  })

  it('two replicas started at once: exactly one leads', async () => {
    const state = `${redis.url}/${++db % 16}`
    const a = await replica(state, 'coord-a')
    const b = await replica(state, 'coord-b')
    const [pa, pb] = [a.start('standby').catch(() => null), b.start('standby').catch(() => null)]
    // Each prints either its standby line or, leading, its listening line.
    const first = await Promise.race([pa.then((p) => p?.listening), pb.then((p) => p?.listening)])
    expect(first?.nodeId).toMatch(/^coord-[ab]$/)
    await Promise.all([pa, pb]) // both up: one leading, the other standing by
    // The leader is ready once its recovery window is over (no workers to wait for here). While
    // it turns from standby to leader its HTTP port closes and opens again: 0 then.
    const statusOf = (h: number): Promise<number> =>
      fetch(`http://127.0.0.1:${h}/readyz`).then(
        (r) => r.status,
        () => 0,
      )
    let ready: number[] = []
    await waitFor(async () => {
      ready = await Promise.all([a.http, b.http].map(statusOf))
      return ready.includes(200)
    }, 'a ready leader')
    expect(ready.filter((s) => s === 200)).toHaveLength(1)
    expect(ready.filter((s) => s === 503)).toHaveLength(1) // the other stands by
    const r = new Redis(redis.port, redis.host, { db: db % 16 })
    const value = await r.get('shoal:coordinator:leader')
    r.disconnect()
    expect(value?.split(' ')[0]).toBe(first?.nodeId)
  })

  it('Redis unreachable: the leader stops acting, the standby cannot lead (no split brain); Redis back: one leader', async () => {
    const { a, b, leader, standby } = await setup()
    const readyz = (h: number): Promise<number> =>
      fetch(`http://127.0.0.1:${h}/readyz`, { signal: AbortSignal.timeout(2000) }).then(
        (r) => r.status,
        () => 0,
      )
    redis.signal('SIGSTOP')
    try {
      // The leader cannot renew: past its safety margin it is no longer ready and acts no more;
      // the standby cannot take a lease from a Redis it cannot reach: nobody is ready.
      await waitFor(async () => (await readyz(a.http)) === 503, 'the leader unready', 10_000)
      expect(await readyz(b.http)).toBe(503)
      await new Promise((resolve) => setTimeout(resolve, 1500)) // past the lease's end
    } finally {
      redis.signal('SIGCONT')
    }
    // The lease lapsed meanwhile, but nobody could claim an epoch: the leader re-takes it (the
    // standby, having seen Redis stall, leaves the holder the first chance). Should the standby
    // win the race anyway, the old leader finds the lease gone and exits 3. Either way, one
    // leader and a settled cluster.
    const outcome = await Promise.race([
      leader.exited.then((e) => ({ exitCode: e.code })),
      waitFor(async () => (await readyz(a.http)) === 200, 'the leader ready again', 20_000).then(
        () => 'retook' as const,
      ),
    ])
    if (outcome === 'retook') {
      expect(leader.logs.join('')).toMatch(/re-taken/)
      await waitSettled(() => statusAt(a.http), 3)
      expect(await readyz(b.http)).toBe(503)
    } else {
      expect(outcome.exitCode).toBe(3)
      await standby.listening
      await waitSettled(() => statusAt(b.http), 3)
    }
  })
})
