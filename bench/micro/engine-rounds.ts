/**
 * Micro-benchmark of the processing engine alone (src/processing/engine.ts): rounds of P small
 * batches, one per partition as a worker gets them at 50% load, each round awaited before the
 * next, the built-in count job on one thread. Prints the CPU time of the process (both threads)
 * per batch and the wall time per round. The fixed cost per batch is what E=1 shows; E=25 adds
 * the per-event work of a typical round. docs/benchmarks.md, "Protocol version 2".
 *
 *   P=85 E=25 R=2000 node --import tsx bench/micro/engine-rounds.ts
 *
 * G=1: each round through Engine.batches (one promise for the round, as a memory-state worker
 * hands a round of small batches on) instead of a batch() call per batch.
 */
import { Packr } from 'msgpackr'
import { Engine } from '../../src/processing/engine.ts'

const P = Number(process.env.P ?? 85)
const E = Number(process.env.E ?? 25)
const ROUNDS = Number(process.env.R ?? 2000)
const GROUPED = process.env.G === '1'
const packr = new Packr({ useRecords: true })
const engine = new Engine({ job: 'count', threads: 1 })
const payloads: Uint8Array[] = []
for (let p = 0; p < P; p++) {
  const events: unknown[] = []
  for (let i = 0; i < E; i++) events.push([`key-${p}-${i % 50}`, { value: 1, ts: 0, type: 'click' }])
  payloads.push(packr.pack(events))
}

async function round(): Promise<void> {
  if (GROUPED) {
    await engine.batches(payloads.map((payload, partition) => ({ partition, payload })))
    return
  }
  const done: Promise<unknown>[] = []
  for (let p = 0; p < P; p++) done.push(engine.batch(p, payloads[p]!))
  await Promise.all(done)
}

for (let i = 0; i < 300; i++) await round() // warm-up: JIT, the keys exist
const cpu0 = process.cpuUsage()
const t0 = performance.now()
for (let i = 0; i < ROUNDS; i++) await round()
const cpu = process.cpuUsage(cpu0)
const ms = performance.now() - t0
const batches = ROUNDS * P
process.stdout.write(
  `P=${P} E=${E}${GROUPED ? ' grouped' : ''}: ${((cpu.user + cpu.system) / batches).toFixed(2)} µs CPU per batch, ` +
    `${((ms * 1000) / ROUNDS).toFixed(0)} µs wall per round\n`,
)
await engine.close()
