/**
 * The raw @grpc/grpc-js ceiling for Shoal's gRPC transport: one `shoal.v1.Shoal/Connect`
 * bidirectional stream on loopback between two processes, no Shoal transport code in between.
 *
 *   node --import tsx bench/macro/grpc-raw.ts
 *
 * Each message is what the real transport will send: a Frame (hand-built codec,
 * src/transport/grpc/proto.ts) holding an Event-batch envelope (src/protocol/codec.ts) whose
 * payload is ONE msgpackr blob of BATCH events (~37 bytes each), packed per batch on the sender
 * with `new Packr({ useRecords: true })` and unpacked on the receiver. Event objects are made
 * once up front (a source would already have them); packing, framing, HTTP/2, deframing,
 * envelope validation and unpacking are all measured ('full' rows). 'bytes only' rows send one
 * pre-packed batch over and over and skip the unpack: what grpc-js itself can move.
 *
 * Throughput is measured one way, on the receiver, between two marker envelopes the sender
 * puts into the stream after WARMUP_MS and WARMUP_MS + DURATION_MS, so the figure is what was
 * delivered and decoded, not what was queued. The sender respects write() returning false and
 * waits for 'drain'. CPU columns are process CPU time / wall time over the measured window.
 *
 * Knobs (environment): DURATION_MS (3000), WARMUP_MS (1000), BATCH (1000), WINDOW_BYTES
 * (16 MiB, for the raised-window rows), RUNS (1; the median run is shown with the range),
 * ONLY (substring filter on row names).
 *
 * Rows:
 *   c2s / s2c                        client -> server / server -> client
 *   client flow_control_window       channel option 'grpc-node.flow_control_window' = WINDOW_BYTES:
 *                                    the CLIENT's receive windows (SETTINGS_INITIAL_WINDOW_SIZE
 *                                    and the connection window), i.e. it speeds up s2c only
 *   server window (patched)          the SERVER's receive windows raised the same way. grpc-js
 *                                    1.14 has no server option for it, so the server child wraps
 *                                    http2.createServer (bench only) to show what one would buy
 *   1 MiB frames (patched)           the server also advertises SETTINGS_MAX_FRAME_SIZE 1 MiB, so
 *                                    the client sends one DATA frame per message instead of 16 KiB ones
 *   proto-loader codec               protobufjs (de)serializers instead of the hand-built ones
 */
