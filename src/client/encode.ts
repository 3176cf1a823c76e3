/**
 * Batch encoding: an event is encoded when it is sent, straight into its partition's open batch:
 * a buffer that becomes the batch's payload, one msgpack array of [key, event] exactly as
 * msgpackr would pack it (records on). Used by ShoalClient.send() and, through EventWriter, by
 * the NDJSON readers that write an event from its JSON text without building it
 * (src/ingest/json-event.ts).
 */
import { Packr } from 'msgpackr'

const packr = new Packr({ useRecords: true, moreTypes: true })

// Encoding at send() time touches the event while it is still in the CPU
// cache and lets it die young; packing a whole batch only when its partition's previous batch
// is acked (events wait up to maxBufferedEvents deep) cost several times as much in cache
// misses and promotions by the GC.
//
// Most events are plain objects and arrays of strings, numbers, booleans, null and undefined.
// Those are written here directly, in msgpackr's format: its record extension for objects (a
// definition `d4 72 id [keys]` the first time a key list appears, then just the id byte), the
// same number, string and header encodings. This is several times faster than msgpackr's
// generic path (type dispatch, a transition walk with two for-in loops per object), and a
// worker decodes the batch with msgpackr as before. Anything else in an event (a Date, Map,
// Set, typed array, bigint, class instance, null-prototype object, nesting deeper than 8) makes
// that one event go through msgpackr.pack; its bytes are appended as they are, and since
// msgpackr numbers its own record definitions from 0x40 again, the key lists defined so far are
// forgotten and redefined on their next use. A value msgpackr cannot pack throws from send(),
// and the event is not queued.

/** Room at the start of a batch buffer for its array header (1, 3 or 5 bytes). */
const HEAD_ROOM = 5
/** msgpackr's one-byte record ids: 0x40-0x7f. An event needing more goes through msgpackr. */
export const MAX_SHAPES = 64
const MAX_DEPTH = 8

export interface BatchBuffer {
  buf: Buffer
  view: DataView
  pos: number
  /** Key lists with a record id at this point of the batch (id = 0x40 + index). */
  shapes: string[][]
  /** Index of the last key list matched, tried first. */
  last: number
}

export function newBatchBuffer(size: number): BatchBuffer {
  const buf = Buffer.allocUnsafe(size)
  return {
    buf,
    view: new DataView(buf.buffer, buf.byteOffset, buf.length),
    pos: HEAD_ROOM,
    shapes: [],
    last: 0,
  }
}

export function grow(f: BatchBuffer, need: number): void {
  const buf = Buffer.allocUnsafe(Math.max(f.buf.length * 2, f.pos + need + 1024))
  f.buf.copy(buf, 0, 0, f.pos)
  f.buf = buf
  f.view = new DataView(buf.buffer, buf.byteOffset, buf.length)
}

/** Append [key, event]. Throws what msgpackr throws for a value it cannot pack (nothing appended). */
export function appendEvent(f: BatchBuffer, key: string, event: unknown): void {
  const start = f.pos
  const shapes = f.shapes.length
  if (f.pos + 1 > f.buf.length) grow(f, 1)
  f.buf[f.pos++] = 0x92
  encodeString(f, key)
  if (encodeValue(f, event, 0)) return
  // Undo the attempt (bytes and the key lists it defined), then let msgpackr pack the event.
  f.pos = start
  f.shapes.length = shapes
  f.last = 0
  const packed = packr.pack([key, event])
  if (f.pos + packed.length > f.buf.length) grow(f, packed.length)
  f.buf.set(packed, f.pos)
  f.pos += packed.length
  // msgpackr's own record definitions reused ids from 0x40: ours must be written again.
  f.shapes = []
}

function encodeValue(f: BatchBuffer, v: unknown, depth: number): boolean {
  switch (typeof v) {
    case 'string':
      encodeString(f, v)
      return true
    case 'number':
      encodeNumber(f, v)
      return true
    case 'boolean':
      if (f.pos + 1 > f.buf.length) grow(f, 1)
      f.buf[f.pos++] = v ? 0xc3 : 0xc2
      return true
    case 'undefined':
      if (f.pos + 3 > f.buf.length) grow(f, 3)
      f.buf[f.pos++] = 0xd4
      f.buf[f.pos++] = 0
      f.buf[f.pos++] = 0
      return true
    case 'object': {
      if (v === null) {
        if (f.pos + 1 > f.buf.length) grow(f, 1)
        f.buf[f.pos++] = 0xc0
        return true
      }
      if (depth >= MAX_DEPTH) return false
      const ctor = (v as { constructor?: unknown }).constructor
      if (ctor === Object) return encodeRecord(f, v as Record<string, unknown>, depth + 1)
      if (ctor === Array) return encodeArray(f, v as unknown[], depth + 1)
      return false
    }
    default:
      return false
  }
}

