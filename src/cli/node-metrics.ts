/** Wiring between a node's components and its Prometheus metrics. */
import type { ShoalMetrics } from '../observability/metrics.ts'
import type { WorkerNode } from '../worker/node.ts'

/** Counters are advanced by the difference since the last observation. */
export function workerObserver(m: ShoalMetrics): (node: WorkerNode) => void {
  let events = 0
  let busyMs = 0
  let backpressuredMs = 0
  let wall = performance.now()
  return (node) => {
    const e = node.engine.eventsProcessed
    m.eventsProcessed.inc(e - events)
    events = e
    const busy = node.engine.busyMs
    const bp = node.dataPlane.backpressuredMs
    const now = performance.now()
    const dBusy = busy - busyMs
    const dBp = bp - backpressuredMs
    m.addTime('busy', dBusy / 1000)
    m.addTime('backpressured', dBp / 1000)
    m.addTime('idle', Math.max(0, now - wall - dBusy) / 1000)
    busyMs = busy
    backpressuredMs = bp
    wall = now
    m.partitionsOwned.set(node.worker.partitions().size)
    const load = node.dataPlane.load()
    m.setNodeLoad('self', {
      queue_depth: load.queueDepth,
      in_flight: load.inFlight,
      events_per_sec: load.eventsPerSec,
      rss_bytes: load.rssBytes,
      lag: load.lag,
    })
  }
}
