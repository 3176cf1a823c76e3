/**
 * Decodes an event batch's payload (a msgpack array of [key, event], msgpackr's record
 * extension on) in a processing thread, for the forms Shoal's encoders write: nil, booleans,
 * numbers up to 32 bits and doubles, strings, arrays, maps (as msgpackr reads them with records
 * on: a Map), `undefined`, and records. For anything else (another extension, bin, 64-bit
 * integers, a two-byte record id, a record key that is not a string or is `__proto__`, a string
 * that is not valid UTF-8, a record id used before its definition, bytes after the value, a
 * truncated payload, nesting too deep for the stack) it returns null, and the caller decodes
 * with msgpackr: a batch decodes to exactly what msgpackr makes of it, or to msgpackr's error.
 *
 * Why not msgpackr alone: a payload defines its own records, so msgpackr makes a new reader per
 * message and, once a record was read three times, compiles it with `new Function`: for the
 * small batches of a loaded cluster (a round of 85 partitions at 50% load carries a few events
 * each) that compile was ~30% of the processing engine's CPU per batch (1.2 of 4.0 µs per batch
 * of 7 events, `P=85 E=7 node --import tsx bench/micro/engine-rounds.ts`; docs/benchmarks.md).
 * Here a record's reader is compiled once per key list and kept across batches.
 */

/** Thrown inside, never out: the payload holds something this decoder leaves to msgpackr. */
const UNSUPPORTED = new Error('left to msgpackr')

type Reader = () => unknown

let src: Uint8Array = new Uint8Array(0)
let view = new DataView(src.buffer)
let pos = 0
let end = 0
/** The payload's records by id (0x40 + index): each a reader of its values. */
const records: (Reader | undefined)[] = new Array<Reader | undefined>(64).fill(undefined)
let recordsDefined = false

/** Compiled readers by key list (keys joined by NUL), kept across payloads. */
const compiled = new Map<string, { keys: string[]; read: Reader }>()
/** Bound on `compiled`: past it, new key lists get an uncompiled reader. */
const MAX_COMPILED = 1024
const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/

const fromCharCode = String.fromCharCode
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

/** The payload decoded, or null when msgpackr must decode it. */
export function decodeEvents(payload: Uint8Array): unknown {
  src = payload
  view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength)
  pos = 0
  end = payload.length
  try {
    const v = read()
    if (pos !== end) return null
    return v
  } catch {
    // UNSUPPORTED, or anything else (a stack overflow): msgpackr decides, and reports.
    return null
  } finally {
    if (recordsDefined) {
      records.fill(undefined)
      recordsDefined = false
    }
    src = EMPTY
  }
}
const EMPTY = new Uint8Array(0)

function need(n: number): void {
  if (pos + n > end) throw UNSUPPORTED
}

function read(): unknown {
  if (pos >= end) throw UNSUPPORTED
  const t = src[pos++]!
  if (t < 0x40) return t
  if (t < 0x80) {
    const r = records[t & 0x3f]
    if (r === undefined) throw UNSUPPORTED
    return r()
  }
  if (t < 0x90) return readMap(t - 0x80)
  if (t < 0xa0) return readArray(t - 0x90)
  if (t < 0xc0) return readString(t - 0xa0)
  if (t >= 0xe0) return t - 0x100
  let n: number
  switch (t) {
    case 0xc0:
      return null
    case 0xc2:
      return false
    case 0xc3:
      return true
    case 0xca:
      need(4)
      n = view.getFloat32(pos)
      pos += 4
      return n
    case 0xcb:
      need(8)
      n = view.getFloat64(pos)
      pos += 8
      return n
    case 0xcc:
      need(1)
      return src[pos++]!
    case 0xcd:
      need(2)
      n = view.getUint16(pos)
      pos += 2
      return n
    case 0xce:
      need(4)
      n = view.getUint32(pos)
      pos += 4
      return n
    case 0xd0:
      need(1)
      return view.getInt8(pos++)
    case 0xd1:
      need(2)
      n = view.getInt16(pos)
      pos += 2
      return n
    case 0xd2:
      need(4)
      n = view.getInt32(pos)
      pos += 4
      return n
    case 0xd4: {
      // fixext 1: `d4 00 00` is undefined, `d4 72 id` a record definition.
      need(2)
      const type = src[pos]!
      if (type === 0x00 && src[pos + 1] === 0x00) {
        pos += 2
        return undefined
      }
      if (type !== 0x72) throw UNSUPPORTED
      const id = src[pos + 1]! & 0x3f
      pos += 2
      return defineRecord(id)
    }
    case 0xd9:
      need(1)
      return readString(src[pos++]!)
    case 0xda:
      need(2)
      n = view.getUint16(pos)
      pos += 2
      return readString(n)
    case 0xdb:
      need(4)
      n = view.getUint32(pos)
      pos += 4
      return readString(n)
    case 0xdc:
      need(2)
      n = view.getUint16(pos)
      pos += 2
      return readArray(n)
    case 0xdd:
      need(4)
      n = view.getUint32(pos)
      pos += 4
      return readArray(n)
    case 0xde:
      need(2)
      n = view.getUint16(pos)
      pos += 2
      return readMap(n)
    case 0xdf:
      need(4)
      n = view.getUint32(pos)
      pos += 4
      return readMap(n)
    default:
      throw UNSUPPORTED
  }
}

