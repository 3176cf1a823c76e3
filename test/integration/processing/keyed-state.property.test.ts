/**
 * The processing threads' keyed state (jobs without time) against a model: random sequences of
 * batches, incremental and full snapshots, loads (replacing or not), reads, dumps and drops on a
 * real Engine (a piscina thread). An incremental snapshot must hold exactly the keys changed since
 * the previous snapshot with their current state, a full one every key; reads and dumps see the
 * state the model has. The job covers the odd cases: states changed in place and replaced by new
 * objects, an init that returns nothing (a state stored as undefined is initialized again), a
 * `process` that returns nothing, and events that throw (dead-lettered, the state unchanged).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import { Packr } from 'msgpackr'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Engine } from '../../../src/processing/engine.ts'
import type { PackedStates } from '../../../src/processing/task-types.ts'
import { packStates, statePackr } from '../../helpers/packed-states.ts'

/** Batches: msgpack records, as the client sends them. */
const packr = new Packr({ useRecords: true, moreTypes: true })

type Op = 'mut' | 'new' | 'keep' | 'throw'
interface Ev {
  op: Op
  v: number
}

const JOB = `export default {
  name: 'keyed-model',
  // Keys starting with 'u' start with no state at all.
  init: (key) => (key.startsWith('u') ? undefined : { n: 0 }),
  process(s, e) {
    if (e.op === 'throw') throw new Error('refused ' + e.v)
    if (e.op === 'keep') return undefined
    if (e.op === 'new') return { n: (s === undefined ? 0 : s.n) + e.v }
    if (s === undefined) return { n: e.v }
    s.n += e.v // in place, returning nothing
  },
}
`

/** What the job does, on plain values (undefined: the key holds no state). */
function apply(s: { n: number } | undefined, e: Ev): { n: number } | undefined {
  if (e.op === 'keep') return s
  if (e.op === 'new') return { n: (s?.n ?? 0) + e.v }
  return { n: (s?.n ?? 0) + e.v }
}

class Model {
  /** key -> state; a key present with undefined holds "no state" (initialized again). */
  state = new Map<string, { n: number } | undefined>()
  changed = new Set<string>()

  batch(events: [string, Ev][]): number {
    let dead = 0
    for (const [key, e] of events) {
      const have = this.state.get(key)
      const s = have ?? (key.startsWith('u') ? undefined : { n: 0 })
      if (e.op === 'throw') {
        dead++
        // A key that has a state is marked changed as it is (the job may have changed it in place).
        if (have !== undefined) this.changed.add(key)
        continue
      }
      this.state.set(key, apply(s, e))
      this.changed.add(key)
    }
    return dead
  }

  snapshot(full: boolean): Map<string, unknown> {
    const keys = full ? [...this.state.keys()] : [...this.changed]
    this.changed.clear()
    return new Map(keys.map((k) => [k, this.state.get(k)]))
  }

  load(entries: [string, { n: number }][], replace: boolean): void {
    if (replace) {
      this.state.clear()
      this.changed.clear()
    }
    for (const [k, v] of entries) this.state.set(k, v)
  }
}

function unpackStates(kv: PackedStates): Map<string, unknown> {
  const out = new Map<string, unknown>()
  kv.keys.forEach((k, i) => {
    out.set(k, statePackr.unpack(kv.data.subarray(i === 0 ? 0 : kv.ends[i - 1], kv.ends[i])))
  })
  return out
}

/** Plain comparable form: sorted [key, n | null]. */
function norm(m: Map<string, unknown>): [string, number | null][] {
  return [...m]
    .map(([k, v]): [string, number | null] => [
      k,
      v === undefined || v === null ? null : (v as { n: number }).n,
    ])
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
}

const key = fc.constantFrom('a', 'b', 'c', 'd', 'e', 'u1', 'u2', 'u3')
const event = fc.record({
  op: fc.constantFrom<Op>('mut', 'mut', 'new', 'keep', 'throw'),
  v: fc.integer({ min: 1, max: 9 }),
})
const step = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      t: fc.constant('batch' as const),
      events: fc.array(fc.tuple(key, event), { minLength: 1, maxLength: 12 }),
    }),
  },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('snapshot' as const), full: fc.boolean() }) },
  {
    weight: 1,
    arbitrary: fc.record({
      t: fc.constant('load' as const),
      replace: fc.boolean(),
      entries: fc.uniqueArray(fc.tuple(key, fc.integer({ min: 0, max: 99 })), {
        selector: (e) => e[0],
        maxLength: 5,
      }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('get' as const), key }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('dump' as const) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('drop' as const) }) },
)

describe('keyed state in the processing threads (no time)', () => {
  let dir = ''
  let engine: Engine
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'shoal-keyed-'))
    const job = join(dir, 'keyed-model.mjs')
    writeFileSync(job, JOB)
    engine = new Engine({ job, threads: 1 })
    await engine.describe()
  })
  afterAll(async () => {
    await engine?.close()
    rmSync(dir, { recursive: true, force: true })
  })

  it('snapshots, reads and dumps equal the model under any sequence of operations', async () => {
    let partition = 0
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 40 }), async (steps) => {
        const p = partition++ // a fresh partition per run
        const model = new Model()
        for (const s of steps) {
          switch (s.t) {
            case 'batch': {
              const r = await engine.batch(p, packr.pack(s.events))
              const dead = model.batch(s.events)
              expect(r.count).toBe(s.events.length)
              expect(r.deadLetters?.length ?? 0).toBe(dead)
              break
            }
            case 'snapshot': {
              const snap = await engine.snapshot(p, s.full)
              expect(norm(unpackStates(snap.kv))).toEqual(norm(model.snapshot(s.full)))
              break
            }
            case 'load': {
              const entries = s.entries.map(([k, n]): [string, { n: number }] => [k, { n }])
              await engine.load(p, packStates(entries), s.replace)
              model.load(entries, s.replace)
              break
            }
            case 'get': {
              const r = await engine.get(p, s.key)
              const want = model.state.get(s.key)
              expect(r.found).toBe(want !== undefined)
              if (want !== undefined) expect(packr.unpack(r.data!)).toEqual(want)
              break
            }
            case 'dump': {
              const r = await engine.dump(p)
              const all = packr.unpack(r.data) as [string, unknown][]
              expect(r.keys).toBe(model.state.size)
              expect(norm(new Map(all))).toEqual(norm(model.state))
              break
            }
            case 'drop':
              await engine.drop(p)
              model.state.clear()
              model.changed.clear()
              break
          }
        }
      }),
      { numRuns: 150 },
    )
  })
})
