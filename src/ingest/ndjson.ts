/**
 * The NDJSON event format `shoal send` and `POST /events` read: a streaming line splitter over
 * bytes (NdjsonByteLines, for `shoal send`), the per-line parse both share (parseNdjsonLine) and
 * a whole-body read (readNdjson, for POST /events; parseNdjson gives its events as objects).
 *
 * - Lines end at `\n`, `\r\n` or a lone `\r` (as node's readline, which `shoal send` used, so
 *   line numbers are what they were). Numbering starts at 1; a final line ending does not start
 *   another line. A byte order mark at the very start of the input is ignored.
 * - A blank line (only whitespace) is skipped, but counted.
 * - Every other line is a JSON object whose field `keyField` (default "key") is a string or a
 *   number; the key is that value as a string, the event is the whole object (key included).
 * - parseNdjson is stricter than `shoal send` in one way: a line that is not valid UTF-8 is
 *   malformed (`shoal send` decodes it with U+FFFD for the bytes, silently).
 *
 * parseNdjson is all or nothing: any malformed line makes it throw {@link NdjsonError}, naming
 * the first `maxReportedErrors` malformed lines and counting all of them. It throws nothing
 * else, whatever the bytes.
 */
import { isUtf8 } from 'node:buffer'
import type { ShoalClient } from '../client/client.ts'
import { ErrorCodes, ShoalError } from '../errors.ts'
import { newBatchBuffer, type BatchBuffer } from '../client/encode.ts'
import { hashKey, hashKeyBytes, partitionOfHash } from '../protocol/partition.ts'
import { JsonEventWriter, PreparedEvent } from './json-event.ts'

export interface NdjsonEvent {
  key: string
  event: Record<string, unknown>
}

export interface ParsedNdjson {
  events: NdjsonEvent[]
  /** Lines seen, blank ones included. */
  lines: number
}

export interface NdjsonLineError {
  /** 1-based line number. */
  line: number
  error: string
}

export interface NdjsonParseOptions {
  /** The field holding the routing key. @default 'key' */
  keyField?: string
  /** Malformed lines named in the error; all are counted. @default 100 */
  maxReportedErrors?: number
}

export const DEFAULT_NDJSON_KEY_FIELD = 'key'
export const DEFAULT_MAX_REPORTED_ERRORS = 100
/** Longest error text per line (JSON.parse quotes part of the input). */
const MAX_ERROR_CHARS = 200

/** A body with malformed lines; nothing of it is to be applied. Code SHOAL_ERR_HTTP_BAD_REQUEST. */
export class NdjsonError extends ShoalError {
  /** The first malformed lines, in order (at most maxReportedErrors). */
  readonly lines: readonly NdjsonLineError[]
  /** Every malformed line, reported or not. */
  readonly malformed: number
  /** Lines in the body. */
  readonly totalLines: number

  constructor(lines: NdjsonLineError[], malformed: number, totalLines: number) {
    const first = lines[0]
    super(
      ErrorCodes.HTTP_BAD_REQUEST,
      `${malformed} of ${totalLines} lines ${malformed === 1 ? 'is' : 'are'} malformed` +
        (first === undefined ? '' : ` (first: line ${first.line}: ${first.error})`) +
        '; nothing was applied',
      { data: { lines, malformed, totalLines } },
    )
    this.lines = lines
    this.malformed = malformed
    this.totalLines = totalLines
  }
}

const LF = 0x0a
const CR = 0x0d

/** The lines a chunk completes: line i is buf[starts[i]..ends[i]), line endings excluded. */
export interface ByteLines {
  buf: Buffer
  count: number
  starts: Int32Array
  ends: Int32Array
}

/**
 * Splits a stream of NDJSON bytes into lines, chunk by chunk, as ranges of bytes, undecoded (for
 * JsonEventWriter, which reads an event from its bytes; a line it does not take is decoded with
 * decodeLine). A line cut across chunks is joined whole, so a character is never split.
 *
 * Hand-made rather than node's readline: readline (with `for await`, one turn of the event loop
 * per line) was most of `shoal send`'s own CPU (issue 13); here a chunk is split with the native
 * indexOf in one go and its lines are handled without an await each (docs/benchmarks.md,
 * "shoal send"). A push()'s lines are valid until the next push() (ranges and a buffer are reused), and may
 * lie in the chunk itself, so the caller reads them before it reuses the chunk.
 */
export class NdjsonByteLines {
  /** The unfinished line, copied (the caller reuses its chunks). */
  #rest: Buffer | null = null
  #skipLF = false
  #started = false
  #starts = new Int32Array(1024)
  #ends = new Int32Array(1024)

