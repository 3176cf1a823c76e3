/**
 * JsonEventWriter: an NDJSON line's event written from its bytes must be, byte for byte, what
 * the client writes for JSON.parse(line) (appendEvent), and a line it is not sure of (malformed,
 * or just not simple) must be left to JSON.parse. (The byte line splitter: ndjson.test.ts.)
 */
import fc from 'fast-check'
import { Packr } from 'msgpackr'
import { describe, expect, it } from 'vitest'
import {
  MAX_SHAPES,
  appendEvent,
  newBatchBuffer,
  sealBatch,
  type BatchBuffer,
} from '../../../src/client/encode.ts'
import { JsonEventWriter, MAX_FIELDS, PreparedEvent } from '../../../src/ingest/json-event.ts'
import { parseNdjsonLine } from '../../../src/ingest/ndjson.ts'
import { hashKey, hashKeyBytes } from '../../../src/protocol/partition.ts'

const unpackr = new Packr({ useRecords: true, moreTypes: true })

/** The bytes the client writes for `line` when it is parsed (null: parseNdjsonLine refuses it). */
function parsedBytes(line: string, keyField: string, into: BatchBuffer = newBatchBuffer(16)): Buffer | null {
  const r = parseNdjsonLine(line, keyField)
  if (r === null || typeof r === 'string') return null
  const from = into.pos
  appendEvent(into, r.key, r.event)
  return Buffer.from(into.buf.subarray(from, into.pos))
}

/** The bytes the writer writes for `line`, or null if it does not take it. */
function writtenBytes(
  w: JsonEventWriter,
  line: string | Buffer,
  into: BatchBuffer = newBatchBuffer(16),
): { key: string; bytes: Buffer } | null {
  const b = typeof line === 'string' ? Buffer.from(line) : line
  const key = w.scan(b, 0, b.length)
  if (key === null) return null
  const from = into.pos
  expect(w.writeEvent(into, key)).toBe(true)
  return { key, bytes: Buffer.from(into.buf.subarray(from, into.pos)) }
}

/**
 * The bytes POST /events writes for `line`: its values written ahead (writeValues), then the
 * event completed by PreparedEvent with the key from its bytes; null if the writer does not take
 * it. Also checks that the key's bytes hash as the key does.
 */
function preparedBytes(line: string): Buffer | null {
  const w = new JsonEventWriter('key')
  const b = Buffer.from(` ${line} `)
  if (w.scan(b, 1, b.length - 1, false) === null) return null
  const values = newBatchBuffer(16)
  const from = values.pos
  w.writeValues(values)
  const keyStart = w.keyStart
  const key = w.keyText()
  if (keyStart >= 0) {
    expect(b.toString('latin1', keyStart, w.keyEnd)).toBe(key)
    expect(hashKeyBytes(b, keyStart, w.keyEnd)).toBe(hashKey(key))
  }
  const into = newBatchBuffer(16)
  const start = into.pos
  const prepared = new PreparedEvent().set(
    values.buf,
    from,
    values.pos,
    w.names,
    keyStart < 0 ? key : null,
    b,
    keyStart,
    w.keyEnd,
  )
  expect(prepared.writeKeyedEvent(into)).toBe(true)
  return Buffer.from(into.buf.subarray(start, into.pos))
}

/** Whatever the writer takes must be valid, keyed the same and written as the parsed event is. */
function checkLine(line: string, keyField = 'key'): boolean {
  const w = new JsonEventWriter(keyField)
  const written = writtenBytes(w, line)
  if (written === null) return false
  const r = parseNdjsonLine(line, keyField)
  expect(r, line).not.toBeNull()
  expect(typeof r, line).toBe('object')
  expect(written.key).toBe((r as { key: string }).key)
  expect(written.bytes.equals(parsedBytes(line, keyField)!), line).toBe(true)
  if (keyField === 'key') expect(preparedBytes(line)?.equals(written.bytes), line).toBe(true)
  return true
}

const name = fc.stringMatching(/^[a-zA-Z_$][a-zA-Z0-9_$ .-]{0,12}$/)
const flatValue = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.stringMatching(/^[ -~]{0,200}$/),
  fc.integer(),
  fc.double(),
  fc.double({ min: -1e6, max: 1e6 }),
  fc.constantFrom(0, -0, 1e21, 1e-7, 2 ** 53, 2 ** 53 + 2, 1.7976931348623157e308, 5e-324),
  fc.boolean(),
  fc.constant(null),
)
const flatEvent = fc
  .tuple(
    fc.oneof(fc.string({ maxLength: 20 }), fc.integer(), fc.double()),
    fc.dictionary(name, flatValue, { maxKeys: 8 }),
  )
  .map(([key, rest]) => ({ ...rest, key }))

