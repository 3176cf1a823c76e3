/**
 * Coordinator and workers in one process over the memory transport, with short heartbeat
 * intervals: membership, assignment, failure detection, fencing, recovery after a coordinator
 * restart, routing and bad control input. (test/e2e runs the same scenarios as real processes.)
 */
import { pino } from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { Coordinator } from '../../../src/coordinator/coordinator.ts'
import { ErrorCodes } from '../../../src/errors.ts'
import { parseRouting } from '../../../src/protocol/control.ts'
import { createMemoryTransport } from '../../../src/transport/memory/memory-transport.ts'
import { Requests } from '../../../src/transport/requests.ts'
import type { Connection } from '../../../src/transport/transport.ts'
import { Worker, type PartitionHost } from '../../../src/worker/worker.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const logger = pino({ level: 'silent' })
const HB = 40
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

let portSeq = 0
function addr(): { host: string; port: number } {
  return { host: 'inproc', port: 1000 + portSeq++ }
}

async function coordinator(
  port?: number,
  extra: Partial<ConstructorParameters<typeof Coordinator>[0]> = {},
): Promise<Coordinator> {
  const c = new Coordinator({
    transport: createMemoryTransport({ nodeId: 'coordinator', role: 'coordinator' }),
    listen: port === undefined ? addr() : { host: 'inproc', port },
    partitions: 64,
    heartbeatIntervalMs: HB,
    heartbeatMisses: 3,
    logger,
    ...extra,
  })
  await c.start()
  cleanup.push(() => c.stop({ timeoutMs: 200 }))
  return c
}

interface HostLog {
  restored: number[]
  released: number[]
  fenced: number[]
  paused: (number[] | null)[]
}

function recordingHost(): { host: PartitionHost; log: HostLog } {
  const log: HostLog = { restored: [], released: [], fenced: [], paused: [] }
  return {
    log,
    host: {
      restore: (p) => {
        log.restored.push(p)
        return Promise.resolve()
      },
      release: (p) => {
        log.released.push(p)
        return Promise.resolve()
      },
      fence: (p) => log.fenced.push(p),
      pause: (ps) => log.paused.push(ps),
      resume: () => {},
      load: () => ({ queueDepth: 0, inFlight: 0, eventsPerSec: 0, rssBytes: 0, lag: 0 }),
    },
  }
}

async function worker(c: Coordinator, id: string, capacity = 1): Promise<{ w: Worker; log: HostLog }> {
  const { host, log } = recordingHost()
  const w = new Worker({
    transport: createMemoryTransport({ nodeId: id, role: 'worker' }),
    coordinator: c.address,
    listen: addr(),
    memberId: id,
    capacity,
    version: 'test',
    heartbeatIntervalMs: HB,
    logger,
    host,
  })
  await w.start()
  cleanup.push(() => w.stop({ timeoutMs: 200 }))
  return { w, log }
}

function owners(c: Coordinator): Map<string, number[]> {
  const m = new Map<string, number[]>()
  c.assignment.owners.forEach((o, p) => {
    if (o !== null) m.set(o, [...(m.get(o) ?? []), p])
  })
  return m
}

async function settled(c: Coordinator, ids: string[]): Promise<void> {
  await waitFor(
    () => {
      const s = c.status()
      const live = s.members.filter((m) => m.state === 'alive' || m.state === 'suspect').map((m) => m.id)
      return (
        s.coordinator.ready &&
        live.length === ids.length &&
        ids.every((id) => live.includes(id)) &&
        c.assignment.owners.every((o) => o !== null && ids.includes(o)) &&
        s.members.filter((m) => ids.includes(m.id)).every((m) => m.readyPartitions === m.partitions)
      )
    },
    `cluster settled on ${ids.join(', ')}`,
  )
}

