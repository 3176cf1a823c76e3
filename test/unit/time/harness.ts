/**
 * Shared pieces of the event-time property tests: test jobs (deterministic, recording what their
 * context showed them), fast-check generators of jobs and replay logs, and a runner that drives
 * TimedPartition through a log with checkpoints and crashes the way a worker does, collecting
 * outputs like an effectively-once sink.
 */
import fc from 'fast-check'
import { isDeepStrictEqual } from 'node:util'
import { Packr } from 'msgpackr'
import { expect } from 'vitest'
import { defineJob, type JobDefinition } from '../../../src/processing/job.ts'
import { TIME_KEY, userView } from '../../../src/processing/time/codec.ts'
import { TimedPartition, type TimeOutput } from '../../../src/processing/time/runtime.ts'
import { windows, type WindowSpec } from '../../../src/processing/windows.ts'
import {
  runModel,
  type LogRecord,
  type ModelDeadLetter,
  type ModelResult,
  type RecordOutput,
} from './model.ts'

/** fast-check options; SHOAL_FC_RUNS=20000 searches harder (the defaults keep the suite fast). */
export const runs = (numRuns: number) => ({ numRuns: Number(process.env.SHOAL_FC_RUNS ?? numRuns) })

// Checkpoint values are packed as the worker packs them (codec.ts registers the extensions).
const packr = new Packr({ useRecords: false, moreTypes: true })

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyJob = JobDefinition<any, any>

// --- test events and jobs ----------------------------------------------------------------------------

export type TimerOp = 'e' | 'p' | 'de' | 'dp'

/** A test event. Only the fields set are present (a checkpoint round trip keeps them as they are). */
export interface Ev {
  id: number
  ts?: unknown
  /** eventTime throws for this event. */
  timeThrows?: true
  /** Windowed: process throws for a window starting at or after this... */
  failFrom?: number
  /** ...or longer than this (a session merge can make an event fail in a refold). */
  failLen?: number
  /** Keyed: process throws. */
  fail?: true
  /** Keyed: timers to set or delete, relative to the event's time or the processing clock. */
  ops?: [TimerOp, number][]
  /** Keyed: emit on stream `out`. */
  emit?: true
}

export interface WindowJobSpec {
  kind: 'window'
  window: WindowSpec
  lateness: number | undefined
  ooo: number | undefined
  idleMs: number | undefined
  merge: boolean
  ttlMs: number | undefined
}

export interface TimerJobSpec {
  kind: 'timers'
  eventTime: boolean
  ooo: number | undefined
  idleMs: number | undefined
  ttlMs: number | undefined
}

export type JobSpec = WindowJobSpec | TimerJobSpec

interface Acc {
  n: number
  log: unknown[][]
  /** Timer jobs: timers set by onTimer since the key's last event (bounds the chains). */
  chain?: number
}

function eventTime(e: Ev): number {
  if (e.timeThrows) throw new Error(`no time in event ${e.id}`)
  return e.ts as number
}

function watermarkOf(spec: { ooo: number | undefined; idleMs: number | undefined }) {
  if (spec.ooo === undefined && spec.idleMs === undefined) return {}
  return {
    watermark: {
      ...(spec.ooo === undefined ? {} : { outOfOrdernessMs: spec.ooo }),
      ...(spec.idleMs === undefined ? {} : { idleMs: spec.idleMs }),
    },
  }
}