  push(chunk: Uint8Array): ByteLines {
    let buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length)
    if (this.#rest !== null) {
      buf = Buffer.concat([this.#rest, buf])
      this.#rest = null
    }
    return this.#split(buf, false)
  }

  /** Start a new input, keeping the arrays grown for the last one. */
  reset(): this {
    this.#rest = null
    this.#skipLF = false
    this.#started = false
    return this
  }

  /** The last line, if the input did not end with a line ending. */
  end(): ByteLines {
    const rest = this.#rest ?? Buffer.alloc(0)
    this.#rest = null
    return this.#split(rest, true)
  }

  #split(buf: Buffer, last: boolean): ByteLines {
    const n = buf.length
    let start = 0
    let count = 0
    if (n > 0) {
      if (!this.#started) {
        // The byte order mark, whole: a partial one at the end of a first chunk waits for more.
        if (n < 3 && !last && buf[0] === 0xef) {
          this.#rest = Buffer.from(buf)
          return this.#lines(buf, 0)
        }
        this.#started = true
        if (buf[0] === 0xef && buf[1] === 0xbb && buf[2] === 0xbf) start = 3
      }
      if (this.#skipLF) {
        this.#skipLF = false
        if (buf[start] === LF) start++
      }
    }
    if (buf.indexOf(CR, start) === -1) {
      for (let i = buf.indexOf(LF, start); i !== -1; i = buf.indexOf(LF, start)) {
        count = this.#add(count, start, i)
        start = i + 1
      }
    } else {
      for (let i = start; i < n; i++) {
        const c = buf[i]
        if (c !== LF && c !== CR) continue
        count = this.#add(count, start, i)
        if (c === CR) {
          if (i + 1 === n) this.#skipLF = true
          else if (buf[i + 1] === LF) i++
        }
        start = i + 1
      }
    }
    if (start < n) {
      if (last) count = this.#add(count, start, n)
      else this.#rest = Buffer.from(buf.subarray(start))
    }
    return this.#lines(buf, count)
  }

  #add(count: number, start: number, end: number): number {
    if (count === this.#starts.length) {
      const starts = new Int32Array(count * 2)
      const ends = new Int32Array(count * 2)
      starts.set(this.#starts)
      ends.set(this.#ends)
      this.#starts = starts
      this.#ends = ends
    }
    this.#starts[count] = start
    this.#ends[count] = end
    return count + 1
  }

  #lines(buf: Buffer, count: number): ByteLines {
    return { buf, count, starts: this.#starts, ends: this.#ends }
  }
}

const EMPTY_NAMES: string[] = []

const lineDecoder = new TextDecoder('utf-8', { ignoreBOM: true })

/** A line's text; bytes that are not UTF-8 become U+FFFD. */
export function decodeLine(buf: Uint8Array, start: number, end: number): string {
  return lineDecoder.decode(buf.subarray(start, end))
}

/**
 * One line's event; null for a blank line; otherwise why the line is malformed (the message
 * without the line number).
 */
export function parseNdjsonLine(text: string, keyField: string): NdjsonEvent | string | null {
  if (text.length === 0) return null
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    // Whitespace only is a blank line; checked only once JSON.parse has failed (rare).
    if (text.trim() === '') return null
    return `not valid JSON: ${err instanceof Error ? err.message : String(err)}`
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return `expected a JSON object, got ${Array.isArray(value) ? 'an array' : value === null ? 'null' : typeof value}`
  }
  const event = value as Record<string, unknown>
  const key = Object.hasOwn(event, keyField) ? event[keyField] : undefined
  if (typeof key === 'string') return { key, event }
  if (typeof key === 'number') return { key: String(key), event }
  return `field ${JSON.stringify(keyField)} must be a string or number`
}

/**
 * A body's per-event columns (readNdjson). Reused from body to body (`release()`): allocating
 * them, and a values buffer the size of the body, per request was a good part of the ingest
 * thread's GC (docs/benchmarks.md, "POST /events").
 */
interface Columns {
  /** Events the arrays hold. */
  capacity: number
  /** Event i's line is body[lineStart[i]..lineEnd[i]); -1 if it was parsed. */
  lineStart: Int32Array
  lineEnd: Int32Array
  /** Event i's values, written ahead: values[valueStart[i]..valueEnd[i]), key list names[i]. */
  valueStart: Int32Array
  valueEnd: Int32Array
  /** Event i's key is body[keyStart[i]..keyEnd[i]), or (keyStart -1) in keyText. */
  keyStart: Int32Array
  keyEnd: Int32Array
  /** Event i's partition, once partitions() computed them. */
  partition: Int32Array
  names: string[][]
  values: BatchBuffer
}

/** Columns kept for the next bodies; larger ones (a 64 MiB body's) are let go. */
const POOLED_COLUMNS = 8
const MAX_POOLED_EVENTS = 1 << 17
const MAX_POOLED_VALUE_BYTES = 16 << 20
const columnPool: Columns[] = []

