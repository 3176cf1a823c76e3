/**
 * CommittedState (a partition's committed checkpoint in the memory and file stores) against a
 * Map: any sequence of merges (changed values, deleted keys) and full replacements holds exactly
 * the keys and values the Map does, and a state once built never changes (restores read it while
 * later commits build the next one).
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { CommittedState, packPairs } from '../../../src/state/checkpoint/committed.ts'

const key = fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f', '', 'ключ')
const value = fc.uint8Array({ maxLength: 6 })
const commit = fc.record({
  full: fc.boolean(),
  changed: fc.array(fc.tuple(key, value), { maxLength: 6 }),
  deleted: fc.array(key, { maxLength: 3 }),
})

function asObject(s: CommittedState): Record<string, number[]> {
  const out: Record<string, number[]> = {}
  for (const [k, v] of s.entries()) {
    expect(Object.hasOwn(out, k)).toBe(false) // each key once
    out[k] = [...v]
  }
  return out
}

describe('CommittedState', () => {
  it('merges like a Map and never changes once built', () => {
    fc.assert(
      fc.property(fc.array(commit, { maxLength: 12 }), (commits) => {
        let state = CommittedState.EMPTY
        const model = new Map<string, Uint8Array>()
        const seen: [CommittedState, Record<string, number[]>][] = []
        for (const c of commits) {
          const changed = new Map(c.changed)
          const deleted = new Set(c.deleted.filter((k) => !changed.has(k)))
          if (c.full) {
            state = CommittedState.from(packPairs(c.changed)) // a key listed twice: its last value
            model.clear()
          } else {
            state = state.merge(packPairs(c.changed), deleted)
            for (const k of deleted) model.delete(k)
          }
          for (const [k, v] of changed) model.set(k, v)
          const want = Object.fromEntries([...model].map(([k, v]) => [k, [...v]]))
          expect(asObject(state)).toEqual(want)
          expect(state.size).toBe(model.size)
          seen.push([state, want])
        }
        for (const [s, want] of seen) expect(asObject(s)).toEqual(want)
      }),
    )
  })

  it('copies the values it is given', () => {
    const v = Uint8Array.from([1, 2, 3])
    const s = CommittedState.from({ keys: ['k'], data: v, ends: Uint32Array.of(3) })
    v[0] = 9
    expect([...s.value(0)]).toEqual([1, 2, 3])
  })
})
