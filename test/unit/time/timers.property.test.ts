import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { TIME_KEY } from '../../../src/processing/time/codec.ts'
import { TimedPartition, type TimeOutput } from '../../../src/processing/time/runtime.ts'
import {
  buildLog,
  checkAgainstModel,
  cutsArb,
  itemsArb,
  makeJob,
  outputsOf,
  planArb,
  runs,
  timerJobArb,
  type Ev,
  type TimerJobSpec,
} from './harness.ts'
import { runModel, type LogRecord } from './model.ts'

const ttlJobArb: fc.Arbitrary<TimerJobSpec> = timerJobArb.chain((spec) =>
  fc.integer({ min: 1, max: 30 }).map((ttlMs) => ({ ...spec, ttlMs })),
)

describe('timers and TTL vs the reference model', () => {
  it('event and processing timers (set, deleted, chained, due at once) through crashes', () => {
    fc.assert(
      fc.property(
        timerJobArb.chain((spec) => fc.tuple(fc.constant(spec), itemsArb(spec), cutsArb, planArb)),
        ([spec, items, cuts, plan]) => checkAgainstModel(spec, buildLog(spec, items, cuts), plan),
      ),
      runs(200),
    )
  })

  it('TTL drops keys (and their timers) after ttlMs of processing time without an event, through crashes', () => {
    fc.assert(
      fc.property(
        ttlJobArb.chain((spec) => fc.tuple(fc.constant(spec), itemsArb(spec), cutsArb, planArb)),
        ([spec, items, cuts, plan]) => checkAgainstModel(spec, buildLog(spec, items, cuts), plan),
      ),
      runs(150),
    )
  })

  it('without crashes, how events are batched changes nothing', () => {
    fc.assert(
      fc.property(
        timerJobArb.chain((spec) => fc.tuple(fc.constant(spec), itemsArb(spec), cutsArb, cutsArb)),
        ([spec, items, cuts1, cuts2]) => {
          const a = buildLog(spec, items, cuts1)
          const b = buildLog(spec, items, cuts2)
          checkAgainstModel(spec, a, [])
          expect(outputsOf(spec, b)).toEqual(outputsOf(spec, a))
        },
      ),
      runs(80),
    )
  })
})

describe('TTL, by example', () => {
  const spec: TimerJobSpec = {
    kind: 'timers',
    eventTime: false,
    ooo: undefined,
    idleMs: undefined,
    ttlMs: 10,
  }
  const ev = (id: number, extra: Partial<Ev> = {}): Ev => ({ id, ...extra })
  const out = (): TimeOutput => ({ emitted: null, deadLetters: null })

  it('a key idle for ttlMs of processing time is dropped, and the next checkpoint deletes it', () => {
    const job = makeJob(spec)
    const p = new TimedPartition(job, 0)
    p.tick(100, 0, out())
    p.apply(
      [
        ['a', ev(1, { ops: [['p', 50]] })],
        ['b', ev(3)],
      ],
      out(),
    ) // a: timer at 150
    expect(p.snapshot(false).entries.map(([k]) => k)).toEqual(['a', 'b', TIME_KEY])
    p.tick(105, 0, out())
    p.apply([['b', ev(5)]], out()) // b active at 105
    p.tick(109, 0, out())
    expect(p.dump().map(([k]) => k)).toEqual(['a', 'b'])
    p.tick(110, 0, out()) // a: 10 ms without an event (its timer is dropped with it)
    expect(p.dump().map(([k]) => k)).toEqual(['b'])
    const snap = p.snapshot(false)
    expect(snap.deleted).toEqual(['a'])
    expect(snap.entries.map(([k]) => k)).toEqual(['b', TIME_KEY]) // b changed at 105
    const o = out()
    p.tick(200, 0, o) // b dropped at 115; a's timer (150) went with a
    expect(o.emitted).toBeNull()
    expect(p.dump()).toEqual([])
    expect(p.snapshot(false).deleted).toEqual(['b'])
  })

  it('a timer firing is not activity', () => {
    const job = makeJob(spec)
    const log: LogRecord[] = [
      { kind: 'batch', events: [['a', ev(1, { ops: [['p', 4]] })]] },
      { kind: 'tick', now: 4, idle: 0 }, // the timer fires (and sets none)
      { kind: 'tick', now: 9, idle: 0 },
      { kind: 'tick', now: 10, idle: 0 }, // dropped: last event at 0
    ]
    const model = runModel(job, log)
    expect(model.outputs[1]!.emitted).toEqual([
      ['fired', 'a', expect.objectContaining({ kind: 'processing', ts: 4 })],
    ])
    expect(model.views).toEqual([])
    checkAgainstModel(spec, log, [])
  })
})