import { spawn, type ChildProcess } from 'node:child_process'
import http2 from 'node:http2'
import { once } from 'node:events'
import { cpus, loadavg as osLoadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import { Packr, Unpackr } from 'msgpackr'
import { decodeEnvelope, encodeEnvelope } from '../../src/protocol/codec.ts'
import type { Envelope } from '../../src/protocol/messages.ts'
import {
  CONNECT_METHOD_PATH,
  loadShoalServiceDefinition,
  shoalServiceDefinition,
} from '../../src/transport/grpc/proto.ts'

const DURATION_MS = Number(process.env.DURATION_MS ?? 3000)
const WARMUP_MS = Number(process.env.WARMUP_MS ?? 1000)
const BATCH = Number(process.env.BATCH ?? 1000)
const WINDOW_BYTES = Number(process.env.WINDOW_BYTES ?? 16 * 1024 * 1024)
const ONLY = process.env.ONLY ?? ''
const RUNS = Math.max(1, Number(process.env.RUNS ?? 1))

// --- codecs ---------------------------------------------------------------------------------

type Codec = 'hand' | 'protoloader'

interface ConnectCodec {
  serialize: (envelope: Uint8Array) => Buffer
  deserialize: (buf: Buffer) => Uint8Array
}

function connectCodec(codec: Codec): ConnectCodec {
  if (codec === 'hand') {
    const m = shoalServiceDefinition.Connect
    return { serialize: m.requestSerialize, deserialize: m.requestDeserialize }
  }
  const m = loadShoalServiceDefinition()['Connect']!
  return {
    serialize: (envelope) => m.requestSerialize({ envelope }),
    deserialize: (buf) => (m.requestDeserialize(buf) as { envelope: Buffer }).envelope,
  }
}

/** A service definition with the chosen codec (requests and responses are both Frames). */
function serviceWith(codec: Codec): grpc.ServiceDefinition {
  const c = connectCodec(codec)
  return {
    Connect: {
      path: CONNECT_METHOD_PATH,
      requestStream: true,
      responseStream: true,
      requestSerialize: c.serialize,
      requestDeserialize: c.deserialize,
      responseSerialize: c.serialize,
      responseDeserialize: c.deserialize,
    },
  }
}

// --- bench protocol -------------------------------------------------------------------------
// Markers and commands are Control envelopes (op 'drain', a `bench` field): they travel in the
// same ordered stream as the batches, so "events between the marks" is exact.

/**
 * 'full': pack every batch on the sender, unpack it on the receiver (the real data path).
 * 'bytes': send one pre-packed batch over and over and skip unpacking (envelope validation
 * stays): what grpc-js itself can move.
 */
type Mode = 'full' | 'bytes'

type BenchMsg =
  | { bench: 'start' }
  | { bench: 'stop'; senderCpuPct: number }
  | { bench: 'send'; durationMs: number; warmupMs: number; mode: Mode }
  | { bench: 'result'; result: Measured }

interface Measured {
  events: number
  bytes: number
  ms: number
  receiverCpuPct: number
  senderCpuPct: number
}

let seq = 0
function controlEnvelope(msg: BenchMsg): Uint8Array {
  return encodeEnvelope({
    v: 1,
    from: 'bench',
    seq: seq++,
    ts: Date.now(),
    kind: 'control',
    body: { op: 'drain', ...msg },
  })
}

function makeEventPools(): Record<string, unknown>[][] {
  const pools: Record<string, unknown>[][] = []
  for (let p = 0; p < 8; p++) {
    const events: Record<string, unknown>[] = []
    for (let i = 0; i < BATCH; i++) {
      const n = p * BATCH + i
      events.push({
        key: `user-${String(n % 100_000).padStart(6, '0')}`,
        value: n * 0.25 + 0.1,
        ts: 1_700_000_000_000 + n,
        type: 'click',
      })
    }
    pools.push(events)
  }
  return pools
}

/** Send batches as fast as the stream accepts them, with start/stop marks; respects backpressure. */
async function pump(
  out: grpc.ClientDuplexStream<Uint8Array, Uint8Array> | grpc.ServerDuplexStream<Uint8Array, Uint8Array>,
  warmupMs: number,
  durationMs: number,
  mode: Mode,
): Promise<void> {
  const packr = new Packr({ useRecords: true })
  const pools = makeEventPools()
  const prepacked = packr.pack(pools[0]!)
  const t0 = performance.now()
  let phase: 'warmup' | 'measure' = 'warmup'
  let cpu0 = process.cpuUsage()
  let m0 = 0
  let sequence = 0
  for (;;) {
    const now = performance.now()
    if (phase === 'warmup' && now - t0 >= warmupMs) {
      phase = 'measure'
      cpu0 = process.cpuUsage()
      m0 = now
      if (!out.write(controlEnvelope({ bench: 'start' }))) await once(out, 'drain')
      continue
    }
    if (phase === 'measure' && now - m0 >= durationMs) {
      const cpu = process.cpuUsage(cpu0)
      const senderCpuPct = ((cpu.user + cpu.system) / 1000 / (now - m0)) * 100
      if (!out.write(controlEnvelope({ bench: 'stop', senderCpuPct }))) await once(out, 'drain')
      return
    }
    const events = pools[sequence % pools.length]!
    const payload = mode === 'full' ? packr.pack(events) : prepacked
    const env: Envelope = {
      v: 1,
      from: 'bench',
      seq: seq++,
      ts: Date.now(),
      kind: 'event',
      body: {
        op: 'batch',
        partition: 0,
        epoch: 1,
        producerId: 'bench',
        sequence: sequence++,
        count: events.length,
        payload,
      },
    }
    if (!out.write(encodeEnvelope(env))) await once(out, 'drain')
  }
}

/** Receive side: validate each envelope, unpack each batch, count between the marks. */
function receiver(
  mode: Mode,
  onMark: (msg: BenchMsg, measured: Measured | undefined) => void,
): (envelope: Uint8Array) => void {
  const unpackr = new Unpackr({ useRecords: true })
  let counting = false
  let events = 0
  let bytes = 0
  let t0 = 0
  let cpu0 = process.cpuUsage()
  return (envelope) => {
    const env = decodeEnvelope(envelope)
    if (env.kind === 'event' && env.body.op === 'batch') {
      if (mode === 'full') {
        const batch = unpackr.unpack(env.body.payload) as unknown[]
        if (batch.length !== env.body.count)
          throw new Error(`batch of ${batch.length} events, header says ${env.body.count}`)
      }
      if (counting) {
        events += env.body.count
        bytes += envelope.length
      }
      return
    }
    if (env.kind !== 'control') return
    const msg = env.body as unknown as BenchMsg
    if (msg.bench === 'start') {
      counting = true
      t0 = performance.now()
      cpu0 = process.cpuUsage()
      onMark(msg, undefined)
    } else if (msg.bench === 'stop') {
      counting = false
      const ms = performance.now() - t0
      const cpu = process.cpuUsage(cpu0)
      const receiverCpuPct = ((cpu.user + cpu.system) / 1000 / ms) * 100
      onMark(msg, { events, bytes, ms, receiverCpuPct, senderCpuPct: msg.senderCpuPct })
    } else {
      onMark(msg, undefined)
    }
  }
}

// --- server child ---------------------------------------------------------------------------

async function runServer(): Promise<void> {
  const codec = (process.env.BENCH_CODEC ?? 'hand') as Codec
  const mode = (process.env.BENCH_MODE ?? 'full') as Mode
  const window = Number(process.env.BENCH_SERVER_WINDOW ?? 0)
  const maxFrame = Number(process.env.BENCH_SERVER_MAX_FRAME ?? 0)
  if (window > 0 || maxFrame > 0) patchHttp2Server(window, maxFrame)

  const server = new grpc.Server()
  server.addService(serviceWith(codec), {
    Connect: (call: grpc.ServerDuplexStream<Uint8Array, Uint8Array>) => {
      call.on('error', () => {})
      call.on('end', () => call.end())
      call.on(
        'data',
        receiver(mode, (msg, measured) => {
          if (msg.bench === 'stop' && measured)
            call.write(controlEnvelope({ bench: 'result', result: measured }))
          if (msg.bench === 'send') {
            pump(call, msg.warmupMs, msg.durationMs, msg.mode).catch((err: unknown) => {
              console.error('server pump failed', err)
              process.exit(1)
            })
          }
        }),
      )
    },
  })
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  )
  process.stdout.write(`PORT ${port}\n`)
  process.on('SIGTERM', () => server.forceShutdown())
}

