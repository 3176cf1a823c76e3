/**
 * The Redis Streams source's entry decoder, fuzzed: whatever a stream entry holds (any fields,
 * any bytes, either format), decodeEntry returns an event with a usable key or a reason, and
 * never throws; and the entry-id helpers never produce an identity outside the exact range.
 */
import fc from 'fast-check'
import { pack } from 'msgpackr'
import { describe, expect, it } from 'vitest'
import { decodeEntry, entrySequence, parseEntryId } from '../../../src/connectors/redis-stream/source.ts'

const json = { dataField: 'data', keyField: 'key', format: 'json' as const }
const mp = { dataField: 'data', keyField: 'key', format: 'msgpack' as const }

function checkOutcome(out: ReturnType<typeof decodeEntry>): void {
  if ('error' in out) {
    expect(typeof out.error).toBe('string')
    expect(out.error.length).toBeGreaterThan(0)
  } else {
    expect(typeof out.key).toBe('string')
    expect(out.key.length).toBeGreaterThan(0)
    expect(typeof out.event).toBe('object')
    expect(out.event).not.toBeNull()
    expect(Array.isArray(out.event)).toBe(false)
  }
}

const bytes = fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a))
const fieldName = fc.oneof(fc.constant(Buffer.from('data')), fc.constant(Buffer.from('key')), bytes)

describe('decodeEntry (fuzzed)', () => {
  it('never throws on arbitrary fields and bytes, in either format', () => {
    fc.assert(
      fc.property(
        fc.option(fc.array(fc.oneof(fieldName, bytes), { maxLength: 9 }), { nil: null }),
        (fields) => {
          checkOutcome(decodeEntry(fields, json))
          checkOutcome(decodeEntry(fields, mp))
        },
      ),
      { numRuns: 2000 },
    )
  })

  it('never throws on arbitrary JSON values and text in the data field', () => {
    const text = fc.oneof(
      fc.jsonValue().map((v) => JSON.stringify(v)),
      fc.string(),
      fc
        .record({ key: fc.oneof(fc.string(), fc.double(), fc.constant(null)), value: fc.jsonValue() })
        .map((v) => JSON.stringify(v)),
    )
    fc.assert(
      fc.property(text, (t) => {
        checkOutcome(decodeEntry([Buffer.from('data'), Buffer.from(t, 'utf8')], json))
      }),
      { numRuns: 2000 },
    )
  })

  it('accepts exactly the objects with a non-empty string or finite number key, in both formats', () => {
    const key = fc.oneof(fc.string(), fc.double(), fc.integer(), fc.constant(null), fc.boolean())
    fc.assert(
      fc.property(key, fc.jsonValue(), (k, value) => {
        const event = { key: k, value }
        const valid = (typeof k === 'string' && k.length > 0) || (typeof k === 'number' && Number.isFinite(k))
        for (const [spec, data] of [
          [json, Buffer.from(JSON.stringify(event), 'utf8')],
          [mp, pack(event)],
        ] as const) {
          const out = decodeEntry([Buffer.from('other'), Buffer.from('x'), Buffer.from('data'), data], spec)
          checkOutcome(out)
          // JSON has no NaN or Infinity: a non-finite number key is written as null.
          if (valid) expect(out).toMatchObject({ key: String(k) })
          else expect('error' in out).toBe(true)
        }
      }),
      { numRuns: 1000 },
    )
  })

  it('names what is wrong', () => {
    expect(decodeEntry(null, json)).toEqual({ error: expect.stringContaining('deleted') })
    expect(decodeEntry([Buffer.from('x'), Buffer.from('{}')], json)).toEqual({
      error: expect.stringContaining("no field 'data'"),
    })
    expect(decodeEntry([Buffer.from('data'), Buffer.from('{no')], json)).toEqual({
      error: expect.stringContaining('not valid json'),
    })
    expect(decodeEntry([Buffer.from('data'), Buffer.from('[1]')], json)).toEqual({
      error: expect.stringContaining('must hold an object (got an array)'),
    })
    expect(decodeEntry([Buffer.from('data'), Buffer.from('{"key":""}')], json)).toEqual({
      error: expect.stringContaining('has no key'),
    })
  })
})

describe('entry ids (fuzzed)', () => {
  it('parses ms-seq ids, rejects anything else, and numbers identities exactly', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string(),
          fc.tuple(fc.nat(), fc.nat()).map(([a, b]) => `${a}-${b}`),
        ),
        (id) => {
          const p = parseEntryId(id)
          const s = entrySequence(id)
          if (p === null) expect(s).toBeNull()
          else {
            expect(Number.isSafeInteger(p[0]) && Number.isSafeInteger(p[1])).toBe(true)
            if (s !== null) {
              expect(Number.isSafeInteger(s.sequence)).toBe(true)
              expect(s.sequence).toBeLessThan(2 ** 52)
            }
          }
        },
      ),
      { numRuns: 3000 },
    )
  })

  it('numbers an id Redis writes (digits-dash-digits) by its value, and nothing else', () => {
    fc.assert(
      fc.property(fc.nat(Number.MAX_SAFE_INTEGER), fc.nat(2 ** 31 - 1), (ms, seq) => {
        expect(entrySequence(`${ms}-${seq}`)).toEqual({
          bucket: Math.floor(ms / 2 ** 21),
          sequence: (ms % 2 ** 21) * 2 ** 31 + seq,
        })
      }),
      { numRuns: 3000 },
    )
    // Number() would take each of these; Redis never writes them.
    for (const id of ['1e3-1', ' 1-2', '+1-2', '1-+2', '0x10-1', '1.5-1', '1-2 ', '1-', '-1', '1--2', '']) {
      expect(entrySequence(id), id).toBeNull()
    }
    expect(entrySequence(`1-${2 ** 31}`)).toBeNull()
    expect(entrySequence(`${2 ** 53}-1`)).toBeNull()
  })

  it('sequences grow with ids inside a bucket', () => {
    fc.assert(
      fc.property(fc.nat(2 ** 40), fc.nat(2 ** 31 - 2), fc.nat(2 ** 31 - 2), (ms, a, b) => {
        const x = entrySequence(`${ms}-${Math.min(a, b)}`)!
        const y = entrySequence(`${ms}-${Math.max(a, b) + 1}`)!
        expect(x.bucket).toBe(y.bucket)
        expect(x.sequence).toBeLessThan(y.sequence)
      }),
    )
  })
})