describe('cluster (in process, memory transport)', () => {
  it('three workers join and share the partitions; each restores exactly what it owns', async () => {
    const c = await coordinator()
    const ws = await Promise.all(['w1', 'w2', 'w3'].map((id) => worker(c, id)))
    await settled(c, ['w1', 'w2', 'w3'])
    const o = owners(c)
    for (const [i, { w, log }] of ws.entries()) {
      const mine = o.get(`w${i + 1}`)!
      expect(mine.length === 21 || mine.length === 22).toBe(true)
      expect([...w.partitions().keys()].sort((a, b) => a - b)).toEqual(mine)
      expect(w.readiness().ok).toBe(true)
      // Restored at least what it owns now (a partition may have moved from an early joiner).
      for (const p of mine) expect(log.restored).toContain(p)
    }
    const epochs = c.assignment.epochs
    expect(Math.max(...epochs)).toBe(c.assignment.epoch)
  })

  it('a worker that vanishes is declared dead after the missed heartbeats and only its partitions move', async () => {
    const c = await coordinator()
    const ws = await Promise.all(['w1', 'w2', 'w3'].map((id) => worker(c, id)))
    await settled(c, ['w1', 'w2', 'w3'])
    const before = owners(c)
    const epochBefore = c.assignment.epoch
    const dead = new Promise<string>((resolve) => c.once('member-dead', (id) => resolve(id)))
    // Crash: close the links without a leave.
    await ws[1]!.w.stop({ timeoutMs: 100 })
    expect(await dead).toBe('w2')
    await settled(c, ['w1', 'w3'])
    const after = owners(c)
    for (const id of ['w1', 'w3']) {
      // Survivors keep every partition they had and gain only w2's.
      expect(after.get(id)).toEqual(expect.arrayContaining(before.get(id)!))
      for (const p of after.get(id)!.filter((x) => !before.get(id)!.includes(x)))
        expect(before.get('w2')).toContain(p)
    }
    // Moved partitions carry a new, higher epoch; the others keep theirs.
    for (const p of before.get('w2')!) expect(c.assignment.epochs[p]).toBeGreaterThan(epochBefore)
    for (const p of before.get('w1')!) expect(c.assignment.epochs[p]).toBeLessThanOrEqual(epochBefore)
    expect(c.status().members.find((m) => m.id === 'w2')!.state).toBe('dead')
  })

  it('a graceful drain releases every partition, leaves, and only its partitions move', async () => {
    const c = await coordinator()
    const ws = await Promise.all(['w1', 'w2'].map((id) => worker(c, id)))
    await settled(c, ['w1', 'w2'])
    const before = owners(c)
    await ws[0]!.w.drain({ timeoutMs: 2000 })
    expect(ws[0]!.log.released.sort((a, b) => a - b)).toEqual(before.get('w1'))
    await settled(c, ['w2'])
    expect(c.status().members.find((m) => m.id === 'w1')!.state).toBe('left')
    expect(owners(c).get('w2')).toHaveLength(64)
  })

  it('revoke before assign: a joining worker gets partitions only after their owner released them', async () => {
    const c = await coordinator()
    const w1 = await worker(c, 'w1')
    await settled(c, ['w1'])
    const order: string[] = []
    w1.w.on('revoked', (ps) => order.push(`revoked:${ps.length}`))
    const w2 = await worker(c, 'w2')
    w2.w.on('assigned', (ps) => order.push(`assigned:${ps.length}`))
    await settled(c, ['w1', 'w2'])
    expect(order[0]).toBe('revoked:32')
    expect(order).toContain('assigned:32')
    // Never owned twice: the two workers' sets are disjoint and cover everything.
    const p1 = [...w1.w.partitions().keys()]
    const p2 = [...w2.w.partitions().keys()]
    expect(p1.filter((p) => p2.includes(p))).toEqual([])
    expect(p1.length + p2.length).toBe(64)
  })

  it('a restarted coordinator rebuilds the assignment from rejoining workers, keeping owners and epochs', async () => {
    const c1 = await coordinator()
    const port = Number(c1.address.split(':')[1])
    const ws = await Promise.all(['w1', 'w2', 'w3'].map((id) => worker(c1, id)))
    await settled(c1, ['w1', 'w2', 'w3'])
    const before = c1.assignment
    await c1.stop({ timeoutMs: 200 })
    const c2 = await coordinator(port)
    await settled(c2, ['w1', 'w2', 'w3'])
    expect(c2.assignment.owners).toEqual(before.owners)
    expect(c2.assignment.epochs).toEqual(before.epochs)
    expect(c2.assignment.epoch).toBe(before.epoch)
    for (const { log } of ws) expect(log.fenced).toEqual([])
  })

  it('a restarted coordinator ends its recovery once the workers back claim every partition, and pushes the table', async () => {
    const c1 = await coordinator()
    const port = Number(c1.address.split(':')[1])
    await Promise.all(['w1', 'w2'].map((id) => worker(c1, id)))
    await settled(c1, ['w1', 'w2'])
    const before = c1.assignment
    await c1.stop({ timeoutMs: 200 })
    // A window far longer than the test: only the full claim can end it.
    const c2 = await coordinator(port, { recoveryWindowMs: 600_000 })
    const client = await createMemoryTransport({ nodeId: 'cl', role: 'client' }).connect(c2.address)
    cleanup.push(() => client.destroy())
    const requests = new Requests()
    const pushed: ReturnType<typeof parseRouting>[] = []
    void (async () => {
      for await (const env of client) {
        if (requests.settle(env)) continue
        if (env.kind === 'control' && env.body.op === 'routing') pushed.push(parseRouting(env.body))
      }
    })().catch(() => {})
    const first = parseRouting(
      (await requests.request(client, { kind: 'control', body: { op: 'routing' } }, 2000)).body as never,
    )
    if (c2.readiness().ok)
      throw new Error('the workers were back before the client asked: no recovering table seen')
    expect(first.recovering).toBe(true)
    expect(first.routes.every((r) => r === null)).toBe(true)
    await waitFor(() => c2.readiness().ok, 'recovery over long before its window')
    expect(c2.assignment.owners).toEqual(before.owners)
    await waitFor(
      () => pushed.some((t) => t.recovering !== true),
      'the rebuilt table pushed to the subscriber',
    )
    const table = pushed.find((t) => t.recovering !== true)!
    expect(table.routes.map((r) => r?.workerId ?? null)).toEqual(before.owners)
  })

  it('a worker whose link drops and comes back within the miss window keeps its partitions', async () => {
    const c = await coordinator()
    await worker(c, 'w1')
    const { w: w2, log } = await worker(c, 'w2')
    await settled(c, ['w1', 'w2'])
    const had = [...w2.partitions().keys()]
    const epoch = c.assignment.epoch
    const conn = [...c.listener!.connections].find((x) => x.peer.nodeId === 'w2')!
    conn.destroy()
    await waitFor(
      () => c.status().members.find((m) => m.id === 'w2')?.state === 'suspect' || w2.readiness().ok === false,
      'link drop noticed',
    )
    await settled(c, ['w1', 'w2'])
    expect(log.fenced).toEqual([])
    expect([...w2.partitions().keys()]).toEqual(had)
    expect(c.assignment.epoch).toBe(epoch)
  })

  it('a member that goes silent is declared dead; when it speaks again its rejoin is fenced', async () => {
    const c = await coordinator()
    await worker(c, 'w1')
    await settled(c, ['w1'])
    // A hand-driven worker: joins, takes partitions, then stops heartbeating (a hung process).
    const conn = await createMemoryTransport({ nodeId: 'hung', role: 'worker' }).connect(c.address)
    cleanup.push(() => conn.destroy())
    const requests = new Requests()
    const assigned: { partition: number; epoch: number }[] = []
    const fenced: number[] = []
    void (async () => {
      for await (const env of conn) {
        if (requests.settle(env)) continue
        if (env.kind !== 'control') continue
        const b = env.body as { op: string; partitions?: unknown[] }
        if (b.op === 'assign') assigned.push(...(b.partitions as { partition: number; epoch: number }[]))
        if (b.op === 'revoke')
          conn.send({ kind: 'control', body: { op: 'revoked', partitions: b.partitions }, corr: env.corr })
      }
    })().catch(() => {})
    const join = (owned: unknown[]) =>
      requests.request(
        conn,
        {
          kind: 'control',
          body: {
            op: 'join',
            memberId: 'hung',
            dataAddress: 'x:1',
            httpAddress: null,
            capacity: 1,
            version: 't',
            epoch: 0,
            owned,
          },
        },
        2000,
      )
    await join([])
    // Heartbeat until it owns something, then go silent.
    const beat = setInterval(() => conn.send({ kind: 'heartbeat', body: { n: 1, epoch: 0 } }), HB / 2)
    await waitFor(() => assigned.length === 32, 'hung worker assigned half')
    clearInterval(beat)
    const dead = await new Promise<string>((resolve) => c.once('member-dead', resolve))
    expect(dead).toBe('hung')
    await settled(c, ['w1'])
    // It wakes up on a new link and claims what it had: every claim is fenced.
    const conn2 = await createMemoryTransport({ nodeId: 'hung', role: 'worker' }).connect(c.address)
    cleanup.push(() => conn2.destroy())
    const r2 = new Requests()
    void (async () => {
      for await (const env of conn2) {
        if (r2.settle(env)) continue
        if (env.kind === 'control' && env.body.op === 'fenced')
          fenced.push(...(env.body as unknown as { partitions: number[] }).partitions)
      }
    })().catch(() => {})
    const res = await r2.request(
      conn2,
      {
        kind: 'control',
        body: {
          op: 'join',
          memberId: 'hung',
          dataAddress: 'x:1',
          httpAddress: null,
          capacity: 1,
          version: 't',
          epoch: 0,
          owned: assigned,
        },
      },
      2000,
    )
    expect((res.body as unknown as { kept: unknown[] }).kept).toEqual([])
    await waitFor(() => fenced.length === 32, 'fenced list')
    expect(fenced.sort((a, b) => a - b)).toEqual(assigned.map((a) => a.partition).sort((a, b) => a - b))
  })

  it('serves the routing table to clients and pushes updates when ownership changes', async () => {
    const c = await coordinator()
    await worker(c, 'w1')
    await settled(c, ['w1'])
    const client = await createMemoryTransport({ nodeId: 'cli', role: 'client' }).connect(c.address)
    cleanup.push(() => client.destroy())
    const requests = new Requests()
    const updates: number[] = []
    const loop = (async () => {
      for await (const env of client) {
        if (requests.settle(env)) continue
        if (env.kind === 'control' && env.body.op === 'routing') updates.push(parseRouting(env.body).epoch)
      }
    })()
    const res = await requests.request(client, { kind: 'control', body: { op: 'routing' } }, 2000)
    const table = parseRouting(res.body as never)
    expect(table.routes.every((r) => r?.workerId === 'w1')).toBe(true)
    expect(table.addresses.w1).toMatch(/:/)
    await worker(c, 'w2')
    await settled(c, ['w1', 'w2'])
    await waitFor(() => updates.some((e) => e > table.epoch), 'a pushed routing update')
    const status = await requests.request(client, { kind: 'control', body: { op: 'status' } }, 2000)
    expect((status.body as unknown as { status: { members: unknown[] } }).status.members).toHaveLength(2)
    client.destroy()
    await loop.catch(() => {})
  })

  it('rejects malformed control commands with BAD_MESSAGE or NOT_REGISTERED and keeps the connection', async () => {
    const c = await coordinator()
    const conn: Connection = await createMemoryTransport({ nodeId: 'rogue', role: 'worker' }).connect(
      c.address,
    )
    cleanup.push(() => conn.destroy())
    const requests = new Requests()
    void (async () => {
      for await (const env of conn) requests.settle(env)
    })().catch(() => {})
    await expect(
      requests.request(conn, { kind: 'control', body: { op: 'assigned', partitions: [] } }, 2000),
    ).rejects.toMatchObject({ code: ErrorCodes.NOT_REGISTERED })
    await expect(
      requests.request(conn, { kind: 'control', body: { op: 'join', memberId: '', capacity: 'x' } }, 2000),
    ).rejects.toMatchObject({ code: ErrorCodes.BAD_MESSAGE })
    await expect(
      requests.request(conn, { kind: 'heartbeat', body: { n: 1, epoch: 0 } }, 2000),
    ).rejects.toMatchObject({ code: ErrorCodes.NOT_REGISTERED })
    expect(conn.state).toBe('ready')
  })

  it('never answers a late reply or an error report with an error (no error ping-pong)', async () => {
    const c = await coordinator()
    const conn: Connection = await createMemoryTransport({ nodeId: 'rogue', role: 'worker' }).connect(
      c.address,
    )
    cleanup.push(() => conn.destroy())
    const received: string[] = []
    const requests = new Requests()
    void (async () => {
      for await (const env of conn) {
        if (requests.settle(env)) continue
        received.push(env.kind === 'control' ? env.body.op : env.kind)
      }
    })().catch(() => {})
    // A revoke reply whose request timed out long ago, and an error report, both uncorrelated.
    conn.send({ kind: 'control', body: { op: 'revoked', partitions: [3] }, corr: 987654 })
    conn.send({
      kind: 'control',
      body: { op: 'error', code: 'SHOAL_ERR_BAD_MESSAGE', message: 'x', fatal: false },
    })
    conn.send({ kind: 'control', body: { op: 'drained' }, corr: 5 })
    // A real request after them is still answered, so the three above were read and ignored.
    await expect(
      requests.request(conn, { kind: 'control', body: { op: 'assigned', partitions: [] } }, 2000),
    ).rejects.toMatchObject({ code: ErrorCodes.NOT_REGISTERED })
    expect(received).toEqual([])
    expect(conn.state).toBe('ready')
  })

  it('pause and resume reach the workers', async () => {
    const c = await coordinator()
    const { log } = await worker(c, 'w1')
    await settled(c, ['w1'])
    c.pause('w1', [1, 2])
    c.pause()
    await waitFor(() => log.paused.length === 2, 'pauses delivered')
    expect(log.paused).toEqual([[1, 2], null])
  })
})