/**
 * Bench-only: grpc-js 1.14 gives servers no flow-control or frame-size option, so wrap
 * http2.createServer (grpc-js calls it through the shared module object) to advertise a larger
 * stream window and max frame size, and to open the connection window on every session.
 */
function patchHttp2Server(window: number, maxFrame: number): void {
  const original = http2.createServer.bind(http2) as (options: http2.ServerOptions) => http2.Http2Server
  const patched = (options: http2.ServerOptions = {}): http2.Http2Server => {
    const settings: http2.Settings = { ...options.settings }
    if (window > 0) settings.initialWindowSize = window
    if (maxFrame > 0) settings.maxFrameSize = maxFrame
    const server = original({ ...options, settings })
    if (window > 0) {
      server.on('session', (session: http2.ServerHttp2Session) => session.setLocalWindowSize(window))
    }
    return server
  }
  ;(http2 as unknown as { createServer: typeof patched }).createServer = patched
}

// --- client (parent) ------------------------------------------------------------------------

interface Variant {
  name: string
  direction: 'c2s' | 's2c'
  mode: Mode
  codec: Codec
  clientOptions: grpc.ChannelOptions
  serverEnv: Record<string, string>
}

async function startServerChild(env: Record<string, string>): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--server'], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let out = ''
  child.stdout.setEncoding('utf8')
  const port = await new Promise<number>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`server exited early (${code})`)))
    child.stdout.on('data', (d: string) => {
      out += d
      const m = /PORT (\d+)/.exec(out)
      if (m) resolve(Number(m[1]))
    })
  })
  return { child, port }
}

async function runVariant(v: Variant): Promise<Measured> {
  const { child, port } = await startServerChild({ ...v.serverEnv, BENCH_MODE: v.mode, BENCH_CODEC: v.codec })
  try {
    const codec = connectCodec(v.codec)
    const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
      'grpc.use_local_subchannel_pool': 1,
      ...v.clientOptions,
    })
    const call = client.makeBidiStreamRequest<Uint8Array, Uint8Array>(
      CONNECT_METHOD_PATH,
      codec.serialize,
      codec.deserialize,
    )
    const result = new Promise<Measured>((resolve, reject) => {
      call.on('error', reject)
      call.on(
        'data',
        receiver(v.mode, (msg, measured) => {
          if (msg.bench === 'result') resolve(msg.result)
          else if (msg.bench === 'stop' && measured) resolve(measured)
        }),
      )
    })
    if (v.direction === 'c2s') await pump(call, WARMUP_MS, DURATION_MS, v.mode)
    else
      call.write(
        controlEnvelope({ bench: 'send', warmupMs: WARMUP_MS, durationMs: DURATION_MS, mode: v.mode }),
      )
    const measured = await result
    call.end()
    await once(call, 'status').catch(() => undefined)
    client.close()
    return measured
  } finally {
    child.kill('SIGTERM')
    if (child.exitCode === null) await once(child, 'exit')
  }
}

