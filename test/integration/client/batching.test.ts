/**
 * ShoalClient's adaptive batching (Nagle's rule per worker, src/client/client.ts "Gate"): a
 * partial batch leaves at once when its worker has nothing of this client's in flight, waits
 * for the round in flight otherwise, and then leaves together with the other partitions'
 * partial batches for that worker; lingerMs bounds the wait; full batches never wait. A
 * scripted coordinator routes every partition to one scripted worker whose acks the test holds
 * and releases.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { ShoalClient, type ShoalClientOptions } from '../../../src/client/client.ts'
import { appendEvent, type KeyedEventWriter } from '../../../src/client/encode.ts'
import type { RoutingFields } from '../../../src/protocol/control.ts'
import type { EventAckBody, EventBatchBody } from '../../../src/protocol/messages.ts'
import { createTcpTransport } from '../../../src/transport/tcp/tcp-transport.ts'
import type { Connection } from '../../../src/transport/transport.ts'
import { keysPerPartition, scriptedCoordinator } from '../../helpers/scripted-coordinator.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const NEVER = 600_000
const PARTITIONS = 4

const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

/**
 * A worker that records every batch (and the messages they came in: a `batch`, or a round of
 * them in one `batches`) and acks only when the test releases the acks held: one `acks` message
 * per connection, or one `ack` each to a peer at protocol version 1.
 */
async function heldAckWorker(
  maxProtocolVersion?: number,
  maxFrameBytes?: number,
): Promise<{
  address: string
  batches: EventBatchBody[]
  /** Per message received, the partitions of its batches. */
  messages: number[][]
  held: () => number
  /** Ack every batch received so far. */
  release: () => void
  /** Connections accepted so far. */
  conns: Connection[]
}> {
  const batches: EventBatchBody[] = []
  const messages: number[][] = []
  const conns: Connection[] = []
  let held: { conn: Connection; b: EventBatchBody }[] = []
  const listener = await createTcpTransport({
    nodeId: 'w',
    role: 'worker',
    ...(maxProtocolVersion === undefined ? {} : { maxProtocolVersion }),
    ...(maxFrameBytes === undefined ? {} : { maxFrameBytes }),
  }).listen({ host: '127.0.0.1', port: 0 }, (conn) => {
    conns.push(conn)
    void (async () => {
      try {
        for await (const env of conn) {
          if (env.kind !== 'event') continue
          const got = env.body.op === 'batch' ? [env.body] : env.body.op === 'batches' ? env.body.batches : []
          if (got.length === 0) continue
          messages.push(got.map((b) => b.partition))
          for (const b of got) {
            batches.push(b)
            held.push({ conn, b })
          }
        }
      } catch {
        // the client went away
      }
    })()
  })
  cleanup.push(() => listener.close({ timeoutMs: 200 }))
  return {
    address: listener.address,
    batches,
    messages,
    conns,
    held: () => held.length,
    release() {
      const now = held
      held = []
      const acks = new Map<Connection, EventAckBody[]>()
      for (const { conn, b } of now) {
        const ack: EventAckBody = {
          op: 'ack',
          partition: b.partition,
          producerId: b.producerId,
          sequence: b.sequence,
          ok: true,
        }
        acks.set(conn, [...(acks.get(conn) ?? []), ack])
      }
      for (const [conn, list] of acks) {
        if (conn.peer.version >= 2) conn.send({ kind: 'event', body: { op: 'acks', acks: list } })
        else for (const body of list) conn.send({ kind: 'event', body })
      }
    },
  }
}

async function setup(
  extra: Partial<ShoalClientOptions>,
  maxProtocolVersion?: number,
  maxFrameBytes?: number,
): Promise<{
  cl: ShoalClient
  w: Awaited<ReturnType<typeof heldAckWorker>>
  keys: string[]
}> {
  const w = await heldAckWorker(maxProtocolVersion, maxFrameBytes)
  const table: RoutingFields = {
    epoch: 1,
    partitions: PARTITIONS,
    routes: Array.from({ length: PARTITIONS }, () => ({ workerId: 'w', epoch: 1 })),
    addresses: { w: w.address },
  }
  const coordinator = await scriptedCoordinator(table, cleanup)
  const cl = await ShoalClient.connect({
    coordinator: coordinator.address,
    transport: createTcpTransport({
      nodeId: 'client',
      role: 'client',
      ...(maxFrameBytes === undefined ? {} : { maxFrameBytes }),
    }),
    ackTimeoutMs: NEVER,
    deliveryTimeoutMs: NEVER,
    gateway: 'never',
    ...extra,
  })
  cleanup.push(() => cl.close())
  return { cl, w, keys: keysPerPartition(PARTITIONS) }
}

