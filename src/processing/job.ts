/**
 * The job API. A job is a module whose default export is `defineJob({...})`. Workers run it in
 * worker threads, batch by batch; each key's state is private to the partition the key hashes
 * to, and events of one key are processed in the order they were sent.
 *
 * ```ts
 * import { defineJob } from 'shoal'
 * export default defineJob({
 *   name: 'clicks',
 *   init: () => ({ clicks: 0 }),
 *   process(state, event: { page: string }, ctx) {
 *     state.clicks++
 *     if (state.clicks % 1000 === 0) ctx.emit('milestones', { key: ctx.key, clicks: state.clicks })
 *     return state
 *   },
 * })
 * ```
 *
 * Rules that make state exactly-once: `process` must be deterministic given (state, event) (a
 * batch may be replayed after a failure), must not keep references to state across calls other
 * than by returning it, and state must be msgpack-serializable (it is checkpointed).
 */

import { validateWindow, type WindowRef, type WindowSpec } from './windows.ts'

/** Timers of the current key (jobs without a window; docs/time.md "Timers"). */
export interface JobTimers {
  /** Call onTimer once the partition's watermark reaches `ts`. Needs `eventTime`. */
  atEventTime(ts: number): void
  /** Call onTimer once the partition's processing clock reaches `ts` (ms since the epoch). */
  atProcessingTime(ts: number): void
  deleteEventTime(ts: number): void
  deleteProcessingTime(ts: number): void
}

/** A due timer, as onTimer receives it. */
export interface Timer {
  readonly kind: 'event' | 'processing'
  readonly ts: number
  readonly key: string
}

export interface JobContext {
  /** The event's key. */
  readonly key: string
  /** The key group (partition) the key hashes to. */
  readonly partition: number
  /** Produce an output event on a named stream. Emitted events go to subscribers and sinks. */
  emit(stream: string, event: unknown): void
  /** Event-time jobs: the current event's time (in onTimer, the timer's ts). */
  readonly timestamp?: number
  /** Time-enabled jobs: the partition's watermark (-Infinity before the first event time). */
  readonly watermark?: number
  /** Time-enabled jobs: the partition's processing clock (replay-safe; not Date.now()). */
  readonly processingTime?: number
  /** Windowed jobs: the window this call folds the event into. */
  readonly window?: WindowRef
  /** Jobs without a window that define onTimer. */
  readonly timers?: JobTimers
}

export interface WatermarkOptions {
  /** How far behind the highest event time the watermark trails. @default 0 */
  outOfOrdernessMs?: number
  /** Silence after which the watermark advances at wall-clock speed. @default never */
  idleMs?: number
}

/**
 * `TimeEvent` is what `eventTime` reads: its own type parameter, so a job may declare only the
 * fields each function uses (`eventTime: (e: { ts: number }) => e.ts` beside
 * `process(acc, e: { value: number })`, as in docs/time.md).
 */
export interface JobDefinition<Event = unknown, State = unknown, TimeEvent = Event> {
  /** Shown in status and logs. */
  readonly name: string
  /** A key's state before its first event (windowed jobs: one window's state). */
  init(key: string): State
  /**
   * Apply one event. Return the new state (or mutate `state` and return nothing). A throw
   * dead-letters this event (state unchanged) and processing continues with the next.
   */
  process(state: State, event: Event, ctx: JobContext): State | void
  /** Event time of an event, ms since the epoch (docs/time.md). */
  readonly eventTime?: (event: TimeEvent) => number
  readonly watermark?: WatermarkOptions
  /** Fold events into windows: `windows.tumbling/sliding/session(...)`. Needs eventTime. */
  readonly window?: WindowSpec
  /** How long a fired window still takes late events. @default 0 */
  readonly allowedLatenessMs?: number
  /** Session windows: combine two windows' states (else the session keeps its events). */
  merge?(a: State, b: State, key: string): State
  /** A timer of the key fell due (jobs without a window). */
  onTimer?(state: State, timer: Timer, ctx: JobContext): State | void
  /** Drop a key's state after this long without an event (processing time). */
  readonly ttlMs?: number
}

/** Uses event time, timers or TTL: runs on the time-aware runtime (src/processing/time/). */
export function isTimedJob(job: {
  readonly eventTime?: unknown
  readonly window?: unknown
  readonly onTimer?: unknown
  readonly ttlMs?: unknown
}): boolean {
  return (
    job.eventTime !== undefined ||
    job.window !== undefined ||
    job.onTimer !== undefined ||
    job.ttlMs !== undefined
  )
}

function nonNegativeMs(field: string, v: unknown): void {
  if (v === undefined) return
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new TypeError(
      `defineJob: ${field} must be a non-negative integer number of milliseconds (got ${typeof v === 'number' ? v : typeof v})`,
    )
  }
}

export function defineJob<Event = unknown, State = unknown, TimeEvent = Event>(
  definition: JobDefinition<Event, State, TimeEvent>,
): JobDefinition<Event, State, TimeEvent> {
  if (typeof definition.name !== 'string' || definition.name.length === 0) {
    throw new TypeError('defineJob: name must be a non-empty string')
  }
  if (typeof definition.init !== 'function') throw new TypeError('defineJob: init must be a function')
  if (typeof definition.process !== 'function') throw new TypeError('defineJob: process must be a function')
  const d = definition
  if (d.eventTime !== undefined && typeof d.eventTime !== 'function')
    throw new TypeError('defineJob: eventTime must be a function (event) => ms')
  if (d.watermark !== undefined) {
    if (typeof d.watermark !== 'object' || d.watermark === null)
      throw new TypeError('defineJob: watermark must be an object { outOfOrdernessMs, idleMs }')
    nonNegativeMs('watermark.outOfOrdernessMs', d.watermark.outOfOrdernessMs)
    nonNegativeMs('watermark.idleMs', d.watermark.idleMs)
    if (d.eventTime === undefined) throw new TypeError('defineJob: watermark needs eventTime')
  }
  let window: WindowSpec | undefined
  if (d.window !== undefined) {
    window = validateWindow(d.window)
    if (d.eventTime === undefined) throw new TypeError('defineJob: window needs eventTime')
    if (d.onTimer !== undefined)
      throw new TypeError('defineJob: onTimer is for jobs without a window (a window fires by itself)')
  }
  nonNegativeMs('allowedLatenessMs', d.allowedLatenessMs)
  if (d.allowedLatenessMs !== undefined && d.window === undefined)
    throw new TypeError('defineJob: allowedLatenessMs needs a window')
  if (d.merge !== undefined && typeof d.merge !== 'function')
    throw new TypeError('defineJob: merge must be a function')
  if (d.onTimer !== undefined && typeof d.onTimer !== 'function')
    throw new TypeError('defineJob: onTimer must be a function')
  if (d.ttlMs !== undefined) {
    nonNegativeMs('ttlMs', d.ttlMs)
    if (d.ttlMs === 0) throw new TypeError('defineJob: ttlMs must be positive')
  }
  return Object.freeze({ ...definition, ...(window === undefined ? {} : { window }) })
}
