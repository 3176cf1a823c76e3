/**
 * Raw TCP transport throughput against the raw-socket ceiling, one way, on loopback, sender
 * and receiver in two child processes (bench/lib.ts measurePair).
 *
 * Every case sends the same pre-packed event-batch payloads (msgpackr, records on, ~37 B per
 * event, packed once up front), so what differs is only what carries them:
 *
 *   transport  Shoal's TCP transport: connection.send({ kind: 'event', body: { op: 'batch', ... } }),
 *              `await drain()` when send() returns false; the receiver iterates the connection
 *              and counts body.count. Handshake, outbound queue, coalescing, inbound queue,
 *              envelope validation: everything a worker pays.
 *   raw        The raw-socket ceiling: a plain node:net socket pair with the SAME framing and
 *              codec (encodeFrame of the same envelope per send, FrameParser + decodeEnvelope
 *              per frame), socket.write / 'drain', TCP_NODELAY, and nothing else.
 *   bytes      The bare socket: pre-encoded frames (packed into ~64 KiB writes) and no
 *              parsing or decoding on the receiver; what loopback TCP moves in Node at all.
 *
 * The headline is transport / raw at batch 1000 against the 70% goal (printed, not asserted).
 */
import net from 'node:net'
import { once } from 'node:events'
import { encodeFrame, decodeEnvelope } from '../../src/protocol/codec.ts'
import { FrameParser } from '../../src/protocol/framing.ts'
import { createTcpTransport } from '../../src/transport/tcp/tcp-transport.ts'
import type { Envelope, EventBatchBody } from '../../src/protocol/messages.ts'
import {
  childMain,
  eventPayloads,
  fatal,
  fmtPct,
  isMain,
  modulePath,
  ratioAt,
  runsOf,
  runThroughputMatrix,
  throughputTable,
  yielder,
  type Benchmark,
  type BenchOptions,
  type BenchResult,
  type ChildContext,
  type Counters,
  type Side,
} from '../lib.ts'

const BATCHES = [1, 100, 1000]
const GOAL = 0.7
const HEADLINE_BATCH = 1000
const MAX_FRAME_BYTES = 8 * 1024 * 1024
const BYTES_WRITE = 64 * 1024

const CASES = [
  { id: 'transport', label: 'Shoal TCP transport' },
  { id: 'raw', label: 'raw socket, same codec (ceiling)' },
  { id: 'bytes', label: 'bare socket, no decode' },
] as const
type CaseId = (typeof CASES)[number]['id']

function timing(batch: number, quick: boolean): { warmupMs: number; durationMs: number } {
  // Batch 1 is one message per event: slow, and a second is plenty to see it.
  if (batch === 1) return quick ? { warmupMs: 300, durationMs: 500 } : { warmupMs: 500, durationMs: 1000 }
  return quick ? { warmupMs: 500, durationMs: 1000 } : { warmupMs: 1000, durationMs: 3000 }
}

// --- the sides ------------------------------------------------------------------------------------

function caseOf(ctx: ChildContext): { id: CaseId; batch: number } {
  return { id: ctx.params.case as CaseId, batch: ctx.params.batch as number }
}

/** The envelope both the raw case and (via send()) the transport put on the wire. */
function batchBody(batch: number, sequence: number, payload: Uint8Array): EventBatchBody {
  return { op: 'batch', partition: 0, epoch: 1, producerId: 'bench', sequence, count: batch, payload }
}

/** The one frame the bytes case repeats; sender and receiver build the same one. */
function bytesFrame(batch: number): Buffer {
  const payload = eventPayloads(batch, 1).payloads[0]!
  return encodeFrame(
    {
      v: 1,
      from: 'bench-tx',
      seq: 1,
      ts: 1_700_000_000_000,
      kind: 'event',
      body: batchBody(batch, 1, payload),
    },
    MAX_FRAME_BYTES,
  )
}

function countBatch(counters: Counters, env: Envelope): void {
  if (env.kind === 'event' && env.body.op === 'batch') {
    counters.events += env.body.count
    counters.bytes += env.body.payload.length
  }
}

