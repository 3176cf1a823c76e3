/**
 * ShoalClient against a worker that stopped answering (issue 14): a scripted coordinator that
 * serves a routing table, a "hung" worker (a TCP server that accepts and reads but never
 * writes, as the kernel does for a SIGSTOPped process) and a healthy scripted worker. Every
 * timeout that could end the wait on the hung worker (handshake, ack) is set far beyond the
 * test's own timeout, so a query or batch completes only if the client re-routes it: on a
 * routing push, or by fetching the table itself after requestTimeoutMs.
 */
import net from 'node:net'
import { Packr } from 'msgpackr'
import { afterEach, describe, expect, it } from 'vitest'
import { ShoalClient, type ShoalClientOptions } from '../../../src/client/client.ts'
import { ErrorCodes, ShoalError } from '../../../src/errors.ts'
import type { RoutingFields } from '../../../src/protocol/control.ts'
import type { EventBatchBody, StateBody } from '../../../src/protocol/messages.ts'
import { partitionForKey } from '../../../src/protocol/partition.ts'
import { reply, replyError } from '../../../src/transport/requests.ts'
import { createTcpTransport } from '../../../src/transport/tcp/tcp-transport.ts'
import type { Listener } from '../../../src/transport/transport.ts'
import {
  keysPerPartition,
  scriptedCoordinator as scripted,
  type ScriptedCoordinator,
} from '../../helpers/scripted-coordinator.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const packr = new Packr({ useRecords: true, moreTypes: true })
const NEVER = 600_000
const PARTITIONS = 4

const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

function scriptedCoordinator(table: RoutingFields): Promise<ScriptedCoordinator> {
  return scripted(table, cleanup)
}

