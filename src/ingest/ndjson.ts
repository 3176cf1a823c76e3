/**
 * The NDJSON event format `shoal send` reads, as one parse of a whole body (POST /events).
 *
 * - Lines end at `\n`, `\r\n` or a lone `\r` (node's readline, which `shoal send` uses, so line
 *   numbers match what `shoal send` reports). Numbering starts at 1; a final line ending does
 *   not start another line.
 * - A blank line (only whitespace) is skipped, but counted.
 * - Every other line is a JSON object whose field `keyField` (default "key") is a string or a
 *   number; the key is that value as a string, the event is the whole object (key included).
 * - Stricter than `shoal send` in one way: a line that is not valid UTF-8 is malformed (a
 *   stream decoder would replace the bytes silently). A byte order mark at the very start of
 *   the body is ignored.
 *
 * The parse is all or nothing: any malformed line makes it throw {@link NdjsonError}, naming
 * the first `maxReportedErrors` malformed lines and counting all of them. It throws nothing
 * else, whatever the bytes.
 */
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

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })
const CR = 0x0d
const LF = 0x0a

/** Parse a whole NDJSON body; throws {@link NdjsonError} (and nothing else) if any line is malformed. */
export function parseNdjson(body: Uint8Array, options: NdjsonParseOptions = {}): ParsedNdjson {
  const keyField = options.keyField ?? DEFAULT_NDJSON_KEY_FIELD
  const maxReported = Math.max(0, options.maxReportedErrors ?? DEFAULT_MAX_REPORTED_ERRORS)
  const events: NdjsonEvent[] = []
  const errors: NdjsonLineError[] = []
  let malformed = 0
  let line = 0
  const bad = (error: string): void => {
    malformed++
    if (errors.length < maxReported) {
      errors.push({
        line,
        error: error.length > MAX_ERROR_CHARS ? `${error.slice(0, MAX_ERROR_CHARS - 3)}...` : error,
      })
    }
  }
  const n = body.length
  let start = body[0] === 0xef && body[1] === 0xbb && body[2] === 0xbf ? 3 : 0
  while (start < n) {
    let end = start
    while (end < n && body[end] !== LF && body[end] !== CR) end++
    line++
    parseLine(body.subarray(start, end))
    // One line ending: \r\n, \n or \r.
    start = end < n && body[end] === CR && body[end + 1] === LF ? end + 2 : end + 1
  }
  if (malformed > 0) throw new NdjsonError(errors, malformed, line)
  return { events, lines: line }

  function parseLine(bytes: Uint8Array): void {
    let text: string
    try {
      text = utf8.decode(bytes)
    } catch {
      bad('not valid UTF-8')
      return
    }
    if (text.trim() === '') return
    let value: unknown
    try {
      value = JSON.parse(text)
    } catch (err) {
      bad(`not valid JSON: ${err instanceof Error ? err.message : String(err)}`)
      return
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      bad(
        `expected a JSON object, got ${Array.isArray(value) ? 'an array' : value === null ? 'null' : typeof value}`,
      )
      return
    }
    const event = value as Record<string, unknown>
    const key = Object.hasOwn(event, keyField) ? event[keyField] : undefined
    if (typeof key !== 'string' && typeof key !== 'number') {
      bad(`field ${JSON.stringify(keyField)} must be a string or number`)
      return
    }
    events.push({ key: String(key), event })
  }
}
