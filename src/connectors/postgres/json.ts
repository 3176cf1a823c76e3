/**
 * Job values (msgpack-decoded states and events) as JSON text for `jsonb` columns.
 *
 * JSON.stringify alone would lose data silently: a Map or Set becomes `{}`, and a bigint throws.
 * So a replacer converts what has a faithful JSON form and rejects the rest:
 *
 *   bigint        a JSON number with every digit (jsonb numbers are arbitrary-precision)
 *   Map           an object when every key is a string or a number, else rejected
 *   Set           an array
 *   Uint8Array    a base64 string (Buffer too)
 *   Date          its ISO string (JSON's own rule)
 *   undefined     top level: null; inside objects: left out (JSON's own rule)
 *   NaN, ±Inf     null (JSON's own rule)
 *
 * A value that cannot be converted (a Map with object keys, a cycle) throws SINK_REJECTED, so the
 * runner dead-letters that record instead of writing something else than the job produced.
 */
import { rejectedError } from './errors.ts'

/** A placeholder for a bigint's digits, unwrapped after stringify. It contains NUL, which jsonb rejects anyway. */
const BIG = '\u0000shoal-bigint:'
const BIG_QUOTED = /"\\u0000shoal-bigint:(-?\d+)"/g

/**
 * True when plain JSON.stringify is exact for `value`: only primitives (no bigint), arrays and
 * plain objects, as msgpack decodes most states. Checking first is about twice as fast as always
 * stringifying with a replacer.
 */
function isPlain(v: unknown): boolean {
  if (typeof v !== 'object') return typeof v !== 'bigint'
  if (v === null) return true
  if (Array.isArray(v)) {
    for (const x of v as unknown[]) if (!isPlain(x)) return false
    return true
  }
  const proto: unknown = Object.getPrototypeOf(v)
  if (proto !== Object.prototype && proto !== null) return false
  for (const k in v) if (!isPlain((v as Record<string, unknown>)[k])) return false
  return true
}

export function toJsonText(value: unknown): string {
  if (isPlain(value)) return JSON.stringify(value) ?? 'null'
  let sawBigint = false
  const text = JSON.stringify(value, function (this: Record<string, unknown>, key: string, v: unknown) {
    if (typeof v === 'bigint') {
      sawBigint = true
      return BIG + v.toString()
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return v
    // Buffer.prototype.toJSON has already run (v is {type,data}): look at the raw value.
    const raw = this[key]
    if (raw instanceof Uint8Array)
      return Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('base64')
    if (v instanceof Map) return mapToObject(v)
    if (v instanceof Set) return [...(v as Set<unknown>)]
    return v
  }) as string | undefined
  if (text === undefined) return 'null'
  return sawBigint ? text.replace(BIG_QUOTED, '$1') : text
}

function mapToObject(m: Map<unknown, unknown>): Record<string, unknown> {
  const o: Record<string, unknown> = {}
  for (const [k, v] of m) {
    if (typeof k !== 'string' && typeof k !== 'number') {
      throw new TypeError(`a Map key of type ${typeof k} has no JSON form`)
    }
    o[String(k)] = v
  }
  return o
}

/** toJsonText, with failures as SINK_REJECTED naming what was being converted. */
export function jsonOrReject(value: unknown, what: () => string): string {
  try {
    return toJsonText(value)
  } catch (err) {
    const reason =
      err instanceof RangeError
        ? 'it is circular or nested too deeply'
        : err instanceof Error
          ? err.message.split('\n', 1)[0]!
          : String(err)
    throw rejectedError(`${what()} cannot be stored as JSON: ${reason}`, { cause: err })
  }
}

/** True when jsonb would refuse this JSON text (NUL or a lone surrogate escape). */
export function jsonbUnsafe(text: string): boolean {
  return /\\u(?:0000|d[89a-f])/i.test(text)
}