async function listenRaw(onSocket: (s: net.Socket) => void): Promise<number> {
  const server = net.createServer((s) => {
    s.setNoDelay(true)
    onSocket(s)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return (server.address() as net.AddressInfo).port
}

async function receiver(ctx: ChildContext): Promise<Side> {
  const { id, batch } = caseOf(ctx)
  const counters: Counters = { events: 0, bytes: 0 }
  if (id === 'transport') {
    const transport = createTcpTransport({ nodeId: 'bench-rx', role: 'worker' })
    const listener = await transport.listen({ port: 0 }, (conn) => {
      void (async () => {
        for await (const env of conn) countBatch(counters, env)
      })().catch(() => {})
    })
    return { counters, port: listener.port }
  }
  if (id === 'raw') {
    const port = await listenRaw((s) => {
      const parser = new FrameParser(MAX_FRAME_BYTES, (payload) =>
        countBatch(counters, decodeEnvelope(payload)),
      )
      s.on('data', (chunk: Buffer) => parser.push(chunk))
      s.on('error', () => {})
    })
    return { counters, port }
  }
  const frameBytes = bytesFrame(batch).length
  let total = 0
  const port = await listenRaw((s) => {
    s.on('data', (chunk: Buffer) => {
      total += chunk.length
      counters.bytes = total
      counters.events = Math.floor(total / frameBytes) * batch
    })
    s.on('error', () => {})
  })
  return { counters, port }
}

async function sender(ctx: ChildContext): Promise<Side> {
  const { id, batch } = caseOf(ctx)
  const counters: Counters = { events: 0, bytes: 0 }
  const { payloads } = eventPayloads(batch)
  const maybeYield = yielder()
  if (id === 'transport') {
    const transport = createTcpTransport({ nodeId: 'bench-tx', role: 'client' })
    const conn = await transport.connect(`127.0.0.1:${ctx.port}`)
    void (async () => {
      for (let sequence = 0; ; sequence++) {
        const payload = payloads[sequence & 7]!
        if (!conn.send({ kind: 'event', body: batchBody(batch, sequence, payload) })) await conn.drain()
        counters.events += batch
        counters.bytes += payload.length
        const pause = maybeYield()
        if (pause !== undefined) await pause
      }
    })().catch(fatal('transport sender'))
    return { counters }
  }
  const socket = net.connect({ host: '127.0.0.1', port: ctx.port })
  await once(socket, 'connect')
  socket.setNoDelay(true)
  if (id === 'raw') {
    void (async () => {
      for (let sequence = 0, seq = 1; ; sequence++, seq++) {
        const payload = payloads[sequence & 7]!
        const frame = encodeFrame(
          {
            v: 1,
            from: 'bench-tx',
            seq,
            ts: Date.now(),
            kind: 'event',
            body: batchBody(batch, sequence, payload),
          },
          MAX_FRAME_BYTES,
        )
        if (!socket.write(frame)) await once(socket, 'drain')
        counters.events += batch
        counters.bytes += payload.length
        const pause = maybeYield()
        if (pause !== undefined) await pause
      }
    })().catch(fatal('raw sender'))
    return { counters }
  }
  const frame = bytesFrame(batch)
  const perWrite = Math.max(1, Math.floor(BYTES_WRITE / frame.length))
  const block = Buffer.concat(Array.from({ length: perWrite }, () => frame))
  void (async () => {
    for (;;) {
      if (!socket.write(block)) await once(socket, 'drain')
      counters.events += perWrite * batch
      counters.bytes += block.length
      const pause = maybeYield()
      if (pause !== undefined) await pause
    }
  })().catch(fatal('bytes sender'))
  return { counters }
}

// --- the benchmark --------------------------------------------------------------------------------

const benchmark: Benchmark = {
  name: 'tcp',
  description:
    'Shoal TCP transport vs the raw-socket ceiling (same framing and codec) and the bare socket, ' +
    'one way over loopback between two processes, batches of 1, 100 and 1000 events',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const runs = runsOf(opts)
    const bytesPerEvent = new Map(BATCHES.map((b) => [b, eventPayloads(b).bytesPerEvent]))
    const results = await runThroughputMatrix(
      {
        modulePath: modulePath(import.meta.url),
        cases: CASES,
        batches: BATCHES,
        runs,
        timing: (b) => timing(b, opts.quick),
        settle: opts.settle === true,
      },
      'tcp',
    )
    const table = throughputTable(results, {
      cases: CASES,
      baselineId: 'raw',
      bytesPerEvent: (b) => bytesPerEvent.get(b)!,
    })
    const ratios = BATCHES.map((b) => ({ batch: b, ...ratioAt(results, b, 'transport', 'raw') }))
    const head = ratios.find((r) => r.batch === HEADLINE_BATCH)!
    const t1000 = timing(HEADLINE_BATCH, opts.quick)
    return {
      tables: [table],
      headlines: [
        ...ratios.map((r) => ({
          label: `transport / raw ceiling at batch ${r.batch}`,
          value: runs > 1 ? `${fmtPct(r.ratio)} (runs ${fmtPct(r.min)}-${fmtPct(r.max)})` : fmtPct(r.ratio),
          ...(r.batch === HEADLINE_BATCH ? { goal: `>= ${fmtPct(GOAL)}`, pass: head.ratio >= GOAL } : {}),
        })),
      ],
      notes: [
        `${runs} run(s) per case, interleaved; warm-up ${t1000.warmupMs} ms, measured ${t1000.durationMs} ms ` +
          `on the receiver (batch 1: ${timing(1, opts.quick).durationMs} ms)`,
        `payload ${BATCHES.map((b) => `${bytesPerEvent.get(b)!.toFixed(1)}`).join(' / ')} B/event at batch ` +
          `${BATCHES.join(' / ')}; MB/s counts event payload bytes`,
      ],
      data: {
        goal: GOAL,
        headlineBatch: HEADLINE_BATCH,
        ratios,
        bytesPerEvent: Object.fromEntries(bytesPerEvent),
        results,
      },
    }
  },
}

export default benchmark

if (isMain(import.meta.url)) await childMain({ receiver, sender })