function takeColumns(events: number, valueBytes: number): Columns {
  for (let i = columnPool.length - 1; i >= 0; i--) {
    const c = columnPool[i]!
    if (c.capacity < events || c.values.buf.length < valueBytes) continue
    columnPool.splice(i, 1)
    c.values.pos = 0
    return c
  }
  const capacity = Math.max(events, 1024)
  return {
    capacity,
    lineStart: new Int32Array(capacity),
    lineEnd: new Int32Array(capacity),
    valueStart: new Int32Array(capacity),
    valueEnd: new Int32Array(capacity),
    keyStart: new Int32Array(capacity),
    keyEnd: new Int32Array(capacity),
    partition: new Int32Array(capacity),
    names: [],
    values: newBatchBuffer(Math.max(valueBytes, 64 * 1024)),
  }
}

function returnColumns(c: Columns): void {
  if (c.capacity > MAX_POOLED_EVENTS || c.values.buf.length > MAX_POOLED_VALUE_BYTES) return
  if (columnPool.length === POOLED_COLUMNS) columnPool.shift()
  c.names.length = 0
  columnPool.push(c)
}

/**
 * A body's events in order, as readNdjson leaves them: most as the msgpack of their values,
 * written ahead from the line's bytes by JsonEventWriter, to be completed into the client's
 * batches (PreparedEvent), their keys as bytes of the body; the others parsed. Its memory is
 * reused once `release()` is called: nothing of it may be used after that.
 */
export class NdjsonEvents {
  readonly length: number
  /** Lines in the body, blank ones included. */
  readonly lines: number
  readonly #body: Buffer
  #cols: Columns | null
  /** Keys that are not bytes of the body (number keys, parsed lines), by event. */
  readonly #keyText: Map<number, string>
  readonly #parsed: Map<number, Record<string, unknown>>
  readonly #keyField: string
  readonly #prepared = new PreparedEvent()

  constructor(o: {
    body: Buffer
    length: number
    columns: Columns
    keyText: Map<number, string>
    parsed: Map<number, Record<string, unknown>>
    keyField: string
    lines: number
  }) {
    this.length = o.length
    this.lines = o.lines
    this.#body = o.body
    this.#cols = o.columns
    this.#keyText = o.keyText
    this.#parsed = o.parsed
    this.#keyField = o.keyField
  }

  #columns(): Columns {
    if (this.#cols === null) throw new Error('NdjsonEvents used after release()')
    return this.#cols
  }

  key(i: number): string {
    const c = this.#columns()
    const start = c.keyStart[i]!
    return start < 0 ? this.#keyText.get(i)! : this.#body.toString('latin1', start, c.keyEnd[i])
  }

