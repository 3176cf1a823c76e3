/**
 * Liveness: is this process's event loop still turning, and is its heartbeat loop ticking?
 *
 * A timer re-armed every `intervalMs` records when it last ran. The loop counts as stuck when
 * the last tick is more than `maxMissedTicks` intervals old, or when the last tick itself came
 * that late (the loop was blocked until just now; the check may run right after the block, in
 * the same loop turn that finally ran the timer). perf_hooks.monitorEventLoopDelay adds p50/p99
 * and max delay to the report. The heartbeat part is fed by the node's heartbeat loop through
 * markHeartbeatTick(); it fails the check only when `heartbeatStaleMs` is set and the loop has
 * ticked before (a node still joining has no heartbeat yet). All timers are unref'd.
 */
import { monitorEventLoopDelay, performance, type IntervalHistogram } from 'node:perf_hooks'
import { InvalidOptionError } from '../errors.ts'
import type { HealthResult } from './http.ts'

export interface LivenessMonitorOptions {
  /** Tick period of the event-loop probe. @default 500 */
  intervalMs?: number
  /** Unhealthy when the loop has not ticked for more than this many intervals. @default 10 */
  maxMissedTicks?: number
  /** Unhealthy when the heartbeat loop ticked before but not within this many ms. @default undefined (report only) */
  heartbeatStaleMs?: number
  /** The delay histogram is reset this often, so percentiles describe recent behaviour. @default 60000 */
  histogramWindowMs?: number
  /** Monotonic clock in ms, for tests. @default performance.now */
  now?: () => number
}

export interface EventLoopDelay {
  p50Ms: number
  p99Ms: number
  maxMs: number
  meanMs: number
}

export interface LivenessDetail extends Record<string, unknown> {
  eventLoop: EventLoopDelay & {
    /** ms since the probe last ran. */
    lastTickAgeMs: number
    /** How late the last tick ran, in ms beyond its interval. */
    lastTickLateMs: number
    thresholdMs: number
  }
  heartbeat: { ticking: boolean; ageMs: number | null; staleMs: number | null }
  /** Why the check fails; empty when ok. */
  reasons: string[]
}

export interface HeartbeatOverride {
  /** ms since the heartbeat loop last ran; replaces heartbeatAge() for this check. */
  heartbeatAgeMs?: number
  /** Replaces options.heartbeatStaleMs for this check. */
  heartbeatStaleMs?: number
}

export interface LivenessMonitor {
  /**
   * For /healthz. A component that tracks its own heartbeat loop (e.g. the coordinator's
   * heartbeatLoopAgeMs()) can pass its age instead of calling markHeartbeatTick().
   */
  check(heartbeat?: HeartbeatOverride): HealthResult & { detail: LivenessDetail }
  /** Call on every heartbeat loop iteration. */
  markHeartbeatTick(): void
  /** ms since the last markHeartbeatTick(), or undefined if it was never called. */
  heartbeatAge(): number | undefined
  /** Event-loop delay percentiles of the current window. */
  eventLoopDelay(): EventLoopDelay
  /** Stop the timer and the histogram. Idempotent. */
  close(): void
  /** Same as close(). */
  stop(): void
}

export const DEFAULT_LIVENESS_OPTIONS = Object.freeze({
  intervalMs: 500,
  maxMissedTicks: 10,
  histogramWindowMs: 60_000,
})

function positiveInt(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new InvalidOptionError(`options.${name} must be a positive integer (got ${String(value)})`)
  }
  return value
}

export function createLivenessMonitor(options: LivenessMonitorOptions = {}): LivenessMonitor {
  const d = DEFAULT_LIVENESS_OPTIONS
  const intervalMs = positiveInt('intervalMs', options.intervalMs ?? d.intervalMs)
  const maxMissed = positiveInt('maxMissedTicks', options.maxMissedTicks ?? d.maxMissedTicks)
  const windowMs = positiveInt('histogramWindowMs', options.histogramWindowMs ?? d.histogramWindowMs)
  const staleMs =
    options.heartbeatStaleMs === undefined
      ? undefined
      : positiveInt('heartbeatStaleMs', options.heartbeatStaleMs)
  const now = options.now ?? (() => performance.now())
  const thresholdMs = intervalMs * maxMissed

  let histogram: IntervalHistogram | undefined = monitorEventLoopDelay({
    resolution: Math.max(1, Math.min(20, Math.floor(intervalMs / 2))),
  })
  histogram.enable()
  let windowStart = now()
  let lastTick = now()
  let lastLate = 0
  let lastHeartbeat: number | undefined
  let timer: NodeJS.Timeout | undefined

  const arm = (): void => {
    timer = setTimeout(tick, intervalMs)
    timer.unref()
  }
  const tick = (): void => {
    const t = now()
    lastLate = Math.max(0, t - lastTick - intervalMs)
    lastTick = t
    if (histogram !== undefined && t - windowStart >= windowMs) {
      histogram.reset()
      windowStart = t
    }
    arm()
  }
  arm()

  const delay = (): EventLoopDelay => {
    const h = histogram
    if (h === undefined || h.count === 0) return { p50Ms: 0, p99Ms: 0, maxMs: 0, meanMs: 0 }
    const ms = (ns: number): number => Math.round(ns / 1e4) / 100
    return { p50Ms: ms(h.percentile(50)), p99Ms: ms(h.percentile(99)), maxMs: ms(h.max), meanMs: ms(h.mean) }
  }
  const heartbeatAge = (): number | undefined =>
    lastHeartbeat === undefined ? undefined : now() - lastHeartbeat

  const close = (): void => {
    clearTimeout(timer)
    timer = undefined
    histogram?.disable()
    histogram = undefined
  }

  return {
    check(heartbeat = {}) {
      const t = now()
      const age = t - lastTick
      const reasons: string[] = []
      if (timer === undefined) reasons.push('liveness monitor is closed')
      if (age > thresholdMs) {
        reasons.push(`event loop has not ticked for ${Math.round(age)} ms (threshold ${thresholdMs} ms)`)
      } else if (lastLate > thresholdMs) {
        reasons.push(`event loop was blocked for ${Math.round(lastLate)} ms (threshold ${thresholdMs} ms)`)
      }
      const hbAge = heartbeat.heartbeatAgeMs ?? heartbeatAge()
      const stale = heartbeat.heartbeatStaleMs ?? staleMs
      const hbStale = hbAge !== undefined && stale !== undefined && hbAge > stale
      if (hbStale)
        reasons.push(`heartbeat loop has not ticked for ${Math.round(hbAge)} ms (stale after ${stale} ms)`)
      return {
        ok: reasons.length === 0,
        detail: {
          eventLoop: {
            ...delay(),
            lastTickAgeMs: Math.round(age),
            lastTickLateMs: Math.round(lastLate),
            thresholdMs,
          },
          heartbeat: {
            ticking: hbAge !== undefined && !hbStale,
            ageMs: hbAge === undefined ? null : Math.round(hbAge),
            staleMs: stale ?? null,
          },
          reasons,
        },
      }
    },
    markHeartbeatTick() {
      lastHeartbeat = now()
    },
    heartbeatAge,
    eventLoopDelay: delay,
    close,
    stop: close,
  }
}
