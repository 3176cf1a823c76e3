/**
 * A reference model of one partition's event-time runtime, written from docs/time.md (the
 * contract), not from src/processing/time/runtime.ts. It is meant to be obviously correct and is
 * deliberately slow: windows live in plain arrays per key, what is due is found by scanning every
 * key at every firing point, a session merge recomputes its window from the stored events, and
 * nothing is queued, so there is nothing to go stale.
 *
 * Input: a job definition and the partition's replay log (batches of [key, event] and ticks
 * {now, idle}). Output: per log record, the emitted [stream, key, value] and the dead letters,
 * plus what `dump()` shows at the end.
 *
 * Where docs/time.md leaves a choice open, the model takes the reading written next to the code
 * (marked "Reading:"); the doc states each of them.
 */
import type { JobContext, JobDefinition, JobTimers, Timer } from '../../../src/processing/job.ts'
import type { WindowRef } from '../../../src/processing/windows.ts'

/** The reserved key of a partition's own time (docs/time.md "Exactly once"). */
export const MODEL_TIME_KEY = '\u0000shoal:time'

export type LogRecord =
  | { readonly kind: 'batch'; readonly events: readonly (readonly [string, unknown])[] }
  | { readonly kind: 'tick'; readonly now: number; readonly idle: number }

export interface ModelDeadLetter {
  /** Position in the batch; -1 for a timer. */
  index: number
  key: string
  /** A piece of text the runtime's error message must contain. */
  reason: string
}

export interface RecordOutput {
  emitted: [string, string, unknown][]
  deadLetters: ModelDeadLetter[]
}

export interface ModelResult {
  /** One per log record, in log order. */
  outputs: RecordOutput[]
  /** Key -> what get/dump show, sorted by key. */
  views: [string, unknown][]
  watermark: number
  clock: number
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyJob = JobDefinition<any, any>

interface ModelWindow {
  start: number
  end: number
  acc: unknown
  fired: boolean
  /** Every event folded into this window, with its arrival number (session refolds). */
  events: { seq: number; event: unknown }[]
}

interface ModelKey {
  /** Jobs without a window. */
  state: unknown
  /** Windowed jobs, sorted by start. */
  windows: ModelWindow[]
  eventTimers: number[]
  processingTimers: number[]
  /** Processing clock at the key's last event (TTL). */
  active: number
}

export function runModel(job: AnyJob, log: readonly LogRecord[]): ModelResult {
  const m = new Model(job)
  const outputs = log.map((r) => m.record(r))
  return { outputs, views: m.views(), watermark: m.W, clock: m.clock }
}

class Model {
  W = -Infinity
  /** W when the last event arrived (after it raised W); undefined before any event time. */
  base: number | undefined = undefined
  clock = 0
  seq = 0
  readonly keys = new Map<string, ModelKey>()
  out: RecordOutput = { emitted: [], deadLetters: [] }
  readonly lateness: number
  readonly ooo: number

  constructor(readonly job: AnyJob) {
    this.lateness = job.allowedLatenessMs ?? 0
    this.ooo = job.watermark?.outOfOrdernessMs ?? 0
  }

  record(r: LogRecord): RecordOutput {
    this.out = { emitted: [], deadLetters: [] }
    if (r.kind === 'batch') r.events.forEach(([key, event], i) => this.event(i, key, event))
    else this.tick(r.now, r.idle)
    // What a sink receives is a copy taken at the end of the record (the runtime packs there).
    return structuredClone(this.out)
  }

  views(): [string, unknown][] {
    const keys = [...this.keys.keys()].sort()
    return keys.map((k) => {
      const ks = this.keys.get(k)!
      if (this.job.window === undefined) return [k, structuredClone(ks.state)]
      const windows = [...ks.windows]
        .sort((a, b) => a.start - b.start)
        .map((w) => ({ start: w.start, end: w.end, state: structuredClone(w.acc) }))
      return [k, { windows }]
    })
  }

  // --- the log --------------------------------------------------------------------------------------

