/**
 * Prometheus metrics of one node, on a registry of its own (never prom-client's global one, so
 * several nodes, or tests, can live in one process). Default process and Node.js metrics are
 * collected on it too, and every series carries the label `role` (coordinator | worker).
 *
 * | name                              | type    | labels                         | updated by            |
 * |-----------------------------------|---------|--------------------------------|-----------------------|
 * | shoal_members                     | gauge   | state: alive/suspect/dead/left | coordinator           |
 * | shoal_heartbeats_sent_total       | counter |                                | worker                |
 * | shoal_heartbeats_received_total   | counter |                                | coordinator           |
 * | shoal_heartbeats_missed_total     | counter | peer                           | coordinator, worker   |
 * | shoal_assignment_changes_total    | counter |                                | coordinator, worker   |
 * | shoal_assignment_epoch            | gauge   |                                | coordinator, worker   |
 * | shoal_partitions_owned            | gauge   |                                | worker                |
 * | shoal_node_load                   | gauge   | node, metric (NODE_LOAD_METRICS) | coordinator (from heartbeats), worker (own) |
 * | shoal_events_processed_total      | counter |                                | worker                |
 * | shoal_batches_total               | counter |                                | worker                |
 * | shoal_time_seconds_total          | counter | state: busy/backpressured/idle | worker                |
 *
 * `peer` and `node` are member ids. Worker ids carry a per-process instance suffix, so call
 * {@link ShoalMetrics.removeNode} when a member leaves or is declared dead, or those label sets
 * pile up across restarts.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client'

export type MetricsRole = 'coordinator' | 'worker'

/** Values of shoal_members' `state` label (the coordinator's member states). */
export const MEMBER_STATES = ['alive', 'suspect', 'dead', 'left'] as const
export type MemberStateLabel = (typeof MEMBER_STATES)[number]

/** Values of shoal_node_load's `metric` label: what a heartbeat reports. */
export const NODE_LOAD_METRICS = ['queue_depth', 'in_flight', 'events_per_sec', 'rss_bytes', 'lag'] as const
export type NodeLoadMetric = (typeof NODE_LOAD_METRICS)[number]

/** Values of shoal_time_seconds_total's `state` label. */
export const TIME_STATES = ['busy', 'backpressured', 'idle'] as const
export type TimeState = (typeof TIME_STATES)[number]

/** Metric names, for code and tests that look them up. */
export const METRIC_NAMES = Object.freeze({
  members: 'shoal_members',
  heartbeatsSent: 'shoal_heartbeats_sent_total',
  heartbeatsReceived: 'shoal_heartbeats_received_total',
  heartbeatsMissed: 'shoal_heartbeats_missed_total',
  assignmentChanges: 'shoal_assignment_changes_total',
  assignmentEpoch: 'shoal_assignment_epoch',
  partitionsOwned: 'shoal_partitions_owned',
  nodeLoad: 'shoal_node_load',
  eventsProcessed: 'shoal_events_processed_total',
  batches: 'shoal_batches_total',
  timeSeconds: 'shoal_time_seconds_total',
  checkpoints: 'shoal_checkpoints_total',
  checkpointDuration: 'shoal_checkpoint_duration_seconds',
  checkpointKeys: 'shoal_checkpoint_keys_total',
})

export interface MetricsOptions {
  /** Collect prom-client's default process/Node.js metrics on the registry. @default true */
  defaultMetrics?: boolean
  /** Extra labels on every series (e.g. { node_id }). `role` is always set. */
  labels?: Readonly<Record<string, string>>
}

/** A heartbeat's load report (structurally the protocol's HeartbeatLoad). */
export interface NodeLoadReport {
  queueDepth: number
  inFlight: number
  eventsPerSec: number
  rssBytes: number
  lag: number
}

/** The part of the coordinator's ClusterStatus that {@link ShoalMetrics.observeCluster} reads. */
export interface ClusterSnapshot {
  readonly members: ReadonlyArray<{
    readonly id: string
    readonly state: string
    readonly load: NodeLoadReport | null
  }>
  readonly assignment: { readonly epoch: number }
}

