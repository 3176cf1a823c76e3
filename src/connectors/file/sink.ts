/**
 * NdjsonFileSink: emitted records appended to a file, one JSON line each:
 *
 * ```
 * {"stream":"clicks","key":"user-1","partition":3,"event":{...},"offset":17,"index":0}
 * ```
 *
 * The first four fields are the format of the first NdjsonFileSink (before the Sink contract);
 * `offset` (null without a replay log) and `index` are the record's identity.
 *
 * At least once: a batch replayed after a crash appends its records again. Consumers that need
 * each record once dedupe on (partition, offset, index) when offset is not null.
 *
 * Each write call appends its lines with one positioned write and waits for it (optionally
 * fsync). A failed write (ENOSPC, EIO, ...) is SINK_UNAVAILABLE, so the runner retries; the file
 * is first truncated back to where the write started, so a half-written chunk leaves no torn
 * line. A record that cannot be serialized (BigInt, a cycle) is SINK_REJECTED. Dead letters go
 * to `PATH.dlq`, one JSON line each: the record's fields plus `error` and `attempts`.
 */
import { mkdir, open, type FileHandle } from 'node:fs/promises'
import { dirname } from 'node:path'
import { ErrorCodes, ShoalError } from '../../errors.ts'
import { LazyEmittedBatch, type DeadLetterRecord, type EmittedBatch, type Sink } from '../sink.ts'
import { lineBuffer, packedLines } from './lines.ts'
import type { FileSinkSpec } from '../spec.ts'

export interface NdjsonFileSinkOptions {
  /** fdatasync after every write: a written record survives a machine crash. @default false */
  fsync?: boolean
  /** @default `file:${path}` */
  name?: string
}

/** Errors that mean the path cannot be a file we append to: a startup error, not an outage. */
const SCHEMA_CODES = new Set(['EISDIR', 'ENOTDIR', 'EACCES', 'EPERM', 'EROFS', 'ENAMETOOLONG', 'ELOOP'])

function fsError(err: unknown, what: string, path: string): ShoalError {
  if (err instanceof ShoalError) return err
  const code = (err as NodeJS.ErrnoException).code ?? 'EUNKNOWN'
  const message = err instanceof Error ? err.message : String(err)
  return new ShoalError(ErrorCodes.SINK_UNAVAILABLE, `file sink ${path}: ${what} failed: ${message}`, {
    cause: err,
    retryable: true,
    data: { path, errno: code },
  })
}

class Appender {
  readonly path: string
  readonly #fsync: boolean
  #handle: FileHandle | undefined

  constructor(path: string, fsync: boolean) {
    this.path = path
    this.#fsync = fsync
  }