/** A msgpack str header for `bytes` bytes at `p`. */
export function strHeader(f: BatchBuffer, p: number, bytes: number): void {
  const b = f.buf
  if (bytes < 0x20) b[p] = 0xa0 | bytes
  else if (bytes < 0x100) {
    b[p] = 0xd9
    b[p + 1] = bytes
  } else if (bytes < 0x10000) {
    b[p] = 0xda
    b[p + 1] = bytes >> 8
    b[p + 2] = bytes & 0xff
  } else {
    b[p] = 0xdb
    f.view.setUint32(p + 1, bytes)
  }
}

export function strHeaderSize(bytes: number): number {
  return bytes < 0x20 ? 1 : bytes < 0x100 ? 2 : bytes < 0x10000 ? 3 : 5
}

/**
 * A string as msgpackr writes it: UTF-8, with a lone surrogate written as its own 3-byte
 * sequence when the string is shorter than 64 code units (msgpackr's own loop) and as U+FFFD
 * otherwise (Buffer's encoder, which msgpackr uses for longer strings).
 */
export function encodeString(f: BatchBuffer, s: string): void {
  const n = s.length
  if (f.pos + 5 + n * 3 > f.buf.length) grow(f, 5 + n * 3)
  const b = f.buf
  // ASCII, the usual case: the byte length is the length, the header goes first.
  const head = strHeaderSize(n)
  let p = f.pos + head
  let i = 0
  for (; i < n; i++) {
    const c = s.charCodeAt(i)
    if (c >= 0x80) break
    b[p++] = c
  }
  if (i === n) {
    strHeader(f, f.pos, n)
    f.pos = p
    return
  }
  // Otherwise encode after the largest header, then move the bytes behind the right one.
  const start = f.pos + 5
  let bytes: number
  if (n < 0x40) {
    p = start
    for (i = 0; i < n; i++) {
      let c1 = s.charCodeAt(i)
      let c2: number
      if (c1 < 0x80) b[p++] = c1
      else if (c1 < 0x800) {
        b[p++] = (c1 >> 6) | 0xc0
        b[p++] = (c1 & 0x3f) | 0x80
      } else if ((c1 & 0xfc00) === 0xd800 && ((c2 = s.charCodeAt(i + 1)) & 0xfc00) === 0xdc00) {
        c1 = 0x10000 + ((c1 & 0x03ff) << 10) + (c2 & 0x03ff)
        i++
        b[p++] = (c1 >> 18) | 0xf0
        b[p++] = ((c1 >> 12) & 0x3f) | 0x80
        b[p++] = ((c1 >> 6) & 0x3f) | 0x80
        b[p++] = (c1 & 0x3f) | 0x80
      } else {
        b[p++] = (c1 >> 12) | 0xe0
        b[p++] = ((c1 >> 6) & 0x3f) | 0x80
        b[p++] = (c1 & 0x3f) | 0x80
      }
    }
    bytes = p - start
  } else {
    bytes = b.write(s, start, 'utf8')
  }
  const h = strHeaderSize(bytes)
  if (h < 5) b.copyWithin(f.pos + h, start, start + bytes)
  strHeader(f, f.pos, bytes)
  f.pos += h + bytes
}

const numberSlot = new Float64Array(1)

/** A number exactly as msgpackr encodes it with records on (so no fixints 0x40-0x7f). */
export function encodeNumber(f: BatchBuffer, v: number): void {
  numberSlot[0] = v
  encodeNumberAt(f, numberSlot, 0)
}

/**
 * encodeNumber(f, a[i]). For numbers kept in a Float64Array (JsonEventWriter): a double passed
 * to a function that is not inlined is boxed on the heap, which was most of what POST /events
 * allocated per event (two doubles an event: 30 B, and the scavenges that go with it).
 */
export function encodeNumberAt(f: BatchBuffer, a: Float64Array, i: number): void {
  const v = a[i]!
  if (f.pos + 9 > f.buf.length) grow(f, 9)
  const b = f.buf
  if (v >>> 0 === v) {
    if (v < 0x40) b[f.pos++] = v
    else if (v < 0x100) {
      b[f.pos++] = 0xcc
      b[f.pos++] = v
    } else if (v < 0x10000) {
      b[f.pos++] = 0xcd
      b[f.pos++] = v >> 8
      b[f.pos++] = v & 0xff
    } else {
      b[f.pos++] = 0xce
      f.view.setUint32(f.pos, v)
      f.pos += 4
    }
  } else if (v >> 0 === v) {
    if (v >= -0x20) b[f.pos++] = 0x100 + v
    else if (v >= -0x80) {
      b[f.pos++] = 0xd0
      b[f.pos++] = v + 0x100
    } else if (v >= -0x8000) {
      b[f.pos++] = 0xd1
      f.view.setInt16(f.pos, v)
      f.pos += 2
    } else {
      b[f.pos++] = 0xd2
      f.view.setInt32(f.pos, v)
      f.pos += 4
    }
  } else {
    b[f.pos++] = 0xcb
    f.view.setFloat64(f.pos, v)
    f.pos += 8
  }
}