export function makeJob(spec: JobSpec): AnyJob {
  const common = {
    ...watermarkOf(spec),
    ...(spec.ttlMs === undefined ? {} : { ttlMs: spec.ttlMs }),
    init: (): Acc => ({ n: 0, log: [] }),
  }
  if (spec.kind === 'window') {
    return defineJob<Ev, Acc>({
      name: 'windowed',
      ...common,
      eventTime,
      window: spec.window,
      ...(spec.lateness === undefined ? {} : { allowedLatenessMs: spec.lateness }),
      ...(spec.merge
        ? { merge: (a: Acc, b: Acc): Acc => ({ n: a.n + b.n, log: [...a.log, ...b.log] }) }
        : {}),
      process(acc, e, ctx) {
        const w = ctx.window!
        if (e.failFrom !== undefined && w.start >= e.failFrom) {
          throw new Error(`event ${e.id} refused by the window at ${w.start}`)
        }
        if (e.failLen !== undefined && w.end - w.start > e.failLen) {
          throw new Error(`event ${e.id} refused by a window of ${w.end - w.start} ms`)
        }
        const entry = [e.id, ctx.key, ctx.timestamp, ctx.watermark, ctx.processingTime, w.start, w.end]
        // Both styles: return a new state, or mutate it and return nothing.
        if (e.id % 2 === 0) return { n: acc.n + 1, log: [...acc.log, entry] }
        acc.n++
        acc.log.push(entry)
        return undefined
      },
    }) as AnyJob
  }
  return defineJob<Ev, Acc>({
    name: 'timers',
    ...common,
    ...(spec.eventTime ? { eventTime } : {}),
    process(s, e, ctx) {
      if (e.fail) throw new Error(`event ${e.id} refused`)
      const timers = ctx.timers!
      for (const [op, dt] of e.ops ?? []) {
        const base = op === 'e' || op === 'de' ? ctx.timestamp! : ctx.processingTime!
        if (op === 'e') timers.atEventTime(base + dt)
        else if (op === 'p') timers.atProcessingTime(base + dt)
        else if (op === 'de') timers.deleteEventTime(base + dt)
        else timers.deleteProcessingTime(base + dt)
      }
      if (e.emit) ctx.emit('out', { id: e.id, n: s.n + 1, wm: ctx.watermark, clock: ctx.processingTime })
      const entry = ['e', e.id, ctx.timestamp, ctx.watermark, ctx.processingTime]
      if (e.id % 2 === 0) return { n: s.n + 1, log: [...s.log, entry], chain: 0 }
      s.n++
      s.log.push(entry)
      s.chain = 0
      return undefined
    },
    onTimer(s, timer, ctx) {
      if (timer.ts % 13 === 7) throw new Error(`timer ${timer.kind} ${timer.ts} refused`)
      const { kind, ts, key } = timer
      s.log.push(['t', kind, ts, ctx.timestamp, ctx.watermark, ctx.processingTime])
      ctx.emit('fired', { kind, ts, key, n: s.n, wm: ctx.watermark, clock: ctx.processingTime })
      // Timers setting timers, at most 4 per key between events (a chain must end).
      if ((s.chain ?? 0) >= 4) return
      s.chain = (s.chain ?? 0) + 1
      const timers = ctx.timers!
      const again = (t: number): void =>
        kind === 'event' ? timers.atEventTime(t) : timers.atProcessingTime(t)
      // One later (ts % 5 == 0), one earlier, so due at once (ts % 7 == 3).
      if (ts % 5 === 0) again(ts + 3)
      if (ts % 7 === 3) again(ts - 4)
      // Across kinds, due at once: an event timer at the watermark, a processing timer now.
      if (kind === 'processing' && ts % 4 === 1 && spec.eventTime && Number.isFinite(ctx.watermark)) {
        timers.atEventTime(ctx.watermark!)
      }
      if (kind === 'event' && ts % 4 === 2) timers.atProcessingTime(ctx.processingTime!)
    },
  }) as AnyJob
}

// --- generators --------------------------------------------------------------------------------------

const maybe = <T>(arb: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> =>
  fc.option(arb, { nil: undefined, freq: 2 })

export const windowArb: fc.Arbitrary<WindowSpec> = fc.oneof(
  fc.integer({ min: 1, max: 12 }).map((sizeMs) => windows.tumbling({ sizeMs })),
  fc
    .integer({ min: 1, max: 12 })
    .chain((sizeMs) =>
      fc.integer({ min: 1, max: sizeMs }).map((slideMs) => windows.sliding({ sizeMs, slideMs })),
    ),
  fc.integer({ min: 1, max: 8 }).map((gapMs) => windows.session({ gapMs })),
)

export const windowJobArb: fc.Arbitrary<WindowJobSpec> = fc.record({
  kind: fc.constant('window' as const),
  window: windowArb,
  lateness: fc.oneof(
    fc.constant(undefined),
    fc.constant(0),
    fc.integer({ min: 1, max: 10 }),
    fc.integer({ min: 1, max: 10 }),
  ),
  ooo: maybe(fc.integer({ min: 0, max: 8 })),
  idleMs: maybe(fc.integer({ min: 0, max: 20 })),
  merge: fc.boolean(),
  // TTL drops a key's open windows too: rarely, or few windows would ever fire.
  ttlMs: fc.oneof(
    { weight: 6, arbitrary: fc.constant(undefined) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 60 }) },
  ),
})

