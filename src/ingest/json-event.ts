/**
 * An NDJSON line's event written straight from its bytes into a client batch
 * (ShoalClient.sendWritten), without decoding the line, nor JSON.parse building an object that
 * the client's encoder then walks again.
 *
 * Hand-made rather than JSON.parse because a measurement says JSON.parse is the bottleneck:
 * it was 43% of `shoal send`'s CPU, and encoding the object it built another 17%
 * (docs/benchmarks.md, "JSON events without objects"). It takes only the common case, and only
 * when it is sure of it: one flat object in ASCII, at most MAX_FIELDS fields, names without
 * escapes that do not start with a digit (JSON.parse would order index-like names first) and
 * appear once, values that are strings without escapes, numbers, true, false or null, and a key
 * field that is a string or a number. Every other line (non-ASCII text, nested values, escapes,
 * anything malformed) is left to the caller to decode and parseNdjsonLine, which also says what
 * is wrong with a malformed one. What it writes is, byte for byte, what
 * `client.send(key, JSON.parse(line))` writes (a property test compares).
 */
import {
  MAX_SHAPES,
  grow,
  encodeNumberAt,
  encodeString,
  recordHeader,
  strHeader,
  strHeaderSize,
  type BatchBuffer,
  type EventWriter,
  type KeyedEventWriter,
} from '../client/encode.ts'

/** Objects with more fields go through JSON.parse. */
export const MAX_FIELDS = 32

const STRING = 0
const NUMBER = 2
const TRUE = 3
const FALSE = 4
const NULL = 5

const QUOTE = 0x22
const BACKSLASH = 0x5c
const COLON = 0x3a
const COMMA = 0x2c
const OPEN = 0x7b
const CLOSE = 0x7d
const MINUS = 0x2d
const PLUS = 0x2b
const DOT = 0x2e
const ZERO = 0x30
const NINE = 0x39

/** 10^0 .. 10^22: exactly representable as doubles (Clinger's fast path). */
const POW10 = [
  1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
  1e20, 1e21, 1e22,
]

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d
}

/** The ASCII string `s` is in `b` at `at`. */
function sameAt(b: Uint8Array, at: number, s: string): boolean {
  const n = s.length
  for (let i = 0; i < n; i++) if (b[at + i] !== s.charCodeAt(i)) return false
  return true
}

/** `word` (ASCII) at b[at..end). */
function wordAt(b: Uint8Array, at: number, end: number, word: string): boolean {
  return end - at >= word.length && sameAt(b, at, word)
}

/** ASCII bytes as a string. */
function ascii(b: Buffer, start: number, end: number): string {
  return b.toString('latin1', start, end)
}

function isDigit(c: number): boolean {
  return c >= ZERO && c <= NINE
}

/**
 * Scans lines (scan()) and writes the event of the last one scanned (writeEvent()). One per
 * reader; not reentrant. Keeps the key lists it has seen (up to MAX_SHAPES), so that lines of
 * one shape share one array and a batch finds its record id at once.
 */
export class JsonEventWriter implements EventWriter {
  readonly keyField: string
  #buf: Buffer = Buffer.alloc(0)
  #fields = 0
  /** The line's length. */
  #span = 0
  readonly #nameStart = new Int32Array(MAX_FIELDS)
  readonly #nameEnd = new Int32Array(MAX_FIELDS)
  readonly #kind = new Uint8Array(MAX_FIELDS)
  readonly #valueStart = new Int32Array(MAX_FIELDS)
  readonly #valueEnd = new Int32Array(MAX_FIELDS)
  readonly #number = new Float64Array(MAX_FIELDS)
  /** The field names of the last line scanned, in order. */
  #names: string[] = []
  /** The key field's index in the last line scanned. */
  #keyAt = 0
  readonly #shapes: string[][] = []

  constructor(keyField: string) {
    this.keyField = keyField
  }

