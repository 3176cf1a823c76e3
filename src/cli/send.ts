/**
 * `shoal send [FILE|-]`: NDJSON events to the cluster. Each line is an object; its key is the
 * field named by --key-field (default "key"), stringified. A malformed line is reported with
 * its line number and the command exits non-zero; nothing is skipped silently. Exit 0 only
 * when every event was acknowledged.
 */
import { createReadStream } from 'node:fs'
import { createInterface } from 'node:readline'
import type { Readable, Writable } from 'node:stream'
import type { ShoalClient } from '../client/client.ts'

export interface SendOptions {
  input: Readable
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
}

export function openInput(path: string | undefined): Readable {
  return path === undefined || path === '-' ? process.stdin : createReadStream(path)
}

export async function sendNdjson(client: ShoalClient, o: SendOptions): Promise<SendSummary> {
  const started = performance.now()
  const rl = createInterface({ input: o.input, crlfDelay: Infinity })
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
  for await (const line of rl) {
    lines++
    if (line.trim() === '') continue
    let event: unknown
    try {
      event = JSON.parse(line)
    } catch (err) {
      malformed++
      o.err.write(`line ${lines}: not valid JSON: ${(err as Error).message}\n`)
      if (o.strict) break
      continue
    }
    if (typeof event !== 'object' || event === null || Array.isArray(event)) {
      malformed++
      o.err.write(
        `line ${lines}: expected a JSON object, got ${Array.isArray(event) ? 'an array' : typeof event}\n`,
      )
      if (o.strict) break
      continue
    }
    const key = (event as Record<string, unknown>)[o.keyField]
    if (typeof key !== 'string' && typeof key !== 'number') {
      malformed++
      o.err.write(`line ${lines}: field "${o.keyField}" must be a string or number\n`)
      if (o.strict) break
      continue
    }
    await client.write(String(key), event)
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
  }
}