/** Sessions only, with lateness: merges of several sessions, late firings, extensions. */
export const sessionJobArb: fc.Arbitrary<WindowJobSpec> = fc.record({
  kind: fc.constant('window' as const),
  window: fc.integer({ min: 2, max: 6 }).map((gapMs) => windows.session({ gapMs })),
  lateness: fc.integer({ min: 1, max: 12 }),
  ooo: maybe(fc.integer({ min: 0, max: 4 })),
  idleMs: maybe(fc.integer({ min: 0, max: 20 })),
  // Mostly without merge(): the session keeps its events and refolds them in arrival order.
  merge: fc.constantFrom(false, false, false, true),
  ttlMs: fc.constant(undefined),
})

export const timerJobArb: fc.Arbitrary<TimerJobSpec> = fc
  .record({
    kind: fc.constant('timers' as const),
    eventTime: fc.boolean(),
    ooo: maybe(fc.integer({ min: 0, max: 8 })),
    idleMs: maybe(fc.integer({ min: 0, max: 20 })),
    ttlMs: maybe(fc.integer({ min: 1, max: 40 })),
  })
  // A watermark needs eventTime (defineJob says so).
  .map((s) => (s.eventTime ? s : { ...s, ooo: undefined, idleMs: undefined }))

/** One log item before batching: an event or a tick. */
export type Item =
  | {
      t: 'ev'
      key: string
      advance: number
      behind: number
      bad: number
      fail: number
      ops: [TimerOp, number][]
      emit: boolean
    }
  | { t: 'tick'; step: number; idle: number }

const KEYS = ['a', 'b', 'c']

export interface ItemOptions {
  maxLength?: number
  /** Up to this many keys (at least one). */
  maxKeys?: number
  /** How far event time moves on per event, at most. */
  maxAdvance?: number
  /** How far behind an event may be. */
  maxBehind?: number
  /** About one event in this many makes process throw. */
  failOneIn?: number
}

export function itemsArb(spec: JobSpec, options: ItemOptions = {}): fc.Arbitrary<Item[]> {
  // One to three keys: with few keys, windows and sessions of a key collide.
  return fc
    .integer({ min: 1, max: options.maxKeys ?? 3 })
    .chain((keys) => itemsOf(spec, KEYS.slice(0, keys), options))
}

function itemsOf(spec: JobSpec, keys: string[], options: ItemOptions): fc.Arbitrary<Item[]> {
  const { maxLength = 36, maxAdvance = 4, maxBehind = 20, failOneIn = 15 } = options
  const opArb = fc.tuple(
    spec.kind === 'timers' && spec.eventTime
      ? fc.constantFrom<TimerOp>('e', 'p', 'de', 'dp')
      : fc.constantFrom<TimerOp>('p', 'dp'),
    fc.integer({ min: -3, max: 12 }),
  )
  const ev = fc.record({
    t: fc.constant('ev' as const),
    // A rare event with the partition's reserved key (dead-lettered).
    key: fc.oneof(
      { weight: 40, arbitrary: fc.constantFrom(...keys) },
      { weight: 1, arbitrary: fc.constant(TIME_KEY) },
    ),
    advance: fc.integer({ min: 0, max: maxAdvance }),
    behind: fc.oneof(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: maxBehind })),
    bad: fc.integer({ min: 0, max: 40 }),
    fail: fc.integer({ min: 0, max: 2 * failOneIn }),
    ops: spec.kind === 'timers' ? fc.array(opArb, { maxLength: 3 }) : fc.constant<[TimerOp, number][]>([]),
    emit: fc.boolean(),
  })
  const tick = fc.record({
    t: fc.constant('tick' as const),
    step: fc.oneof(
      { weight: 8, arbitrary: fc.integer({ min: 0, max: 25 }) },
      { weight: 1, arbitrary: fc.integer({ min: -5, max: -1 }) },
    ),
    idle: fc.integer({ min: 0, max: 40 }),
  })
  return fc.array(fc.oneof({ weight: 5, arbitrary: ev }, { weight: 1, arbitrary: tick }), {
    maxLength,
    size: 'max',
  })
}

/**
 * Turn items into a replay log: event times drift upwards with out-of-order stragglers; the
 * processing clock of ticks moves by `step`; `cuts[i]` starts a new batch after item i.
 */