  async open(): Promise<FileHandle> {
    if (this.#handle !== undefined) return this.#handle
    await mkdir(dirname(this.path), { recursive: true })
    this.#handle = await open(this.path, 'a')
    return this.#handle
  }

  async append(text: string | Buffer): Promise<void> {
    let handle: FileHandle | undefined
    let start = -1
    try {
      handle = await this.open()
      start = (await handle.stat()).size
      const data = typeof text === 'string' ? Buffer.from(text) : text
      let done = 0
      while (done < data.length) {
        const { bytesWritten } = await handle.write(data, done, data.length - done)
        done += bytesWritten
      }
      if (this.#fsync) await handle.datasync()
    } catch (err) {
      // Undo a partial append so the retry does not leave a torn line behind it.
      if (handle !== undefined && start >= 0) await handle.truncate(start).catch(() => {})
      await this.close()
      throw fsError(err, 'append', this.path)
    }
  }

  async close(): Promise<void> {
    const h = this.#handle
    this.#handle = undefined
    await h?.close().catch(() => {})
  }
}

function line(fields: Record<string, unknown>): string {
  try {
    return `${JSON.stringify(fields)}\n`
  } catch (err) {
    throw new ShoalError(
      ErrorCodes.SINK_REJECTED,
      `record of stream ${JSON.stringify(fields.stream)} cannot be written as JSON: ${err instanceof Error ? err.message : String(err)}`,
      { cause: err },
    )
  }
}

/**
 * An emitted record's line: the same text as `line({ stream, key, partition, event, offset,
 * index })`, without that object: one allocation and one JSON.stringify call fewer per record,
 * which is most of what a busy sink of small records (window results) costs its worker.
 */
function eventLine(
  stream: string,
  key: string,
  partition: number,
  event: unknown,
  offset: number | null,
  index: number,
): string {
  let ev: string | undefined
  try {
    ev = JSON.stringify(event)
  } catch {
    return line({ stream, key, partition, event, offset, index }) // throws SINK_REJECTED
  }
  // JSON.stringify leaves out a property whose value it cannot write (undefined, a function).
  const evField = ev === undefined ? '' : `,"event":${ev}`
  return `{"stream":${JSON.stringify(stream)},"key":${JSON.stringify(key)},"partition":${JSON.stringify(partition)}${evField},"offset":${JSON.stringify(offset)},"index":${JSON.stringify(index)}}\n`
}

export class NdjsonFileSink implements Sink {
  readonly name: string
  readonly accepts = { events: true, state: false } as const
  readonly path: string
  readonly dlqPath: string
  readonly #out: Appender
  readonly #dlq: Appender

  constructor(spec: FileSinkSpec | string, options: NdjsonFileSinkOptions = {}) {
    this.path = typeof spec === 'string' ? spec : spec.path
    if (this.path === '') throw new ShoalError(ErrorCodes.INVALID_OPTION, 'file sink: path must not be empty')
    this.dlqPath = `${this.path}.dlq`
    this.name = options.name ?? `file:${this.path}`
    this.#out = new Appender(this.path, options.fsync ?? false)
    this.#dlq = new Appender(this.dlqPath, options.fsync ?? false)
  }

  async open(): Promise<void> {
    try {
      await this.#out.open()
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code !== undefined && SCHEMA_CODES.has(code)) {
        throw new ShoalError(
          ErrorCodes.SINK_SCHEMA,
          `file sink: cannot append to ${this.path}: ${(err as Error).message}`,
          { cause: err, data: { path: this.path, errno: code } },
        )
      }
      throw fsError(err, 'open', this.path)
    }
  }

  /**
   * Not async: the records are let go once their lines are made, not kept while the file is
   * written. Records the runner holds packed become lines straight from their bytes (lines.ts).
   */
  writeEvents(batches: readonly EmittedBatch[]): Promise<void> {
    const out = lineBuffer(16 * 1024)
    try {
      for (const b of batches) {
        if (
          b instanceof LazyEmittedBatch &&
          packedLines(out, b.payload, b.count, b.partition, b.offset, b.firstIndex)
        )
          continue
        const records = b.records
        for (let i = 0; i < records.length; i++) {
          const r = records[i]!
          const text = eventLine(r[0], r[1], b.partition, r[2], b.offset, b.firstIndex + i)
          const bytes = Buffer.byteLength(text)
          if (out.pos + bytes > out.buf.length) {
            const buf = Buffer.allocUnsafe(Math.max(out.buf.length * 2, out.pos + bytes + 1024))
            out.buf.copy(buf, 0, 0, out.pos)
            out.buf = buf
          }
          out.pos += out.buf.write(text, out.pos)
        }
      }
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)))
    }
    return out.pos === 0 ? Promise.resolve() : this.#out.append(out.buf.subarray(0, out.pos))
  }

  async deadLetter(records: readonly DeadLetterRecord[]): Promise<void> {
    let text = ''
    for (const r of records) {
      const [stream, key, event] = r.record
      const fields = { stream, key, partition: r.partition, offset: r.offset, index: r.index }
      let eventText: unknown = event
      try {
        JSON.stringify(event)
      } catch {
        // The dead letter must take what the file could not: keep a description instead.
        eventText = String(event)
      }
      text += line({ ...fields, event: eventText, error: r.error, attempts: r.attempts })
    }
    if (text !== '') await this.#dlq.append(text)
  }

  async close(): Promise<void> {
    await this.#out.close()
    await this.#dlq.close()
  }
}