  /**
   * The event key of the line b[start..end) if this writer can write its event (writeEvent,
   * next, before `b` changes), else null: the line is then for parseNdjsonLine (it may be blank,
   * malformed, or just not simple). Without `wantKey`, a line it takes gives '' (it is
   * scanned again to be written, its key known already).
   */
  scan(b: Buffer, start: number, end: number, wantKey = true): string | null {
    this.#fields = 0
    let i = start
    while (i < end && isSpace(b[i]!)) i++
    if (i === end || b[i] !== OPEN) return null
    i++
    while (i < end && isSpace(b[i]!)) i++
    let n = 0
    let keyAt = -1
    const keyField = this.keyField
    for (;;) {
      // A name.
      if (i === end || b[i] !== QUOTE || n === MAX_FIELDS) return null
      const ns = ++i
      for (; i < end; i++) {
        const c = b[i]!
        if (c === QUOTE) break
        if (c < 0x20 || c === BACKSLASH || c >= 0x80) return null
      }
      if (i === end) return null
      const ne = i++
      if (ne > ns && isDigit(b[ns]!)) return null
      if (ne - ns === keyField.length && sameAt(b, ns, keyField)) {
        if (keyAt >= 0) return null
        keyAt = n
      }
      while (i < end && isSpace(b[i]!)) i++
      if (i === end || b[i] !== COLON) return null
      i++
      while (i < end && isSpace(b[i]!)) i++
      if (i === end) return null
      // Its value.
      const c = b[i]!
      let kind: number
      if (c === QUOTE) {
        kind = STRING
        const vs = ++i
        for (; i < end; i++) {
          const d = b[i]!
          if (d === QUOTE) break
          if (d < 0x20 || d === BACKSLASH || d >= 0x80) return null
        }
        if (i === end) return null
        this.#valueStart[n] = vs
        this.#valueEnd[n] = i++
      } else if (c === MINUS || isDigit(c)) {
        i = this.#scanNumber(b, i, end, n)
        if (i < 0) return null
        kind = NUMBER
      } else if (wordAt(b, i, end, 'true')) {
        kind = TRUE
        i += 4
      } else if (wordAt(b, i, end, 'false')) {
        kind = FALSE
        i += 5
      } else if (wordAt(b, i, end, 'null')) {
        kind = NULL
        i += 4
      } else return null
      this.#nameStart[n] = ns
      this.#nameEnd[n] = ne
      this.#kind[n] = kind
      n++
      while (i < end && isSpace(b[i]!)) i++
      if (i === end) return null
      const sep = b[i++]
      if (sep === CLOSE) break
      if (sep !== COMMA) return null
      while (i < end && isSpace(b[i]!)) i++
    }
    while (i < end && isSpace(b[i]!)) i++
    if (i !== end || keyAt < 0) return null
    let key: string
    const keyKind = this.#kind[keyAt]
    if (keyKind === STRING) key = wantKey ? ascii(b, this.#valueStart[keyAt]!, this.#valueEnd[keyAt]!) : ''
    else if (keyKind === NUMBER) key = wantKey ? String(this.#number[keyAt]) : ''
    else return null
    this.#buf = b
    this.#span = end - start
    this.#fields = n
    this.#keyAt = keyAt
    if (!this.#shape()) {
      this.#fields = 0
      return null
    }
    return key
  }

  /**
   * A JSON number at `i` (grammar checked) into #number[n]; the index after it, or -1 if it is
   * not one. Exact: up to 15 significant digits and a power of ten up to 22 is one correctly
   * rounded IEEE operation (Clinger's fast path); anything else is converted by Number(), which
   * gives what JSON.parse gives.
   */
  #scanNumber(b: Buffer, i: number, end: number, n: number): number {
    const start = i
    const negative = b[i] === MINUS
    if (negative) i++
    let mantissa = 0
    let digits = 0
    let scale = 0
    let c = i < end ? b[i]! : 0
    if (c === ZERO) {
      i++
    } else if (isDigit(c)) {
      for (; i < end && isDigit((c = b[i]!)); i++) {
        mantissa = mantissa * 10 + (c - ZERO)
        digits++
      }
    } else return -1
    if (i < end && b[i] === DOT) {
      i++
      const from = i
      for (; i < end && isDigit((c = b[i]!)); i++) {
        if (mantissa !== 0 || c !== ZERO) {
          mantissa = mantissa * 10 + (c - ZERO)
          digits++
        }
        scale--
      }
      if (i === from) return -1
    }
    let exponent = 0
    if (i < end && (b[i]! | 0x20) === 0x65) {
      i++
      let sign = 1
      c = i < end ? b[i]! : 0
      if (c === PLUS || c === MINUS) {
        if (c === MINUS) sign = -1
        i++
      }
      const from = i
      for (; i < end && isDigit((c = b[i]!)); i++) {
        if (exponent < 10_000) exponent = exponent * 10 + (c - ZERO)
      }
      if (i === from) return -1
      exponent *= sign
    }
    const e = exponent + scale
    let v: number
    if (mantissa === 0) v = 0
    else if (digits <= 15 && e >= 0 && e <= 22) v = mantissa * POW10[e]!
    else if (digits <= 15 && e < 0 && e >= -22) v = mantissa / POW10[-e]!
    else v = Number(ascii(b, negative ? start + 1 : start, i))
    this.#number[n] = negative ? -v : v
    return i
  }

  /** The line's names as a key list: one seen before, or a new one (false if unfit for a record). */
  #shape(): boolean {
    if (this.#sameNames(this.#names)) return true
    const shapes = this.#shapes
    for (let s = 0; s < shapes.length; s++) {
      if (this.#sameNames(shapes[s]!)) {
        this.#names = shapes[s]!
        return true
      }
    }
    const names: string[] = []
    for (let f = 0; f < this.#fields; f++) {
      const name = ascii(this.#buf, this.#nameStart[f]!, this.#nameEnd[f]!)
      // A name twice (JSON.parse keeps the last value) or one msgpackr special-cases.
      if (names.includes(name) || name === '__proto__' || name === 'hasOwnProperty') return false
      names.push(name)
    }
    if (shapes.length === MAX_SHAPES) shapes.length = 0
    shapes.push(names)
    this.#names = names
    return true
  }

  #sameNames(names: string[]): boolean {
    const n = this.#fields
    if (names.length !== n) return false
    const b = this.#buf
    for (let f = 0; f < n; f++) {
      const name = names[f]!
      const start = this.#nameStart[f]!
      if (this.#nameEnd[f]! - start !== name.length || !sameAt(b, start, name)) return false
    }
    return true
  }

  /**
   * Where the key of the line scanned last is in its bytes: key bytes b[keyStart..keyEnd) when
   * it is a string value (ASCII, no escapes: the bytes are its UTF-8), keyStart -1 when it is a
   * number (then keyText() is its key).
   */
  get keyStart(): number {
    return this.#kind[this.#keyAt] === STRING ? this.#valueStart[this.#keyAt]! : -1
  }

  get keyEnd(): number {
    return this.#valueEnd[this.#keyAt]!
  }

  /** The key of the line scanned last as a string (what scan() returns with wantKey). */
  keyText(): string {
    const at = this.#keyAt
    return this.#kind[at] === STRING
      ? ascii(this.#buf, this.#valueStart[at]!, this.#valueEnd[at]!)
      : String(this.#number[at])
  }

  /** The key list of the line scanned last (shared by the lines of its shape). */
  get names(): string[] {
    return this.#names
  }

  /** Append [key, event] of the line scanned last; false (nothing written) if the batch has no record id left. */
  writeEvent(f: BatchBuffer, key: string): boolean {
    if (this.#fields === 0) return false
    const start = f.pos
    this.#room(f, key)
    f.buf[f.pos++] = 0x92
    encodeString(f, key)
    if (!recordHeader(f, this.#names)) {
      f.pos = start
      return false
    }
    this.writeValues(f)
    return true
  }

  /**
   * Append the values of the line scanned last, what follows the record header: for
   * PreparedEvent, which writes them into a batch later.
   */
  writeValues(f: BatchBuffer): void {
    const n = this.#fields
    this.#room(f, '')
    const src = this.#buf
    for (let i = 0; i < n; i++) {
      switch (this.#kind[i]) {
        case STRING: {
          const vs = this.#valueStart[i]!
          const ve = this.#valueEnd[i]!
          const len = ve - vs
          strHeader(f, f.pos, len)
          const p = f.pos + strHeaderSize(len)
          copy(src, vs, ve, f.buf, p)
          f.pos = p + len
          break
        }
        case NUMBER:
          encodeNumberAt(f, this.#number, i)
          break
        case TRUE:
          f.buf[f.pos++] = 0xc3
          break
        case FALSE:
          f.buf[f.pos++] = 0xc2
          break
        default:
          f.buf[f.pos++] = 0xc0
      }
    }
  }

  /** Room for the event: every name and value is a piece of the line plus headers (a number up to 9 bytes). */
  #room(f: BatchBuffer, key: string): void {
    const need = 3 * key.length + this.#span + 16 * this.#fields + 32
    if (f.pos + need > f.buf.length) grow(f, need)
  }
}

/**
 * Short pieces byte by byte: below ~64 bytes a native copy costs more than it saves (it needs a
 * view of the source, an allocation per call: most events' values are 20-60 bytes).
 */
function copy(src: Uint8Array, from: number, to: number, dst: Buffer, at: number): void {
  if (to - from < 64) for (let k = from; k < to; k++) dst[at++] = src[k]!
  else dst.set(src.subarray(from, to), at)
}

/**
 * An event whose values JsonEventWriter.writeValues wrote ahead (readNdjson checks a whole body
 * before it sends any of it, and scans each line once): writes [key, record header, values],
 * the key from its bytes in the line (or its text, for a number key).
 */
export class PreparedEvent implements KeyedEventWriter {
  #src: Buffer = Buffer.alloc(0)
  #from = 0
  #to = 0
  #names: string[] = []
  #keySrc: Buffer = this.#src
  #keyStart = 0
  #keyEnd = 0
  #keyText: string | null = null

  /**
   * The next event to write: values src[from..to), key list `names`, key `keyText`, or when
   * that is null the key's bytes keySrc[keyStart..keyEnd) (ASCII).
   */
  set(
    src: Buffer,
    from: number,
    to: number,
    names: string[],
    keyText: string | null,
    keySrc: Buffer = src,
    keyStart = 0,
    keyEnd = 0,
  ): this {
    this.#src = src
    this.#from = from
    this.#to = to
    this.#names = names
    this.#keyText = keyText
    this.#keySrc = keySrc
    this.#keyStart = keyStart
    this.#keyEnd = keyEnd
    return this
  }

  writeKeyedEvent(f: BatchBuffer): boolean {
    const start = f.pos
    const keyText = this.#keyText
    const keyLen = keyText === null ? this.#keyEnd - this.#keyStart : 3 * keyText.length
    const need = keyLen + this.#to - this.#from + 16
    if (f.pos + need > f.buf.length) grow(f, need)
    f.buf[f.pos++] = 0x92
    if (keyText !== null) encodeString(f, keyText)
    else {
      strHeader(f, f.pos, keyLen)
      const p = f.pos + strHeaderSize(keyLen)
      copy(this.#keySrc, this.#keyStart, this.#keyEnd, f.buf, p)
      f.pos = p + keyLen
    }
    if (!recordHeader(f, this.#names)) {
      f.pos = start
      return false
    }
    // recordHeader may have grown the buffer for a definition.
    const len = this.#to - this.#from
    if (f.pos + len > f.buf.length) grow(f, len)
    copy(this.#src, this.#from, this.#to, f.buf, f.pos)
    f.pos += len
    return true
  }
}
