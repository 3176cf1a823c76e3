/**
 * Protocol version 2 on a real worker: a round of batches in one `batches` message is applied
 * batch by batch (each acked or refused on its own, as if it came alone) and the acks come back
 * coalesced in `acks`; a peer held at version 1 sends and gets one message per batch and ack.
 * One coordinator and one worker in process, over TCP on loopback.
 */
import { Packr } from 'msgpackr'
import { pino } from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { ShoalClient } from '../../../src/client/client.ts'
import { Coordinator } from '../../../src/coordinator/coordinator.ts'
import { ErrorCodes } from '../../../src/errors.ts'
import type { EventAckBody, EventBatchBody } from '../../../src/protocol/messages.ts'
import { partitionForKey } from '../../../src/protocol/partition.ts'
import { createTcpTransport } from '../../../src/transport/tcp/tcp-transport.ts'
import type { Connection, TransportOptions } from '../../../src/transport/transport.ts'
import { createWorkerNode } from '../../../src/worker/node.ts'
import { waitFor, within } from '../../helpers/wait-for.ts'

const logger = pino({ level: 'silent' })
const packr = new Packr({ useRecords: true, moreTypes: true })
const PARTITIONS = 4
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

async function cluster(
  workerTransport: Partial<TransportOptions> = {},
): Promise<{ c: Coordinator; worker: string }> {
  const c = new Coordinator({
    transport: createTcpTransport({ nodeId: 'coordinator', role: 'coordinator' }),
    listen: { host: '127.0.0.1', port: 0 },
    partitions: PARTITIONS,
    heartbeatIntervalMs: 50,
    logger,
  })
  await c.start()
  cleanup.push(() => c.stop({ timeoutMs: 200 }))
  const w = createWorkerNode({
    transport: createTcpTransport({ nodeId: 'w', role: 'worker', ...workerTransport }),
    coordinator: c.address,
    listen: { host: '127.0.0.1', port: 0 },
    memberId: 'w',
    version: 'test',
    threads: 1,
    heartbeatIntervalMs: 50,
    logger,
  })
  await w.start()
  cleanup.push(() => w.stop())
  await waitFor(() => {
    const members = c.status().members
    return members.length === 1 && members[0]!.readyPartitions === PARTITIONS
  }, 'the worker serving every partition')
  return { c, worker: c.routing().addresses.w! }
}

async function dialWorker(
  address: string,
  maxProtocolVersion?: number,
  extra: Partial<TransportOptions> = {},
): Promise<Connection> {
  const conn = await createTcpTransport({
    nodeId: `raw-${maxProtocolVersion ?? 'new'}`,
    role: 'client',
    ...(maxProtocolVersion === undefined ? {} : { maxProtocolVersion }),
    ...extra,
  }).connect(address)
  cleanup.push(() => conn.close({ timeoutMs: 200 }))
  return conn
}

function batch(partition: number, epoch: number, sequence: number, key: string): EventBatchBody {
  const events = [[key, { value: 2 }]]
  return { op: 'batch', partition, epoch, producerId: 'raw', sequence, count: 1, payload: packr.pack(events) }
}

/** The next n acks, and per event message that carried them, their partitions. */
async function acks(conn: Connection, n: number): Promise<{ acks: EventAckBody[]; messages: number[][] }> {
  const out: EventAckBody[] = []
  const messages: number[][] = []
  for await (const env of conn) {
    if (env.kind !== 'event') continue
    const got = env.body.op === 'ack' ? [env.body] : env.body.op === 'acks' ? env.body.acks : []
    if (got.length === 0) continue
    out.push(...got)
    messages.push(got.map((a) => a.partition).sort())
    if (out.length >= n) break
  }
  return { acks: out, messages }
}

/** A client to read state with, each partition's epoch and a key of each partition. */
async function reader(c: Coordinator): Promise<{ cl: ShoalClient; epochs: number[]; keys: string[] }> {
  const cl = await ShoalClient.connect({
    coordinator: c.address,
    transport: createTcpTransport({ nodeId: 'reader', role: 'client' }),
  })
  cleanup.push(() => cl.close())
  const epochs = c.routing().routes.map((r) => r!.epoch)
  const keys = Array.from({ length: PARTITIONS }, (_, p) => keyOf(p))
  return { cl, epochs, keys }
}

