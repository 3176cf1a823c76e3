/**
 * The coordinator's responsiveness while it ingests a large POST /events body: a coordinator and
 * two workers (processes, TCP, count job), then a body of N events (~61 B a line) posted twice
 * while `/healthz` is fetched every 5 ms; prints each POST's time and the /healthz round trips
 * (p50, max). A long synchronous turn on the coordinator's main thread (where it also tracks
 * heartbeats) shows as a long /healthz. docs/benchmarks.md, "JSON events without objects, and
 * POST /events on a thread".
 *
 *   N=800000 node --import tsx bench/micro/ingest-responsiveness.ts
 */
import { startNode, stopNode, type NodeProc } from '../macro/e2e.ts'

const N = Number(process.env.N ?? 800_000)
const nodes: NodeProc[] = []

async function start(args: string[]): Promise<{ address: string; http: string }> {
  const node = await startNode(args)
  nodes.push(node)
  return node.info
}

try {
  const coord = await start(['coordinator', '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0'])
  for (const id of ['w1', 'w2']) {
    await start([
      'worker',
      '--coordinator',
      coord.address,
      '--listen',
      '127.0.0.1:0',
      '--node-id',
      id,
      '--threads',
      '1',
    ])
  }
  // Until the workers own every partition (503 before).
  for (let i = 0; i < 200; i++) {
    const res = await fetch(`http://${coord.http}/events`, { method: 'POST', body: '{"key":"warm-up"}' })
    await res.text()
    if (res.status === 200) break
    await new Promise((r) => setTimeout(r, 100))
  }
  const lines: string[] = []
  for (let i = 0; i < N; i++) {
    lines.push(
      JSON.stringify({ key: `k${i % 100_000}`, value: i % 7, ts: 1_700_000_000_000 + i, type: 'click' }),
    )
  }
  const body = lines.join('\n')
  console.log(`body: ${N} events, ${(body.length / 1e6).toFixed(1)} MB`)
  for (let round = 0; round < 2; round++) {
    let done = false
    const rtts: number[] = []
    const probe = (async () => {
      while (!done) {
        const t = performance.now()
        await (await fetch(`http://${coord.http}/healthz`)).text()
        rtts.push(performance.now() - t)
        await new Promise((r) => setTimeout(r, 5))
      }
    })()
    const t0 = performance.now()
    const res = await fetch(`http://${coord.http}/events`, {
      method: 'POST',
      body,
      headers: { 'content-type': 'application/x-ndjson' },
    })
    const answer = await res.text()
    const seconds = (performance.now() - t0) / 1000
    done = true
    await probe
    rtts.sort((a, b) => a - b)
    console.log(
      `POST ${res.status} ${answer.trim().slice(0, 40)} in ${seconds.toFixed(2)} s; /healthz n=${rtts.length} ` +
        `p50 ${rtts[Math.floor(rtts.length / 2)]!.toFixed(1)} ms, max ${rtts.at(-1)!.toFixed(1)} ms`,
    )
  }
} finally {
  await Promise.all(nodes.map(stopNode))
}
