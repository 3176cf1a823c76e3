/**
 * How time-enabled keys are checkpointed (docs/time.md "Exactly once"): a key's value is a
 * msgpack extension wrapping the job's state with its windows, timers and last activity, and the
 * partition's watermark and processing clock are one value under TIME_KEY. Extensions make a
 * checkpoint value say what it is, so a reader (a restore, a state sink) never guesses from the
 * job's current definition. msgpackr extensions are process-wide: importing this module
 * registers them for every Packr of the thread.
 */
import { addExtension } from 'msgpackr'

/** The reserved key of a time-enabled partition's own time (events may not use it). */
export const TIME_KEY = '\u0000shoal:time'

/** [start, end, state, fired, events (sessions without merge) or null] */
export type StoredWindow = [number, number, unknown, boolean, [number, unknown][] | null]

export class TimedValue {
  constructor(
    readonly state: unknown,
    readonly windows: StoredWindow[] | null,
    readonly eventTimers: number[] | null,
    readonly processingTimers: number[] | null,
    readonly active: number,
  ) {}
}

export class PartitionTime {
  constructor(
    readonly watermark: number,
    readonly base: number,
    readonly clock: number,
    readonly arrivals: number,
  ) {}
}

// Extension types 0x53/0x54 ('S', 'T'): application types, not used by msgpackr itself.
addExtension({
  Class: TimedValue,
  type: 0x53,
  write: (v: TimedValue) => [v.state, v.windows, v.eventTimers, v.processingTimers, v.active],
  read: (a: [unknown, StoredWindow[] | null, number[] | null, number[] | null, number]) =>
    new TimedValue(a[0], a[1], a[2], a[3], a[4]),
})
addExtension({
  Class: PartitionTime,
  type: 0x54,
  write: (v: PartitionTime) => [v.watermark, v.base, v.clock, v.arrivals],
  read: (a: [number, number, number, number]) => new PartitionTime(a[0], a[1], a[2], a[3]),
})

/**
 * A checkpointed value as users see it (state sinks, `get`): the job's state, or a windowed
 * key's windows; `undefined` for the partition's own time (not a key of the job).
 */
export function userView(key: string, value: unknown): unknown {
  if (key === TIME_KEY && value instanceof PartitionTime) return undefined
  if (!(value instanceof TimedValue)) return value
  if (value.windows === null) return value.state
  return { windows: value.windows.map(([start, end, state]) => ({ start, end, state })) }
}
