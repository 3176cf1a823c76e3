import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { afterEach, describe, expect, it, onTestFinished, vi } from 'vitest'
import { InvalidOptionError } from '../../../src/errors.ts'
import { createLivenessMonitor, type LivenessMonitorOptions } from '../../../src/observability/liveness.ts'
import { waitFor, within } from '../../helpers/wait-for.ts'

function monitor(o: LivenessMonitorOptions = {}): ReturnType<typeof createLivenessMonitor> {
  const m = createLivenessMonitor(o)
  onTestFinished(() => m.close())
  return m
}

describe('createLivenessMonitor (injected clock, fake timers)', () => {
  afterEach(() => {
    vi.useRealTimers()
  })

  function clocked(o: LivenessMonitorOptions = {}) {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] })
    let t = 1000
    const m = monitor({ intervalMs: 100, maxMissedTicks: 3, now: () => t, ...o })
    return {
      m,
      /** Let `ms` pass on the clock without running timers (a blocked loop). */
      block: (ms: number) => (t += ms),
      /** Let `ms` pass with timers running on time. */
      run: (ms: number) => {
        for (let i = 0; i < ms; i += 10) {
          t += 10
          vi.advanceTimersByTime(10)
        }
      },
    }
  }

  it('healthy while ticking on time', () => {
    const { m, run } = clocked()
    run(1000)
    const r = m.check()
    expect(r.ok).toBe(true)
    expect(r.detail.reasons).toEqual([])
    expect(r.detail.eventLoop.thresholdMs).toBe(300)
    expect(r.detail.eventLoop.lastTickAgeMs).toBeLessThanOrEqual(100)
  })

  it('unhealthy when the loop has not ticked for more than maxMissedTicks intervals', () => {
    const { m, run, block } = clocked()
    run(200)
    block(250)
    expect(m.check().ok).toBe(true)
    block(100)
    const r = m.check()
    expect(r.ok).toBe(false)
    expect(r.detail.reasons[0]).toMatch(/^event loop has not ticked for \d+ ms \(threshold 300 ms\)$/)
  })

  it('unhealthy right after a long block, healthy again after a tick on time', () => {
    const { m, run, block } = clocked()
    run(200)
    block(1000)
    // The delayed tick runs first, then the check, in the same loop turn.
    vi.advanceTimersByTime(100)
    const r = m.check()
    expect(r.ok).toBe(false)
    expect(r.detail.reasons[0]).toMatch(/^event loop was blocked for \d+ ms/)
    run(100)
    expect(m.check().ok).toBe(true)
  })

  it('heartbeat: age, ticking, stale only once it has ticked', () => {
    const { m, run, block } = clocked({ heartbeatStaleMs: 500 })
    expect(m.heartbeatAge()).toBeUndefined()
    run(1000)
    let r = m.check()
    expect(r.ok).toBe(true)
    expect(r.detail.heartbeat).toEqual({ ticking: false, ageMs: null, staleMs: 500 })
    m.markHeartbeatTick()
    run(200)
    expect(m.heartbeatAge()).toBe(200)
    r = m.check()
    expect(r.detail.heartbeat).toEqual({ ticking: true, ageMs: 200, staleMs: 500 })
    run(400)
    r = m.check()
    expect(r.ok).toBe(false)
    expect(r.detail.heartbeat.ticking).toBe(false)
    expect(r.detail.reasons).toEqual(['heartbeat loop has not ticked for 600 ms (stale after 500 ms)'])
    m.markHeartbeatTick()
    expect(m.check().ok).toBe(true)
    block(0)
  })

  it('check() accepts a heartbeat age from the component itself', () => {
    const { m, run } = clocked()
    run(200)
    expect(m.check({ heartbeatAgeMs: 50, heartbeatStaleMs: 100 }).ok).toBe(true)
    const r = m.check({ heartbeatAgeMs: 150, heartbeatStaleMs: 100 })
    expect(r.ok).toBe(false)
    expect(r.detail.heartbeat).toEqual({ ticking: false, ageMs: 150, staleMs: 100 })
    // Without a stale limit the age is only reported.
    expect(m.check({ heartbeatAgeMs: 1e6 }).ok).toBe(true)
  })

  it('close() stops the timer, is idempotent, and check() then fails', () => {
    const { m } = clocked()
    m.close()
    m.stop()
    expect(vi.getTimerCount()).toBe(0)
    expect(m.check().detail.reasons).toContain('liveness monitor is closed')
    expect(m.eventLoopDelay()).toEqual({ p50Ms: 0, p99Ms: 0, maxMs: 0, meanMs: 0 })
  })
})

describe('createLivenessMonitor (real time)', () => {
  it('detects a blocked event loop', async () => {
    const m = monitor({ intervalMs: 10, maxMissedTicks: 3 })
    await waitFor(() => m.check().ok && m.check().detail.eventLoop.lastTickAgeMs < 20, 'a tick')
    const until = performance.now() + 200
    while (performance.now() < until) {
      // busy: the loop cannot tick
    }
    const r = m.check()
    expect(r.ok).toBe(false)
    expect(r.detail.eventLoop.lastTickAgeMs).toBeGreaterThanOrEqual(150)
    await waitFor(() => m.check().ok, 'recovery')
    const d = m.eventLoopDelay()
    expect(d.maxMs).toBeGreaterThan(0)
    expect(d.p99Ms).toBeGreaterThanOrEqual(d.p50Ms)
  })

  it('does not keep the process alive (timers are unref)', async () => {
    const mod = new URL('../../../src/observability/liveness.ts', import.meta.url).href
    const code = `import { createLivenessMonitor } from ${JSON.stringify(mod)}
const m = createLivenessMonitor({ intervalMs: 10 })
m.markHeartbeatTick()`
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
      stdio: 'ignore',
    })
    onTestFinished(() => {
      child.kill('SIGKILL')
    })
    const [exitCode] = (await within(once(child, 'exit'), 10_000, 'the child to exit')) as [number | null]
    expect(exitCode).toBe(0)
  })

  it('validates options', () => {
    expect(() => createLivenessMonitor({ intervalMs: 0 })).toThrow(InvalidOptionError)
    expect(() => createLivenessMonitor({ maxMissedTicks: 1.5 })).toThrow(InvalidOptionError)
    expect(() => createLivenessMonitor({ heartbeatStaleMs: -1 })).toThrow(InvalidOptionError)
  })
})
