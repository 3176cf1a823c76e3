/**
 * The file sink's lines made from packed records (src/connectors/file/lines.ts) must be, byte for
 * byte, the lines of the decoded records (JSON.stringify of {stream, key, partition, event,
 * offset, index}), and anything it does not read must leave the buffer as it was. Packed as the
 * processing threads pack them (msgpackr, records on, moreTypes).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import { Packr } from 'msgpackr'
import { describe, expect, it } from 'vitest'
import { lineBuffer, packedLines } from '../../../src/connectors/file/lines.ts'
import { NdjsonFileSink } from '../../../src/connectors/file/sink.ts'
import { LazyEmittedBatch, type EmittedRecord } from '../../../src/connectors/sink.ts'

const packr = new Packr({ useRecords: true, moreTypes: true })

/** The lines of the records as the file sink writes decoded ones. */
function expected(
  records: readonly EmittedRecord[],
  partition: number,
  offset: number | null,
  first: number,
): string {
  return records
    .map(
      ([stream, key, event], i) =>
        `${JSON.stringify({ stream, key, partition, event, offset, index: first + i })}\n`,
    )
    .join('')
}

/** Lines from the packed bytes, or null if packedLines gives up (the buffer must be untouched). */
function fromPacked(
  payload: Uint8Array,
  count: number,
  partition: number,
  offset: number | null,
  first: number,
): string | null {
  const out = lineBuffer(8)
  out.buf.write('prefix')
  out.pos = 6
  const ok = packedLines(out, payload, count, partition, offset, first)
  if (!ok) {
    expect(out.pos).toBe(6)
    return null
  }
  expect(out.buf.subarray(0, 6).toString()).toBe('prefix')
  return out.buf.toString('utf8', 6, out.pos)
}

const text = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.string({ unit: 'grapheme', maxLength: 6 }),
  fc.string({ unit: 'binary', maxLength: 6 }),
)
const value = fc.letrec((tie) => ({
  v: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    text,
    fc.integer(),
    fc.integer({ min: -200, max: 70_000 }),
    fc.double(),
    fc.constantFrom(0, -0, 2 ** 32, 2 ** 53, -(2 ** 31), 1e21, 1.5, NaN, Infinity),
    fc.boolean(),
    fc.constant(null),
    fc.constant(undefined),
    fc.array(tie('v'), { maxLength: 4 }),
    fc.dictionary(fc.oneof(text, fc.constantFrom('1', 'key', '__proto__')), tie('v'), { maxKeys: 4 }),
  ),
})).v
const record = fc.tuple(text, text, value) as fc.Arbitrary<EmittedRecord>

describe('packedLines', () => {
  it('writes the lines of the decoded records, or gives up and writes nothing', () => {
    let taken = 0
    let runs = 0
    fc.assert(
      fc.property(
        fc.array(record, { maxLength: 6 }),
        fc.nat(255),
        fc.option(fc.nat(1e9), { nil: null }),
        fc.nat(1000),
        (records, partition, offset, first) => {
          runs++
          const payload = packr.pack(records)
          const decoded = packr.unpack(payload) as EmittedRecord[]
          let want: string
          try {
            want = expected(decoded, partition, offset, first)
          } catch {
            // Not JSON (a BigInt): the file sink refuses it; packedLines must not take it.
            expect(fromPacked(payload, records.length, partition, offset, first)).toBeNull()
            return
          }
          const got = fromPacked(payload, records.length, partition, offset, first)
          if (got !== null) {
            taken++
            expect(got).toBe(want)
          }
        },
      ),
      { numRuns: 3000 },
    )
    // Most random data is plain: the fast path must actually be taken.
    expect(taken).toBeGreaterThan(runs / 4)
  })

  it('takes window results and plain events, with every kind of number and string escape', () => {
    const records: EmittedRecord[] = [
      ['windows', 'k1', { key: 'k1', start: 60_000, end: 120_000, state: { count: 10, sum: 1.5 } }],
      ['windows', 'k2', { key: 'k2', start: 60_000, end: 120_000, state: { count: 3, sum: -2 } }],
      [
        'out',
        'q"\\\n\t\u0001é😀\u2028',
        [1, -1, -200, 300, 70_000, -70_000, 2 ** 31, -(2 ** 31), 0.1, 1e21, 1e-7, null, true, false, [], {}],
      ],
      ['out', '', { nested: { deeper: [{ a: 'x' }] } }],
    ]
    const payload = packr.pack(records)
    expect(fromPacked(payload, records.length, 3, 17, 5)).toBe(expected(records, 3, 17, 5))
    expect(fromPacked(payload, records.length, 3, null, 0)).toBe(expected(records, 3, null, 0))
  })

  it('gives up on what only msgpackr reads, and on a count or payload that does not match', () => {
    for (const event of [
      undefined,
      { a: undefined },
      new Date(0),
      new Map([['a', 1]]),
      10n,
      new Uint8Array(2),
      { 2: 'x', a: 1 },
      '\ud800',
    ]) {
      const payload = packr.pack([['s', 'k', event]])
      expect(fromPacked(payload, 1, 0, 0, 0), typeof event).toBeNull()
    }
    const payload = packr.pack([['s', 'k', 1]])
    expect(fromPacked(payload, 2, 0, 0, 0)).toBeNull()
    expect(fromPacked(payload.subarray(0, payload.length - 1), 1, 0, 0, 0)).toBeNull()
    expect(fromPacked(Buffer.concat([payload, Buffer.from([0xc0])]), 1, 0, 0, 0)).toBeNull()
  })

  it('the file sink writes packed batches (fast or not) exactly as decoded ones', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'shoal-lines-'))
    try {
      const a = new NdjsonFileSink(join(dir, 'a.ndjson'))
      const b = new NdjsonFileSink(join(dir, 'b.ndjson'))
      await a.open()
      await b.open()
      const batches: [number, number | null, EmittedRecord[]][] = [
        [1, 7, [['windows', 'k', { key: 'k', start: 0, end: 60_000, state: { count: 2 } }]]],
        [
          2,
          null,
          [
            ['out', 'd', { at: new Date(5) }],
            ['out', 'e', 1],
          ],
        ], // a Date: decoded, then formatted
        [
          1,
          8,
          [
            ['out', 'f', 'x'],
            ['out', 'g', { y: [1, 2] }],
          ],
        ],
      ]
      await a.writeEvents(
        batches.map(
          ([partition, offset, records]) =>
            new LazyEmittedBatch({
              partition,
              offset,
              firstIndex: 0,
              count: records.length,
              payload: packr.pack(records),
            }),
        ),
      )
      await b.writeEvents(
        batches.map(([partition, offset, records]) => ({
          partition,
          offset,
          firstIndex: 0,
          records: packr.unpack(packr.pack(records)) as EmittedRecord[],
        })),
      )
      await a.close()
      await b.close()
      const written = readFileSync(join(dir, 'a.ndjson'), 'utf8')
      expect(written).toBe(readFileSync(join(dir, 'b.ndjson'), 'utf8'))
      expect(written.split('\n')).toHaveLength(6)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
