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

export interface JobContext {
  /** The event's key. */
  readonly key: string
  /** The key group (partition) the key hashes to. */
  readonly partition: number
  /** Produce an output event on a named stream. Emitted events go to subscribers and sinks. */
  emit(stream: string, event: unknown): void
}

export interface JobDefinition<Event = unknown, State = unknown> {
  /** Shown in status and logs. */
  readonly name: string
  /** A key's state before its first event. */
  init(key: string): State
  /**
   * Apply one event. Return the new state (or mutate `state` and return nothing). A throw
   * dead-letters this event (state unchanged) and processing continues with the next.
   */
  process(state: State, event: Event, ctx: JobContext): State | void
}

export function defineJob<Event = unknown, State = unknown>(
  definition: JobDefinition<Event, State>,
): JobDefinition<Event, State> {
  if (typeof definition.name !== 'string' || definition.name.length === 0) {
    throw new TypeError('defineJob: name must be a non-empty string')
  }
  if (typeof definition.init !== 'function') throw new TypeError('defineJob: init must be a function')
  if (typeof definition.process !== 'function') throw new TypeError('defineJob: process must be a function')
  return Object.freeze({ ...definition })
}
