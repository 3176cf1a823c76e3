/**
 * The file sink's NDJSON lines straight from a batch's packed records (msgpack [stream, key,
 * event][] as the processing thread packed them), without decoding them into objects and
 * JSON.stringify-ing those again.
 *
 * Hand-made because a measurement says so: window results cost a worker's main thread ~1.9 µs
 * each, decoding them and formatting their lines, which count does not pay (docs/benchmarks.md,
 * "Window results as lines from their bytes"). It reads what msgpackr writes for plain data
 * (records, arrays, strings, numbers up to 32-bit integers and doubles, booleans, null) and
 * gives up on anything else (maps, undefined, 64-bit integers, float32, typed arrays, dates,
 * lone surrogates, nesting deeper than 64): the caller then formats the decoded records as
 * before. What it writes is, byte for byte, the line of eventLine() (a property test compares).
 */

/** Thrown inside, caught at the top: something only msgpackr should read. */
const GIVE_UP = new Error('packed records need msgpackr')
const MAX_DEPTH = 64

/** Output: bytes appended at `pos`, grown as needed. */
export interface LineBuffer {
  buf: Buffer
  pos: number
}

export function lineBuffer(size: number): LineBuffer {
  return { buf: Buffer.allocUnsafe(Math.max(64, size)), pos: 0 }
}

function room(o: LineBuffer, n: number): void {
  if (o.pos + n <= o.buf.length) return
  const buf = Buffer.allocUnsafe(Math.max(o.buf.length * 2, o.pos + n + 1024))
  o.buf.copy(buf, 0, 0, o.pos)
  o.buf = buf
}

function ascii(o: LineBuffer, s: string): void {
  const n = s.length
  room(o, n)
  const b = o.buf
  let p = o.pos
  for (let i = 0; i < n; i++) b[p++] = s.charCodeAt(i)
  o.pos = p
}

/** A number as JSON.stringify writes it (NaN and the infinities are null). */
function number(o: LineBuffer, v: number): void {
  ascii(o, Number.isFinite(v) ? String(v) : 'null')
}

const HEX = '0123456789abcdef'

/**
 * The UTF-8 string src[from..to) as a JSON string: JSON.stringify's escapes (\" \\ \b \t \n \f
 * \r, \u00xx for other control characters); other bytes as they are. A lone surrogate (msgpackr
 * writes one as its own 3-byte sequence, ED A0-BF xx) is escaped by JSON.stringify: give up.
 */
function string(o: LineBuffer, src: Uint8Array, from: number, to: number): void {
  room(o, 2 + 6 * (to - from))
  const b = o.buf
  let p = o.pos
  b[p++] = 0x22
  for (let i = from; i < to; i++) {
    const c = src[i]!
    if (c >= 0x20 && c !== 0x22 && c !== 0x5c) {
      if (c === 0xed && (src[i + 1] ?? 0) >= 0xa0) throw GIVE_UP
      b[p++] = c
      continue
    }
    b[p++] = 0x5c
    if (c === 0x22 || c === 0x5c) b[p++] = c
    else if (c === 0x08)
      b[p++] = 0x62 // b
    else if (c === 0x09)
      b[p++] = 0x74 // t
    else if (c === 0x0a)
      b[p++] = 0x6e // n
    else if (c === 0x0c)
      b[p++] = 0x66 // f
    else if (c === 0x0d)
      b[p++] = 0x72 // r
    else {
      b[p++] = 0x75 // u
      b[p++] = 0x30
      b[p++] = 0x30
      b[p++] = HEX.charCodeAt(c >> 4)
      b[p++] = HEX.charCodeAt(c & 15)
    }
  }
  b[p++] = 0x22
  o.pos = p
}

/** Reads one payload; record definitions (key lists, as JSON fragments) live per payload. */
class Reader {
  readonly src: Uint8Array
  readonly view: DataView
  pos = 0
  /** Per record id (0x40 + i): the bytes before each value, `{"name":` then `,"name":`. */
  readonly shapes: (Buffer[] | undefined)[] = []

  constructor(src: Uint8Array) {
    this.src = src
    this.view = new DataView(src.buffer, src.byteOffset, src.byteLength)
  }

  byte(): number {
    if (this.pos >= this.src.length) throw GIVE_UP
    return this.src[this.pos++]!
  }

  uint(bytes: number): number {
    const p = this.pos
    if (p + bytes > this.src.length) throw GIVE_UP
    this.pos += bytes
    return bytes === 1 ? this.src[p]! : bytes === 2 ? this.view.getUint16(p) : this.view.getUint32(p)
  }

  /** A string header's length, or -1 if the next value is not a string. */
  stringLength(): number {
    const t = this.src[this.pos]
    if (t === undefined) throw GIVE_UP
    if (t >= 0xa0 && t <= 0xbf) {
      this.pos++
      return t & 0x1f
    }
    if (t === 0xd9 || t === 0xda || t === 0xdb) {
      this.pos++
      return this.uint(t === 0xd9 ? 1 : t === 0xda ? 2 : 4)
    }
    return -1
  }

  string(o: LineBuffer): void {
    const n = this.stringLength()
    if (n < 0 || this.pos + n > this.src.length) throw GIVE_UP
    string(o, this.src, this.pos, this.pos + n)
    this.pos += n
  }