  /**
   * Every event's partition in a cluster of `partitions` (valid until release()): the keys
   * hashed from their bytes, as partitionForKey hashes their text.
   */
  partitions(partitions: number): Int32Array {
    const c = this.#columns()
    const out = c.partition
    const body = this.#body
    for (let i = 0; i < this.length; i++) {
      const start = c.keyStart[i]!
      const hash = start < 0 ? hashKey(this.#keyText.get(i)!) : hashKeyBytes(body, start, c.keyEnd[i]!)
      out[i] = partitionOfHash(hash, partitions)
    }
    return out
  }

  /**
   * Queue event i on `client`, whose partition is `partition` (partitions()); what its send()
   * returns (false: wait for drain()).
   */
  sendTo(client: ShoalClient, i: number, partition: number): boolean {
    const c = this.#columns()
    const line = c.lineStart[i]!
    if (line < 0) return client.send(this.#keyText.get(i)!, this.#parsed.get(i))
    const keyStart = c.keyStart[i]!
    const room = client.sendWrittenTo(
      partition,
      this.#prepared.set(
        c.values.buf,
        c.valueStart[i]!,
        c.valueEnd[i]!,
        c.names[i]!,
        keyStart < 0 ? this.#keyText.get(i)! : null,
        this.#body,
        keyStart,
        c.keyEnd[i],
      ),
    )
    // null: the batch had no record id left; send it parsed.
    return room ?? client.send(this.key(i), this.#event(i))
  }

  /** Every event as {key, event}. */
  toArray(): NdjsonEvent[] {
    const out: NdjsonEvent[] = []
    for (let i = 0; i < this.length; i++) out.push({ key: this.key(i), event: this.#event(i) })
    return out
  }

  /** Done with these events: their columns go to the next body. Idempotent. */
  release(): void {
    const c = this.#cols
    this.#cols = null
    if (c !== null) returnColumns(c)
  }

  #event(i: number): Record<string, unknown> {
    const c = this.#columns()
    const start = c.lineStart[i]!
    if (start < 0) return this.#parsed.get(i)!
    const r = parseNdjsonLine(decodeLine(this.#body, start, c.lineEnd[i]!), this.#keyField)
    return (r as NdjsonEvent).event
  }
}

/** readNdjson's splitter: its line arrays grow to a body's lines once, not per body. */
const bodySplitter = new NdjsonByteLines()

/** Parse a whole NDJSON body; throws {@link NdjsonError} (and nothing else) if any line is malformed. */
export function parseNdjson(body: Uint8Array, options: NdjsonParseOptions = {}): ParsedNdjson {
  const events = readNdjson(body, options)
  const parsed = { events: events.toArray(), lines: events.lines }
  events.release()
  return parsed
}

/**
 * Read a whole NDJSON body; throws {@link NdjsonError} (and nothing else) if any line is
 * malformed. Lines that JsonEventWriter takes are checked and keyed, not parsed: their events
 * are written into the client's batches from the body's bytes when they are sent.
 */
export function readNdjson(body: Uint8Array, options: NdjsonParseOptions = {}): NdjsonEvents {
  const keyField = options.keyField ?? DEFAULT_NDJSON_KEY_FIELD
  const maxReported = Math.max(0, options.maxReportedErrors ?? DEFAULT_MAX_REPORTED_ERRORS)
  const errors: NdjsonLineError[] = []
  let malformed = 0
  const bad = (line: number, error: string): void => {
    malformed++
    if (errors.length < maxReported) {
      errors.push({
        line,
        error: error.length > MAX_ERROR_CHARS ? `${error.slice(0, MAX_ERROR_CHARS - 3)}...` : error,
      })
    }
  }
  // Validated whole (simdutf: ~1/100 of the decode); only a body with invalid UTF-8 is decoded
  // line by line, to name the lines. A fatal TextDecoder call per line, and even one per body,
  // cost more than the JSON.parse of its lines.
  if (!isUtf8(body)) {
    const total = reportInvalidUtf8(body, keyField, bad)
    throw new NdjsonError(errors, malformed, total)
  }
  const splitter = bodySplitter.reset()
  const writer = new JsonEventWriter(keyField)
  const keyText = new Map<number, string>()
  const parsed = new Map<number, Record<string, unknown>>()
  const lines = splitter.push(body)
  // Values take about as many bytes as their text.
  const cols = takeColumns(lines.count + 1, body.length + 1024)
  const values = cols.values
  let e = 0
  let line = 0
  const take = (lines: ByteLines, fast: boolean): void => {
    const b = lines.buf
    for (let l = 0; l < lines.count; l++) {
      line++
      const start = lines.starts[l]!
      const end = lines.ends[l]!
      if (fast && writer.scan(b, start, end, false) !== null) {
        cols.lineStart[e] = start
        cols.lineEnd[e] = end
        cols.valueStart[e] = values.pos
        writer.writeValues(values)
        cols.valueEnd[e] = values.pos
        cols.names[e] = writer.names
        const keyStart = writer.keyStart
        cols.keyStart[e] = keyStart
        cols.keyEnd[e] = writer.keyEnd
        if (keyStart < 0) keyText.set(e, writer.keyText())
        e++
        continue
      }
      const r = parseNdjsonLine(decodeLine(b, start, end), keyField)
      if (r === null) continue
      if (typeof r === 'string') {
        bad(line, r)
        continue
      }
      cols.lineStart[e] = -1
      cols.keyStart[e] = -1
      parsed.set(e, r.event)
      keyText.set(e, r.key)
      cols.names[e] = EMPTY_NAMES
      e++
    }
  }
  take(lines, true)
  // The last line of a body without a final line ending is a copy, not in the body: parsed.
  take(splitter.end(), false)
  if (malformed > 0) {
    returnColumns(cols)
    throw new NdjsonError(errors, malformed, line)
  }
  return new NdjsonEvents({
    body: lines.buf,
    length: e,
    columns: cols,
    keyText,
    parsed,
    keyField,
    lines: line,
  })
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

/** Report the malformed lines of a body that is not valid UTF-8, each line decoded on its own; returns the line count. */
function reportInvalidUtf8(
  body: Uint8Array,
  keyField: string,
  bad: (line: number, error: string) => void,
): number {
  const n = body.length
  let line = 0
  let start = body[0] === 0xef && body[1] === 0xbb && body[2] === 0xbf ? 3 : 0
  while (start < n) {
    let end = start
    while (end < n && body[end] !== LF && body[end] !== CR) end++
    line++
    let r: NdjsonEvent | string | null
    try {
      r = parseNdjsonLine(utf8.decode(body.subarray(start, end)), keyField)
    } catch {
      r = 'not valid UTF-8'
    }
    if (typeof r === 'string') bad(line, r)
    // One line ending: \r\n, \n or \r.
    start = end < n && body[end] === CR && body[end + 1] === LF ? end + 2 : end + 1
  }
  return line
}
