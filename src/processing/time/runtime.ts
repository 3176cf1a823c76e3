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
import { TimeQueue, kindAt, startAt, type Bucket } from './queue.ts'
import { DIRTY, GONE, KeySlots, WindowPool } from './store.ts'

/** Stream of window results and of events later than the allowed lateness. */
export const WINDOWS_STREAM = 'windows'
export const LATE_STREAM = 'late'

/** Queue item kinds; also their order among items of one key due at the same time. */
const FIRE = 0
const PURGE = 1
const EVENT_TIMER = 2
const PROC_TIMER = 3
const TTL = 4

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
  /** Sessions: windows move, merge and keep their own ends (tumbling/sliding derive theirs). */
  readonly #session: boolean
  readonly #lateness: number
  readonly #ooo: number
  readonly #idleMs: number | undefined
  readonly #ttl: number | undefined
  /** Keys as slots, windows as ids (store.ts): columns, not an object per key and per window. */
  readonly #keys: KeySlots
  readonly #wins: WindowPool
  /** Jobs without a window: pending event-time / processing-time timers by slot (sparse). */
  readonly #etimers = new Map<number, number[]>()
  readonly #ptimers = new Map<number, number[]>()
  /**
   * Change tracking for incremental snapshots, on from the first `load` or `snapshot`. Before
   * either, nothing of this partition can be in a checkpoint (a restore loads the checkpoint
   * first), so the first snapshot takes every live key and no deletion needs remembering: a
   * partition that is never checkpointed (memory state) tracks nothing and cannot grow a
   * change list as windows open and close.
   */
  #tracking = false
  /** Keys changed or deleted since the last snapshot (DIRTY); a key may repeat after a load. */
  #changed: string[] = []
  /** Tombstones (GONE) among the keys (tracking: all of them in #changed). */
  #gone = 0
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
  /** The slot `process`/`onTimer` runs for (timers are set on it), its key, or -1. */
  #slot = -1
  #slotKey = ''
  #ts: number | undefined = undefined
  /** ctx.window: one object per partition, set before each fold (no allocation per event). */
  readonly #winRef = { start: 0, end: 0 }
  #win: WindowRef | undefined = undefined
  readonly #ctx: JobContext
  readonly #timers: JobTimers

  constructor(job: AnyJob, partition: number) {
    this.#job = job
    this.#partition = partition
    this.#window = job.window
    this.#session = job.window?.kind === 'session'
    this.#lateness = job.allowedLatenessMs ?? 0
    this.#ooo = job.watermark?.outOfOrdernessMs ?? 0
    this.#idleMs = job.watermark?.idleMs
    this.#ttl = job.ttlMs
    this.#keys = new KeySlots(job.ttlMs !== undefined)
    this.#wins = new WindowPool(
      job.window === undefined || job.window.kind === 'session' ? undefined : job.window.sizeMs,
    )
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
    return this.#keys.slots.size - this.#gone
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

  /** The live slot of `key`, or -1. */
  #find(key: string): number {
    const s = this.#keys.slots.get(key)
    return s === undefined || (this.#keys.flags[s]! & GONE) !== 0 ? -1 : s
  }

  #slotFor(key: string): number {
    const k = this.#keys
    const s = k.slots.get(key)
    if (s === undefined) {
      const n = k.add(key, this.#clock)
      this.#touch(n, key)
      return n
    }
    if ((k.flags[s]! & GONE) !== 0) {
      // Deleted since the last snapshot and back: the tombstone (in #changed already) lives again.
      k.flags[s] = k.flags[s]! & ~GONE
      if (k.ttl) k.active[s] = this.#clock
      this.#gone--
    }
    return s
  }

  #touch(slot: number, key: string): void {
    const f = this.#keys.flags
    if ((f[slot]! & DIRTY) === 0 && this.#tracking) {
      f[slot] = f[slot]! | DIRTY
      this.#changed.push(key)
    }
  }

  /** Track changes from now on; the live keys count as changed (nothing is checkpointed yet). */
  #startTracking(): void {
    if (this.#tracking) return
    this.#sweep()
    this.#tracking = true
    for (const [key, s] of this.#keys.slots) this.#touch(s, key)
  }

  #keyedEvent(i: number, key: string, event: unknown): void {
    const k = this.#keys
    const slot = this.#slotFor(key)
    this.#slot = slot
    this.#slotKey = key
    const prev = k.getState(slot)
    const s = prev === undefined ? this.#job.init(key) : prev
    try {
      const next = this.#job.process(s, event, this.#ctx)
      k.setState(slot, next === undefined ? s : next)
    } catch (err) {
      this.#dead(i, key, errorText(err))
      if (prev === undefined && !this.#etimers.has(slot) && !this.#ptimers.has(slot)) this.#delete(slot, key)
      return
    }
    this.#touch(slot, key)
    this.#activity(slot, key)
  }

  #activity(slot: number, key: string): void {
    if (this.#ttl === undefined) return
    const k = this.#keys
    k.active[slot] = this.#clock
    if (k.ttlAt[slot] === -1) {
      const at = this.#clock + this.#ttl
      k.ttlAt[slot] = at
      this.#procQ.push(at, key, TTL, 0)
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
    let slot = -1
    const wins = this.#wins
    for (; start <= lastStart; start += slide) {
      const end = start + size
      if (end + this.#lateness <= this.#wm) continue // dropped already: skip this window
      if (slot === -1) slot = this.#slotFor(key)
      let w = this.#findWindow(slot, start)
      const created = w === -1
      if (w === -1) {
        w = wins.alloc(start, end, this.#job.init(key))
        this.#addWindow(slot, w)
      }
      if (!this.#fold(i, key, w, event, slot)) {
        // Dead-lettered: windows it was folded into already keep it; a window made for it goes.
        if (created) {
          this.#unlinkWindow(slot, w)
          wins.free(w)
          this.#maybeDelete(slot, key)
        }
        return
      }
      // A window created after its end already passed fires at once below (late). Its start is
      // end - size: not stored in the queue.
      if (created && end > this.#wm) this.#eventQ.pushTime(end)
      folded = true
      if (end <= this.#wm) this.#lateFire(slot, key, w)
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
    const slot = this.#slotFor(key)
    const wins = this.#wins
    // Windows that overlap or touch [ts, ts + gap), oldest first (the key's list is by start):
    // a run of the list, from `first` (no array per event).
    let first = -1
    let count = 0
    for (let w = this.#keys.head[slot]!; w !== -1; w = wins.next[w]!) {
      const ws = wins.start[w]!
      const we = wins.end(w)
      if (ws <= end && we >= start) {
        if (first === -1) first = w
        count++
        if (ws < start) start = ws
        if (we > end) end = we
      }
    }
    let w: number
    /** A range not seen before: it fires on its own, on time or (already past W) at once. */
    let fresh = true
    let undo: () => void
    let merged: number[] | null = null
    if (count === 0) {
      const created = wins.alloc(start, end, this.#job.init(key))
      if (this.#job.merge === undefined) wins.events.set(created, [])
      this.#addWindow(slot, created)
      w = created
      undo = () => {
        this.#unlinkWindow(slot, created)
        wins.free(created)
      }
    } else if (count === 1) {
      // The event falls into or extends one session: no merge, no refold.
      const one = first
      w = one
      const s0 = wins.start[one]!
      const e0 = wins.end(one)
      const f0 = wins.fired[one]!
      fresh = s0 !== start || e0 !== end
      if (fresh) {
        this.#unlinkWindow(slot, one)
        wins.setRange(one, start, end)
        wins.fired[one] = 0
        this.#addWindow(slot, one)
      }
      undo = () => {
        this.#unlinkWindow(slot, one)
        wins.setRange(one, s0, e0)
        wins.fired[one] = f0
        this.#addWindow(slot, one)
      }
    } else {
      // The event bridges sessions: one window with their states combined.
      merged = []
      for (let w = first; merged.length < count; w = wins.next[w]!) merged.push(w)
      for (const m of merged) this.#unlinkWindow(slot, m)
      const combined = wins.alloc(start, end, undefined)
      this.#setWin(start, end)
      this.#slot = slot
      this.#slotKey = key
      try {
        if (this.#job.merge !== undefined) {
          let acc = wins.acc[merged[0]!]
          for (let k = 1; k < merged.length; k++) acc = this.#job.merge(acc, wins.acc[merged[k]!], key)
          wins.acc[combined] = acc
        } else {
          const events = merged.flatMap((m) => wins.events.get(m) ?? [])
          events.sort((x, y) => x[0] - y[0])
          wins.events.set(combined, events)
          let acc = this.#job.init(key)
          for (const [, ev] of events) {
            // ctx.timestamp is the time of the event being folded (the refolded one, not the
            // event that caused the merge): process sees each event as it saw it the first time.
            this.#ts = this.#job.eventTime!(ev)
            const r = this.#job.process(acc, ev, this.#ctx)
            if (r !== undefined) acc = r
          }
          this.#ts = ts
          wins.acc[combined] = acc
        }
      } catch (err) {
        this.#ts = ts
        wins.free(combined)
        for (const m of merged) this.#addWindow(slot, m)
        this.#dead(i, key, errorText(err))
        return
      }
      this.#addWindow(slot, combined)
      w = combined
      const parts = merged
      undo = () => {
        this.#unlinkWindow(slot, combined)
        wins.free(combined)
        for (const m of parts) this.#addWindow(slot, m)
      }
    }
    if (!this.#fold(i, key, w, event, slot)) {
      // Dead-lettered: the windows stay as they were before the event.
      undo()
      if (this.#keys.head[slot] === -1) this.#delete(slot, key)
      return
    }
    if (merged !== null) for (const m of merged) wins.free(m)
    wins.events.get(w)?.push([this.#arrivals++, event])
    if (end <= this.#wm) this.#lateFire(slot, key, w)
    else if (fresh) this.#eventQ.push(end, key, FIRE, start)
  }

  #setWin(start: number, end: number): void {
    const r = this.#winRef
    r.start = start
    r.end = end
    this.#win = r
  }

  /** Fold one event into one window; false (dead-lettered) when process throws. */
  #fold(i: number, key: string, w: number, event: unknown, slot: number): boolean {
    const wins = this.#wins
    this.#setWin(wins.start[w]!, wins.end(w))
    this.#slot = slot
    this.#slotKey = key
    try {
      const next = this.#job.process(wins.acc[w], event, this.#ctx)
      if (next !== undefined) wins.acc[w] = next
    } catch (err) {
      this.#dead(i, key, errorText(err))
      return false
    }
    this.#touch(slot, key)
    this.#activity(slot, key)
    return true
  }

  /** An event updated a window whose end the watermark has passed: it fires again now. */
  #lateFire(slot: number, key: string, w: number): void {
    const wins = this.#wins
    const first = wins.fired[w] === 0
    wins.fired[w] = 1
    this.#emitWindow(key, w, true)
    const end = wins.end(w)
    // A window first fired here (created or merged late) still needs its drop queued.
    if (first && this.#lateness > 0) this.#queueWindow(end + this.#lateness, key, PURGE, w)
    if (this.#lateness === 0 || end + this.#lateness <= this.#wm) this.#dropWindow(slot, key, w)
  }

  /**
   * Queue a window's firing (FIRE) or drop (PURGE) at `t`. Sessions queue an item per window.
   * Tumbling and sliding windows end on a grid, so only the time is queued and firing finds the
   * windows due (#fireAligned): no queue memory per open window.
   */
  #queueWindow(t: number, key: string, kind: number, w: number): void {
    if (this.#session) this.#eventQ.push(t, key, kind, this.#wins.start[w]!)
    else this.#eventQ.pushTime(t)
  }

  #emitWindow(key: string, w: number, late: boolean): void {
    const wins = this.#wins
    const acc = wins.acc[w]
    // A window kept for lateness may change after this result: the result gets its own copy.
    const state = this.#lateness > 0 ? structuredClone(acc) : acc
    const start = wins.start[w]!
    const end = wins.end(w)
    const result = late ? { key, start, end, state, late: true } : { key, start, end, state }
    ;(this.#out.emitted ??= []).push([WINDOWS_STREAM, key, result])
  }

  #dropWindow(slot: number, key: string, w: number): void {
    this.#unlinkWindow(slot, w)
    this.#wins.free(w)
    this.#touch(slot, key)
    this.#maybeDelete(slot, key)
  }

  // --- a key's windows: a list in start order ------------------------------------------------------

  #findWindow(slot: number, start: number): number {
    const wins = this.#wins
    for (let w = this.#keys.head[slot]!; w !== -1; w = wins.next[w]!) if (wins.start[w] === start) return w
    return -1
  }

  /** Link a window into its key's list, after the windows with a start not after its own. */
  #addWindow(slot: number, w: number): void {
    const wins = this.#wins
    const head = this.#keys.head
    const start = wins.start[w]!
    let prev = -1
    let cur = head[slot]!
    while (cur !== -1 && wins.start[cur]! <= start) {
      prev = cur
      cur = wins.next[cur]!
    }
    wins.next[w] = cur
    if (prev === -1) head[slot] = w
    else wins.next[prev] = w
  }

  #unlinkWindow(slot: number, w: number): void {
    const wins = this.#wins
    const head = this.#keys.head
    let prev = -1
    for (let cur = head[slot]!; cur !== -1; prev = cur, cur = wins.next[cur]!) {
      if (cur !== w) continue
      if (prev === -1) head[slot] = wins.next[cur]!
      else wins.next[prev] = wins.next[cur]!
      return
    }
  }

  #freeWindows(slot: number): void {
    const wins = this.#wins
    const head = this.#keys.head
    for (let w = head[slot]!; w !== -1;) {
      const next = wins.next[w]!
      wins.free(w)
      w = next
    }
    head[slot] = -1
  }

  // --- firing --------------------------------------------------------------------------------------

  #fireEventTime(): void {
    for (let due = this.#eventQ.takeDue(this.#wm); due !== null; due = this.#eventQ.takeDue(this.#wm)) {
      const { bucket, order } = due
      if (this.#window !== undefined && !this.#session) {
        this.#fireAligned(bucket.t)
        continue
      }
      for (let n = 0; n < order.length; n++) {
        if (n > 0 && this.#eventQ.next <= bucket.t) {
          requeueRest(this.#eventQ, bucket, order, n)
          break
        }
        const k = order[n]!
        const key = bucket.keys[k]!
        const kind = kindAt(bucket, k)
        const slot = this.#find(key)
        if (slot === -1) continue
        if (kind === EVENT_TIMER) {
          this.#fireTimer(slot, key, bucket.t, false)
          continue
        }
        const w = this.#findWindow(slot, startAt(bucket, k))
        if (w === -1) continue
        this.#fireWindow(slot, key, w, kind, bucket.t)
      }
    }
  }

  /**
   * Tumbling and sliding windows due at `t`: every window of the partition ending at `t` fires
   * (FIRE) and every fired one whose lateness ends at `t` goes (PURGE), in (key, kind, start)
   * order as queued items would. Only keys with windows are held, so the scan is over open
   * windows; their ends are on a grid, so there are few due times.
   */
  #fireAligned(t: number): void {
    const wins = this.#wins
    const k = this.#keys
    const late = this.#lateness
    const keys: string[] = []
    const slots: number[] = []
    for (const [key, slot] of k.slots) {
      if ((k.flags[slot]! & GONE) !== 0) continue
      for (let w = k.head[slot]!; w !== -1; w = wins.next[w]!) {
        const end = wins.end(w)
        if (wins.fired[w] === 0 ? end === t : late > 0 && end + late === t) {
          keys.push(key)
          slots.push(slot)
          break
        }
      }
    }
    const order = Array.from({ length: keys.length }, (_, i) => i)
    order.sort((a, b) => (keys[a]! < keys[b]! ? -1 : 1))
    const due: number[] = []
    for (const i of order) {
      const key = keys[i]!
      const slot = slots[i]!
      // This key's windows due now, FIRE before PURGE, each by start (the list's order).
      due.length = 0
      for (let w = k.head[slot]!; w !== -1; w = wins.next[w]!)
        if (wins.fired[w] === 0 && wins.end(w) === t) due.push(w)
      const fires = due.length
      if (late > 0)
        for (let w = k.head[slot]!; w !== -1; w = wins.next[w]!)
          if (wins.fired[w] !== 0 && wins.end(w) + late === t) due.push(w)
      for (let n = 0; n < due.length; n++) this.#fireWindow(slot, key, due[n]!, n < fires ? FIRE : PURGE, t)
    }
  }

  /** A queued FIRE or PURGE of window `w` at `t`; skipped when no longer what it was queued for. */
  #fireWindow(slot: number, key: string, w: number, kind: number, t: number): void {
    const wins = this.#wins
    const end = wins.end(w)
    if (kind === FIRE) {
      if (wins.fired[w] !== 0 || end !== t) return // merged away or already fired late
      wins.fired[w] = 1
      this.#emitWindow(key, w, false)
      if (this.#lateness === 0) this.#dropWindow(slot, key, w)
      else {
        this.#touch(slot, key)
        this.#queueWindow(end + this.#lateness, key, PURGE, w)
      }
    } else if (wins.fired[w] !== 0 && end + this.#lateness === t) {
      this.#dropWindow(slot, key, w)
    }
  }

  #fireProcessingTime(): void {
    const k = this.#keys
    for (let due = this.#procQ.takeDue(this.#clock); due !== null; due = this.#procQ.takeDue(this.#clock)) {
      const { bucket, order } = due
      for (let n = 0; n < order.length; n++) {
        if (n > 0 && this.#procQ.next <= bucket.t) {
          requeueRest(this.#procQ, bucket, order, n)
          break
        }
        const i = order[n]!
        const key = bucket.keys[i]!
        const slot = this.#find(key)
        if (slot === -1) continue
        if (kindAt(bucket, i) === PROC_TIMER) {
          this.#fireTimer(slot, key, bucket.t, true)
          continue
        }
        if (k.ttlAt[slot] !== bucket.t) continue // a stale deadline of an earlier entry of this key
        const deadline = k.active[slot]! + this.#ttl!
        if (deadline > bucket.t) {
          // Re-queued at the real deadline even when that is due too: the key goes in its place
          // in (time, key) order, after its timers due before it (as a restored partition, which
          // queues the real deadline, does), not at this stale one.
          k.ttlAt[slot] = deadline
          this.#procQ.push(deadline, key, TTL, 0)
        } else {
          this.#delete(slot, key)
        }
      }
    }
  }

  #fireTimer(slot: number, key: string, ts: number, processing: boolean): void {
    const list = (processing ? this.#ptimers : this.#etimers).get(slot)
    const at = list === undefined ? -1 : list.indexOf(ts)
    if (at === -1) return // deleted
    this.#removeTimerAt(slot, list!, at, processing)
    this.#touch(slot, key)
    this.#key = key
    this.#slot = slot
    this.#slotKey = key
    this.#ts = ts
    if (this.#job.onTimer !== undefined) {
      const timer: Timer = { kind: processing ? 'processing' : 'event', ts, key }
      const prev = this.#keys.getState(slot)
      const s = prev === undefined ? this.#job.init(key) : prev
      try {
        const next = this.#job.onTimer(s, timer, this.#ctx)
        this.#keys.setState(slot, next === undefined ? s : next)
      } catch (err) {
        this.#dead(-1, key, `onTimer threw: ${errorText(err)}`)
      }
    }
  }

  // --- timers --------------------------------------------------------------------------------------

  #current(): number {
    if (this.#slot === -1 || this.#slotKey !== this.#key)
      throw new TypeError('timers can only be set from process or onTimer')
    return this.#slot
  }

  #addTimer(slot: number, ts: number, processing: boolean): void {
    const all = processing ? this.#ptimers : this.#etimers
    let list = all.get(slot)
    if (list === undefined) all.set(slot, (list = []))
    if (list.includes(ts)) return
    list.push(ts)
    this.#touch(slot, this.#slotKey)
    if (processing) this.#procQ.push(ts, this.#slotKey, PROC_TIMER, 0)
    else this.#eventQ.push(ts, this.#slotKey, EVENT_TIMER, 0)
  }

  #deleteTimer(slot: number, ts: number, processing: boolean): void {
    const list = (processing ? this.#ptimers : this.#etimers).get(slot)
    const at = list === undefined ? -1 : list.indexOf(ts)
    if (at === -1) return
    this.#removeTimerAt(slot, list!, at, processing) // its queue item is skipped when it comes up
    this.#touch(slot, this.#slotKey)
  }

  #removeTimerAt(slot: number, list: number[], at: number, processing: boolean): void {
    list.splice(at, 1)
    if (list.length === 0) (processing ? this.#ptimers : this.#etimers).delete(slot)
  }

  // --- keys ----------------------------------------------------------------------------------------

  #maybeDelete(slot: number, key: string): void {
    if (this.#window !== undefined && this.#keys.head[slot] === -1) this.#delete(slot, key)
  }

  #delete(slot: number, key: string): void {
    const k = this.#keys
    if ((k.flags[slot]! & GONE) !== 0 || k.slots.get(key) !== slot) return
    // A tombstone, holding nothing: a key whose windows close and open again (every key of a
    // tumbling job, every window) reuses its slot instead of a new one per window. Tracking,
    // the next snapshot reports it deleted and removes it; untracked, tombstones are swept once
    // they outnumber the live keys, so memory still follows the live keys.
    k.flags[slot] = k.flags[slot]! | GONE
    this.#clearSlot(slot)
    this.#gone++
    if (this.#tracking) this.#touch(slot, key)
    else if (this.#gone > 1024 && this.#gone * 2 > k.slots.size) this.#sweep()
  }

  /** Drop what a slot holds (state, windows, timers, TTL deadline), keeping the slot. */
  #clearSlot(slot: number): void {
    const k = this.#keys
    if (k.state.length > slot) k.state[slot] = undefined
    if (this.#window !== undefined) this.#freeWindows(slot)
    this.#etimers.delete(slot)
    this.#ptimers.delete(slot)
    if (k.ttl) k.ttlAt[slot] = -1
  }

  /** Remove the tombstones (untracked: no snapshot needs to hear of them). */
  #sweep(): void {
    const k = this.#keys
    for (const [key, s] of k.slots) if ((k.flags[s]! & GONE) !== 0) k.remove(key, s)
    this.#gone = 0
  }

  #dead(index: number, key: string, error: string): void {
    ;(this.#out.deadLetters ??= []).push({ index, key, error })
  }

  // --- queries, snapshots, restore -----------------------------------------------------------------

  /** What `get`/`dump` show for a key: its state, or a windowed key's windows. */
  view(key: string): unknown {
    const s = this.#find(key)
    return s === -1 ? undefined : this.#viewOf(s)
  }

  dump(): [string, unknown][] {
    const all: [string, unknown][] = []
    const k = this.#keys
    for (const [key, s] of k.slots) if ((k.flags[s]! & GONE) === 0) all.push([key, this.#viewOf(s)])
    return all
  }

  #viewOf(slot: number): unknown {
    if (this.#window === undefined) return this.#keys.getState(slot)
    const windows: { start: number; end: number; state: unknown }[] = []
    const wins = this.#wins
    for (let w = this.#keys.head[slot]!; w !== -1; w = wins.next[w]!)
      windows.push({ start: wins.start[w]!, end: wins.end(w), state: wins.acc[w] })
    return { windows }
  }

  /**
   * Changed (or all) keys as checkpoint values, the keys deleted since the last snapshot, and
   * the partition's time under TIME_KEY. Clears the change tracking (as the plain runtime does).
   */
  snapshot(full: boolean): { entries: [string, unknown][]; deleted: string[] } {
    const k = this.#keys
    if (!this.#tracking) {
      this.#sweep()
      this.#tracking = true
      // An incremental snapshot takes every live key (none is checkpointed yet); a full one does anyway.
      if (!full) for (const [key, s] of k.slots) this.#touch(s, key)
    }
    const entries: [string, unknown][] = []
    const deleted: string[] = []
    for (const key of this.#changed) {
      const s = k.slots.get(key)
      // Reported already (a key listed twice), or replaced by a load since it changed.
      if (s === undefined || (k.flags[s]! & DIRTY) === 0) continue
      k.flags[s] = k.flags[s]! & ~DIRTY
      if ((k.flags[s] & GONE) !== 0) {
        // The tombstone goes; an incremental checkpoint deletes the key (a full one lacks it).
        k.remove(key, s)
        if (!full) deleted.push(key)
      } else if (!full) entries.push([key, this.#stored(s)])
    }
    this.#gone = 0
    if (full) for (const [key, s] of k.slots) entries.push([key, this.#stored(s)])
    entries.push([TIME_KEY, new PartitionTime(this.#wm, this.#base, this.#clock, this.#arrivals)])
    this.#changed = []
    return { entries, deleted }
  }

  #stored(slot: number): TimedValue {
    let stored: StoredWindow[] | null = null
    const wins = this.#wins
    const head = this.#window === undefined ? -1 : this.#keys.head[slot]!
    if (head !== -1) {
      stored = []
      for (let w = head; w !== -1; w = wins.next[w]!) {
        stored.push([
          wins.start[w]!,
          wins.end(w),
          wins.acc[w],
          wins.fired[w] !== 0,
          wins.events.get(w) ?? null,
        ])
      }
    }
    // Without a TTL the last activity is not kept per key; the clock stands for it (a job that
    // later gains a TTL counts it from the checkpoint).
    const active = this.#keys.ttl ? this.#keys.active[slot]! : this.#clock
    return new TimedValue(
      this.#keys.getState(slot),
      stored,
      this.#etimers.get(slot) ?? null,
      this.#ptimers.get(slot) ?? null,
      active,
    )
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
    const k = this.#keys
    let slot = k.slots.get(key)
    if (slot === undefined) slot = k.add(key, v.active)
    else {
      // Replaced: what the key held goes (stale queue items are checked when they come up).
      if ((k.flags[slot]! & GONE) !== 0) this.#gone--
      this.#clearSlot(slot)
      k.flags[slot] = 0
      if (k.ttl) k.active[slot] = v.active
    }
    if (v.state !== undefined) k.setState(slot, v.state)
    if (this.#window !== undefined && v.windows !== null) {
      const wins = this.#wins
      for (const [start, end, acc, fired, events] of v.windows) {
        const w = wins.alloc(start, end, acc)
        wins.fired[w] = fired ? 1 : 0
        if (events !== null) wins.events.set(w, events)
        this.#addWindow(slot, w)
        if (!fired) this.#queueWindow(end, key, FIRE, w)
        else this.#queueWindow(end + this.#lateness, key, PURGE, w)
      }
    }
    if (v.eventTimers !== null && v.eventTimers.length > 0) {
      this.#etimers.set(slot, v.eventTimers)
      for (const t of v.eventTimers) this.#eventQ.push(t, key, EVENT_TIMER, 0)
    }
    if (v.processingTimers !== null && v.processingTimers.length > 0) {
      this.#ptimers.set(slot, v.processingTimers)
      for (const t of v.processingTimers) this.#procQ.push(t, key, PROC_TIMER, 0)
    }
    if (k.ttl) {
      const at = v.active + this.#ttl!
      k.ttlAt[slot] = at
      this.#procQ.push(at, key, TTL, 0)
    }
  }

  /** Forget everything (a `load` with replace). */
  clear(): void {
    this.#keys.clear()
    this.#wins.clear()
    this.#etimers.clear()
    this.#ptimers.clear()
    this.#tracking = false
    this.#changed = []
    this.#gone = 0
    this.#eventQ.clear()
    this.#procQ.clear()
    this.#wm = -Infinity
    this.#base = -Infinity
    this.#clock = 0
    this.#arrivals = 0
    this.#slot = -1
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
    q.push(bucket.t, bucket.keys[k]!, kindAt(bucket, k), startAt(bucket, k))
  }
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
