/**
 * Per-minute count and sum of `value` per key, in event time (docs/time.md):
 *
 *   shoal up --job ./cluster/jobs/per-minute.ts --sink file:windows.ndjson
 *   echo '{"key":"sensor-1","ts":1767225600000,"value":3}' | shoal send --coordinator 127.0.0.1:7400
 *
 * (each NDJSON line is the event itself, its key in field `key`). Each minute's result is emitted
 * on stream `windows` as { key, start, end, state } once the watermark passes the minute's end
 * (2 s of out-of-orderness allowed; an idle partition closes its windows 5 s after input stops
 * plus the rest of the minute). An event for a minute that has already fired goes to stream
 * `late`.
 */
import { defineJob, windows } from 'shoal'

export default defineJob({
  name: 'per-minute',
  eventTime: (e: { ts: number }) => e.ts, // ms since the epoch
  watermark: { outOfOrdernessMs: 2_000, idleMs: 5_000 },
  window: windows.tumbling({ sizeMs: 60_000 }),
  init: () => ({ count: 0, sum: 0 }),
  process(acc: { count: number; sum: number }, e: { value: number }) {
    acc.count++
    acc.sum += e.value
  },
})
