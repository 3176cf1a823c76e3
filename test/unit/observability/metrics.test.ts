import { register as globalRegister } from 'prom-client'
import { describe, expect, it } from 'vitest'
import {
  createMetrics,
  MEMBER_STATES,
  METRIC_NAMES,
  NODE_LOAD_METRICS,
  TIME_STATES,
} from '../../../src/observability/metrics.ts'

const load = { queueDepth: 4, inFlight: 2, eventsPerSec: 1000, rssBytes: 5e7, lag: 12 }

describe('createMetrics', () => {
  it('uses a fresh registry (not the global one) with default metrics and a role label', async () => {
    const m = createMetrics('worker')
    expect(m.registry).not.toBe(globalRegister)
    expect(m.role).toBe('worker')
    const text = await m.registry.metrics()
    for (const name of Object.values(METRIC_NAMES)) {
      expect(text).toContain(`# HELP ${name} `)
      expect(text).toContain(`# TYPE ${name} `)
    }
    expect(text).toContain('process_cpu_user_seconds_total')
    expect(text).toContain('nodejs_eventloop_lag_seconds')
    expect(text).toMatch(/shoal_heartbeats_sent_total\{role="worker"\} 0/)
    expect(globalRegister.getSingleMetric(METRIC_NAMES.members)).toBeUndefined()
  })

  it('two nodes in one process do not collide; default metrics can be left out; extra labels', async () => {
    const a = createMetrics('coordinator')
    const b = createMetrics('worker', { defaultMetrics: false, labels: { node_id: 'w1' } })
    a.heartbeatsReceived.inc()
    const bt = await b.registry.metrics()
    expect(bt).not.toContain('process_cpu_user_seconds_total')
    expect(bt).toContain('shoal_heartbeats_received_total{node_id="w1",role="worker"} 0')
    expect(await a.registry.metrics()).toContain('shoal_heartbeats_received_total{role="coordinator"} 1')
  })

  it('fixed label sets exist from the start at 0', async () => {
    const text = await createMetrics('coordinator', { defaultMetrics: false }).registry.metrics()
    for (const state of MEMBER_STATES)
      expect(text).toContain(`shoal_members{state="${state}",role="coordinator"} 0`)
    for (const state of TIME_STATES)
      expect(text).toContain(`shoal_time_seconds_total{state="${state}",role="coordinator"} 0`)
  })

  it('typed helpers: members, node load, time, removeNode', async () => {
    const m = createMetrics('coordinator', { defaultMetrics: false })
    m.setMembers({ alive: 3, suspect: 1 })
    m.setNodeLoad('w1', { queue_depth: 7, lag: Number.NaN })
    m.addTime('busy', 1.5)
    m.addTime('idle', -1)
    m.heartbeatsMissed.inc({ peer: 'w1' })
    let text = await m.registry.metrics()
    expect(text).toContain('shoal_members{state="alive",role="coordinator"} 3')
    expect(text).toContain('shoal_members{state="dead",role="coordinator"} 0')
    expect(text).toContain('shoal_node_load{node="w1",metric="queue_depth",role="coordinator"} 7')
    expect(text).not.toContain('metric="lag"')
    expect(text).toContain('shoal_time_seconds_total{state="busy",role="coordinator"} 1.5')
    expect(text).toContain('shoal_time_seconds_total{state="idle",role="coordinator"} 0')
    expect(text).toContain('shoal_heartbeats_missed_total{peer="w1",role="coordinator"} 1')
    m.removeNode('w1')
    text = await m.registry.metrics()
    expect(text).not.toContain('node="w1"')
    expect(text).not.toContain('peer="w1"')
  })

  it('observeCluster sets members, loads and the epoch, and drops departed members', async () => {
    const m = createMetrics('coordinator', { defaultMetrics: false })
    m.observeCluster({
      members: [
        { id: 'w1', state: 'alive', load },
        { id: 'w2', state: 'suspect', load },
        { id: 'w3', state: 'alive', load: null },
      ],
      assignment: { epoch: 7 },
    })
    let text = await m.registry.metrics()
    expect(text).toContain('shoal_members{state="alive",role="coordinator"} 2')
    expect(text).toContain('shoal_members{state="suspect",role="coordinator"} 1')
    expect(text).toContain('shoal_assignment_epoch{role="coordinator"} 7')
    for (const metric of NODE_LOAD_METRICS) expect(text).toContain(`node="w2",metric="${metric}"`)
    expect(text).toContain('shoal_node_load{node="w1",metric="rss_bytes",role="coordinator"} 50000000')
    m.observeCluster({
      members: [
        { id: 'w1', state: 'alive', load },
        { id: 'w2', state: 'dead', load },
      ],
      assignment: { epoch: 8 },
    })
    text = await m.registry.metrics()
    expect(text).not.toContain('node="w2"')
    expect(text).toContain('node="w1"')
    expect(text).toContain('shoal_members{state="dead",role="coordinator"} 1')
    expect(text).toContain('shoal_members{state="suspect",role="coordinator"} 0')
  })

  it('hooks for the coordinator and the worker', async () => {
    const c = createMetrics('coordinator', { defaultMetrics: false })
    c.coordinatorHooks.heartbeatSent()
    c.coordinatorHooks.heartbeatReceived('w1')
    c.coordinatorHooks.heartbeatReceived('w2')
    c.coordinatorHooks.heartbeatMissed('w1')
    c.coordinatorHooks.assignmentChanged({ epoch: 4 })
    c.coordinatorHooks.checkpointDone({ durationMs: 1500, keys: 40, failedMembers: [] })
    c.coordinatorHooks.checkpointDone({ durationMs: 250, keys: 2, failedMembers: ['w2'] })
    const ct = await c.registry.metrics()
    expect(ct).toContain('shoal_checkpoints_total{outcome="completed",role="coordinator"} 1')
    expect(ct).toContain('shoal_checkpoints_total{outcome="failed",role="coordinator"} 1')
    expect(ct).toContain('shoal_checkpoint_duration_seconds{role="coordinator"} 0.25')
    expect(ct).toContain('shoal_checkpoint_keys_total{role="coordinator"} 42')
    expect(ct).toContain('shoal_heartbeats_sent_total{role="coordinator"} 1')
    expect(ct).toContain('shoal_heartbeats_received_total{role="coordinator"} 2')
    expect(ct).toContain('shoal_heartbeats_missed_total{peer="w1",role="coordinator"} 1')
    expect(ct).toContain('shoal_assignment_changes_total{role="coordinator"} 1')
    expect(ct).toContain('shoal_assignment_epoch{role="coordinator"} 4')

    const w = createMetrics('worker', { defaultMetrics: false })
    w.workerHooks.heartbeatSent()
    w.workerHooks.heartbeatMissed()
    w.partitionsOwned.set(12)
    w.eventsProcessed.inc(1000)
    w.batches.inc()
    const wt = await w.registry.metrics()
    expect(wt).toContain('shoal_heartbeats_sent_total{role="worker"} 1')
    expect(wt).toContain('shoal_heartbeats_missed_total{peer="coordinator",role="worker"} 1')
    expect(wt).toContain('shoal_partitions_owned{role="worker"} 12')
    expect(wt).toContain('shoal_events_processed_total{role="worker"} 1000')
    expect(wt).toContain('shoal_batches_total{role="worker"} 1')
  })
})
