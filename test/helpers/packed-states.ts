/**
 * Keyed states packed as the processing threads exchange them (PackedStates): each value plain
 * msgpack (no records), end to end in one buffer.
 */
import { Packr } from 'msgpackr'
import type { PackedStates } from '../../src/processing/task-types.ts'

export const statePackr = new Packr({ useRecords: false, moreTypes: true })

export function packStates(entries: [string, unknown][]): PackedStates {
  const parts = entries.map(([, v]) => statePackr.pack(v))
  const data = new Uint8Array(parts.reduce((n, b) => n + b.length, 0))
  const ends = new Uint32Array(parts.length)
  let at = 0
  parts.forEach((b, i) => {
    data.set(b, at)
    at += b.length
    ends[i] = at
  })
  return { keys: entries.map(([k]) => k), data, ends }
}
