/**
 * The reference model on examples worked out by hand from docs/time.md, so that the model (which
 * the property tests trust) is itself checked against the contract; each is also run through
 * Shoal with a crash after every record.
 */
import { describe, expect, it } from 'vitest'
import { defineJob, type JobDefinition } from '../../../src/processing/job.ts'
import { windows, type WindowSpec } from '../../../src/processing/windows.ts'
import { runShoal, type AnyJob } from './harness.ts'
import { runModel, type LogRecord } from './model.ts'

interface E {
  id: string
  ts: number
}

function ids(window: WindowSpec, options: Partial<JobDefinition<E, string[]>> = {}): AnyJob {
  return defineJob<E, string[]>({
    name: 'ids',
    eventTime: (e) => e.ts,
    window,
    init: () => [],
    process(acc, e) {
      acc.push(e.id)
    },
    ...options,
  }) as AnyJob
}

const batch = (...events: [string, E][]): LogRecord => ({ kind: 'batch', events })
const ev = (key: string, id: string, ts: number): [string, E] => [key, { id, ts }]
const win = (key: string, start: number, end: number, state: unknown, late = false) =>
  ['windows', key, late ? { key, start, end, state, late: true } : { key, start, end, state }] as const

/** The model's emitted records per log record; Shoal, crashing after every record, agrees. */
function run(job: AnyJob, log: LogRecord[]) {
  const model = runModel(job, log)
  const plan = log.map(() => ({ ckpt: 1 as const, crash: true }))
  const shoal = runShoal(job, log, plan, log.length)
  expect(shoal.delivered).toEqual(model.outputs.flatMap((o) => o.emitted))
  expect(shoal.dump).toEqual(model.views)
  return model
}