  event(index: number, key: string, event: unknown): void {
    if (key === MODEL_TIME_KEY) {
      this.dead(index, key, 'reserved')
      return
    }
    let ts: number | undefined
    if (this.job.eventTime !== undefined) {
      let t: unknown
      try {
        t = this.job.eventTime(event)
      } catch (err) {
        this.dead(index, key, `eventTime threw: ${(err as Error).message}`)
        return // changes nothing
      }
      if (typeof t !== 'number' || !Number.isFinite(t)) {
        this.dead(index, key, `eventTime returned ${describe(t)}`)
        return
      }
      ts = t
    }
    // Processed with W as it was before the event.
    if (this.job.window !== undefined) this.windowEvent(index, key, event, ts!)
    else this.keyedEvent(index, key, event, ts)
    if (ts !== undefined) {
      this.W = Math.max(this.W, ts - this.ooo)
      this.base = this.W
      // Reading: after an event only event time moves, so only event-time things fire;
      // processing timers fire at ticks (the clock moves only there).
      this.eventRound()
    }
  }

  tick(now: number, idle: number): void {
    // Reading: the processing clock never goes back (a tick with an older `now` leaves it).
    this.clock = Math.max(this.clock, now)
    const idleMs = this.job.watermark?.idleMs
    if (idleMs !== undefined && this.base !== undefined && idle >= idleMs) {
      this.W = Math.max(this.W, this.base + (idle - idleMs))
    }
    // Reading: a tick fires everything due, event time first, then processing time, until
    // nothing is due (a processing timer may set an event timer that is due already, and back).
    do {
      this.eventRound()
      this.processingRound()
    } while (this.anythingDue())
  }

  // --- windows --------------------------------------------------------------------------------------

  windowEvent(index: number, key: string, event: unknown, ts: number): void {
    const spec = this.job.window!
    if (spec.kind === 'session') {
      this.sessionEvent(index, key, event, ts, spec.gapMs)
      return
    }
    const size = spec.sizeMs
    const slide = spec.kind === 'sliding' ? spec.slideMs : spec.sizeMs
    // Every window [k * slide, k * slide + size) that contains ts, oldest first.
    const starts: number[] = []
    for (let k = Math.floor((ts - size) / slide) - 1; k <= Math.floor(ts / slide) + 1; k++) {
      const start = k * slide
      if (start <= ts && ts < start + size) starts.push(start)
    }
    let folded = false
    for (const start of starts) {
      const end = start + size
      if (end + this.lateness <= this.W) continue // dropped
      const ks = this.keys.get(key) ?? this.newKey()
      const existing = ks.windows.find((w) => w.start === start)
      const w: ModelWindow = existing ?? { start, end, acc: this.job.init(key), fired: false, events: [] }
      const acc = this.fold(index, key, w.acc, event, w, ts)
      if (acc === FAILED) return // windows folded before keep it; this one is not created
      w.acc = acc
      w.events.push({ seq: this.seq++, event })
      if (existing === undefined) {
        ks.windows.push(w)
        this.keys.set(key, ks)
      }
      ks.active = this.clock
      folded = true
      if (end <= this.W) {
        w.fired = true
        this.emitWindow(key, w, true)
      }
    }
    if (!folded) this.emit('late', key, event)
  }

