/**
 * mergeStateBatches (the state a sink that is behind writes instead of several checkpoints):
 * writing the merged batch leaves a table exactly as writing the batches one after the other.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { mergeStateBatches } from '../../../src/connectors/runner.ts'
import type { StateBatch } from '../../../src/connectors/sink.ts'

/** One partition's rows after a write (a full write replaces the partition's rows). */
function apply(table: ReadonlyMap<string, unknown>, b: StateBatch): Map<string, unknown> {
  const t = b.full ? new Map<string, unknown>() : new Map(table)
  for (const k of b.deletes) t.delete(k)
  for (const [k, v] of b.upserts) t.set(k, v)
  return t
}

const key = fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f')
/** A checkpoint's batch: a key is either written or deleted, not both. */
const batch = (version: number): fc.Arbitrary<StateBatch> =>
  fc
    .record({
      upserts: fc.uniqueArray(fc.tuple(key, fc.integer()), { selector: (e) => e[0], maxLength: 6 }),
      deletes: fc.uniqueArray(key, { maxLength: 6 }),
      full: fc.boolean(),
    })
    .map(({ upserts, deletes, full }) => ({
      partition: 3,
      version,
      upserts,
      deletes: full ? [] : deletes.filter((d) => !upserts.some(([k]) => k === d)),
      full,
    }))

describe('mergeStateBatches', () => {
  it('writing the merge equals writing each batch in turn, for any run of checkpoints', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(key, fc.integer()), { selector: (e) => e[0] }),
        fc.array(fc.nat(3), { minLength: 1, maxLength: 6 }).chain((gaps) => {
          let v = 0
          return fc.tuple(...gaps.map((g) => batch((v += g + 1))))
        }),
        (rows, batches) => {
          const start = new Map<string, unknown>(rows)
          const oneByOne = batches.reduce(apply, start)
          const merged = batches.slice(1).reduce(mergeStateBatches, batches[0]!)
          expect(apply(start, merged)).toEqual(oneByOne)
          expect(merged.version).toBe(batches[batches.length - 1]!.version)
          expect(merged.full).toBe(batches.some((b) => b.full))
          // A key is never both written and deleted by one batch.
          for (const d of merged.deletes) expect(merged.upserts.some(([k]) => k === d)).toBe(false)
        },
      ),
      { numRuns: 3000 },
    )
  })
})