export function buildLog(spec: JobSpec, items: readonly Item[], cuts: readonly boolean[]): LogRecord[] {
  const log: LogRecord[] = []
  let batch: [string, Ev][] = []
  let p = 0
  let now = 0
  const flush = (): void => {
    if (batch.length > 0) log.push({ kind: 'batch', events: batch })
    batch = []
  }
  items.forEach((it, i) => {
    if (it.t === 'tick') {
      flush()
      now += it.step
      log.push({ kind: 'tick', now, idle: it.idle })
    } else {
      p += it.advance
      const e: Ev = { id: i, ts: p - it.behind }
      // Bad event times, rarely: a string, NaN, Infinity, null, a throw.
      if (it.bad === 1) e.ts = 'x'
      else if (it.bad === 2) e.ts = NaN
      else if (it.bad === 3) e.ts = Infinity
      else if (it.bad === 4) e.ts = null
      else if (it.bad === 5) e.timeThrows = true
      if (spec.kind === 'window') {
        if (it.fail === 1) e.failFrom = Math.floor(p / 2)
        else if (it.fail === 2) e.failLen = 1 + (p % 9)
      } else {
        if (it.fail === 1) e.fail = true
        if (it.ops.length > 0) e.ops = it.ops
        if (it.emit) e.emit = true
      }
      batch.push([it.key, e])
    }
    if (cuts[i] === true) flush()
  })
  flush()
  return log
}

export const cutsArb = fc.array(fc.boolean(), { minLength: 40, maxLength: 40 })

export interface Step {
  /** 0: no checkpoint here, 1: incremental, 2: full. */
  ckpt: 0 | 1 | 2
  crash: boolean
}

export const planArb: fc.Arbitrary<Step[]> = fc.array(
  fc.record({
    ckpt: fc.constantFrom<0 | 1 | 2>(0, 0, 1, 1, 2),
    crash: fc.integer({ min: 0, max: 4 }).map((n) => n === 0),
  }),
  { maxLength: 80 },
)

// --- running Shoal -----------------------------------------------------------------------------------

export interface DeadLetterOut {
  index: number
  key: string
  error: string
}

export interface ShoalRun {
  /** Emitted records as an effectively-once sink keeps them: first arrival per (record, position). */
  delivered: [string, string, unknown][]
  /** Dead letters, deduplicated the same way, with the record they came from. */
  deadLetters: (DeadLetterOut & { record: number })[]
  /** Per record, the outputs of its first application. */
  first: RecordOutput[]
  /** Records applied again after a crash whose outputs differed from the first application. */
  divergent: { record: number; first: unknown; again: unknown }[]
  crashes: number
  /** dump(), sorted by key. */
  dump: [string, unknown][]
  /** The store after a final incremental checkpoint, as users see it, sorted by key. */
  stored: [string, unknown][]
  watermark: number
}

function normalized(out: TimeOutput): { emitted: [string, string, unknown][]; deadLetters: DeadLetterOut[] } {
  // Copied now: the worker packs a record's outputs as soon as it has applied it.
  return structuredClone({ emitted: out.emitted ?? [], deadLetters: out.deadLetters ?? [] })
}

function applyRecord(
  p: TimedPartition,
  r: LogRecord,
): { emitted: [string, string, unknown][]; deadLetters: DeadLetterOut[] } {
  const out: TimeOutput = { emitted: null, deadLetters: null }
  if (r.kind === 'batch') p.apply(r.events, out)
  else p.tick(r.now, r.idle, out)
  return normalized(out)
}

function checkpoint(p: TimedPartition, store: Map<string, Buffer>, full: boolean): void {
  const snap = p.snapshot(full)
  if (full) store.clear()
  for (const key of snap.deleted) store.delete(key)
  for (const [key, value] of snap.entries) store.set(key, packr.pack(value))
}

function restore(job: AnyJob, store: Map<string, Buffer>): TimedPartition {
  const p = new TimedPartition(job, 0)
  for (const [key, bytes] of store) p.load(key, packr.unpack(bytes))
  return p
}

/**
 * Apply the log as a worker does: after each record, the next plan step may checkpoint
 * (incremental or full, into a store of packed values honouring `deleted`) and may crash: a
 * fresh partition loads every stored key and the log is replayed from the last checkpoint.
 */