function arrayHeader(f: BatchBuffer, n: number): void {
  if (f.pos + 5 > f.buf.length) grow(f, 5)
  const b = f.buf
  if (n < 0x10) b[f.pos++] = 0x90 | n
  else if (n < 0x10000) {
    b[f.pos++] = 0xdc
    b[f.pos++] = n >> 8
    b[f.pos++] = n & 0xff
  } else {
    b[f.pos++] = 0xdd
    f.view.setUint32(f.pos, n)
    f.pos += 4
  }
}

function encodeArray(f: BatchBuffer, a: unknown[], depth: number): boolean {
  const n = a.length
  arrayHeader(f, n)
  for (let i = 0; i < n; i++) if (!encodeValue(f, a[i], depth)) return false
  return true
}

/** A plain object as a msgpackr record: its own enumerable keys, in order (as msgpackr). */
function encodeRecord(f: BatchBuffer, o: Record<string, unknown>, depth: number): boolean {
  const keys = Object.keys(o)
  if (!recordHeader(f, keys)) return false
  for (let i = 0; i < keys.length; i++) if (!encodeValue(f, o[keys[i]!], depth)) return false
  return true
}

/**
 * The record header for an object with these keys: its id if the batch has defined the key list,
 * else the definition. False (nothing written) when the batch has no id left or a key is one
 * msgpackr special-cases (`__proto__`, `hasOwnProperty`): such objects are left to msgpackr.
 */
export function recordHeader(f: BatchBuffer, keys: string[]): boolean {
  const n = keys.length
  const shapes = f.shapes
  let id = -1
  const last = shapes[f.last]
  if (last !== undefined && (last === keys || sameKeys(last, keys))) id = f.last
  else {
    for (let s = 0; s < shapes.length; s++) {
      if (sameKeys(shapes[s]!, keys)) {
        id = s
        break
      }
    }
  }
  if (id >= 0) {
    if (f.pos + 1 > f.buf.length) grow(f, 1)
    f.buf[f.pos++] = 0x40 + id
    f.last = id
    return true
  }
  if (shapes.length >= MAX_SHAPES) return false
  for (let i = 0; i < n; i++) {
    const k = keys[i]!
    if (k === '__proto__' || k === 'hasOwnProperty') return false
  }
  id = shapes.length
  shapes.push(keys)
  if (f.pos + 3 > f.buf.length) grow(f, 3)
  f.buf[f.pos++] = 0xd4
  f.buf[f.pos++] = 0x72
  f.buf[f.pos++] = 0x40 + id
  arrayHeader(f, n)
  for (let i = 0; i < n; i++) encodeString(f, keys[i]!)
  f.last = id
  return true
}

/**
 * Writes one event's [key, event] into a batch (ShoalClient.sendWritten): for a reader that
 * has the event as text and can encode it without building the object. Returns false, having
 * written nothing, when it cannot (the caller then sends the parsed event).
 */
export interface EventWriter {
  writeEvent(f: BatchBuffer, key: string): boolean
}

/**
 * An EventWriter that also writes the key ([key, event] whole), for a caller that knows the
 * event's partition without the key as a string (ShoalClient.sendWrittenTo).
 */
export interface KeyedEventWriter {
  writeKeyedEvent(f: BatchBuffer): boolean
}

export function sameKeys(a: string[], b: string[]): boolean {
  const n = a.length
  if (n !== b.length) return false
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return false
  return true
}

/** The batch payload: the array header written in front of the events, no copy. */
export function sealBatch(f: BatchBuffer, count: number): Uint8Array {
  const b = f.buf
  if (count < 0x10) {
    b[HEAD_ROOM - 1] = 0x90 | count
    return b.subarray(HEAD_ROOM - 1, f.pos)
  }
  if (count < 0x10000) {
    b[HEAD_ROOM - 3] = 0xdc
    b[HEAD_ROOM - 2] = count >> 8
    b[HEAD_ROOM - 1] = count & 0xff
    return b.subarray(HEAD_ROOM - 3, f.pos)
  }
  b[0] = 0xdd
  f.view.setUint32(1, count)
  return b.subarray(0, f.pos)
}