/** Accepts connections and reads, never answers: a stopped process, as its peers see it. */
async function hungWorker(): Promise<{ address: string; bytes: () => number }> {
  let bytes = 0
  const sockets = new Set<net.Socket>()
  const server = net.createServer((s) => {
    sockets.add(s)
    s.on('data', (d: Buffer) => (bytes += d.length))
    s.on('error', () => {})
    s.on('close', () => sockets.delete(s))
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  cleanup.push(async () => {
    for (const s of sockets) s.destroy()
    await new Promise<void>((r) => server.close(() => r()))
  })
  return { address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`, bytes: () => bytes }
}

/**
 * A worker that serves `state[key]` for the partitions in `ready`, dumps them, and acks every
 * batch, recording (partition, producer, sequence) of each.
 */
async function scriptedWorker(
  state: Record<string, unknown>,
  ready: Set<number>,
  /** Acks wait until this resolves (a slow but live worker). */
  acksAfter: Promise<void> = Promise.resolve(),
): Promise<{ address: string; batches: EventBatchBody[]; listener: Listener }> {
  const batches: EventBatchBody[] = []
  const listener = await createTcpTransport({ nodeId: 'good', role: 'worker' }).listen(
    { host: '127.0.0.1', port: 0 },
    (conn) => {
      void (async () => {
        try {
          for await (const env of conn) {
            if (env.kind === 'event' && (env.body.op === 'batch' || env.body.op === 'batches')) {
              for (const b of env.body.op === 'batch' ? [env.body] : env.body.batches) {
                batches.push(b)
                await acksAfter
                conn.send({
                  kind: 'event',
                  body: {
                    op: 'ack',
                    partition: b.partition,
                    producerId: b.producerId,
                    sequence: b.sequence,
                    ok: true,
                  },
                })
              }
            } else if (env.kind === 'state') {
              const body: StateBody = env.body
              if (body.op === 'get' && body.key !== undefined) {
                const p = body.partition ?? partitionForKey(body.key, PARTITIONS)
                if (!ready.has(p)) {
                  replyError(conn, env, new ShoalError(ErrorCodes.NOT_OWNER, `partition ${p} is restoring`))
                  continue
                }
                const v = state[body.key]
                reply(conn, env, {
                  kind: 'state',
                  body: {
                    op: 'result',
                    key: body.key,
                    partition: p,
                    found: v !== undefined,
                    data: v === undefined ? undefined : packr.pack(v),
                  },
                })
              } else if (body.op === 'dump') {
                for (const p of [...ready].sort()) {
                  const entries = Object.entries(state).filter(([k]) => partitionForKey(k, PARTITIONS) === p)
                  reply(conn, env, {
                    kind: 'state',
                    body: { op: 'chunk', partition: p, data: packr.pack(entries) },
                  })
                }
                reply(conn, env, { kind: 'state', body: { op: 'end' } })
              }
            }
          }
        } catch {
          // the client went away
        }
      })()
    },
  )
  cleanup.push(() => listener.close({ timeoutMs: 200 }))
  return { address: listener.address, batches, listener }
}

function table(epoch: number, owners: string[], addresses: Record<string, string>): RoutingFields {
  return {
    epoch,
    partitions: PARTITIONS,
    routes: owners.map((workerId) => ({ workerId, epoch })),
    addresses,
  }
}

async function client(coordinator: string, extra: Partial<ShoalClientOptions>): Promise<ShoalClient> {
  const c = await ShoalClient.connect({
    coordinator,
    transport: createTcpTransport({ nodeId: 'client', role: 'client', handshakeTimeoutMs: NEVER }),
    ackTimeoutMs: NEVER,
    deliveryTimeoutMs: NEVER,
    retryDelayMs: 5,
    gateway: 'never',
    ...extra,
  })
  cleanup.push(() => c.close())
  return c
}

describe('transport dial to a hung worker', () => {
  it('connect() stuck in the handshake ends with ABORTED when its signal aborts', async () => {
    const hung = await hungWorker()
    const ac = new AbortController()
    const dial = createTcpTransport({ nodeId: 'c', role: 'client', handshakeTimeoutMs: NEVER }).connect(
      hung.address,
      { signal: ac.signal },
    )
    await waitFor(() => hung.bytes() > 0, 'the hello sent')
    ac.abort()
    await expect(dial).rejects.toMatchObject({ code: ErrorCodes.ABORTED })
  })
})

describe('ShoalClient against a hung worker', () => {
  const keys = keysPerPartition(PARTITIONS)
  const state = Object.fromEntries(keys.map((k, i) => [k, { count: i + 1 }]))

  /**
   * Partitions 0 and 1 start on the hung worker, 2 and 3 on the healthy one; then every
   * partition moves to the healthy one, announced by `move`. Gets, a dump and batches issued
   * while the table still names the hung worker must all come back exact, and every batch be
   * acked exactly once, in order per partition.
   */
  async function scenario(
    extra: Partial<ShoalClientOptions>,
    move: (coord: Awaited<ReturnType<typeof scriptedCoordinator>>, next: RoutingFields) => void,
  ): Promise<void> {
    const hung = await hungWorker()
    // The healthy worker serves (and dumps) only what it owns: 2 and 3, then everything.
    const ready = new Set([2, 3])
    const good = await scriptedWorker(state, ready)
    const addresses = { hung: hung.address, good: good.address }
    const coord = await scriptedCoordinator(table(1, ['hung', 'hung', 'good', 'good'], addresses))
    const acks: number[][] = Array.from({ length: PARTITIONS }, () => [])
    const cl = await client(coord.address, { ...extra, onAck: (p, n) => acks[p]!.push(n) })

    // Batches to every partition (two rounds: the second leaves only after the first is acked).
    for (const k of keys) cl.send(k, { value: 1 })
    const flushed = cl.flush()
    for (const k of keys) cl.send(k, { value: 2 })
    const second = cl.flush()
    const gets = Promise.all(keys.map((k) => cl.getState(k)))
    const dump = (async () => {
      const out: Record<string, unknown> = {}
      for await (const [k, v] of cl.dumpState()) out[k] = v
      return out
    })()
    // The hung worker got the client's hello: everything aimed at it is stuck now.
    await waitFor(() => hung.bytes() > 0, 'a dial to the hung worker')
    ready.add(0).add(1)
    move(coord, table(2, ['good', 'good', 'good', 'good'], { good: good.address }))

    expect(await gets).toEqual(keys.map((k) => state[k]))
    expect(await dump).toEqual(state)
    await flushed
    await second
    expect(cl.stats.failed).toBe(0)
    expect(cl.stats.acked).toBe(keys.length * 2)
    // Each partition: both batches acked once each, and the healthy worker got them in order.
    for (let p = 0; p < PARTITIONS; p++) {
      expect(acks[p]).toEqual([1, 1])
      const seqs = good.batches.filter((b) => b.partition === p).map((b) => b.sequence)
      expect(seqs).toEqual([1, 2])
    }
  }

  it('a routing push re-routes pending gets, dumps and batches to the new owner at once', async () => {
    // No deadline could fire: only the push can end the wait.
    await scenario({ requestTimeoutMs: NEVER }, (coord, next) => coord.set(next, true))
  })

  it('without a push, requestTimeoutMs makes the client fetch the table and re-route', async () => {
    await scenario({ requestTimeoutMs: 100 }, (coord, next) => coord.set(next, false))
  })

  it('a partition its owner is still restoring (NOT_OWNER replies) is asked again until it serves', async () => {
    const ready = new Set([0, 1, 2])
    const good = await scriptedWorker(state, ready)
    const coord = await scriptedCoordinator(
      table(1, ['good', 'good', 'good', 'good'], { good: good.address }),
    )
    const cl = await client(coord.address, {})
    const restoring = keys[3]!
    const got = cl.getState(restoring)
    const dump = (async () => {
      const out: Record<string, unknown> = {}
      for await (const [k, v] of cl.dumpState()) out[k] = v
      return out
    })()
    // Routing fetched again after a NOT_OWNER reply: the client is retrying.
    await waitFor(() => coord.fetches >= 3, 'retries of the restoring partition')
    ready.add(3)
    expect(await got).toEqual(state[restoring])
    expect(await dump).toEqual(state)
  })

  it('a table without an owner for a partition (a move in progress) does not abandon the batch sent to its owner', async () => {
    let release!: () => void
    const good = await scriptedWorker(state, new Set([0, 1, 2, 3]), new Promise((r) => (release = r)))
    const coord = await scriptedCoordinator(
      table(1, ['good', 'good', 'good', 'good'], { good: good.address }),
    )
    const cl = await client(coord.address, { requestTimeoutMs: NEVER })
    cl.send(keys[0]!, { value: 1 })
    const flushed = cl.flush()
    await waitFor(() => good.batches.length === 1, 'the batch at its owner')
    coord.set({ ...table(2, ['good', 'good', 'good', 'good'], {}), routes: [null, null, null, null] }, true)
    // The push arrives before the owner acks: the ack still counts, nothing is sent again.
    await waitFor(() => cl.routing.epoch === 2, 'the ownerless table')
    release()
    await flushed
    expect(good.batches.map((b) => b.sequence)).toEqual([1])
    expect(cl.stats).toMatchObject({ acked: 1, failed: 0, retries: 0 })
  })

  it('rejects bad deadlines with the option named', async () => {
    const coord = await scriptedCoordinator(table(1, ['good', 'good', 'good', 'good'], { good: 'x:1' }))
    await expect(client(coord.address, { requestTimeoutMs: 0 })).rejects.toThrow(/requestTimeoutMs/)
    await expect(client(coord.address, { queryTimeoutMs: -1 })).rejects.toThrow(/queryTimeoutMs/)
  })
})