  sessionEvent(index: number, key: string, event: unknown, ts: number, gap: number): void {
    if (ts + gap + this.lateness <= this.W) {
      this.emit('late', key, event)
      return
    }
    const ks = this.keys.get(key) ?? this.newKey()
    const joined = ks.windows
      .filter((w) => w.start <= ts + gap && w.end >= ts)
      .sort((a, b) => a.start - b.start)
    const start = Math.min(ts, ...joined.map((w) => w.start))
    const end = Math.max(ts + gap, ...joined.map((w) => w.end))
    const range: WindowRef = { start, end }
    // The candidate window; nothing is committed until the event is folded in.
    let acc: unknown
    let events: { seq: number; event: unknown }[]
    let fired: boolean
    if (joined.length === 0) {
      acc = this.job.init(key)
      events = []
      fired = false
    } else if (joined.length === 1) {
      acc = joined[0]!.acc
      events = [...joined[0]!.events]
      fired = joined[0]!.fired
    } else {
      events = joined.flatMap((w) => w.events).sort((a, b) => a.seq - b.seq)
      fired = false
      if (this.job.merge !== undefined) {
        acc = joined[0]!.acc
        for (const w of joined.slice(1)) acc = this.job.merge(acc, w.acc, key)
      } else {
        acc = this.job.init(key)
        for (const e of events) {
          // Each stored event is folded again with its own time.
          const r = this.fold(index, key, acc, e.event, range, this.job.eventTime!(e.event))
          if (r === FAILED) return // the merge is undone: nothing was committed
          acc = r
        }
      }
    }
    const folded = this.fold(index, key, acc, event, range, ts)
    if (folded === FAILED) return
    const rangeChanged = joined.length !== 1 || joined[0]!.start !== start || joined[0]!.end !== end
    const w: ModelWindow = {
      start,
      end,
      acc: folded,
      fired: rangeChanged ? false : fired,
      events: [...events, { seq: this.seq++, event }],
    }
    ks.windows = [...ks.windows.filter((x) => !joined.includes(x)), w]
    this.keys.set(key, ks)
    ks.active = this.clock
    if (rangeChanged) {
      // A new window: fires at once (late) if W already passed its end, else when W gets there.
      if (end <= this.W) {
        w.fired = true
        this.emitWindow(key, w, true)
      }
    } else if (w.fired) {
      this.emitWindow(key, w, true) // kept its range and had fired: fires again at once
    }
  }

  /** Fold one event into a window's state with process(); FAILED (dead-lettered) on a throw. */
  fold(index: number, key: string, acc: unknown, event: unknown, w: WindowRef, ts: number): unknown {
    const ctx = this.ctx(key, ts, { start: w.start, end: w.end }, undefined)
    try {
      const r = this.job.process(acc, event, ctx)
      return r === undefined ? acc : r
    } catch (err) {
      this.dead(index, key, (err as Error).message)
      return FAILED
    }
  }

  emitWindow(key: string, w: ModelWindow, late: boolean): void {
    const state = structuredClone(w.acc)
    this.emit(
      'windows',
      key,
      late
        ? { key, start: w.start, end: w.end, state, late: true }
        : { key, start: w.start, end: w.end, state },
    )
  }

  // --- jobs without a window ------------------------------------------------------------------------

  keyedEvent(index: number, key: string, event: unknown, ts: number | undefined): void {
    const existing = this.keys.get(key)
    const ks = existing ?? this.newKey()
    const s = ks.state === undefined ? this.job.init(key) : ks.state
    // Timers set during the call are staged, so a throw leaves the key as it was.
    const staged = { event: [...ks.eventTimers], processing: [...ks.processingTimers] }
    try {
      const r = this.job.process(s, event, this.ctx(key, ts, undefined, staged))
      ks.state = r === undefined ? s : r
    } catch (err) {
      this.dead(index, key, (err as Error).message)
      return
    }
    ks.eventTimers = staged.event
    ks.processingTimers = staged.processing
    ks.active = this.clock
    this.keys.set(key, ks)
  }

  fireTimer(key: string, kind: 'event' | 'processing', ts: number): void {
    const ks = this.keys.get(key)!
    if (kind === 'event') ks.eventTimers = ks.eventTimers.filter((t) => t !== ts)
    else ks.processingTimers = ks.processingTimers.filter((t) => t !== ts)
    if (this.job.onTimer === undefined) return
    const s = ks.state === undefined ? this.job.init(key) : ks.state
    const timers = { event: ks.eventTimers, processing: ks.processingTimers }
    try {
      const timer: Timer = { kind, ts, key }
      const r = this.job.onTimer(s, timer, this.ctx(key, ts, undefined, timers))
      ks.state = r === undefined ? s : r
    } catch (err) {
      this.dead(-1, key, `onTimer threw: ${(err as Error).message}`)
    }
    ks.eventTimers = timers.event
    ks.processingTimers = timers.processing
    // A timer firing is not activity (TTL).
  }

  // --- firing ---------------------------------------------------------------------------------------

