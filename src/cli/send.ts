/**
 * `shoal send [FILE|-]`: NDJSON events to the cluster. Each line is an object; its key is the
 * field named by --key-field (default "key"), stringified. A malformed line is reported with
 * its line number and the command exits non-zero; nothing is skipped silently. Exit 0 only
 * when every event was acknowledged. The line format is src/ingest/ndjson.ts's, as POST /events.
 *
 * The input is read in large chunks, each split and parsed in one go; the loop awaits only when
 * the client pushes back (send() returns false), not once per event. A line that is one flat
 * object is written into its batch from its text (src/ingest/json-event.ts); others are parsed.
 */
import { closeSync, createReadStream, fstatSync, openSync, readSync } from 'node:fs'
import { Socket } from 'node:net'
import { Readable, type Writable } from 'node:stream'
import type { ShoalClient } from '../client/client.ts'
import { JsonEventWriter } from '../ingest/json-event.ts'
import { NdjsonByteLines, decodeLine, parseNdjsonLine, type ByteLines } from '../ingest/ndjson.ts'

/** Reads of 1 MiB: fewer chunks, each split and parsed in one go. */
const READ_CHUNK_BYTES = 1 << 20

export interface SendOptions {
  input: Readable | FdInput | PipeInput
  keyField: string
  /** Stop at the first malformed line instead of sending the valid ones and failing at the end. */
  strict: boolean
  progress: Writable | null
  err: Writable
  out: Writable
}

export interface SendSummary {
  lines: number
  sent: number
  acked: number
  malformed: number
  failed: number
  seconds: number
  /** Batches the client sent (sent / batches: how well events were coalesced). */
  batches: number
}

/** A file descriptor to read from (a file named on the command line, or stdin). */
export interface FdInput {
  fd: number
}

/**
 * A pipe or socket: `stream` reads `fd` (a net.Socket on it: libuv made the descriptor
 * non-blocking, so readSync on `fd` returns what is there now or fails with EAGAIN).
 */
export interface PipeInput {
  fd: number
  stream: Readable
}

/** FILE, or stdin for `-` (or none). Throws if FILE cannot be opened. */
export function openInput(path: string | undefined): Readable | FdInput | PipeInput {
  if (path !== undefined && path !== '-') return { fd: openSync(path, 'r') }
  // stdin redirected from a file (`< events.ndjson`) is read like a named file; a pipe or a
  // socket (`cat FILE |`, a parent's stdio pipe) synchronously while it has data.
  let kind: 'file' | 'pipe' | 'other' = 'other'
  try {
    const st = fstatSync(0)
    kind = st.isFile() ? 'file' : st.isFIFO() || st.isSocket() ? 'pipe' : 'other'
  } catch {
    // No usable fd 0: process.stdin reports it as it did before.
  }
  if (kind === 'file') return { fd: 0 }
  const stdin = process.stdin
  // process.stdin on a pipe or socket is a net.Socket (libuv's pipe or tcp handle).
  return kind === 'pipe' && stdin instanceof Socket ? { fd: 0, stream: stdin } : stdin
}

/**
 * The input's lines, a chunk's worth at a time (one await per chunk, not per line).
 *
 * A regular file is read with readSync, so that between its chunks the event loop does not turn
 * and the client's batches keep filling until it pushes back, as in a loop of send() calls.
 * Read asynchronously (fs.createReadStream), every chunk cost a turn in which the acks that had
 * arrived sent each partition's open batch at once: 13 events per batch with 64 KiB reads, 71
 * with 1 MiB, against ~500 for the SDK loop, and the rate followed (docs/benchmarks.md, "shoal
 * send"). A read from the page cache takes well under a millisecond. A pipe or socket is read
 * the same way while it has data (pipeChunks); terminals and other streams chunk by chunk.
 */
async function* lineChunks(input: Readable | FdInput | PipeInput): AsyncGenerator<ByteLines> {
  const splitter = new NdjsonByteLines()
  if (input instanceof Readable) {
    for await (const chunk of input as AsyncIterable<Uint8Array | string>) {
      yield splitter.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk)
    }
  } else if ('stream' in input) {
    for await (const chunk of pipeChunks(input)) yield splitter.push(chunk)
  } else if (!fstatSync(input.fd).isFile()) {
    const stream = createReadStream('', { fd: input.fd, highWaterMark: READ_CHUNK_BYTES })
    for await (const chunk of stream as AsyncIterable<Buffer>) yield splitter.push(chunk)
  } else {
    const buf = Buffer.allocUnsafe(READ_CHUNK_BYTES)
    try {
      // Each chunk's lines are read before the next read, so the buffer is reused.
      for (;;) {
        const n = readSync(input.fd, buf, 0, buf.length, null)
        if (n === 0) break
        yield splitter.push(buf.subarray(0, n))
      }
    } finally {
      if (input.fd !== 0) closeSync(input.fd)
    }
  }
  yield splitter.end()
}

