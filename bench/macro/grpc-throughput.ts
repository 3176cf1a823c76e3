/**
 * gRPC transport throughput against the raw grpc-js bidi-stream ceiling, one way (client to
 * server), on loopback, sender and receiver in two child processes (bench/lib.ts measurePair).
 * The same workload as tcp-throughput.ts: pre-packed event-batch payloads, ~37 B per event.
 *
 *   transport  Shoal's gRPC transport: connection.send() / drain() on the dialer, the listener
 *              iterates the connection and counts body.count.
 *   raw        The grpc-js ceiling: one `shoal.v1.Shoal/Connect` bidi stream with the hand-built
 *              Frame codec (src/transport/grpc/proto.ts), encodeEnvelope per message on the
 *              client, decodeEnvelope per message on the server, call.write / 'drain'; default
 *              channel and server options (64 KiB HTTP/2 windows, 16 KiB frames). This is the
 *              'c2s bytes only, default' row of bench/macro/grpc-raw.ts, which explores windows,
 *              frame sizes and codecs further.
 *   raw-win    The same raw stream with the HTTP/2 settings the transport uses by default: the
 *              server's receive windows raised to flowControlWindowBytes (8 MiB) and 1 MiB
 *              frames (raiseServerReceiveWindow, the transport's own helper), the client's
 *              'grpc-node.flow_control_window' likewise. The fair ceiling for the transport.
 *   transport-64k  The transport with flowControlWindowBytes 65535 (Node's default windows):
 *              what the raised windows buy the transport.
 *
 * The headline is transport / raw-win at batch 1000 against the 80% goal (printed, not
 * asserted); transport / raw (default settings) is printed too.
 */
import { once } from 'node:events'
import * as grpc from '@grpc/grpc-js'
import { decodeEnvelope, encodeEnvelope } from '../../src/protocol/codec.ts'
import type { Envelope, EventBatchBody } from '../../src/protocol/messages.ts'
import {
  createGrpcTransport,
  DEFAULT_GRPC_TRANSPORT_OPTIONS,
  raiseServerReceiveWindow,
} from '../../src/transport/grpc/grpc-transport.ts'
import { CONNECT_METHOD_PATH, shoalServiceDefinition } from '../../src/transport/grpc/proto.ts'
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
const GOAL = 0.8
const HEADLINE_BATCH = 1000
/** The transport's default receive windows, which raw-win uses too. */
const WINDOW_BYTES = DEFAULT_GRPC_TRANSPORT_OPTIONS.flowControlWindowBytes
const DEFAULT_WINDOW_BYTES = 65_535

const CASES = [
  { id: 'transport', label: 'Shoal gRPC transport (8 MiB windows)' },
  { id: 'raw-win', label: 'raw grpc-js, 8 MiB windows (ceiling)' },
  { id: 'raw', label: 'raw grpc-js, default settings' },
  { id: 'transport-64k', label: 'Shoal gRPC transport, 64 KiB windows' },
] as const
type CaseId = (typeof CASES)[number]['id']

function timing(batch: number, quick: boolean): { warmupMs: number; durationMs: number } {
  if (batch === 1) return quick ? { warmupMs: 300, durationMs: 500 } : { warmupMs: 500, durationMs: 1000 }
  return quick ? { warmupMs: 500, durationMs: 1000 } : { warmupMs: 1000, durationMs: 3000 }
}

function caseOf(ctx: ChildContext): { id: CaseId; batch: number } {
  return { id: ctx.params.case as CaseId, batch: ctx.params.batch as number }
}

function batchBody(batch: number, sequence: number, payload: Uint8Array): EventBatchBody {
  return { op: 'batch', partition: 0, epoch: 1, producerId: 'bench', sequence, count: batch, payload }
}

function countBatch(counters: Counters, env: Envelope): void {
  if (env.kind === 'event' && env.body.op === 'batch') {
    counters.events += env.body.count
    counters.bytes += env.body.payload.length
  }
}

async function receiver(ctx: ChildContext): Promise<Side> {
  const { id } = caseOf(ctx)
  const counters: Counters = { events: 0, bytes: 0 }
  if (id === 'transport' || id === 'transport-64k') {
    const transport = createGrpcTransport({
      nodeId: 'bench-rx',
      role: 'worker',
      ...(id === 'transport-64k' ? { flowControlWindowBytes: DEFAULT_WINDOW_BYTES } : {}),
    })
    const listener = await transport.listen({ port: 0 }, (conn) => {
      void (async () => {
        for await (const env of conn) countBatch(counters, env)
      })().catch(() => {})
    })
    return { counters, port: listener.port }
  }
  const server = new grpc.Server()
  if (id === 'raw-win' && !raiseServerReceiveWindow(server, WINDOW_BYTES))
    throw new Error('raiseServerReceiveWindow: this grpc-js has no createHttp2Server to wrap')
  server.addService(shoalServiceDefinition, {
    Connect: (call: grpc.ServerDuplexStream<Uint8Array, Uint8Array>) => {
      call.on('error', () => {})
      call.on('end', () => call.end())
      call.on('data', (envelope: Uint8Array) => countBatch(counters, decodeEnvelope(envelope)))
    },
  })
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  )
  return { counters, port }
}