  arrayLength(t: number): number {
    if (t >= 0x90 && t <= 0x9f) return t & 0x0f
    if (t === 0xdc) return this.uint(2)
    if (t === 0xdd) return this.uint(4)
    return -1
  }

  value(o: LineBuffer, depth: number): void {
    if (depth > MAX_DEPTH) throw GIVE_UP
    const t = this.byte()
    if (t <= 0x3f) return number(o, t)
    if (t <= 0x7f) return this.record(o, t - 0x40, depth)
    if (t >= 0xe0) return number(o, t - 0x100)
    if ((t >= 0xa0 && t <= 0xbf) || t === 0xd9 || t === 0xda || t === 0xdb) {
      this.pos--
      return this.string(o)
    }
    const n = this.arrayLength(t)
    if (n >= 0) {
      room(o, 1)
      o.buf[o.pos++] = 0x5b
      for (let i = 0; i < n; i++) {
        if (i > 0) {
          room(o, 1)
          o.buf[o.pos++] = 0x2c
        }
        this.value(o, depth + 1)
      }
      room(o, 1)
      o.buf[o.pos++] = 0x5d
      return
    }
    switch (t) {
      case 0xc0:
        return ascii(o, 'null')
      case 0xc2:
        return ascii(o, 'false')
      case 0xc3:
        return ascii(o, 'true')
      case 0xcb: {
        if (this.pos + 8 > this.src.length) throw GIVE_UP
        const v = this.view.getFloat64(this.pos)
        this.pos += 8
        return number(o, v)
      }
      case 0xcc:
        return number(o, this.uint(1))
      case 0xcd:
        return number(o, this.uint(2))
      case 0xce:
        return number(o, this.uint(4))
      case 0xd0:
        return number(o, (this.uint(1) << 24) >> 24)
      case 0xd1:
        return number(o, (this.uint(2) << 16) >> 16)
      case 0xd2:
        return number(o, this.uint(4) | 0)
      case 0xd4: {
        // fixext 1: msgpackr's record definition is type 0x72 with the id as its byte.
        if (this.byte() !== 0x72) throw GIVE_UP
        const id = this.byte() - 0x40
        if (id < 0 || id > 0x3f) throw GIVE_UP
        this.define(id)
        return this.record(o, id, depth)
      }
      default:
        throw GIVE_UP
    }
  }

  /** A definition's key list (an array of strings) as the JSON fragments before each value. */
  define(id: number): void {
    const n = this.arrayLength(this.byte())
    if (n < 0) throw GIVE_UP
    const parts: Buffer[] = []
    const names = new Set<string>()
    for (let i = 0; i < n; i++) {
      const len = this.stringLength()
      if (len < 0 || this.pos + len > this.src.length) throw GIVE_UP
      const name = Buffer.from(this.src.buffer, this.src.byteOffset + this.pos, len).toString('utf8')
      // A name twice, or msgpackr's special cases: the decoded object differs from the list.
      if (names.has(name) || name === '__proto__' || name === 'hasOwnProperty') throw GIVE_UP
      // An index-like name: the object orders it first, JSON.stringify with it.
      if (/^(0|[1-9]\d*)$/.test(name)) throw GIVE_UP
      names.add(name)
      const part = lineBuffer(len + 8)
      part.buf[part.pos++] = i === 0 ? 0x7b : 0x2c
      string(part, this.src, this.pos, this.pos + len)
      room(part, 1)
      part.buf[part.pos++] = 0x3a
      parts.push(part.buf.subarray(0, part.pos))
      this.pos += len
    }
    this.shapes[id] = parts
  }

  record(o: LineBuffer, id: number, depth: number): void {
    const parts = this.shapes[id]
    if (parts === undefined) throw GIVE_UP
    if (parts.length === 0) return ascii(o, '{}')
    for (const part of parts) {
      room(o, part.length)
      part.copy(o.buf, o.pos)
      o.pos += part.length
      this.value(o, depth + 1)
    }
    room(o, 1)
    o.buf[o.pos++] = 0x7d
  }
}

/**
 * Append the lines of `count` packed records (msgpack [stream, key, event][]) to `o`, record i
 * with identity (partition, offset, firstIndex + i); false, with `o` as it was, if the payload
 * holds something this does not read (the caller then formats the decoded records).
 */
export function packedLines(
  o: LineBuffer,
  payload: Uint8Array,
  count: number,
  partition: number,
  offset: number | null,
  firstIndex: number,
): boolean {
  const start = o.pos
  const r = new Reader(payload)
  try {
    if (r.arrayLength(r.byte()) !== count) throw GIVE_UP
    const partitionText = `,"partition":${partition},"event":`
    const offsetText = `,"offset":${offset === null ? 'null' : offset},"index":`
    for (let i = 0; i < count; i++) {
      if (r.byte() !== 0x93) throw GIVE_UP
      ascii(o, '{"stream":')
      r.string(o)
      ascii(o, ',"key":')
      r.string(o)
      ascii(o, partitionText)
      r.value(o, 0)
      ascii(o, offsetText)
      ascii(o, String(firstIndex + i))
      ascii(o, '}\n')
    }
    if (r.pos !== payload.length) throw GIVE_UP
    return true
  } catch (err) {
    if (err !== GIVE_UP) throw err
    o.pos = start
    return false
  }
}