/**
 * A pipe's bytes in order: what the stream has buffered, then readSync until the pipe is empty,
 * and only then a wait (a turn of the event loop) for the stream's next data.
 *
 * Read as a stream, a pipe comes in 64 KiB chunks (its capacity), each in its own turn of the
 * event loop, in which the acks that had come back sent every partition's small open batch: 105
 * events per batch against ~500 for an SDK loop (docs/benchmarks.md, "shoal send"). While the
 * writer keeps up, this reads on without a turn, so batches fill as with a file; once the pipe
 * is empty it waits on the stream, so a slow writer's lines are sent as soon as they arrive.
 *
 * The stream and readSync read the same pipe, never at once (libuv reads only between turns):
 * the stream's buffer is emptied before every readSync, so nothing is reordered.
 */
async function* pipeChunks(input: PipeInput): AsyncGenerator<Uint8Array> {
  const { fd, stream } = input
  const buf = Buffer.allocUnsafe(READ_CHUNK_BYTES)
  let wake: (() => void) | null = null
  // Set by the listeners (an object, so that the loop's checks are not narrowed away).
  const seen: { ended: boolean; failed: Error | null } = { ended: false, failed: null }
  const onReadable = (): void => {
    const w = wake
    wake = null
    w?.()
  }
  const onEnd = (): void => {
    seen.ended = true
    onReadable()
  }
  const onError = (err: Error): void => {
    seen.failed = err
    onReadable()
  }
  stream.on('readable', onReadable).on('end', onEnd).on('error', onError)
  try {
    for (;;) {
      if (seen.failed !== null) throw seen.failed
      // The caller reads each chunk's lines before asking for the next, so `buf` is reused.
      for (let c = stream.read() as Buffer | null; c !== null; c = stream.read() as Buffer | null) yield c
      if (seen.ended) return
      const n = readNow(fd, buf)
      if (n === 0) return
      if (n > 0) yield buf.subarray(0, n)
      else await new Promise<void>((resolve) => (wake = resolve))
    }
  } finally {
    stream.off('readable', onReadable).off('end', onEnd).off('error', onError)
    stream.destroy()
  }
}

/** readSync on a non-blocking descriptor: bytes read, 0 at the end, -1 if nothing is there now. */
function readNow(fd: number, buf: Buffer): number {
  try {
    return readSync(fd, buf, 0, buf.length, null)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EAGAIN') return -1
    throw err
  }
}

export async function sendNdjson(client: ShoalClient, o: SendOptions): Promise<SendSummary> {
  const started = performance.now()
  let lines = 0
  let malformed = 0
  let lastProgress = 0
  const progress = (final = false): void => {
    if (o.progress === null) return
    const now = performance.now()
    if (!final && now - lastProgress < 200) return
    lastProgress = now
    const secs = (now - started) / 1000
    const rate = secs > 0 ? Math.round(client.stats.acked / secs) : 0
    o.progress.write(
      `\r\x1b[2Ksent ${client.stats.sent}  acked ${client.stats.acked}  ${rate} ev/s${waiting()}${final ? '\n' : ''}`,
    )
  }
  /** Why batches are being retried right now (a failover, a worker restoring), if they are. */
  const waiting = (): string => {
    const r = client.stats.lastRetry
    return r !== undefined && performance.now() - r.at < 2000 ? `  waiting: ${r.code} (${r.message})` : ''
  }
  // Keep saying where it stands and why it waits, also while a send blocks (a terminal gets the
  // progress line; otherwise a line every 5 s while batches are being retried).
  let lastReport = performance.now()
  const ticker = setInterval(() => {
    if (o.progress !== null) {
      progress()
      return
    }
    const why = waiting()
    if (why !== '' && performance.now() - lastReport >= 5000) {
      lastReport = performance.now()
      o.err.write(
        `acked ${client.stats.acked} of ${client.stats.sent}; still sending,${why.replace('  waiting:', '')}\n`,
      )
    }
  }, 1000)
  ticker.unref()
  // Most lines are written into the client's batches from their bytes; the rest are decoded
  // and parsed.
  const json = new JsonEventWriter(o.keyField)
  read: for await (const chunk of lineChunks(o.input)) {
    const { buf, count, starts, ends } = chunk
    for (let l = 0; l < count; l++) {
      lines++
      const start = starts[l]!
      const end = ends[l]!
      const key = json.scan(buf, start, end)
      if (key !== null) {
        const room = client.sendWritten(key, json)
        if (room === true) continue
        if (room === false) {
          await client.drain()
          continue
        }
      }
      const text = decodeLine(buf, start, end)
      const r = parseNdjsonLine(text, o.keyField)
      if (r === null) continue
      if (typeof r === 'string') {
        malformed++
        o.err.write(`line ${lines}: ${r}\n`)
        if (o.strict) break read
        continue
      }
      if (!client.send(r.key, r.event)) await client.drain()
    }
    progress()
  }
  let failed = 0
  try {
    await client.flush()
  } catch (err) {
    failed = client.stats.failed
    o.err.write(`error: ${(err as Error).message}\n`)
  } finally {
    clearInterval(ticker)
  }
  progress(true)
  return {
    lines,
    sent: client.stats.sent,
    acked: client.stats.acked,
    malformed,
    failed: failed === 0 ? client.stats.sent - client.stats.acked : failed,
    seconds: (performance.now() - started) / 1000,
    batches: client.stats.batches,
  }
}