/** Fits CoordinatorOptions.hooks (add `tick` for liveness yourself). */
export interface CoordinatorMetricHooks {
  heartbeatSent(): void
  heartbeatReceived(memberId: string): void
  heartbeatMissed(memberId: string): void
  assignmentChanged(assignment: { readonly epoch: number }): void
  /** A coordinator-triggered checkpoint finished (some members may have failed it). */
  checkpointDone(result: {
    readonly durationMs: number
    readonly keys: number
    readonly failedMembers: readonly string[]
  }): void
}

/** Fits WorkerOptions.hooks (add `tick` for liveness yourself). */
export interface WorkerMetricHooks {
  heartbeatSent(): void
  /** A missed coordinator heartbeat (peer label 'coordinator'). */
  heartbeatMissed(): void
}

export interface ShoalMetrics {
  readonly role: MetricsRole
  /** Serve it at /metrics: `await registry.metrics()`, `registry.contentType`. */
  readonly registry: Registry
  readonly members: Gauge<'state'>
  readonly heartbeatsSent: Counter
  readonly heartbeatsReceived: Counter
  readonly heartbeatsMissed: Counter<'peer'>
  readonly assignmentChanges: Counter
  readonly assignmentEpoch: Gauge
  readonly partitionsOwned: Gauge
  readonly nodeLoad: Gauge<'node' | 'metric'>
  readonly eventsProcessed: Counter
  readonly batches: Counter
  readonly timeSeconds: Counter<'state'>
  /** Set shoal_members for every state at once; states not given are set to 0. */
  setMembers(counts: Readonly<Partial<Record<MemberStateLabel, number>>>): void
  /** Set a node's shoal_node_load series from a load report; metrics not given are left as they are. */
  setNodeLoad(node: string, load: Readonly<Partial<Record<NodeLoadMetric, number>>>): void
  /** Add seconds spent in a state to shoal_time_seconds_total. */
  addTime(state: TimeState, seconds: number): void
  /** Forget a departed member's label sets (load and missed heartbeats). */
  removeNode(node: string): void
  /**
   * Refresh the coordinator's gauges from a status snapshot: members by state, each live
   * member's load, the epoch; label sets of members gone, dead or left are removed.
   */
  observeCluster(status: ClusterSnapshot): void
  readonly coordinatorHooks: CoordinatorMetricHooks
  readonly workerHooks: WorkerMetricHooks
}

function loadLabels(load: NodeLoadReport): Record<NodeLoadMetric, number> {
  return {
    queue_depth: load.queueDepth,
    in_flight: load.inFlight,
    events_per_sec: load.eventsPerSec,
    rss_bytes: load.rssBytes,
    lag: load.lag,
  }
}

