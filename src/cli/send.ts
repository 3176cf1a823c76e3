/**
 * `shoal send [FILE|-]`: NDJSON events to the cluster. Each line is an object; its key is the
 * field named by --key-field (default "key"), stringified. A malformed line is reported with
 * its line number and the command exits non-zero; nothing is skipped silently. Exit 0 only
 * when every event was acknowledged. The line format is src/ingest/ndjson.ts's, as POST /events.
 *
 * The input is read in large chunks, each split and parsed in one go; the loop awaits only when
 * the client pushes back (send() returns false), not once per event.
 */
import { closeSync, createReadStream, fstatSync, openSync, readSync } from 'node:fs'
import { Readable, type Writable } from 'node:stream'
import type { ShoalClient } from '../client/client.ts'
import { NdjsonLineSplitter, parseNdjsonLine } from '../ingest/ndjson.ts'

/** Reads of 1 MiB: fewer chunks, each split and parsed in one go. */
const READ_CHUNK_BYTES = 1 << 20

export interface SendOptions {
  input: Readable | FdInput
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

/** FILE, or stdin for `-` (or none). Throws if FILE cannot be opened. */
export function openInput(path: string | undefined): Readable | FdInput {
  if (path !== undefined && path !== '-') return { fd: openSync(path, 'r') }
  // stdin redirected from a file (`< events.ndjson`) is read like a named file.
  let isFile = false
  try {
    isFile = fstatSync(0).isFile()
  } catch {
    // No usable fd 0: process.stdin reports it as it did before.
  }
  return isFile ? { fd: 0 } : process.stdin
}

/**
 * The input's lines, a chunk's worth at a time (one await per chunk, not per line).
 *
 * A regular file is read with readSync, so that between its chunks the event loop does not turn
 * and the client's batches keep filling until it pushes back, as in a loop of send() calls.
 * Read asynchronously (fs.createReadStream), every chunk cost a turn in which the acks that had
 * arrived sent each partition's open batch at once: 13 events per batch with 64 KiB reads, 71
 * with 1 MiB, against ~500 for the SDK loop, and the rate followed (docs/benchmarks.md, "shoal
 * send"). A read from the page cache takes well under a millisecond. Pipes, terminals and
 * sockets are read as streams (a pipe's 64 KiB chunks come in bursts: ~95 events per batch).
 */
async function* lineChunks(input: Readable | FdInput): AsyncGenerator<string[]> {
  const splitter = new NdjsonLineSplitter()
  if (input instanceof Readable) {
    for await (const chunk of input as AsyncIterable<Uint8Array | string>) yield splitter.push(chunk)
  } else if (!fstatSync(input.fd).isFile()) {
    const stream = createReadStream('', { fd: input.fd, highWaterMark: READ_CHUNK_BYTES })
    for await (const chunk of stream as AsyncIterable<Buffer>) yield splitter.push(chunk)
  } else {
    const buf = Buffer.allocUnsafe(READ_CHUNK_BYTES)
    try {
      // The splitter decodes each chunk into a string at once, so the buffer is reused.
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
  read: for await (const chunk of lineChunks(o.input)) {
    for (const text of chunk) {
      lines++
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