export function runShoal(
  job: AnyJob,
  log: readonly LogRecord[],
  plan: readonly Step[] = [],
  maxCrashes = 3,
): ShoalRun {
  let p = new TimedPartition(job, 0)
  const store = new Map<string, Buffer>()
  let checkpointed = 0
  let pos = 0
  let step = 0
  let crashes = 0
  const first: RecordOutput[] = []
  const divergent: ShoalRun['divergent'] = []
  const seen = new Set<string>()
  const delivered: ShoalRun['delivered'] = []
  const deadLetters: ShoalRun['deadLetters'] = []
  while (pos < log.length) {
    const out = applyRecord(p, log[pos]!)
    const earlier = first[pos]
    if (earlier === undefined) {
      first[pos] = {
        emitted: out.emitted,
        deadLetters: out.deadLetters.map(({ index, key, error }) => ({ index, key, reason: error })),
      }
    } else {
      const again = {
        emitted: out.emitted,
        deadLetters: out.deadLetters.map(({ index, key, error }) => ({ index, key, reason: error })),
      }
      if (!isDeepStrictEqual(earlier, again)) divergent.push({ record: pos, first: earlier, again })
    }
    out.emitted.forEach((e, i) => {
      const id = `${pos}:${i}`
      if (seen.has(id)) return
      seen.add(id)
      delivered.push(e)
    })
    out.deadLetters.forEach((d, i) => {
      const id = `${pos}:dead:${i}`
      if (seen.has(id)) return
      seen.add(id)
      deadLetters.push({ ...d, record: pos })
    })
    pos++
    const s = plan[step++]
    if (s === undefined) continue
    if (s.ckpt !== 0) {
      checkpoint(p, store, s.ckpt === 2)
      checkpointed = pos
    }
    if (s.crash && crashes < maxCrashes) {
      crashes++
      p = restore(job, store)
      pos = checkpointed
    }
  }
  const dump = p.dump().sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  checkpoint(p, store, false)
  // A partition restored from that final checkpoint shows the same keys.
  const restored = restore(job, store)
    .dump()
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  expect(restored).toEqual(dump)
  const stored = [...store]
    .filter(([key]) => key !== TIME_KEY)
    .map(([key, bytes]): [string, unknown] => [key, userView(key, packr.unpack(bytes))])
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  return { delivered, deadLetters, first, divergent, crashes, dump, stored, watermark: p.status.watermark }
}

// --- comparing with the model ------------------------------------------------------------------------

/** Dead letters of Shoal and of the model: same record, index and key; the reason in the error. */
export function expectSameDeadLetters(
  actual: readonly (DeadLetterOut & { record: number })[],
  model: ModelResult,
): void {
  const expected = model.outputs.flatMap((o, record) =>
    o.deadLetters.map((d: ModelDeadLetter) => ({ ...d, record })),
  )
  expect(actual.map(({ record, index, key }) => [record, index, key])).toEqual(
    expected.map(({ record, index, key }) => [record, index, key]),
  )
  actual.forEach((d, i) => expect(d.error).toContain(expected[i]!.reason))
}

/** Each on-time window result is emitted once: a (key, start, end) fires on time at most once. */
export function expectWindowsOnce(emitted: readonly [string, string, unknown][]): void {
  const seen = new Set<string>()
  for (const [stream, , v] of emitted) {
    if (stream !== 'windows') continue
    const r = v as { key: string; start: number; end: number; late?: true }
    if (r.late) continue
    const id = `${r.key}|${r.start}|${r.end}`
    expect(seen.has(id), `window ${id} fired twice on time`).toBe(false)
    seen.add(id)
  }
}

// --- the checks ------------------------------------------------------------------------------------

/** Shoal through crashes and an effectively-once sink, against the model. */
export function checkAgainstModel(spec: JobSpec, log: LogRecord[], plan: readonly Step[]): void {
  const job = makeJob(spec)
  const model = runModel(job, log)
  const shoal = runShoal(job, log, plan)
  expect(shoal.divergent).toEqual([]) // a replayed record gives what it gave the first time
  expect(shoal.delivered).toEqual(model.outputs.flatMap((o) => o.emitted))
  expectSameDeadLetters(shoal.deadLetters, model)
  expect(shoal.dump).toEqual(model.views)
  expect(shoal.stored).toEqual(model.views)
  expect(shoal.watermark).toBe(model.watermark)
  expectWindowsOnce(shoal.delivered)
}

/** Emitted records and dead letters (by event id) of an uninterrupted run. */
export function outputsOf(spec: JobSpec, log: LogRecord[]) {
  const shoal = runShoal(makeJob(spec), log)
  const dead = shoal.deadLetters.map((d) => {
    const r = log[d.record]!
    const id = d.index === -1 || r.kind !== 'batch' ? -1 : (r.events[d.index]![1] as Ev).id
    return [id, d.key, d.error]
  })
  return { emitted: shoal.delivered, dead, dump: shoal.dump }
}