describe('JsonEventWriter', () => {
  it('writes flat events exactly as the client writes them parsed', () => {
    fc.assert(
      fc.property(flatEvent, (event) => {
        const line = JSON.stringify(event)
        const taken = checkLine(line)
        // ASCII without escapes and a finite key: the writer must take it (it is the point).
        const plain = /^[ -~]*$/.test(line) && !line.includes('\\') && !/"\d[^"]*":/.test(line)
        if (plain && (typeof event.key === 'string' || Number.isFinite(event.key)))
          expect(taken, line).toBe(true)
      }),
      { numRuns: 2000 },
    )
  })

  it('parses numbers as JSON.parse does', () => {
    const number = fc.stringMatching(/^-?(0|[1-9]\d{0,24})(\.\d{1,24})?([eE][+-]?\d{1,3})?$/)
    fc.assert(
      fc.property(number, (n) => {
        const line = `{"key":"k","n":${n}}`
        expect(checkLine(line), line).toBe(true)
        const w = new JsonEventWriter('key')
        // A fresh batch: the bytes define their key list, so they decode alone.
        const [, ev] = unpackr.unpack(writtenBytes(w, line)!.bytes) as [string, { n: number }]
        // The client writes -0 as 0, as msgpackr does (checkLine compared the bytes).
        const parsed = JSON.parse(n) as number
        expect(Object.is(ev.n, parsed === 0 ? 0 : parsed), n).toBe(true)
      }),
      { numRuns: 3000 },
    )
    for (const n of [
      '0.1',
      '1e22',
      '1e23',
      '123456789012345678',
      '9007199254740993',
      '-0',
      '0e5',
      '1E-400',
      '1e400',
    ])
      expect(checkLine(`{"key":${n}}`), n).toBe(true)
  })

  it('never takes a line JSON.parse refuses, whatever the bytes (mutated lines)', () => {
    const alphabet = fc.constantFrom(...'{}[]":,. -+eE0123456789truefalsnl\\\t\u00e9x'.split(''))
    const mutation = fc.tuple(fc.nat(), fc.nat(3), fc.array(alphabet, { maxLength: 3 }))
    fc.assert(
      fc.property(flatEvent, fc.array(mutation, { minLength: 1, maxLength: 4 }), (event, edits) => {
        let line = JSON.stringify(event)
        for (const [at, del, ins] of edits) {
          const i = at % (line.length + 1)
          line = line.slice(0, i) + ins.join('') + line.slice(i + del)
        }
        checkLine(line)
      }),
      { numRuns: 5000 },
    )
    fc.assert(
      fc.property(fc.string({ maxLength: 60 }), (s) => void checkLine(s)),
      { numRuns: 3000 },
    )
  })

  it('leaves to JSON.parse what it is not sure of', () => {
    const w = new JsonEventWriter('key')
    for (const line of [
      '',
      '   ',
      '{}',
      '{"key":"a","key":"b"}', // a name twice: JSON.parse keeps the last value
      '{"key":"a","n":1,"n":2}',
      '{"key":"a","1":2}', // index-like names come first in JSON.parse's object
      '{"key":"a","__proto__":1}', // msgpackr's special case
      '{"key":"a","v":{"x":1}}', // nested
      '{"key":"a","v":[1]}',
      '{"key":"a\\"b"}', // escapes
      '{"key":"é"}', // not ASCII
      '{"key":true}', // a key that is not a string or number
      '{"key":null}',
      '{"value":1}', // no key
      '{"key":"a"} x',
      '{"key":"a",}',
      '{"key":01}',
      '{"key":1.}',
      '{"key":.5}',
      '{"key":1e}',
      '{"key":"a"',
      '[{"key":"a"}]',
      `{${Array.from({ length: MAX_FIELDS + 1 }, (_, i) => `"f${i}":${i}`).join(',')},"key":"a"}`,
    ]) {
      expect(w.scan(Buffer.from(line), 0, Buffer.byteLength(line)), line).toBeNull()
    }
    expect(checkLine(' { "key" : "a" ,\t"n" : -1.5e3 , "t":true,"f":false,"z":null } ')).toBe(true)
    expect(checkLine('{"user":"u1","v":1}', 'user')).toBe(true)
  })

  it('shares record definitions with events the client wrote, in one batch', () => {
    const w = new JsonEventWriter('key')
    const a = newBatchBuffer(16)
    const b = newBatchBuffer(16)
    const lines = ['{"key":"a","v":1}', '{"key":"b","w":2}', '{"key":"c","v":3}', '{"key":"d","w":4}']
    lines.forEach((line, i) => {
      const r = parseNdjsonLine(line, 'key') as { key: string; event: unknown }
      // Alternate: the writer and the client each define some key lists and reuse the other's.
      if (i % 2 === 0) writtenBytes(w, line, a)
      else appendEvent(a, r.key, r.event)
      appendEvent(b, r.key, r.event)
    })
    // From byte 5: the room left for the array header.
    expect(a.buf.subarray(5, a.pos).equals(b.buf.subarray(5, b.pos))).toBe(true)
    const events = lines.map((l) => JSON.parse(l) as { key: string })
    expect(unpackr.unpack(sealBatch(a, 4))).toEqual(events.map((e) => [e.key, e]))
  })

  it('writes nothing when the batch has no record id left', () => {
    const f = newBatchBuffer(16)
    for (let i = 0; i < MAX_SHAPES; i++) appendEvent(f, 'k', { [`f${i}`]: i })
    const w = new JsonEventWriter('key')
    const line = Buffer.from('{"key":"a","new":1}')
    const key = w.scan(line, 0, line.length)!
    const pos = f.pos
    expect(w.writeEvent(f, key)).toBe(false)
    expect(f.pos).toBe(pos)
  })

  it('scans a line inside a larger buffer', () => {
    const b = Buffer.from('xx{"key":"a","v":2}yy')
    const w = new JsonEventWriter('key')
    expect(w.scan(b, 2, b.length - 2)).toBe('a')
    expect(w.scan(b, 2, b.length - 2, false)).toBe('')
    expect(w.scan(b, 0, b.length)).toBeNull()
  })
})
