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
import { newBatchBuffer } from '../client/encode.ts'
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
 * A body's events in order, as readNdjson leaves them: most as the msgpack of their values,
 * written ahead from the line's bytes by JsonEventWriter, to be completed into the client's
 * batches (PreparedEvent); the others parsed.
 */
export class NdjsonEvents {
  readonly length: number
  /** Lines in the body, blank ones included. */
  readonly lines: number
  readonly #body: Buffer
  readonly #keys: string[]
  /** Event i's line is body[lineStart[i]..lineEnd[i]); -1 if it was parsed (#parsed). */
  readonly #lineStart: Int32Array
  readonly #lineEnd: Int32Array
  /** Event i's values, written ahead: values[valueStart[i]..valueEnd[i]), key list names[i]. */
  readonly #values: Buffer
  readonly #valueStart: Int32Array
  readonly #valueEnd: Int32Array
  readonly #names: string[][]
  readonly #parsed: Map<number, Record<string, unknown>>
  readonly #keyField: string
  readonly #prepared = new PreparedEvent()

  constructor(o: {
    body: Buffer
    keys: string[]
    lineStart: Int32Array
    lineEnd: Int32Array
    values: Buffer
    valueStart: Int32Array
    valueEnd: Int32Array
    names: string[][]
    parsed: Map<number, Record<string, unknown>>
    keyField: string
    lines: number
  }) {
    this.length = o.keys.length
    this.lines = o.lines
    this.#body = o.body
    this.#keys = o.keys
    this.#lineStart = o.lineStart
    this.#lineEnd = o.lineEnd
    this.#values = o.values
    this.#valueStart = o.valueStart
    this.#valueEnd = o.valueEnd
    this.#names = o.names
    this.#parsed = o.parsed
    this.#keyField = o.keyField
  }

  key(i: number): string {
    return this.#keys[i]!
  }

  /** Queue event i on `client`; what its send() returns (false: wait for drain()). */
  sendTo(client: ShoalClient, i: number): boolean {
    const key = this.#keys[i]!
    if (this.#lineStart[i]! < 0) return client.send(key, this.#parsed.get(i))
    const room = client.sendWritten(
      key,
      this.#prepared.set(this.#values, this.#valueStart[i]!, this.#valueEnd[i]!, this.#names[i]!),
    )
    // null: the batch had no record id left; send it parsed.
    return room ?? client.send(key, this.#event(i))
  }

  /** Every event as {key, event}. */
  toArray(): NdjsonEvent[] {
    const out: NdjsonEvent[] = []
    for (let i = 0; i < this.length; i++) out.push({ key: this.#keys[i]!, event: this.#event(i) })
    return out
  }

  #event(i: number): Record<string, unknown> {
    const start = this.#lineStart[i]!
    if (start < 0) return this.#parsed.get(i)!
    const r = parseNdjsonLine(decodeLine(this.#body, start, this.#lineEnd[i]!), this.#keyField)
    return (r as NdjsonEvent).event
  }
}

/** Parse a whole NDJSON body; throws {@link NdjsonError} (and nothing else) if any line is malformed. */
export function parseNdjson(body: Uint8Array, options: NdjsonParseOptions = {}): ParsedNdjson {
  const events = readNdjson(body, options)
  return { events: events.toArray(), lines: events.lines }
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
  const splitter = new NdjsonByteLines()
  const writer = new JsonEventWriter(keyField)
  const keys: string[] = []
  const names: string[][] = []
  const parsed = new Map<number, Record<string, unknown>>()
  // Values take about as many bytes as their text.
  const values = newBatchBuffer(body.length + 1024)
  let lineStart = new Int32Array(0)
  let lineEnd = new Int32Array(0)
  let valueStart = new Int32Array(0)
  let valueEnd = new Int32Array(0)
  let line = 0
  const take = (lines: ByteLines, fast: boolean): void => {
    const b = lines.buf
    for (let l = 0; l < lines.count; l++) {
      line++
      const start = lines.starts[l]!
      const end = lines.ends[l]!
      const key = fast ? writer.scan(b, start, end) : null
      const e = keys.length
      if (key !== null) {
        lineStart[e] = start
        lineEnd[e] = end
        valueStart[e] = values.pos
        writer.writeValues(values)
        valueEnd[e] = values.pos
        names[e] = writer.names
        keys.push(key)
        continue
      }
      const r = parseNdjsonLine(decodeLine(b, start, end), keyField)
      if (r === null) continue
      if (typeof r === 'string') {
        bad(line, r)
        continue
      }
      lineStart[e] = -1
      parsed.set(e, r.event)
      names[e] = EMPTY_NAMES
      keys.push(r.key)
    }
  }
  const lines = splitter.push(body)
  lineStart = new Int32Array(lines.count + 1)
  lineEnd = new Int32Array(lines.count + 1)
  valueStart = new Int32Array(lines.count + 1)
  valueEnd = new Int32Array(lines.count + 1)
  take(lines, true)
  // The last line of a body without a final line ending is a copy, not in the body: parsed.
  take(splitter.end(), false)
  if (malformed > 0) throw new NdjsonError(errors, malformed, line)
  return new NdjsonEvents({
    body: lines.buf,
    keys,
    lineStart,
    lineEnd,
    values: values.buf,
    valueStart,
    valueEnd,
    names,
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