const turn = (): Promise<void> => new Promise((r) => setImmediate(r))

/**
 * A first round (partition 0's batch, held), then a partial batch for every partition, parked
 * behind it (a turn), and its ack: the second round, every partition's batch, is sent.
 */
async function twoRounds(
  cl: ShoalClient,
  w: Awaited<ReturnType<typeof heldAckWorker>>,
  keys: string[],
  event: unknown,
): Promise<void> {
  cl.send(keys[0]!, { n: 1 })
  await waitFor(() => w.held() === 1, 'the first round')
  for (const k of keys) cl.send(k, event)
  await turn()
  await turn()
  w.release()
  await waitFor(() => w.batches.length === 1 + keys.length, 'the second round')
}

/** Ack everything held and wait until the client has every ack. */
async function settle(cl: ShoalClient, w: Awaited<ReturnType<typeof heldAckWorker>>): Promise<void> {
  const flushed = cl.flush()
  w.release()
  await flushed
}

describe('adaptive batching (per-worker rounds)', () => {
  it('an event for an idle worker leaves at once: neither flush() nor lingerMs is needed', async () => {
    const { cl, w, keys } = await setup({ lingerMs: NEVER })
    cl.send(keys[0]!, { n: 1 })
    await waitFor(() => w.batches.length === 1, 'the batch of an idle partition')
    expect(w.batches[0]).toMatchObject({ partition: 0, count: 1 })
    w.release()
    await cl.flush()
    expect(cl.unacked).toBe(0)
  })

  it('sendWrittenTo queues a written event in the partition given; refuses one out of range', async () => {
    const { cl, w, keys } = await setup({ lingerMs: NEVER })
    const writer = (ok: boolean): KeyedEventWriter => ({
      writeKeyedEvent: (f) => {
        if (ok) appendEvent(f, keys[3]!, { n: 1 })
        return ok
      },
    })
    expect(cl.sendWrittenTo(3, writer(false))).toBeNull()
    expect(cl.unacked).toBe(0)
    expect(cl.sendWrittenTo(3, writer(true))).toBe(true)
    await waitFor(() => w.batches.length === 1, 'the written batch')
    expect(w.batches[0]).toMatchObject({ partition: 3, count: 1 })
    expect(() => cl.sendWrittenTo(PARTITIONS, writer(true))).toThrow(/out of range/)
    w.release()
    await cl.flush()
    expect(cl.unacked).toBe(0)
  })

  it('partial batches wait for the round in flight, then leave together; full batches do not wait', async () => {
    const { cl, w, keys } = await setup({ lingerMs: NEVER, batchSize: 10 })
    cl.send(keys[0]!, { n: 1 })
    await waitFor(() => w.held() === 1, 'the first round')

    // Partitions 1 and 2 get partial batches while partition 0's is unacked: they wait.
    cl.send(keys[1]!, { n: 1 })
    cl.send(keys[2]!, { n: 1 })
    cl.send(keys[2]!, { n: 2 })
    await turn()
    await turn()
    // A full batch of partition 3 leaves at once. Had partitions 1 and 2 left, their batches
    // would be ahead of it on the same connection.
    for (let i = 0; i < 10; i++) cl.send(keys[3]!, { n: i })
    await waitFor(() => w.batches.length === 2, 'the full batch')
    expect(w.batches.map((b) => [b.partition, b.count])).toEqual([
      [0, 1],
      [3, 10],
    ])

    // The round's acks: the parked partitions go, in one round.
    w.release()
    await waitFor(() => w.batches.length === 4, 'the parked partial batches')
    expect(
      w.batches
        .slice(2)
        .map((b) => [b.partition, b.count])
        .sort(),
    ).toEqual([
      [1, 1],
      [2, 2],
    ])
    const flushed = cl.flush()
    w.release()
    await flushed
    expect(cl.unacked).toBe(0)
    expect(cl.stats.acked).toBe(14)
  })

  it('lingerMs bounds the wait for a round that is not acknowledged', async () => {
    const { cl, w, keys } = await setup({ lingerMs: 20 })
    cl.send(keys[0]!, { n: 1 })
    await waitFor(() => w.held() === 1, 'the first round')
    cl.send(keys[1]!, { n: 1 })
    // Partition 0 is never acked before partition 1's batch arrives.
    await waitFor(() => w.batches.length === 2, 'the batch that waited lingerMs')
    expect(w.batches[1]).toMatchObject({ partition: 1, count: 1 })
    expect(w.held()).toBe(2)
    const flushed = cl.flush()
    w.release()
    await flushed
  })

  it('a round of batches to one worker travels as one `batches` message, its acks as one `acks`', async () => {
    const { cl, w, keys } = await setup({ lingerMs: NEVER })
    await twoRounds(cl, w, keys, { n: 2 })
    // The second round: every partition's partial batch, in one message.
    expect(w.messages).toHaveLength(2)
    expect([...w.messages[1]!].sort()).toEqual([0, 1, 2, 3])
    await settle(cl, w)
    expect(cl.stats.acked).toBe(1 + PARTITIONS)
  })

  it('to a worker at protocol version 1, every batch travels alone and each ack alone is taken', async () => {
    const { cl, w, keys } = await setup({ lingerMs: NEVER }, 1)
    await twoRounds(cl, w, keys, { n: 2 })
    expect(w.messages.every((m) => m.length === 1)).toBe(true)
    await settle(cl, w)
    expect(cl.stats.acked).toBe(1 + PARTITIONS)
  })

  it('a round over a small maxFrameBytes falls back to one message per batch', async () => {
    const { cl, w, keys } = await setup({ lingerMs: NEVER }, undefined, 1024)
    // Four batches of ~400 bytes: each fits in a 1 KiB frame, the four together do not.
    await twoRounds(cl, w, keys, { pad: 'x'.repeat(400) })
    expect(w.messages.slice(1).every((m) => m.length === 1)).toBe(true)
    await settle(cl, w)
    expect(cl.stats.acked).toBe(1 + PARTITIONS)
    expect(cl.stats.retries).toBe(0)
  })

  it('a batch not acked within ackTimeoutMs is sent again, same sequence, and counted once', async () => {
    const { cl, w, keys } = await setup({ lingerMs: NEVER, ackTimeoutMs: 100 })
    cl.send(keys[0]!, { n: 1 })
    await waitFor(() => w.batches.length >= 2, 'the resend after ackTimeoutMs')
    expect(w.batches[1]).toMatchObject({ partition: 0, sequence: w.batches[0]!.sequence, count: 1 })
    expect(cl.stats.retries).toBeGreaterThanOrEqual(1)
    expect(cl.stats.lastRetry?.code).toBe('SHOAL_ERR_TIMEOUT')
    const flushed = cl.flush()
    w.release()
    await flushed
    expect(cl.stats.acked).toBe(1)
  })

  it('a partition acked mid-round joins the next round with the others', async () => {
    const { cl, w, keys } = await setup({ lingerMs: NEVER })
    cl.send(keys[0]!, { n: 1 })
    cl.send(keys[1]!, { n: 1 })
    await waitFor(() => w.held() === 2, 'one round of two batches')
    // More for both while the round is out, then the round's acks: both go again, together.
    cl.send(keys[0]!, { n: 2 })
    cl.send(keys[1]!, { n: 2 })
    w.release()
    await waitFor(() => w.batches.length === 4, 'the second round')
    expect(
      w.batches
        .slice(2)
        .map((b) => b.partition)
        .sort(),
    ).toEqual([0, 1])
    const flushed = cl.flush()
    w.release()
    await flushed
    expect(cl.stats.acked).toBe(4)
  })

  it('after its connection to a worker is lost, the next batch reaches it over a new one', async () => {
    const { cl, w, keys } = await setup({ lingerMs: NEVER, retryDelayMs: 10 })
    cl.send(keys[0]!, { n: 1 })
    await waitFor(() => w.held() === 1, 'the first batch')
    await settle(cl, w)
    expect(w.conns).toHaveLength(1)
    // The worker drops the connection (a restart on the same address looks the same). Batches
    // to a worker whose connection is up skip the dial: a dead one must not be kept for them.
    w.conns[0]!.destroy()
    await turn()
    cl.send(keys[1]!, { n: 2 })
    await waitFor(() => w.batches.length === 2, 'the batch after the loss')
    expect(w.conns).toHaveLength(2)
    expect(w.batches[1]).toMatchObject({ partition: 1, count: 1 })
    await settle(cl, w)
    expect(cl.stats.acked).toBe(2)
    expect(cl.unacked).toBe(0)
  })
})
