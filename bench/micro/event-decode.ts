/**
 * Micro-benchmark of decoding one event batch in a processing thread: msgpackr's unpack
 * against Shoal's own decoder (src/processing/event-decoder.ts), on a batch of E events of one
 * shape, as msgpackr packs it. Prints ns per event, each twice (the second warm).
 * docs/benchmarks.md, "Per-batch costs again".
 *
 *   E=7 N=200000 node --import tsx bench/micro/event-decode.ts
 *   E=1000 N=2000 node --import tsx bench/micro/event-decode.ts
 */
import { Packr } from 'msgpackr'
import { decodeEvents } from '../../src/processing/event-decoder.ts'

const packr = new Packr({ useRecords: true, moreTypes: true })
const E = Number(process.env.E ?? 1000)
const N = Number(process.env.N ?? 2000)
const events: unknown[] = []
for (let i = 0; i < E; i++)
  events.push([`key-${i % 50}`, { value: i * 0.125, ts: 1700000000000 + i, type: 'click' }])
const batch = packr.pack(events)
if (decodeEvents(batch) === null) throw new Error('the batch fell back to msgpackr')
const runs: [string, () => unknown][] = [
  ['msgpackr', (): unknown => packr.unpack(batch) as unknown],
  ['own decoder', () => decodeEvents(batch)],
]
for (let round = 0; round < 2; round++) {
  for (const [name, decode] of runs) {
    const t0 = performance.now()
    for (let i = 0; i < N; i++) decode()
    const ns = ((performance.now() - t0) * 1e6) / N / E
    process.stdout.write(`E=${E} ${name}: ${ns.toFixed(1)} ns per event\n`)
  }
}