export function createMetrics(role: MetricsRole, options: MetricsOptions = {}): ShoalMetrics {
  const registry = new Registry()
  registry.setDefaultLabels({ ...options.labels, role })
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry })
  const registers = [registry]
  const n = METRIC_NAMES

  const members = new Gauge({
    name: n.members,
    help: 'Cluster members known to the coordinator, by state',
    labelNames: ['state'] as const,
    registers,
  })
  const heartbeatsSent = new Counter({ name: n.heartbeatsSent, help: 'Heartbeats sent', registers })
  const heartbeatsReceived = new Counter({
    name: n.heartbeatsReceived,
    help: 'Heartbeats received',
    registers,
  })
  const heartbeatsMissed = new Counter({
    name: n.heartbeatsMissed,
    help: 'Heartbeat intervals that passed without a heartbeat from a peer',
    labelNames: ['peer'] as const,
    registers,
  })
  const assignmentChanges = new Counter({
    name: n.assignmentChanges,
    help: 'Partition assignment changes (published by the coordinator, applied by a worker)',
    registers,
  })
  const assignmentEpoch = new Gauge({
    name: n.assignmentEpoch,
    help: 'Current assignment epoch',
    registers,
  })
  const partitionsOwned = new Gauge({
    name: n.partitionsOwned,
    help: 'Partitions (key groups) this worker owns',
    registers,
  })
  const nodeLoad = new Gauge({
    name: n.nodeLoad,
    help: `Load reported by a node (metric: ${NODE_LOAD_METRICS.join(', ')})`,
    labelNames: ['node', 'metric'] as const,
    registers,
  })
  const eventsProcessed = new Counter({
    name: n.eventsProcessed,
    help: 'Events processed by the job',
    registers,
  })
  const batches = new Counter({ name: n.batches, help: 'Event batches processed', registers })
  const checkpoints = new Counter({
    name: n.checkpoints,
    help: 'Cluster checkpoints by outcome (failed: at least one member did not acknowledge)',
    labelNames: ['outcome'] as const,
    registers,
  })
  const checkpointDuration = new Gauge({
    name: n.checkpointDuration,
    help: 'Duration of the last cluster checkpoint, trigger to the last acknowledgement',
    registers,
  })
  const checkpointKeys = new Counter({
    name: n.checkpointKeys,
    help: 'Keys written by checkpoints (changed since the previous one)',
    registers,
  })
  const timeSeconds = new Counter({
    name: n.timeSeconds,
    help: 'Seconds spent busy (processing), backpressured (waiting for room downstream) or idle',
    labelNames: ['state'] as const,
    registers,
  })

  // Series with a fixed label set exist from the start, at 0.
  for (const state of MEMBER_STATES) members.set({ state }, 0)
  for (const state of TIME_STATES) timeSeconds.inc({ state }, 0)

  /** Nodes with shoal_node_load series, so observeCluster can drop the departed. */
  const loadNodes = new Set<string>()
  const setMembers = (counts: Readonly<Partial<Record<MemberStateLabel, number>>>): void => {
    for (const state of MEMBER_STATES) members.set({ state }, counts[state] ?? 0)
  }
  const setNodeLoad = (node: string, load: Readonly<Partial<Record<NodeLoadMetric, number>>>): void => {
    for (const metric of NODE_LOAD_METRICS) {
      const v = load[metric]
      if (v !== undefined && Number.isFinite(v)) nodeLoad.set({ node, metric }, v)
    }
  }
  const removeNode = (node: string): void => {
    for (const metric of NODE_LOAD_METRICS) nodeLoad.remove({ node, metric })
    heartbeatsMissed.remove({ peer: node })
    loadNodes.delete(node)
  }

  return {
    role,
    registry,
    members,
    heartbeatsSent,
    heartbeatsReceived,
    heartbeatsMissed,
    assignmentChanges,
    assignmentEpoch,
    partitionsOwned,
    nodeLoad,
    eventsProcessed,
    batches,
    timeSeconds,
    setMembers,
    setNodeLoad,
    addTime(state, seconds) {
      if (seconds > 0 && Number.isFinite(seconds)) timeSeconds.inc({ state }, seconds)
    },
    removeNode,
    observeCluster(status) {
      const counts: Partial<Record<MemberStateLabel, number>> = {}
      const live = new Set<string>()
      for (const m of status.members) {
        if ((MEMBER_STATES as readonly string[]).includes(m.state)) {
          const state = m.state as MemberStateLabel
          counts[state] = (counts[state] ?? 0) + 1
        }
        if (m.state === 'dead' || m.state === 'left') continue
        live.add(m.id)
        if (m.load !== null) {
          setNodeLoad(m.id, loadLabels(m.load))
          loadNodes.add(m.id)
        }
      }
      setMembers(counts)
      assignmentEpoch.set(status.assignment.epoch)
      for (const node of [...loadNodes]) if (!live.has(node)) removeNode(node)
    },
    coordinatorHooks: {
      heartbeatSent: () => heartbeatsSent.inc(),
      heartbeatReceived: () => heartbeatsReceived.inc(),
      heartbeatMissed: (memberId) => heartbeatsMissed.inc({ peer: memberId }),
      assignmentChanged: (assignment) => {
        assignmentChanges.inc()
        assignmentEpoch.set(assignment.epoch)
      },
      checkpointDone: (result) => {
        checkpoints.inc({ outcome: result.failedMembers.length === 0 ? 'completed' : 'failed' })
        checkpointDuration.set(result.durationMs / 1000)
        checkpointKeys.inc(result.keys)
      },
    },
    workerHooks: {
      heartbeatSent: () => heartbeatsSent.inc(),
      heartbeatMissed: () => heartbeatsMissed.inc({ peer: 'coordinator' }),
    },
  }
}
