/**
 * The processing thread's batch decoder (src/processing/event-decoder.ts) against msgpackr:
 * for any batch (written by the client's encoder or by msgpackr, any values, or arbitrary and
 * truncated bytes) it returns exactly what msgpackr decodes, or null (msgpackr decodes it); it
 * never returns a value where msgpackr throws. And the usual events take its own path.
 */
import fc from 'fast-check'
import { Packr } from 'msgpackr'
import { describe, expect, it } from 'vitest'
import { appendEvent, newBatchBuffer, sealBatch } from '../../../src/client/encode.ts'
import { decodeEvents } from '../../../src/processing/event-decoder.ts'

const packr = new Packr({ useRecords: true, moreTypes: true })

function viaMsgpackr(bytes: Uint8Array): { ok: true; value: unknown } | { ok: false } {
  try {
    // A fresh unpacker each time: no record definitions carried over from another batch.
    return { ok: true, value: new Packr({ useRecords: true, moreTypes: true }).unpack(bytes) }
  } catch {
    return { ok: false }
  }
}

function clientBatch(events: [string, unknown][]): Uint8Array {
  const f = newBatchBuffer(64)
  for (const [k, e] of events) appendEvent(f, k, e)
  return sealBatch(f, events.length)
}

/** Decoded by this decoder, or by msgpackr where it declines: always msgpackr's value. */
function checkAgainstMsgpackr(bytes: Uint8Array): unknown {
  const ours = decodeEvents(bytes)
  const ref = viaMsgpackr(bytes)
  if (ours !== null) {
    expect(ref.ok).toBe(true)
    if (ref.ok) expect(ours).toStrictEqual(ref.value)
  }
  return ours
}

/** JSON-like values: what most events are, and what the client encodes itself. */
const plain: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof(
    { maxDepth: 4 },
    fc.string(),
    fc.string({ unit: 'binary' }),
    fc.string({ unit: 'grapheme' }),
    fc.integer(),
    fc.integer({ min: -(2 ** 31), max: 2 ** 32 - 1 }),
    fc.double(),
    fc.boolean(),
    fc.constant(null),
    fc.constant(undefined),
    fc.array(tie('value'), { maxLength: 20 }),
    fc.dictionary(
      fc.oneof(fc.string(), fc.constantFrom('a', 'value', 'ts', '1', 'x y', 'toString')),
      tie('value'),
      {
        maxKeys: 6,
      },
    ),
  ),
})).value

const events = fc.array(fc.tuple(fc.string(), plain), { maxLength: 30 })

describe('decodeEvents', () => {
  it('decodes the client encoder’s batches of JSON-like events itself, exactly as msgpackr', () => {
    fc.assert(
      fc.property(events, (evs) => {
        const bytes = clientBatch(evs)
        const ours = checkAgainstMsgpackr(bytes)
        // Strings that are not valid UTF-16 (lone surrogates) encode to bytes the decoder
        // leaves to msgpackr; everything else here is its own.
        const wellFormed = JSON.stringify(evs, (_k, v: unknown) => (v === undefined ? null : v))
        if (!/[\ud800-\udfff]/.test(wellFormed)) expect(ours).not.toBeNull()
      }),
      { numRuns: 1500 },
    )
  })

  it('matches msgpackr on whatever msgpackr packs (records on, more types)', () => {
    const any = fc.anything({
      withDate: true,
      withMap: true,
      withSet: true,
      withTypedArray: true,
      withBigInt: true,
      withNullPrototype: false,
      withObjectString: false,
      withBoxedValues: false,
    })
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.string(), any), { maxLength: 12 }), (evs) => {
        checkAgainstMsgpackr(packr.pack(evs))
      }),
      { numRuns: 1500 },
    )
  })

  it('never decodes what msgpackr refuses, and matches it on arbitrary and truncated bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 80 }), (bytes) => {
        checkAgainstMsgpackr(bytes)
      }),
      { numRuns: 5000 },
    )
    fc.assert(
      fc.property(events, fc.nat(), (evs, cut) => {
        const bytes = clientBatch(evs)
        checkAgainstMsgpackr(bytes.subarray(0, cut % (bytes.length + 1)))
      }),
      { numRuns: 1500 },
    )
  })

  it('keeps record ids to their batch: an id defined in one batch is unknown in the next', () => {
    const a = clientBatch([['k', { value: 1, ts: 2 }]])
    expect(decodeEvents(a)).toStrictEqual([['k', { value: 1, ts: 2 }]])
    // [['k', <record 0x40>]] without its definition: msgpackr reads the byte as the number 64.
    const b = Uint8Array.from([0x91, 0x92, 0xa1, 0x6b, 0x40])
    expect(decodeEvents(b)).toBeNull()
    expect(viaMsgpackr(b)).toStrictEqual({ ok: true, value: [['k', 64]] })
  })

  it('reads many batches of one shape and of many shapes with the same results', () => {
    for (let i = 0; i < 50; i++) {
      const evs: [string, unknown][] = []
      for (let j = 0; j < 10; j++)
        evs.push([`key-${j}`, { [`f${i % 7}`]: j, type: 'click', n: [j, { g: i }] }])
      expect(decodeEvents(clientBatch(evs))).toStrictEqual(viaMsgpackr(clientBatch(evs)).ok && evs)
    }
  })

  it('tells apart key lists that join to the same text', () => {
    const lists = [[], [''], ['a\0', 'b'], ['a', '\0b'], ['a', 'b'], ['b', 'a']]
    for (let round = 0; round < 2; round++) {
      for (const keys of lists) {
        const event = Object.fromEntries(keys.map((k, i) => [k, i]))
        const bytes = clientBatch([['k', event]])
        expect(decodeEvents(bytes)).toStrictEqual([['k', event]])
      }
    }
  })

  it('leaves nesting too deep for its stack to msgpackr instead of throwing', () => {
    const bytes = new Uint8Array(500_001).fill(0x91)
    bytes[500_000] = 0xc0
    expect(decodeEvents(bytes)).toBeNull()
  })
})