/** A key of each partition. */
function keyOf(partition: number): string {
  for (let i = 0; ; i++) if (partitionForKey(`k${i}`, PARTITIONS) === partition) return `k${i}`
}

describe('event bundles (protocol version 2) on a real worker', () => {
  it('applies each batch of a `batches` message on its own and acks them in one `acks`', async () => {
    const { c, worker } = await cluster()
    const { cl, epochs, keys } = await reader(c)
    const conn = await dialWorker(worker)
    expect(conn.peer.version).toBe(2)
    // Partition 1's batch names a stale epoch: refused (NOT_OWNER) alone; the others apply.
    conn.send({
      kind: 'event',
      body: {
        op: 'batches',
        batches: keys.map((k, p) => batch(p, p === 1 ? epochs[p]! + 7 : epochs[p]!, 1, k)),
      },
    })
    const got = await within(acks(conn, PARTITIONS), 5000, 'the acks of the round')
    // The refusal leaves at once; the three applied together are acked together.
    expect(got.messages).toContainEqual([0, 2, 3])
    const byPartition = new Map(got.acks.map((a) => [a.partition, a]))
    expect([...byPartition.keys()].sort()).toEqual([0, 1, 2, 3])
    expect(byPartition.get(1)).toMatchObject({ ok: false, error: { code: ErrorCodes.NOT_OWNER } })
    for (const p of [0, 2, 3]) expect(byPartition.get(p)).toMatchObject({ ok: true, sequence: 1 })
    // The same round again: duplicates of what applied, acked ok and not applied twice.
    conn.send({
      kind: 'event',
      body: { op: 'batches', batches: keys.map((k, p) => batch(p, epochs[p]!, 1, k)) },
    })
    const again = await within(acks(conn, PARTITIONS), 5000, 'the acks of the replay')
    expect(again.acks.every((a) => a.ok)).toBe(true)
    for (const [p, k] of keys.entries()) {
      // Partition 1 applied once now (its first batch was refused); the others once, not twice.
      expect(await cl.getState(k), `partition ${p}`).toEqual({ count: 1, sum: 2 })
    }
  })

  it('acks that do not fit one frame of a small maxFrameBytes still arrive, one per message', async () => {
    const small = { maxFrameBytes: 1024 }
    const { c, worker } = await cluster(small)
    const epochs = c.routing().routes.map((r) => r!.epoch)
    const conn = await dialWorker(worker, undefined, small)
    // Bundles of 6 small batches, sent together: the worker applies them in one task, and their
    // 18 acks (~70 bytes each) do not fit in one 1 KiB frame.
    for (let round = 0; round < 3; round++) {
      conn.send({
        kind: 'event',
        body: {
          op: 'batches',
          batches: Array.from({ length: 6 }, (_, i) =>
            batch(
              i % PARTITIONS,
              epochs[i % PARTITIONS]!,
              1 + round * 2 + Math.floor(i / PARTITIONS),
              keyOf(i % PARTITIONS),
            ),
          ),
        },
      })
    }
    const got = await within(acks(conn, 18), 5000, 'all 18 acks')
    expect(got.acks.every((a) => a.ok)).toBe(true)
    expect(got.acks).toHaveLength(18)
  })

  it('a peer held at version 1 sends batch by batch and gets ack by ack', async () => {
    const { c, worker } = await cluster()
    const { cl, epochs, keys } = await reader(c)
    const conn = await dialWorker(worker, 1)
    expect(conn.peer.version).toBe(1)
    for (const [p, k] of keys.entries()) conn.send({ kind: 'event', body: batch(p, epochs[p]!, 1, k) })
    const got = await within(acks(conn, PARTITIONS), 5000, 'the acks')
    expect(got.messages).toHaveLength(PARTITIONS)
    expect(got.acks.every((a) => a.ok)).toBe(true)

    // And a whole client held at version 1 delivers exactly.
    const old = await ShoalClient.connect({
      coordinator: c.address,
      transport: createTcpTransport({ nodeId: 'old', role: 'client', maxProtocolVersion: 1 }),
    })
    cleanup.push(() => old.close())
    for (let i = 0; i < 400; i++) old.send(keys[i % PARTITIONS]!, { value: 1 })
    await old.flush()
    for (const k of keys) expect(await cl.getState(k)).toEqual({ count: 101, sum: 102 })
  })
})
