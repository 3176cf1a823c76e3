/**
 * The time-aware keyed runtime of one partition (docs/time.md): event time and watermarks,
 * windows, timers and state TTL. It runs in the processing thread that owns the partition (task.ts)
 * and is driven only by the partition's replay log: batches of events and ticks ({now, idle})
 * that the worker writes into the log. Given the same checkpoint and the same log it produces
 * the same outputs in the same order, which is what makes it exact across crashes.
 *
 * Plain jobs (no eventTime, window, onTimer or ttlMs) do not come here: task.ts keeps its
 * simpler loop for them.
 */
import type { JobContext, JobDefinition, JobTimers, Timer } from '../job.ts'
import type { WindowRef, WindowSpec } from '../windows.ts'
import type { DeadLetter } from '../task-types.ts'
import { PartitionTime, TIME_KEY, TimedValue, type StoredWindow } from './codec.ts'
import { TimeQueue, type Bucket } from './queue.ts'

/** Stream of window results and of events later than the allowed lateness. */
export const WINDOWS_STREAM = 'windows'
export const LATE_STREAM = 'late'

/** Queue item kinds; also their order among items of one key due at the same time. */
const FIRE = 0
const PURGE = 1
const EVENT_TIMER = 2
const PROC_TIMER = 3
const TTL = 4

interface Win {
  start: number
  end: number
  acc: unknown
  fired: boolean
  /** Sessions without merge(): the events folded in, with their arrival numbers. */
  events: [number, unknown][] | null
}

interface Entry {
  key: string
  state: unknown
  /** In #changed (only while change tracking is on). */
  dirty: boolean
  /**
   * Deleted since the last snapshot, kept in #entries as a tombstone (change tracking on): the
   * snapshot reports it deleted, and a key that comes back reuses it instead of another entry.
   */
  gone: boolean
  /** Windowed jobs: open windows (and fired ones within lateness), by start. */
  wins: Win[] | null
  /** Pending event-time / processing-time timers (small, unsorted). */
  etimers: number[] | null
  ptimers: number[] | null
  /** Processing clock at the key's last event (TTL). */
  active: number
  /** TTL deadline queued for this entry, or -1. */
  ttlAt: number
}

export interface TimeOutput {
  emitted: [string, string, unknown][] | null
  deadLetters: DeadLetter[] | null
}

/** What the worker's main thread needs to know to write ticks (see DataPlane). */
export interface TimeStatus {
  /** The watermark (-Infinity before the first event time). */
  watermark: number
  /** The watermark when the last event arrived: the base of idle advance. */
  base: number
  /** Earliest event-time deadline queued (a window end, purge or timer), or Infinity. */
  nextEvent: number
  /** Earliest processing-time deadline (timer or TTL), or Infinity. */
  nextProcessing: number
}

type AnyJob = JobDefinition<unknown, unknown>

export class TimedPartition {
  readonly #job: AnyJob
  readonly #partition: number
  readonly #window: WindowSpec | undefined
  readonly #lateness: number
  readonly #ooo: number
  readonly #idleMs: number | undefined
  readonly #ttl: number | undefined
  readonly #entries = new Map<string, Entry>()
  /**
   * Change tracking for incremental snapshots, on from the first `load` or `snapshot`. Before
   * either, nothing of this partition can be in a checkpoint (a restore loads the checkpoint
   * first), so the first snapshot takes every live key and no deletion needs remembering: a
   * partition that is never checkpointed (memory state) tracks nothing and cannot grow a
   * change list as windows open and close.
   */
  #tracking = false
  /** Entries changed or deleted since the last snapshot, each once (dirty). */
  #changed: Entry[] = []
  /** Tombstones in #entries (tracking: all of them in #changed). */
  #gone = 0
  /**
   * Dropped tumbling/sliding windows, reused for the next ones: a window lives about its size
   * in event time, long enough to be promoted by the GC, so one new object per window is old
   * garbage. Nothing keeps a dropped window (a result copies its range; ctx.window is set per
   * fold); sessions are not pooled (their windows carry events and merge).
   */
  readonly #freeWins: Win[] = []
  readonly #eventQ = new TimeQueue()
  readonly #procQ = new TimeQueue()
  /** Meta: watermark, its base for idleness, the processing clock. */
  #wm = -Infinity
  #base = -Infinity
  #clock = 0
  /** Arrival counter (sessions without merge refold their events in arrival order). */
  #arrivals = 0