function readArray(n: number): unknown[] {
  // Each element takes at least a byte: a length past the payload is not allocated.
  need(n)
  // [key, event], the usual pair: a packed literal, read left to right.
  if (n === 2) return [read(), read()]
  const a = new Array<unknown>(n)
  for (let i = 0; i < n; i++) a[i] = read()
  return a
}

/** A map as msgpackr reads it with records on (mapsAsObjects off): a Map, any keys. */
function readMap(n: number): Map<unknown, unknown> {
  need(n * 2)
  const m = new Map<unknown, unknown>()
  for (let i = 0; i < n; i++) m.set(read(), read())
  return m
}

function readString(n: number): string {
  need(n)
  const p = pos
  if (n < 16) {
    // Short ASCII, the usual key or field: no decoder call.
    let ascii = true
    for (let i = p; i < p + n; i++) {
      if (src[i]! >= 0x80) {
        ascii = false
        break
      }
    }
    if (ascii) {
      pos += n
      return short(p, n)
    }
  }
  let s: string
  try {
    s = utf8.decode(src.subarray(p, p + n))
  } catch {
    throw UNSUPPORTED
  }
  pos += n
  return s
}

/**
 * n < 16 ASCII bytes at p as a flat string: explicit arguments, as msgpackr's short strings. The
 * shorter forms cost per event (`E=7 N=200000 node --import tsx bench/micro/event-decode.ts`,
 * ~120 ns with this): `apply` over a subarray ~3x, over a reused array 134 ns, a loop of `+=`
 * 147 ns, Buffer's latin1Slice 184-229 ns.
 */