describe('the reference model, by hand from docs/time.md', () => {
  it('tumbling: fires when W passes the end, in (end, key, start) order; behind W is late', () => {
    const job = ids(windows.tumbling({ sizeMs: 10 }), { watermark: { outOfOrdernessMs: 2 } })
    const m = run(job, [
      batch(ev('b', 'b1', 5), ev('a', 'a1', 1), ev('a', 'a2', 12)), // W = 10: [0,10) of a, then b
      batch(ev('a', 'a3', 3), ev('a', 'a4', 30)), // a3 late (L = 0); W = 28: a's [10,20)
    ])
    expect(m.outputs.map((o) => o.emitted)).toEqual([
      [win('a', 0, 10, ['a1']), win('b', 0, 10, ['b1'])],
      [['late', 'a', { id: 'a3', ts: 3 }], win('a', 10, 20, ['a2'])],
    ])
    expect(m.views).toEqual([['a', { windows: [{ start: 30, end: 40, state: ['a4'] }] }]])
    expect(m.watermark).toBe(28)
  })

  it('an event is processed with W as it was before it; what it makes due fires before the next', () => {
    const job = ids(windows.tumbling({ sizeMs: 10 }))
    // e2 at 10 makes W = 10: [0,10) fires before e3 (at 5) comes, which is then late.
    const m = run(job, [batch(ev('k', 'e1', 9), ev('k', 'e2', 10), ev('k', 'e3', 5))])
    expect(m.outputs[0]!.emitted).toEqual([win('k', 0, 10, ['e1']), ['late', 'k', { id: 'e3', ts: 5 }]])
  })

  it('sliding: an event goes into each of its windows, oldest first', () => {
    const seen: string[] = []
    const job = ids(windows.sliding({ sizeMs: 10, slideMs: 5 }), {
      process(acc, e, ctx) {
        seen.push(`${e.id}@${ctx.window!.start}`)
        acc.push(e.id)
      },
    })
    const m = runModel(job, [batch(ev('k', 'x', 7), ev('k', 'y', 15))])
    expect(seen).toEqual(['x@0', 'x@5', 'y@10', 'y@15'])
    // W = 15: [0,10) and [5,15) fire, in end order.
    expect(m.outputs[0]!.emitted).toEqual([win('k', 0, 10, ['x']), win('k', 5, 15, ['x'])])
  })

  it('lateness: a fired window takes events until W >= end + L, each firing again with late: true', () => {
    const job = ids(windows.tumbling({ sizeMs: 10 }), { allowedLatenessMs: 5 })
    const m = run(job, [
      batch(ev('k', 'e1', 2), ev('k', 'e2', 12)), // W = 12: [0,10) fires, kept until 15
      batch(ev('k', 'e3', 4)), // late but allowed: fires again with the whole state
      batch(ev('k', 'e4', 15), ev('k', 'e5', 3)), // W = 15: [0,10) dropped; e5 goes to `late`
    ])
    expect(m.outputs.map((o) => o.emitted)).toEqual([
      [win('k', 0, 10, ['e1'])],
      [win('k', 0, 10, ['e1', 'e3'], true)],
      [['late', 'k', { id: 'e5', ts: 3 }]],
    ])
  })

  it('lateness: a window created late by an event within lateness fires at once, late', () => {
    const job = ids(windows.tumbling({ sizeMs: 10 }), { allowedLatenessMs: 10 })
    // W = 15; b's [0,10) is past its end but not dropped (10 + 10 > 15): made and fired late.
    const m = run(job, [batch(ev('a', 'a1', 15)), batch(ev('b', 'b1', 5))])
    expect(m.outputs[1]!.emitted).toEqual([win('b', 0, 10, ['b1'], true)])
    // W = 25: 10 + 10 <= 25, dropped: the event is late.
    const m2 = run(job, [batch(ev('a', 'a1', 25)), batch(ev('b', 'b1', 5))])
    expect(m2.outputs[1]!.emitted).toEqual([['late', 'b', { id: 'b1', ts: 5 }]])
  })

  it('sessions: events at most gapMs apart join, transitively; a bridging event merges, refolding in arrival order', () => {
    const log = [
      batch(ev('k', 's1', 1), ev('k', 's2', 12)), // [1,6) and [12,17) (W = 2 with ooo 10)
      batch(ev('k', 's3', 7)), // covers [7,12): touches [1,6)? 6 < 7, no; touches [12,17): yes -> [7,17)
      batch(ev('k', 's4', 4)), // [4,9) touches [1,6) and [7,17): one session [1,17)
      batch(ev('k', 'end', 40)), // W = 30: [1,17) fires
    ]
    const refold = run(ids(windows.session({ gapMs: 5 }), { watermark: { outOfOrdernessMs: 10 } }), log)
    expect(refold.outputs[3]!.emitted).toEqual([win('k', 1, 17, ['s1', 's2', 's3', 's4'])])
    const merged = run(
      ids(windows.session({ gapMs: 5 }), {
        watermark: { outOfOrdernessMs: 10 },
        merge: (a, b) => [...a, '+', ...b],
      }),
      log,
    )
    // merge(a, b) left to right by start: [1,6) then [7,17) (which holds s2 then s3).
    expect(merged.outputs[3]!.emitted).toEqual([win('k', 1, 17, ['s1', '+', 's2', 's3', 's4'])])
  })

  it('sessions: extending a fired session is a new window; an event inside a fired one fires it again', () => {
    const job = ids(windows.session({ gapMs: 5 }), { allowedLatenessMs: 20 })
    const m = run(job, [
      batch(ev('k', 'a', 1), ev('k', 'b', 10)), // W = 10: [1,6) fires
      batch(ev('k', 'c', 1)), // [1,6) again: same range, fires again, late
      batch(ev('k', 'd', 4)), // [4,9) extends it to [1,9): new range, 9 <= W: fires at once, late
      batch(ev('k', 'e', 8)), // [8,13) touches [1,9) and [10,15): [1,15), end > W: fires on time later
      batch(ev('k', 'f', 20)), // W = 20: [1,15) fires
    ])
    expect(m.outputs.map((o) => o.emitted)).toEqual([
      [win('k', 1, 6, ['a'])],
      [win('k', 1, 6, ['a', 'c'], true)],
      [win('k', 1, 9, ['a', 'c', 'd'], true)],
      [],
      [win('k', 1, 15, ['a', 'b', 'c', 'd', 'e'])],
    ])
  })

  it('idleness: after idleMs + t of silence W is its value at the last event plus t, never back', () => {
    const job = ids(windows.tumbling({ sizeMs: 10 }), { watermark: { outOfOrdernessMs: 3, idleMs: 5 } })
    const log: LogRecord[] = [
      batch(ev('k', 'e1', 100)), // W = 97
      { kind: 'tick', now: 1000, idle: 7 }, // W = 99
      { kind: 'tick', now: 1001, idle: 4 }, // 97 + 0: W stays 99
      { kind: 'tick', now: 1002, idle: 18 }, // W = 110: [100,110) fires
    ]
    const m = run(job, log)
    expect(runModel(job, log.slice(0, 2)).watermark).toBe(99)
    expect(runModel(job, log.slice(0, 3)).watermark).toBe(99)
    expect(m.watermark).toBe(110)
    expect(m.outputs[3]!.emitted).toEqual([win('k', 100, 110, ['e1'])])
  })

  it('timers: due timers run in (ts, key) order, per key in timestamp order', () => {
    const job = defineJob<{ at: number[] }, null>({
      name: 'timers',
      eventTime: () => 0,
      init: () => null,
      process(_s, e, ctx) {
        for (const t of e.at) ctx.timers!.atEventTime(t)
      },
      onTimer(_s, timer, ctx) {
        ctx.emit('t', `${timer.key}@${timer.ts}`)
      },
    }) as AnyJob
    const m = run(job, [
      {
        kind: 'batch',
        events: [
          ['b', { at: [5, 3] }],
          ['a', { at: [5, 7] }],
        ],
      },
      { kind: 'batch', events: [['c', { at: [] }]] },
    ])
    expect(m.outputs[0]!.emitted).toEqual([])
    // eventTime 0 keeps W at 0: a second job makes W move, with idleness.
    const idle = defineJob({ ...job, watermark: { idleMs: 0 } }) as AnyJob
    const m2 = run(idle, [
      {
        kind: 'batch',
        events: [
          ['b', { at: [5, 3] }],
          ['a', { at: [5, 7] }],
        ],
      },
      { kind: 'tick', now: 1, idle: 6 }, // W = 6
    ])
    expect(m2.outputs[1]!.emitted.map(([, , v]) => v)).toEqual(['b@3', 'a@5', 'b@5'])
  })
})
