/**
 * The NDJSON event format `shoal send` and `POST /events` read: a streaming line splitter
 * (NdjsonLineSplitter, for `shoal send`), the per-line parse both share (parseNdjsonLine) and a
 * whole-body parse (parseNdjson, for POST /events).
 *
 * - Lines end at `\n`, `\r\n` or a lone `\r` (as node's readline, which `shoal send` used, so
 *   line numbers are what they were). Numbering starts at 1; a final line ending does not start
 *   another line. A byte order mark at the very start of the input is ignored.
 * - A blank line (only whitespace) is skipped, but counted.
 * - Every other line is a JSON object whose field `keyField` (default "key") is a string or a
 *   number; the key is that value as a string, the event is the whole object (key included).
 * - parseNdjson is stricter than `shoal send` in one way: a line that is not valid UTF-8 is
 *   malformed (the stream decoder `shoal send` reads through replaces the bytes silently).
 *
 * parseNdjson is all or nothing: any malformed line makes it throw {@link NdjsonError}, naming
 * the first `maxReportedErrors` malformed lines and counting all of them. It throws nothing
 * else, whatever the bytes.
 */
import { isUtf8 } from 'node:buffer'
import { StringDecoder } from 'node:string_decoder'
import { ErrorCodes, ShoalError } from '../errors.ts'

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
const BOM = 0xfeff
const DECODE_BYTES = 64 * 1024

/**
 * Splits a stream of NDJSON bytes (or text) into lines, chunk by chunk: push() returns the lines
 * a chunk completes, end() the last one if the input did not end with a line ending. A UTF-8
 * character split across chunks is decoded whole; invalid bytes become U+FFFD.
 *
 * Hand-made rather than node's readline: readline (with `for await`, one turn of the event loop
 * per line) was most of `shoal send`'s own CPU (issue 13: sendNdjson 29% of the profile, and the
 * CLI at a fraction of the SDK's rate); here a chunk is split with the native indexOf in one go
 * and its lines are handled without an await each (docs/benchmarks.md, "shoal send").
 */
export class NdjsonLineSplitter {
  readonly #decoder = new StringDecoder('utf8')
  /** The unfinished line: text since the last line ending, kept in parts (a long line costs no re-copying per chunk). */
  #rest: string[] = []
  /** The last chunk ended with \r: a \n starting the next one belongs to it. */
  #skipLF = false
  #started = false

  /** The lines this chunk completes. */
  push(chunk: Uint8Array | string): string[] {
    const lines: string[] = []
    if (typeof chunk === 'string') this.#split(chunk, lines, false)
    else {
      // Decoded DECODE_BYTES at a time: a string of 128 KiB to ~1 MiB is allocated in V8's
      // large-object space (node makes bigger ones external), and decoding a 720 kB body whole
      // cost 5-20x the CPU of decoding it in 64 KiB pieces (Node 20; docs/benchmarks.md).
      for (let i = 0; i < chunk.length; i += DECODE_BYTES) {
        this.#split(this.#decoder.write(chunk.subarray(i, i + DECODE_BYTES)), lines, false)
      }
    }
    return lines
  }

  /** The last line, if the input did not end with a line ending. */
  end(): string[] {
    const lines: string[] = []
    this.#split(this.#decoder.end(), lines, true)
    return lines
  }

  #split(text: string, lines: string[], last: boolean): void {
    const n = text.length
    let start = 0
    if (n > 0) {
      if (!this.#started) {
        this.#started = true
        if (text.charCodeAt(0) === BOM) start = 1
      }
      if (this.#skipLF) {
        this.#skipLF = false
        if (text.charCodeAt(start) === LF) start++
      }
    }
    if (text.indexOf('\r', start) === -1) {
      // The common case, \n only: the native indexOf finds each line end.
      for (let i = text.indexOf('\n', start); i !== -1; i = text.indexOf('\n', start)) {
        lines.push(this.#line(text, start, i))
        start = i + 1
      }
    } else {
      for (let i = start; i < n; i++) {
        const c = text.charCodeAt(i)
        if (c !== LF && c !== CR) continue
        lines.push(this.#line(text, start, i))
        if (c === CR) {
          if (i + 1 === n) this.#skipLF = true
          else if (text.charCodeAt(i + 1) === LF) i++
        }
        start = i + 1
      }
    }
    if (start < n) this.#rest.push(start === 0 ? text : text.slice(start))
    if (last && this.#rest.length > 0) {
      lines.push(this.#rest.join(''))
      this.#rest = []
    }
  }

  #line(text: string, start: number, end: number): string {
    if (this.#rest.length === 0) return text.slice(start, end)
    this.#rest.push(text.slice(start, end))
    const line = this.#rest.join('')
    this.#rest = []
    return line
  }
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

/** Parse a whole NDJSON body; throws {@link NdjsonError} (and nothing else) if any line is malformed. */
export function parseNdjson(body: Uint8Array, options: NdjsonParseOptions = {}): ParsedNdjson {
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
  // Validated whole (simdutf: ~1/100 of the decode) and decoded by the splitter; only a body
  // with invalid UTF-8 is decoded line by line, to name the lines. A fatal TextDecoder call per
  // line, and even one per body, cost more than the JSON.parse of its lines.
  if (!isUtf8(body)) {
    const total = reportInvalidUtf8(body, keyField, bad)
    throw new NdjsonError(errors, malformed, total)
  }
  // Split and parsed a piece at a time, so that a piece's text and lines are garbage before the
  // next is decoded: in the coordinator (4 MiB semi-spaces) a body's strings kept until all of
  // it was parsed were copied by every scavenge that came meanwhile.
  const splitter = new NdjsonLineSplitter()
  const events: NdjsonEvent[] = []
  let line = 0
  const take = (lines: string[]): void => {
    for (let i = 0; i < lines.length; i++) {
      line++
      const r = parseNdjsonLine(lines[i]!, keyField)
      if (r === null) continue
      if (typeof r === 'string') bad(line, r)
      else events.push(r)
    }
  }
  for (let i = 0; i < body.length; i += DECODE_BYTES) take(splitter.push(body.subarray(i, i + DECODE_BYTES)))
  take(splitter.end())
  if (malformed > 0) throw new NdjsonError(errors, malformed, line)
  return { events, lines: line }
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