function short(p: number, n: number): string {
  const b = src
  switch (n) {
    case 1:
      return fromCharCode(b[p]!)
    case 2:
      return fromCharCode(b[p]!, b[p + 1]!)
    case 3:
      return fromCharCode(b[p]!, b[p + 1]!, b[p + 2]!)
    case 4:
      return fromCharCode(b[p]!, b[p + 1]!, b[p + 2]!, b[p + 3]!)
    case 5:
      return fromCharCode(b[p]!, b[p + 1]!, b[p + 2]!, b[p + 3]!, b[p + 4]!)
    case 6:
      return fromCharCode(b[p]!, b[p + 1]!, b[p + 2]!, b[p + 3]!, b[p + 4]!, b[p + 5]!)
    case 7:
      return fromCharCode(b[p]!, b[p + 1]!, b[p + 2]!, b[p + 3]!, b[p + 4]!, b[p + 5]!, b[p + 6]!)
    case 8:
      return fromCharCode(b[p]!, b[p + 1]!, b[p + 2]!, b[p + 3]!, b[p + 4]!, b[p + 5]!, b[p + 6]!, b[p + 7]!)
    case 9:
      return fromCharCode(
        b[p]!,
        b[p + 1]!,
        b[p + 2]!,
        b[p + 3]!,
        b[p + 4]!,
        b[p + 5]!,
        b[p + 6]!,
        b[p + 7]!,
        b[p + 8]!,
      )
    case 10:
      return fromCharCode(
        b[p]!,
        b[p + 1]!,
        b[p + 2]!,
        b[p + 3]!,
        b[p + 4]!,
        b[p + 5]!,
        b[p + 6]!,
        b[p + 7]!,
        b[p + 8]!,
        b[p + 9]!,
      )
    case 11:
      return fromCharCode(
        b[p]!,
        b[p + 1]!,
        b[p + 2]!,
        b[p + 3]!,
        b[p + 4]!,
        b[p + 5]!,
        b[p + 6]!,
        b[p + 7]!,
        b[p + 8]!,
        b[p + 9]!,
        b[p + 10]!,
      )
    case 12:
      return fromCharCode(
        b[p]!,
        b[p + 1]!,
        b[p + 2]!,
        b[p + 3]!,
        b[p + 4]!,
        b[p + 5]!,
        b[p + 6]!,
        b[p + 7]!,
        b[p + 8]!,
        b[p + 9]!,
        b[p + 10]!,
        b[p + 11]!,
      )
    case 13:
      return fromCharCode(
        b[p]!,
        b[p + 1]!,
        b[p + 2]!,
        b[p + 3]!,
        b[p + 4]!,
        b[p + 5]!,
        b[p + 6]!,
        b[p + 7]!,
        b[p + 8]!,
        b[p + 9]!,
        b[p + 10]!,
        b[p + 11]!,
        b[p + 12]!,
      )
    case 14:
      return fromCharCode(
        b[p]!,
        b[p + 1]!,
        b[p + 2]!,
        b[p + 3]!,
        b[p + 4]!,
        b[p + 5]!,
        b[p + 6]!,
        b[p + 7]!,
        b[p + 8]!,
        b[p + 9]!,
        b[p + 10]!,
        b[p + 11]!,
        b[p + 12]!,
        b[p + 13]!,
      )
    case 15:
      return fromCharCode(
        b[p]!,
        b[p + 1]!,
        b[p + 2]!,
        b[p + 3]!,
        b[p + 4]!,
        b[p + 5]!,
        b[p + 6]!,
        b[p + 7]!,
        b[p + 8]!,
        b[p + 9]!,
        b[p + 10]!,
        b[p + 11]!,
        b[p + 12]!,
        b[p + 13]!,
        b[p + 14]!,
      )
    default:
      return ''
  }
}

/** `d4 72 id [keys...]` then the record's first values: define id and read the record. */
function defineRecord(id: number): unknown {
  const keys = read()
  if (!Array.isArray(keys)) throw UNSUPPORTED
  for (const k of keys) if (typeof k !== 'string' || k === '__proto__') throw UNSUPPORTED
  const reader = readerFor(keys as string[])
  records[id] = reader
  recordsDefined = true
  return reader()
}

function readerFor(keys: string[]): Reader {
  const sig = keys.join('\0')
  const hit = compiled.get(sig)
  // Joined keys can collide (['a\0', 'b'] and ['a', '\0b']): a hit must have the same keys.
  if (hit !== undefined && sameKeys(hit.keys, keys)) return hit.read
  if (hit === undefined && compiled.size < MAX_COMPILED) {
    // The same construction as msgpackr's compiled record reader: an object literal, read in key
    // order, so every record of a key list shares one hidden class.
    const body = keys.map((k) => (IDENTIFIER.test(k) ? `${k}:r()` : `[${JSON.stringify(k)}]:r()`)).join(',')
    // eslint-disable-next-line @typescript-eslint/no-implied-eval -- a record reader per key list, compiled once
    const make = new Function('r', `return function(){return {${body}}}`) as (r: Reader) => Reader
    const r = make(read)
    compiled.set(sig, { keys, read: r })
    return r
  }
  return () => {
    const o: Record<string, unknown> = {}
    for (const k of keys) o[k] = read()
    return o
  }
}

function sameKeys(a: string[], b: string[]): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}