  /** Everything W makes due: windows (fire, then drop past lateness) or event-time timers. */
  eventRound(): void {
    if (this.job.window !== undefined) {
      const due: [string, ModelWindow][] = []
      for (const [key, ks] of this.keys)
        for (const w of ks.windows) if (!w.fired && w.end <= this.W) due.push([key, w])
      due.sort(([ka, a], [kb, b]) => a.end - b.end || cmp(ka, kb) || a.start - b.start)
      for (const [key, w] of due) {
        w.fired = true
        this.emitWindow(key, w, false)
      }
      for (const [key, ks] of [...this.keys]) {
        ks.windows = ks.windows.filter((w) => !(w.fired && w.end + this.lateness <= this.W))
        if (ks.windows.length === 0) this.keys.delete(key) // a key with no window holds nothing
      }
      return
    }
    // Timers: always the smallest (ts, key) that is due, until none is.
    for (;;) {
      const due: [number, string][] = []
      for (const [key, ks] of this.keys) for (const t of ks.eventTimers) if (t <= this.W) due.push([t, key])
      if (due.length === 0) return
      due.sort((a, b) => a[0] - b[0] || cmp(a[1], b[1]))
      const [t, key] = due[0]!
      this.fireTimer(key, 'event', t)
    }
  }

  /** Processing timers and TTL deadlines the clock has reached, in (time, key, timer-before-TTL). */
  processingRound(): void {
    const ttl = this.job.ttlMs
    for (;;) {
      const due: [number, string, number][] = []
      for (const [key, ks] of this.keys) {
        for (const t of ks.processingTimers) if (t <= this.clock) due.push([t, key, 0])
        if (ttl !== undefined && ks.active + ttl <= this.clock) due.push([ks.active + ttl, key, 1])
      }
      if (due.length === 0) return
      due.sort((a, b) => a[0] - b[0] || cmp(a[1], b[1]) || a[2] - b[2])
      const [t, key, kind] = due[0]!
      if (kind === 0) this.fireTimer(key, 'processing', t)
      else this.keys.delete(key) // no event for ttlMs of processing time: state and timers go
    }
  }

  anythingDue(): boolean {
    const ttl = this.job.ttlMs
    for (const ks of this.keys.values()) {
      if (ks.windows.some((w) => (!w.fired && w.end <= this.W) || w.end + this.lateness <= this.W))
        return true
      if (ks.eventTimers.some((t) => t <= this.W)) return true
      if (ks.processingTimers.some((t) => t <= this.clock)) return true
      if (ttl !== undefined && ks.active + ttl <= this.clock) return true
    }
    return false
  }

  // --- helpers --------------------------------------------------------------------------------------

  newKey(): ModelKey {
    return { state: undefined, windows: [], eventTimers: [], processingTimers: [], active: this.clock }
  }

  ctx(
    key: string,
    ts: number | undefined,
    window: WindowRef | undefined,
    timers: { event: number[]; processing: number[] } | undefined,
  ): JobContext {
    const job = this.job
    let jobTimers: JobTimers | undefined
    if (timers !== undefined) {
      const finite = (t: number): number => {
        if (typeof t !== 'number' || !Number.isFinite(t))
          throw new TypeError('a timer needs a finite number of ms')
        return t
      }
      jobTimers = {
        atEventTime(t) {
          if (job.eventTime === undefined)
            throw new TypeError('timers.atEventTime needs eventTime on the job')
          if (!timers.event.includes(finite(t))) timers.event.push(t)
        },
        atProcessingTime(t) {
          if (!timers.processing.includes(finite(t))) timers.processing.push(t)
        },
        deleteEventTime(t) {
          timers.event = timers.event.filter((x) => x !== t)
        },
        deleteProcessingTime(t) {
          timers.processing = timers.processing.filter((x) => x !== t)
        },
      }
    }
    return {
      key,
      partition: 0,
      emit: (stream, value) => this.emit(stream, key, value),
      timestamp: ts,
      watermark: this.W,
      processingTime: this.clock,
      window,
      timers: this.job.window === undefined ? jobTimers : undefined,
    }
  }

  emit(stream: string, key: string, value: unknown): void {
    this.out.emitted.push([stream, key, value])
  }

  dead(index: number, key: string, reason: string): void {
    this.out.deadLetters.push({ index, key, reason })
  }
}

const FAILED = Symbol('failed')

/** The clear reason the doc asks for: what eventTime returned (`eventTime returned NaN`). */
function describe(v: unknown): string {
  if (typeof v === 'number') return String(v)
  if (typeof v === 'string') return 'a string'
  return v === null ? 'null' : typeof v
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}
