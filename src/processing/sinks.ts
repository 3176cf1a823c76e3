/**
 * Where emitted events go. A job's `ctx.emit(stream, event)` produces records; after the batch
 * that emitted them is applied, the worker hands them to its sinks and to live subscribers.
 * Delivery to sinks is at least once across failures (a replayed batch emits again); make
 * downstream consumers idempotent or key them by (stream, key, event id).
 */
import { createWriteStream, type WriteStream } from 'node:fs'

/** One emitted event: the stream it was emitted on, the key being processed, the event. */
export type EmittedRecord = readonly [stream: string, key: string, event: unknown]

export interface Sink {
  write(partition: number, records: readonly EmittedRecord[]): void | Promise<void>
  close(): Promise<void>
}

/** Keeps everything in memory, per stream; for tests and small jobs. */
export class MemorySink implements Sink {
  readonly records: { partition: number; stream: string; key: string; event: unknown }[] = []
  write(partition: number, records: readonly EmittedRecord[]): void {
    for (const [stream, key, event] of records) this.records.push({ partition, stream, key, event })
  }
  close(): Promise<void> {
    return Promise.resolve()
  }
}

/** Appends NDJSON lines `{"stream","key","partition","event"}` to a file. */
export class NdjsonFileSink implements Sink {
  readonly #out: WriteStream
  constructor(path: string) {
    this.#out = createWriteStream(path, { flags: 'a' })
  }
  write(partition: number, records: readonly EmittedRecord[]): Promise<void> | void {
    let chunk = ''
    for (const [stream, key, event] of records)
      chunk += JSON.stringify({ stream, key, partition, event }) + '\n'
    if (!this.#out.write(chunk)) return new Promise((resolve) => this.#out.once('drain', () => resolve()))
  }
  close(): Promise<void> {
    return new Promise((resolve) => this.#out.end(() => resolve()))
  }
}
