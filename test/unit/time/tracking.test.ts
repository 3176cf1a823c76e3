/**
 * Change tracking of TimedPartition for incremental snapshots: off until the first load or
 * snapshot (nothing can be checkpointed before), then every changed or deleted key once.
 */
import { describe, expect, it } from 'vitest'
import { defineJob } from '../../../src/processing/job.ts'
import { TIME_KEY } from '../../../src/processing/time/codec.ts'
import { TimedPartition, type TimeOutput } from '../../../src/processing/time/runtime.ts'
import { windows } from '../../../src/processing/windows.ts'
import type { AnyJob } from './harness.ts'

const job = defineJob<{ ts: number }, { n: number }>({
  name: 'tracking',
  eventTime: (e) => e.ts,
  window: windows.tumbling({ sizeMs: 10 }),
  init: () => ({ n: 0 }),
  process(acc) {
    acc.n++
  },
}) as AnyJob

const out = (): TimeOutput => ({ emitted: null, deadLetters: null })
const keysOf = (snap: { entries: [string, unknown][] }): string[] =>
  snap.entries.map(([k]) => k).filter((k) => k !== TIME_KEY)

describe('TimedPartition change tracking', () => {
  it('before any snapshot, the first one holds the live keys and no deletions', () => {
    const p = new TimedPartition(job, 0)
    // a and b open [0,10); the event at 25 fires and drops them, c stays open in [20,30).
    p.apply(
      [
        ['a', { ts: 1 }],
        ['b', { ts: 2 }],
        ['c', { ts: 25 }],
      ],
      out(),
    )
    expect(p.size).toBe(1)
    const snap = p.snapshot(false)
    expect(keysOf(snap)).toEqual(['c'])
    expect(snap.deleted).toEqual([])
  })

  it('after a snapshot, a key dropped and back before the next is written, not deleted, once', () => {
    const p = new TimedPartition(job, 0)
    p.apply([['a', { ts: 1 }]], out())
    p.snapshot(false)
    const o = out()
    // a's [0,10) fires and is dropped (a deleted), then a opens [10,20).
    p.apply(
      [
        ['b', { ts: 11 }],
        ['a', { ts: 15 }],
        ['a', { ts: 16 }],
      ],
      o,
    )
    expect(o.emitted).toEqual([['windows', 'a', { key: 'a', start: 0, end: 10, state: { n: 1 } }]])
    const snap = p.snapshot(false)
    expect(keysOf(snap).sort()).toEqual(['a', 'b'])
    expect(snap.deleted).toEqual([])
    expect(p.view('a')).toEqual({ windows: [{ start: 10, end: 20, state: { n: 2 } }] })
  })

  it('after a snapshot, a dropped key is reported deleted once and is gone from views', () => {
    const p = new TimedPartition(job, 0)
    p.apply([['a', { ts: 1 }]], out())
    p.snapshot(false)
    p.apply([['b', { ts: 15 }]], out()) // W = 15: a's window fires, a holds nothing
    expect(p.view('a')).toBeUndefined()
    expect(p.dump().map(([k]) => k)).toEqual(['b'])
    expect(p.size).toBe(1)
    const snap = p.snapshot(false)
    expect(keysOf(snap)).toEqual(['b'])
    expect(snap.deleted).toEqual(['a'])
    expect(p.snapshot(false).deleted).toEqual([])
  })

  it('untracked, keys whose windows closed are swept, and reused windows start afresh', () => {
    const p = new TimedPartition(job, 0)
    const keys = Array.from({ length: 3000 }, (_, i) => `k${i}`)
    for (let minute = 0; minute < 3; minute++) {
      const o = out()
      p.apply(
        keys.map((k) => [k, { ts: minute * 10 + 1 }]),
        o,
      )
      // The previous windows fired when the first event of this round passed their end.
      expect(o.emitted?.length ?? 0).toBe(minute === 0 ? 0 : keys.length)
      if (minute > 0) expect(o.emitted![0]![2]).toMatchObject({ start: (minute - 1) * 10, state: { n: 1 } })
      expect(p.size).toBe(keys.length)
    }
    p.apply([['other', { ts: 100 }]], out()) // every key's window fires and closes
    expect(p.size).toBe(1)
    expect(p.view('k1')).toBeUndefined()
    const snap = p.snapshot(false)
    expect(keysOf(snap)).toEqual(['other'])
    expect(snap.deleted).toEqual([])
  })

  it('after a load, deletions of loaded keys are tracked', () => {
    const p = new TimedPartition(job, 0)
    p.apply([['a', { ts: 1 }]], out())
    const stored = p.snapshot(true).entries
    const q = new TimedPartition(job, 0)
    for (const [k, v] of stored) q.load(k, v)
    q.apply([['b', { ts: 15 }]], out())
    expect(q.snapshot(false).deleted).toEqual(['a'])
  })
})