  // Per-call context (one object per partition; fields set as the loop goes).
  #out: TimeOutput = { emitted: null, deadLetters: null }
  #key = ''
  #entry: Entry | null = null
  #ts: number | undefined = undefined
  #win: WindowRef | undefined = undefined
  readonly #ctx: JobContext
  readonly #timers: JobTimers

  constructor(job: AnyJob, partition: number) {
    this.#job = job
    this.#partition = partition
    this.#window = job.window
    this.#lateness = job.allowedLatenessMs ?? 0
    this.#ooo = job.watermark?.outOfOrdernessMs ?? 0
    this.#idleMs = job.watermark?.idleMs
    this.#ttl = job.ttlMs
    // The context's getters read the runtime's current key and times: one object per partition,
    // no allocation per event.
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this
    this.#timers = {
      atEventTime(ts: number) {
        if (job.eventTime === undefined) throw new TypeError('timers.atEventTime needs eventTime on the job')
        self.#addTimer(self.#current(), checkTs(ts), false)
      },
      atProcessingTime(ts: number) {
        self.#addTimer(self.#current(), checkTs(ts), true)
      },
      deleteEventTime(ts: number) {
        self.#deleteTimer(self.#current(), ts, false)
      },
      deleteProcessingTime(ts: number) {
        self.#deleteTimer(self.#current(), ts, true)
      },
    }
    const timers = job.window === undefined ? this.#timers : undefined
    this.#ctx = {
      partition,
      get key() {
        return self.#key
      },
      emit(stream: string, event: unknown) {
        ;(self.#out.emitted ??= []).push([stream, self.#key, event])
      },
      get timestamp() {
        return self.#ts
      },
      get watermark() {
        return self.#wm
      },
      get processingTime() {
        return self.#clock
      },
      get window() {
        return self.#win
      },
      timers,
    }
  }

  get status(): TimeStatus {
    return {
      watermark: this.#wm,
      base: this.#base,
      nextEvent: this.#eventQ.next,
      nextProcessing: this.#procQ.next,
    }
  }

  /** Keys held (the reserved time key not counted). */
  get size(): number {
    return this.#entries.size - this.#gone
  }

  // --- the log: batches and ticks ------------------------------------------------------------------

  /** Apply one batch of [key, event] in order. */
  apply(events: readonly (readonly [string, unknown])[], out: TimeOutput): void {
    this.#out = out
    const eventTime = this.#job.eventTime
    for (let i = 0; i < events.length; i++) {
      const pair = events[i]!
      const key = pair[0]
      const event = pair[1]
      this.#key = key
      if (key === TIME_KEY) {
        this.#dead(i, key, `the key ${JSON.stringify(TIME_KEY)} is reserved by Shoal for partition time`)
        continue
      }
      let ts: number | undefined
      if (eventTime !== undefined) {
        let t: unknown
        try {
          t = eventTime(event)
        } catch (err) {
          this.#dead(i, key, `eventTime threw: ${err instanceof Error ? err.message : String(err)}`)
          continue
        }
        if (typeof t !== 'number' || !Number.isFinite(t)) {
          this.#dead(i, key, `eventTime returned ${describe(t)}, not a finite number of ms`)
          continue
        }
        ts = t
      }
      this.#ts = ts
      if (this.#window !== undefined) this.#windowEvent(i, key, event, ts!)
      else this.#keyedEvent(i, key, event)
      if (ts !== undefined) {
        const w = ts - this.#ooo
        if (w > this.#wm) this.#wm = w
        this.#base = this.#wm
        if (this.#eventQ.next <= this.#wm) this.#fireEventTime()
      }
    }
    this.#ts = undefined
    this.#win = undefined
  }

  /**
   * A tick from the log: the processing clock moves to `now`; a partition silent for `idle` ms
   * (past idleMs) advances its watermark by the excess. Then what is due fires.
   */
  tick(now: number, idle: number, out: TimeOutput): void {
    this.#out = out
    if (now > this.#clock) {
      this.#clock = now
    }
    if (this.#idleMs !== undefined && idle > this.#idleMs && this.#base !== -Infinity) {
      const w = this.#base + (idle - this.#idleMs)
      if (w > this.#wm) {
        this.#wm = w
      }
    }
    // Until nothing is due: a processing timer may set an event timer that W has passed already
    // (and an event timer a processing timer the clock has reached); fired only at the next
    // record, it could wait for ever on an idle partition (no tick is written for it).
    while (this.#eventQ.next <= this.#wm || this.#procQ.next <= this.#clock) {
      if (this.#eventQ.next <= this.#wm) this.#fireEventTime()
      if (this.#procQ.next <= this.#clock) this.#fireProcessingTime()
    }
    this.#ts = undefined
  }

  // --- events --------------------------------------------------------------------------------------

  #entryFor(key: string): Entry {
    let e = this.#entries.get(key)
    if (e === undefined) {
      e = {
        key,
        state: undefined,
        dirty: false,
        gone: false,
        wins: null,
        etimers: null,
        ptimers: null,
        active: this.#clock,
        ttlAt: -1,
      }
      this.#entries.set(key, e)
      this.#touch(e)
    } else if (e.gone) {
      // Deleted since the last snapshot and back: the tombstone (in #changed already) lives again.
      e.gone = false
      e.active = this.#clock
      this.#gone--
    }
    return e
  }

  #touch(e: Entry): void {
    if (!e.dirty && this.#tracking) {
      e.dirty = true
      this.#changed.push(e)
    }
  }

  /** Track changes from now on; the live keys count as changed (nothing is checkpointed yet). */
  #startTracking(): void {
    if (this.#tracking) return
    this.#sweep()
    this.#tracking = true
    for (const e of this.#entries.values()) this.#touch(e)
  }

  #keyedEvent(i: number, key: string, event: unknown): void {
    const e = this.#entryFor(key)
    this.#entry = e
    const s = e.state === undefined ? this.#job.init(key) : e.state
    try {
      const next = this.#job.process(s, event, this.#ctx)
      e.state = next === undefined ? s : next
    } catch (err) {
      this.#dead(i, key, errorText(err))
      if (e.state === undefined && e.etimers === null && e.ptimers === null) this.#delete(e)
      return
    }
    this.#touch(e)
    this.#activity(e)
  }

  #activity(e: Entry): void {
    if (this.#ttl === undefined) return
    e.active = this.#clock
    if (e.ttlAt === -1) {
      e.ttlAt = this.#clock + this.#ttl
      this.#procQ.push(e.ttlAt, e.key, TTL, 0)
    }
  }

  #windowEvent(i: number, key: string, event: unknown, ts: number): void {
    const spec = this.#window!
    if (spec.kind === 'session') {
      this.#sessionEvent(i, key, event, ts, spec.gapMs)
      return
    }
    const size = spec.sizeMs
    const slide = spec.kind === 'sliding' ? spec.slideMs : size
    const lastStart = Math.floor(ts / slide) * slide
    // Oldest window first: the lowest start with start + size > ts.
    let start = lastStart - Math.floor((size - 1) / slide) * slide
    while (start + size <= ts) start += slide
    let folded = false
    let e: Entry | null = null
    for (; start <= lastStart; start += slide) {
      const end = start + size
      if (end + this.#lateness <= this.#wm) continue // dropped already: skip this window
      e ??= this.#entryFor(key)
      let w = findWindow(e.wins, start)
      const created = w === null
      if (w === null) {
        const acc = this.#job.init(key)
        w = this.#freeWins.pop() ?? { start, end, acc, fired: false, events: null }
        w.start = start
        w.end = end
        w.acc = acc
        w.fired = false
        addWindow(e, w)
      }
      if (!this.#fold(i, key, w, event, e)) {
        // Dead-lettered: windows it was folded into already keep it; a window made for it goes.
        if (created) {
          removeWindow(e.wins!, w)
          this.#maybeDelete(e)
        }
        return
      }
      // A window created after its end already passed fires at once below (late).
      if (created && end > this.#wm) this.#eventQ.push(end, key, FIRE, start)
      folded = true
      if (end <= this.#wm) this.#lateFire(e, w)
    }
    if (!folded) (this.#out.emitted ??= []).push([LATE_STREAM, key, event])
  }

  #sessionEvent(i: number, key: string, event: unknown, ts: number, gap: number): void {
    let start = ts
    let end = ts + gap
    if (end + this.#lateness <= this.#wm) {
      ;(this.#out.emitted ??= []).push([LATE_STREAM, key, event])
      return
    }
    const e = this.#entryFor(key)
    const wins: readonly Win[] = e.wins ?? NO_WINDOWS
    // Windows that overlap or touch [ts, ts + gap), oldest first (wins is sorted by start).
    let first = -1
    let count = 0
    for (let k = 0; k < wins.length; k++) {
      const w = wins[k]!
      if (w.start <= end && w.end >= start) {
        if (first === -1) first = k
        count++
        if (w.start < start) start = w.start
        if (w.end > end) end = w.end
      }
    }
    let w: Win
    /** A range not seen before: it fires on its own, on time or (already past W) at once. */
    let fresh = true
    let undo: () => void
    if (count === 0) {
      const created: Win = {
        start,
        end,
        acc: this.#job.init(key),
        fired: false,
        events: this.#job.merge ? null : [],
      }
      addWindow(e, created)
      w = created
      undo = () => removeWindow(e.wins!, created)
    } else if (count === 1) {
      // The event falls into or extends one session: no merge, no refold.
      const one = wins[first]!
      w = one
      fresh = one.start !== start || one.end !== end
      const { start: s0, end: e0, fired: f0 } = one
      if (fresh) {
        one.start = start
        one.end = end
        one.fired = false
      }
      undo = () => {
        one.start = s0
        one.end = e0
        one.fired = f0
      }
    } else {
      // The event bridges sessions: one window with their states combined.
      const all = e.wins!
      const merged = all.splice(first, count)
      const combined: Win = { start, end, acc: undefined, fired: false, events: null }
      this.#win = combined
      this.#entry = e
      try {
        if (this.#job.merge !== undefined) {
          let acc = merged[0]!.acc
          for (let k = 1; k < merged.length; k++) acc = this.#job.merge(acc, merged[k]!.acc, key)
          combined.acc = acc
        } else {
          const events = merged.flatMap((m) => m.events ?? [])
          events.sort((x, y) => x[0] - y[0])
          combined.events = events
          let acc = this.#job.init(key)
          for (const [, ev] of events) {
            // ctx.timestamp is the time of the event being folded (the refolded one, not the
            // event that caused the merge): process sees each event as it saw it the first time.
            this.#ts = this.#job.eventTime!(ev)
            const r = this.#job.process(acc, ev, this.#ctx)
            if (r !== undefined) acc = r
          }
          this.#ts = ts
          combined.acc = acc
        }
      } catch (err) {
        this.#ts = ts
        all.splice(first, 0, ...merged)
        this.#dead(i, key, errorText(err))
        return
      }
      insertWindow(all, combined)
      w = combined
      undo = () => {
        removeWindow(all, combined)
        all.splice(first, 0, ...merged)
      }
    }
    if (!this.#fold(i, key, w, event, e)) {
      // Dead-lettered: the windows stay as they were before the event.
      undo()
      if (e.wins === null || e.wins.length === 0) this.#delete(e)
      return
    }
    if (w.events !== null) w.events.push([this.#arrivals++, event])
    if (end <= this.#wm) this.#lateFire(e, w)
    else if (fresh) this.#eventQ.push(end, key, FIRE, start)
  }

  /** Fold one event into one window; false (dead-lettered) when process throws. */
  #fold(i: number, key: string, w: Win, event: unknown, e: Entry): boolean {
    this.#win = w // the window itself is the WindowRef: no allocation per event
    this.#entry = e
    try {
      const next = this.#job.process(w.acc, event, this.#ctx)
      if (next !== undefined) w.acc = next
    } catch (err) {
      this.#dead(i, key, errorText(err))
      return false
    }
    this.#touch(e)
    this.#activity(e)
    return true
  }

  /** An event updated a window whose end the watermark has passed: it fires again now. */
  #lateFire(e: Entry, w: Win): void {
    const first = !w.fired
    w.fired = true
    this.#emitWindow(e.key, w, true)
    // A window first fired here (created or merged late) still needs its drop queued.
    if (first && this.#lateness > 0) this.#eventQ.push(w.end + this.#lateness, e.key, PURGE, w.start)
    if (this.#lateness === 0 || w.end + this.#lateness <= this.#wm) this.#dropWindow(e, w)
  }

  #emitWindow(key: string, w: Win, late: boolean): void {
    // A window kept for lateness may change after this result: the result gets its own copy.
    const state = this.#lateness > 0 ? structuredClone(w.acc) : w.acc
    const result = late
      ? { key, start: w.start, end: w.end, state, late: true }
      : { key, start: w.start, end: w.end, state }
    ;(this.#out.emitted ??= []).push([WINDOWS_STREAM, key, result])
  }

  #dropWindow(e: Entry, w: Win): void {
    if (e.wins !== null) removeWindow(e.wins, w)
    if (w.events === null && this.#window!.kind !== 'session' && this.#freeWins.length < MAX_FREE_WINDOWS) {
      w.acc = undefined
      this.#freeWins.push(w)
    }
    this.#touch(e)
    this.#maybeDelete(e)
  }

  // --- firing --------------------------------------------------------------------------------------

  #fireEventTime(): void {
    for (let due = this.#eventQ.takeDue(this.#wm); due !== null; due = this.#eventQ.takeDue(this.#wm)) {
      const { bucket, order } = due
      for (let n = 0; n < order.length; n++) {
        if (n > 0 && this.#eventQ.next <= bucket.t) {
          requeueRest(this.#eventQ, bucket, order, n)
          break
        }
        const k = order[n]!
        const key = bucket.keys[k]!
        const kind = bucket.kinds[k]!
        const e = this.#entries.get(key)
        if (e === undefined || e.gone) continue
        if (kind === EVENT_TIMER) {
          this.#fireTimer(e, bucket.t, false)
          continue
        }
        const w = e.wins === null ? null : findWindow(e.wins, bucket.starts[k]!)
        if (w === null) continue
        if (kind === FIRE) {
          if (w.fired || w.end !== bucket.t) continue // merged away or already fired late
          w.fired = true
          this.#emitWindow(key, w, false)
          if (this.#lateness === 0) this.#dropWindow(e, w)
          else {
            this.#touch(e)
            this.#eventQ.push(w.end + this.#lateness, key, PURGE, w.start)
          }
        } else if (w.fired && w.end + this.#lateness === bucket.t) {
          this.#dropWindow(e, w)
        }
      }
    }
  }

  #fireProcessingTime(): void {
    for (let due = this.#procQ.takeDue(this.#clock); due !== null; due = this.#procQ.takeDue(this.#clock)) {
      const { bucket, order } = due
      for (let n = 0; n < order.length; n++) {
        if (n > 0 && this.#procQ.next <= bucket.t) {
          requeueRest(this.#procQ, bucket, order, n)
          break
        }
        const k = order[n]!
        const key = bucket.keys[k]!
        const e = this.#entries.get(key)
        if (e === undefined || e.gone) continue
        if (bucket.kinds[k] === PROC_TIMER) {
          this.#fireTimer(e, bucket.t, true)
          continue
        }
        if (e.ttlAt !== bucket.t) continue // a stale deadline of an earlier entry of this key
        const deadline = e.active + this.#ttl!
        if (deadline > bucket.t) {
          // Re-queued at the real deadline even when that is due too: the key goes in its place
          // in (time, key) order, after its timers due before it (as a restored partition, which
          // queues the real deadline, does), not at this stale one.
          e.ttlAt = deadline
          this.#procQ.push(deadline, key, TTL, 0)
        } else {
          this.#delete(e)
        }
      }
    }
  }

  #fireTimer(e: Entry, ts: number, processing: boolean): void {
    const list = processing ? e.ptimers : e.etimers
    const at = list === null ? -1 : list.indexOf(ts)
    if (at === -1) return // deleted
    list!.splice(at, 1)
    this.#touch(e)
    this.#key = e.key
    this.#entry = e
    this.#ts = ts
    if (this.#job.onTimer !== undefined) {
      const timer: Timer = { kind: processing ? 'processing' : 'event', ts, key: e.key }
      const s = e.state === undefined ? this.#job.init(e.key) : e.state
      try {
        const next = this.#job.onTimer(s, timer, this.#ctx)
        e.state = next === undefined ? s : next
      } catch (err) {
        this.#dead(-1, e.key, `onTimer threw: ${errorText(err)}`)
      }
    }
  }

  // --- timers --------------------------------------------------------------------------------------

  #current(): Entry {
    const e = this.#entry
    if (e === null || e.key !== this.#key)
      throw new TypeError('timers can only be set from process or onTimer')
    return e
  }

  #addTimer(e: Entry, ts: number, processing: boolean): void {
    const list = processing ? (e.ptimers ??= []) : (e.etimers ??= [])
    if (list.includes(ts)) return
    list.push(ts)
    this.#touch(e)
    if (processing) this.#procQ.push(ts, e.key, PROC_TIMER, 0)
    else this.#eventQ.push(ts, e.key, EVENT_TIMER, 0)
  }

  #deleteTimer(e: Entry, ts: number, processing: boolean): void {
    const list = processing ? e.ptimers : e.etimers
    const at = list === null ? -1 : list.indexOf(ts)
    if (at === -1) return
    list!.splice(at, 1) // its queue item is skipped when it comes up
    this.#touch(e)
  }

  // --- keys ----------------------------------------------------------------------------------------

  #maybeDelete(e: Entry): void {
    if (this.#window !== undefined && (e.wins === null || e.wins.length === 0)) this.#delete(e)
  }

  #delete(e: Entry): void {
    if (e.gone || this.#entries.get(e.key) !== e) return
    // A tombstone, holding nothing: a key whose windows close and open again (every key of a
    // tumbling job, every window) reuses its entry instead of a new one per window. Tracking,
    // the next snapshot reports it deleted and removes it; untracked, tombstones are swept once
    // they outnumber the live keys, so memory still follows the live keys.
    e.gone = true
    e.state = undefined
    e.wins = null
    e.etimers = null
    e.ptimers = null
    e.ttlAt = -1
    this.#gone++
    if (this.#tracking) this.#touch(e)
    else if (this.#gone > 1024 && this.#gone * 2 > this.#entries.size) this.#sweep()
  }

  /** Remove the tombstones (untracked: no snapshot needs to hear of them). */
  #sweep(): void {
    for (const [key, e] of this.#entries) if (e.gone) this.#entries.delete(key)
    this.#gone = 0
  }

  #dead(index: number, key: string, error: string): void {
    ;(this.#out.deadLetters ??= []).push({ index, key, error })
  }

  // --- queries, snapshots, restore -----------------------------------------------------------------

  /** What `get`/`dump` show for a key: its state, or a windowed key's windows. */
  view(key: string): unknown {
    const e = this.#entries.get(key)
    return e === undefined || e.gone ? undefined : this.#viewOf(e)
  }

  dump(): [string, unknown][] {
    const all: [string, unknown][] = []
    for (const e of this.#entries.values()) if (!e.gone) all.push([e.key, this.#viewOf(e)])
    return all
  }

  #viewOf(e: Entry): unknown {
    if (this.#window === undefined) return e.state
    return { windows: (e.wins ?? []).map((w) => ({ start: w.start, end: w.end, state: w.acc })) }
  }

  /**
   * Changed (or all) keys as checkpoint values, the keys deleted since the last snapshot, and
   * the partition's time under TIME_KEY. Clears the change tracking (as the plain runtime does).
   */
  snapshot(full: boolean): { entries: [string, unknown][]; deleted: string[] } {
    if (!this.#tracking) {
      this.#sweep()
      this.#tracking = true
      // An incremental snapshot takes every live key (none is checkpointed yet); a full one does anyway.
      if (!full) for (const e of this.#entries.values()) this.#touch(e)
    }
    const entries: [string, unknown][] = []
    const deleted: string[] = []
    for (const e of this.#changed) {
      e.dirty = false
      if (this.#entries.get(e.key) !== e) continue // replaced by a load
      if (e.gone) {
        // The tombstone goes; an incremental checkpoint deletes the key (a full one lacks it).
        this.#entries.delete(e.key)
        if (!full) deleted.push(e.key)
      } else if (!full) entries.push([e.key, this.#stored(e)])
    }
    this.#gone = 0
    if (full) for (const e of this.#entries.values()) entries.push([e.key, this.#stored(e)])
    entries.push([TIME_KEY, new PartitionTime(this.#wm, this.#base, this.#clock, this.#arrivals)])
    this.#changed = []
    return { entries, deleted }
  }

  #stored(e: Entry): TimedValue {
    const wins: StoredWindow[] | null =
      e.wins === null ? null : e.wins.map((w) => [w.start, w.end, w.acc, w.fired, w.events])
    return new TimedValue(e.state, wins, e.etimers, e.ptimers, e.active)
  }

  /** Restore one checkpointed key (or the partition's time), queueing its deadlines again. */
  load(key: string, value: unknown): void {
    this.#startTracking()
    if (key === TIME_KEY) {
      if (value instanceof PartitionTime) {
        this.#wm = value.watermark
        this.#base = value.base
        this.#clock = value.clock
        this.#arrivals = value.arrivals
      }
      return
    }
    const v = value instanceof TimedValue ? value : new TimedValue(value, null, null, null, this.#clock)
    if (this.#entries.get(key)?.gone === true) this.#gone--
    const e: Entry = {
      key,
      state: v.state,
      dirty: false,
      gone: false,
      wins:
        v.windows === null
          ? null
          : v.windows.map(([start, end, acc, fired, events]) => ({ start, end, acc, fired, events })),
      etimers: v.eventTimers,
      ptimers: v.processingTimers,
      active: v.active,
      ttlAt: -1,
    }
    this.#entries.set(key, e)
    for (const w of e.wins ?? []) {
      if (!w.fired) this.#eventQ.push(w.end, key, FIRE, w.start)
      else this.#eventQ.push(w.end + this.#lateness, key, PURGE, w.start)
    }
    for (const t of e.etimers ?? []) this.#eventQ.push(t, key, EVENT_TIMER, 0)
    for (const t of e.ptimers ?? []) this.#procQ.push(t, key, PROC_TIMER, 0)
    if (this.#ttl !== undefined) {
      e.ttlAt = e.active + this.#ttl
      this.#procQ.push(e.ttlAt, key, TTL, 0)
    }
  }

  /** Forget everything (a `load` with replace). */
  clear(): void {
    this.#entries.clear()
    this.#tracking = false
    this.#changed = []
    this.#gone = 0
    this.#eventQ.clear()
    this.#procQ.clear()
    this.#wm = -Infinity
    this.#base = -Infinity
    this.#clock = 0
    this.#arrivals = 0
  }

  get partition(): number {
    return this.#partition
  }
}

/**
 * A timer fired from a bucket set a timer due at or before the bucket's time (onTimer setting one
 * in the past): due timers run in (time, key) order (docs/time.md), so that one goes before the
 * rest of the bucket (other keys' timers, this key's TTL drop), which is queued again.
 */
function requeueRest(q: TimeQueue, bucket: Bucket, order: number[], from: number): void {
  for (let n = from; n < order.length; n++) {
    const k = order[n]!
    q.push(bucket.t, bucket.keys[k]!, bucket.kinds[k]!, bucket.starts[k]!)
  }
}

function findWindow(wins: Win[] | null, start: number): Win | null {
  if (wins === null) return null
  for (let i = 0; i < wins.length; i++) if (wins[i]!.start === start) return wins[i]!
  return null
}

const NO_WINDOWS: readonly Win[] = Object.freeze([])
/** Dropped windows kept for reuse per partition (about the keys of one due time). */
const MAX_FREE_WINDOWS = 4096

/** Add a window to a key's, in start order; a key's first window gets an array of exactly one. */
function addWindow(e: Entry, w: Win): void {
  if (e.wins === null || e.wins.length === 0) e.wins = [w]
  else insertWindow(e.wins, w)
}

function insertWindow(wins: Win[], w: Win): void {
  let i = wins.length
  while (i > 0 && wins[i - 1]!.start > w.start) i--
  wins.splice(i, 0, w)
}

function removeWindow(wins: Win[], w: Win): void {
  const i = wins.indexOf(w)
  if (i !== -1) wins.splice(i, 1)
}

function checkTs(ts: unknown): number {
  if (typeof ts !== 'number' || !Number.isFinite(ts)) {
    throw new TypeError(`a timer needs a finite number of ms (got ${describe(ts)})`)
  }
  return ts
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

function describe(v: unknown): string {
  if (typeof v === 'number') return String(v)
  if (typeof v === 'string') return `a string (${JSON.stringify(v.slice(0, 40))})`
  return v === null ? 'null' : typeof v
}
