/** The built-in default job: per key, the number of events and the sum of their numeric `value`. */
import { defineJob } from '../job.ts'

export interface CountState {
  count: number
  sum: number
}

export default defineJob<{ value?: unknown } | null, CountState>({
  name: 'count',
  init: () => ({ count: 0, sum: 0 }),
  process(state, event) {
    state.count++
    const v = event !== null && typeof event === 'object' ? event.value : undefined
    if (typeof v === 'number' && Number.isFinite(v)) state.sum += v
    return state
  },
})
