/** Event-time metrics of a worker (docs/time.md "Watermark"). */
import { Gauge, type Registry } from 'prom-client'

export interface WatermarkSource {
  watermarks(): { partition: number; watermark: number | null; lagMs: number | null }[]
}

/** `shoal_watermark_lag_ms{partition}`: wall clock minus the partition's watermark. */
export function registerWatermarkMetrics(registry: Registry, source: () => WatermarkSource | null): void {
  new Gauge({
    name: 'shoal_watermark_lag_ms',
    help: 'Wall clock minus the partition watermark (event-time jobs), in ms',
    labelNames: ['partition'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const w of source()?.watermarks() ?? []) {
        if (w.lagMs !== null) this.set({ partition: String(w.partition) }, w.lagMs)
      }
    },
  })
}