async function sender(ctx: ChildContext): Promise<Side> {
  const { id, batch } = caseOf(ctx)
  const counters: Counters = { events: 0, bytes: 0 }
  const { payloads } = eventPayloads(batch)
  const maybeYield = yielder()
  if (id === 'transport' || id === 'transport-64k') {
    const transport = createGrpcTransport({
      nodeId: 'bench-tx',
      role: 'client',
      ...(id === 'transport-64k' ? { flowControlWindowBytes: DEFAULT_WINDOW_BYTES } : {}),
    })
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
    })().catch(fatal('grpc transport sender'))
    return { counters }
  }
  const m = shoalServiceDefinition.Connect
  const client = new grpc.Client(`127.0.0.1:${ctx.port}`, grpc.credentials.createInsecure(), {
    'grpc.use_local_subchannel_pool': 1,
    ...(id === 'raw-win' ? { 'grpc-node.flow_control_window': WINDOW_BYTES } : {}),
  })
  const call = client.makeBidiStreamRequest<Uint8Array, Uint8Array>(
    CONNECT_METHOD_PATH,
    m.requestSerialize,
    m.responseDeserialize,
  )
  call.on('error', fatal('raw grpc call'))
  await new Promise<void>((resolve, reject) =>
    client.waitForReady(Date.now() + 5000, (err) => (err ? reject(err) : resolve())),
  )
  void (async () => {
    for (let sequence = 0, seq = 1; ; sequence++, seq++) {
      const payload = payloads[sequence & 7]!
      const envelope = encodeEnvelope({
        v: 1,
        from: 'bench-tx',
        seq,
        ts: Date.now(),
        kind: 'event',
        body: batchBody(batch, sequence, payload),
      })
      if (!call.write(envelope)) await once(call, 'drain')
      counters.events += batch
      counters.bytes += payload.length
      const pause = maybeYield()
      if (pause !== undefined) await pause
    }
  })().catch(fatal('raw grpc sender'))
  return { counters }
}

const benchmark: Benchmark = {
  name: 'grpc',
  description:
    'Shoal gRPC transport vs the raw grpc-js bidi-stream ceiling (same codec), one way over loopback ' +
    'between two processes, batches of 1, 100 and 1000 events',
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
      'grpc',
    )
    const ratios = BATCHES.map((b) => ({ batch: b, ...ratioAt(results, b, 'transport', 'raw-win') }))
    const vsDefault = BATCHES.map((b) => ({ batch: b, ...ratioAt(results, b, 'transport', 'raw') }))
    const sameWindows = BATCHES.map((b) => ({ batch: b, ...ratioAt(results, b, 'transport-64k', 'raw') }))
    const head = ratios.find((r) => r.batch === HEADLINE_BATCH)!
    const t = timing(HEADLINE_BATCH, opts.quick)
    const fmt = (r: { ratio: number; min: number; max: number }): string =>
      runs > 1 ? `${fmtPct(r.ratio)} (runs ${fmtPct(r.min)}-${fmtPct(r.max)})` : fmtPct(r.ratio)
    return {
      tables: [
        throughputTable(results, {
          cases: CASES,
          baselineId: 'raw-win',
          bytesPerEvent: (b) => bytesPerEvent.get(b)!,
        }),
      ],
      headlines: [
        ...ratios.map((r) => ({
          label: `grpc transport / raw grpc-js ceiling, both 8 MiB windows, at batch ${r.batch}`,
          value: fmt(r),
          ...(r.batch === HEADLINE_BATCH ? { goal: `>= ${fmtPct(GOAL)}`, pass: head.ratio >= GOAL } : {}),
        })),
        ...vsDefault.map((r) => ({
          label: `grpc transport / raw grpc-js with default settings at batch ${r.batch}`,
          value: fmt(r),
        })),
        ...sameWindows.map((r) => ({
          label: `grpc transport, 64 KiB windows / raw grpc-js with default settings at batch ${r.batch}`,
          value: fmt(r),
        })),
      ],
      notes: [
        `${runs} run(s) per case, interleaved; warm-up ${t.warmupMs} ms, measured ${t.durationMs} ms ` +
          `on the receiver (batch 1: ${timing(1, opts.quick).durationMs} ms)`,
        `'vs ceiling' is against raw grpc-js with the transport's HTTP/2 settings (server and client ` +
          `receive windows ${WINDOW_BYTES} B, server max frame 1 MiB); 'default settings' is 64 KiB ` +
          `windows and 16 KiB frames`,
      ],
      data: {
        goal: GOAL,
        headlineBatch: HEADLINE_BATCH,
        windowBytes: WINDOW_BYTES,
        ratios,
        vsDefault,
        sameWindows,
        bytesPerEvent: Object.fromEntries(bytesPerEvent),
        results,
      },
    }
  },
}

export default benchmark

if (isMain(import.meta.url)) await childMain({ receiver, sender })