function baselineMsgpackr(): { packPerSec: number; unpackPerSec: number; bytesPerEvent: number } {
  const packr = new Packr({ useRecords: true })
  const unpackr = new Unpackr({ useRecords: true })
  const pools = makeEventPools()
  const packed = pools.map((p) => packr.pack(p))
  const bytesPerEvent = packed.reduce((a, b) => a + b.length, 0) / (pools.length * BATCH)
  const time = (fn: (i: number) => void): number => {
    let n = 0
    const t0 = performance.now()
    while (performance.now() - t0 < 1000) fn(n++)
    return (n * BATCH) / ((performance.now() - t0) / 1000)
  }
  time((i) => void packr.pack(pools[i % pools.length]!)) // warm-up
  const packPerSec = time((i) => void packr.pack(pools[i % pools.length]!))
  time((i) => void unpackr.unpack(packed[i % packed.length]!))
  const unpackPerSec = time((i) => void unpackr.unpack(packed[i % packed.length]!))
  return { packPerSec, unpackPerSec, bytesPerEvent }
}

function variants(): Variant[] {
  const big: grpc.ChannelOptions = { 'grpc-node.flow_control_window': WINDOW_BYTES }
  const serverWin = { BENCH_SERVER_WINDOW: String(WINDOW_BYTES) }
  const bigFrames = { ...serverWin, BENCH_SERVER_MAX_FRAME: String(1024 * 1024) }
  const v = (
    name: string,
    direction: Variant['direction'],
    mode: Mode,
    clientOptions: grpc.ChannelOptions = {},
    serverEnv: Record<string, string> = {},
    codec: Codec = 'hand',
  ): Variant => ({ name, direction, mode, codec, clientOptions, serverEnv })
  return [
    v('c2s default', 'c2s', 'full'),
    v('c2s client flow_control_window', 'c2s', 'full', big),
    v('c2s + server window (patched)', 'c2s', 'full', big, serverWin),
    v('c2s + server window + 1 MiB frames (patched)', 'c2s', 'full', big, bigFrames),
    v('c2s default, proto-loader codec', 'c2s', 'full', {}, {}, 'protoloader'),
    v('s2c default', 's2c', 'full'),
    v('s2c client flow_control_window', 's2c', 'full', big),
    v('c2s bytes only, default', 'c2s', 'bytes'),
    v('c2s bytes only, server window (patched)', 'c2s', 'bytes', big, serverWin),
    v('c2s bytes only, + 1 MiB frames (patched)', 'c2s', 'bytes', big, bigFrames),
    v('s2c bytes only, default', 's2c', 'bytes'),
    v('s2c bytes only, client flow_control_window', 's2c', 'bytes', big),
  ].filter((x) => x.name.includes(ONLY))
}

async function main(): Promise<void> {
  const base = baselineMsgpackr()
  console.log(
    `node ${process.version}, ${cpus().length} x ${cpus()[0]?.model ?? '?'}, loadavg ${loadavg()}, ` +
      `@grpc/grpc-js loopback, one Connect stream, ${RUNS} run(s) per row (median; range of events/s)`,
  )
  console.log(
    `batch ${BATCH} events, ${base.bytesPerEvent.toFixed(1)} B/event packed; warm-up ${WARMUP_MS} ms, ` +
      `measured ${DURATION_MS} ms on the receiver; raised windows ${WINDOW_BYTES} B`,
  )
  console.log(
    `msgpackr alone (one thread): pack ${fmtRate(base.packPerSec)} ev/s, unpack ${fmtRate(base.unpackPerSec)} ev/s`,
  )
  console.log('')
  const header = ['variant', 'events/s', 'range', 'MB/s', 'batches/s', 'send CPU', 'recv CPU']
  printRow(header)
  for (const v of variants()) {
    const runs: Measured[] = []
    for (let i = 0; i < RUNS; i++) runs.push(await runVariant(v))
    const rate = (m: Measured): number => m.events / (m.ms / 1000)
    runs.sort((a, b) => rate(a) - rate(b))
    const m = runs[Math.floor(runs.length / 2)]!
    const s = m.ms / 1000
    printRow([
      v.name,
      fmtRate(m.events / s),
      runs.length > 1 ? `${fmtRate(rate(runs[0]!))}-${fmtRate(rate(runs[runs.length - 1]!))}` : '',
      (m.bytes / s / 1e6).toFixed(1),
      (m.events / BATCH / s).toFixed(0),
      `${m.senderCpuPct.toFixed(0)}%`,
      `${m.receiverCpuPct.toFixed(0)}%`,
    ])
  }
  console.log(`loadavg at the end ${loadavg()}`)
}

function loadavg(): string {
  return osLoadavg()
    .map((x) => x.toFixed(2))
    .join(' ')
}

function fmtRate(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`
  if (n >= 1e3) return `${(n / 1e3).toFixed(0)}k`
  return n.toFixed(0)
}

const WIDTHS = [44, 9, 12, 7, 10, 9, 9]
function printRow(cells: string[]): void {
  console.log(cells.map((c, i) => (i === 0 ? c.padEnd(WIDTHS[i]!) : c.padStart(WIDTHS[i]!))).join(' '))
}

if (process.argv.includes('--server')) {
  await runServer()
} else {
  await main()
}
