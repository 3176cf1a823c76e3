#!/usr/bin/env node
/**
 * The `shoal` command line (contract: ../../README.md and docs/operations.md).
 *
 *   shoal up          [--workers N] [--transport tcp|grpc] [--state URL] [--job PATH] [--demo]
 *   shoal coordinator [--listen HOST:PORT] [--http HOST:PORT] [--transport ..] [--partitions N]
 *   shoal worker      --coordinator HOST:PORT [--listen ..] [--http ..] [--job PATH] [--threads N]
 *   shoal send        --coordinator HOST:PORT [FILE|-]
 *   shoal status      --coordinator HOST:PORT [--json]
 *   shoal savepoint   --coordinator HOST:PORT [--json]
 *   shoal state get KEY | shoal state dump   --coordinator HOST:PORT [--json]
 *   shoal probe grpc HOST:PORT | shoal probe http URL
 *
 * Nodes print one JSON line on stdout once they listen ({"shoal":"listening",...}) so scripts
 * and `shoal up` can find ephemeral ports; logs are JSON on stderr.
 */
import { randomUUID } from 'node:crypto'
import { setFlagsFromString } from 'node:v8'
import { readFileSync, realpathSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker as Thread } from 'node:worker_threads'
import type { Logger } from 'pino'
import { AdminClient } from '../client/admin.ts'
import { ShoalClient } from '../client/client.ts'
import {
  advertiseAddress,
  BUILTIN_JOBS,
  ConfigError,
  describeConfig,
  formatFlagHelp,
  loadConfig,
  redactUrl,
  type ClientConfig,
  type CoordinatorConfig,
  type UpConfig,
  type WorkerConfig,
} from '../config/config.ts'
import { Coordinator } from '../coordinator/coordinator.ts'
import { LeaderLease, WarmView, type LeaderInfo, type WarmViewRecord } from '../coordinator/leader.ts'
import type { RedisBackend } from '../state/redis/redis-backend.ts'
import { ShoalError } from '../errors.ts'
import { createLivenessMonitor } from '../observability/liveness.ts'
import { createLogger } from '../observability/logger.ts'
import { createMetrics } from '../observability/metrics.ts'
import { createDashboard } from '../observability/dashboard.ts'
import {
  startHttpServer,
  type GetRoute,
  type HttpServerOptions,
  type PostRoute,
  type RouteHandler,
  type StreamRoute,
} from '../observability/http.ts'
import { eventsRoute } from '../ingest/http-ingest.ts'
import { IngestThreads } from '../ingest/ingest-threads.ts'
import { formatHostPort } from '../transport/address.ts'
import type { GrpcListener } from '../transport/grpc/grpc-transport.ts'
import { createTransport } from '../transport/index.ts'
import { createSink, createSource } from '../connectors/factory.ts'
import { specUrl } from '../connectors/url.ts'
import { registerSinkMetrics, registerSourceMetrics } from '../connectors/metrics.ts'
import type { Role } from '../protocol/messages.ts'
import type { Transport, TlsOptions } from '../transport/transport.ts'
import { createWorkerNode } from '../worker/node.ts'
import { checkJob } from '../processing/engine.ts'
import { registerWatermarkMetrics } from '../observability/time-metrics.ts'
import { joinIdentity } from './join-identity.ts'
import { createStateBackend } from '../state/index.ts'
import { checkBackendLayout, checkFileLayout } from '../state/layout.ts'
import { PartitionedFileStore, openPartitionStore } from '../state/checkpoint/partition-store.ts'
import { formatStatus } from './format.ts'
import { workerObserver } from './node-metrics.ts'
import { runProbe } from './probe.ts'
import { openInput, sendNdjson } from './send.ts'
import { startLocalCluster } from './up.ts'

const VERSION = '0.1.0'

const USAGE = `usage: shoal <command> [flags]

commands:
  up            a local cluster: coordinator + N workers on loopback (--demo feeds it events)
  coordinator   run the coordinator
  worker        run a worker (--coordinator HOST:PORT)
  send          send NDJSON events from FILE or stdin (exit 0 only when all are acked)
  status        show the cluster (--json for JSON)
  savepoint     a full checkpoint of every partition now (needs durable state)
  state get KEY | state dump    read keyed state
  probe grpc HOST:PORT | probe http URL    health probe (grpc_health_probe exit codes)

Run \`shoal <command> --help\` for its flags. Every flag has a SHOAL_* environment variable.`

function out(line: string): void {
  process.stdout.write(line + '\n')
}
function err(line: string): void {
  process.stderr.write(line + '\n')
}

function readTls(
  tls:
    | {
        cert?: string | undefined
        key?: string | undefined
        ca?: string | undefined
        requireClientCert: boolean
      }
    | undefined,
): TlsOptions | undefined {
  if (tls === undefined) return undefined
  return {
    cert: tls.cert === undefined ? undefined : readFileSync(tls.cert),
    key: tls.key === undefined ? undefined : readFileSync(tls.key),
    ca: tls.ca === undefined ? undefined : readFileSync(tls.ca),
    requestCert: tls.requireClientCert,
  }
}

function transportFor(
  cfg: { transport: 'tcp' | 'grpc'; token: string | undefined; tls: Parameters<typeof readTls>[0] },
  nodeId: string,
  role: Role,
): Transport {
  return createTransport(cfg.transport, { nodeId, role, token: cfg.token, tls: readTls(cfg.tls) })
}

/**
 * A node's HTTP port: with a cluster token, every endpoint but /healthz and /readyz (and
 * /metrics unless --metrics-auth) needs `Authorization: Bearer <token>`; with --tls-cert and
 * --tls-key it serves HTTPS with the transport's certificate (no client certificate asked for,
 * so orchestrator probes work; the token is the HTTP credential).
 */
function httpAccess(cfg: {
  token: string | undefined
  metricsAuth: boolean
  tls: Parameters<typeof readTls>[0]
}): Pick<HttpServerOptions, 'auth' | 'tls'> {
  const { cert, key } = cfg.tls ?? {}
  return {
    auth: cfg.token === undefined ? undefined : { token: cfg.token, metrics: cfg.metricsAuth },
    tls:
      cert === undefined || key === undefined
        ? undefined
        : { cert: readFileSync(cert), key: readFileSync(key) },
  }
}

/** SIGTERM/SIGINT run `graceful` once; a second signal exits at once. */
function onShutdownSignal(log: Logger, graceful: () => Promise<void>): void {
  let stopping = false
  const handler = (signal: NodeJS.Signals): void => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now')
      process.exit(1)
    }
    stopping = true
    log.info({ signal }, 'shutting down gracefully')
    graceful().then(
      () => process.exit(0),
      (e: unknown) => {
        log.error({ err: e }, 'graceful shutdown failed')
        process.exit(1)
      },
    )
  }
  process.on('SIGTERM', handler)
  process.on('SIGINT', handler)
}

/** Test hook: threads that spin at 100% CPU, to show heartbeats do not depend on them. */
function burnThreads(log: Logger): void {
  const n = Number(process.env.SHOAL_TEST_BURN_THREADS ?? 0)
  if (!(n > 0)) return
  log.warn({ threads: n }, 'SHOAL_TEST_BURN_THREADS: burning CPU in extra threads')
  for (let i = 0; i < n; i++) {
    new Thread('for (;;) {}', { eval: true }).unref()
  }
}

/**
 * Coordinator high availability (docs/decisions.md): with `--state redis://` a coordinator is
 * one of possibly several replicas and leads only while it holds the lease. Until then it is a
 * standby: its HTTP port answers /healthz (alive) and /readyz 503 (so a Kubernetes Service routes
 * to the leader), and its transport port is not open, so workers and clients that dial the
 * replicas in turn reach the leader. Resolves once this replica leads.
 */
async function awaitLeadership(
  cfg: CoordinatorConfig,
  log: Logger,
): Promise<{ lease: LeaderLease; expectedMembers: string[]; view: WarmView; close(): Promise<void> } | null> {
  if (cfg.state.kind !== 'redis') return null
  // The lease's own connection, reconnecting every 100 ms rather than with a growing backoff:
  // renewals are 300 ms apart, so after a short Redis restart (from its AOF) the leader renews
  // in time instead of being deposed (a takeover) by its own reconnect delay.
  const backend = await createStateBackend(cfg.state.url, { retryDelay: () => 100 })
  const redis = (backend as RedisBackend).client
  // Under the backend's key prefix: clusters sharing a Redis have a leader each.
  const prefix = `${(backend as RedisBackend).prefix}:coordinator`
  const view = new WarmView(redis, prefix)
  const lease = new LeaderLease({
    redis,
    prefix,
    id: cfg.nodeId,
    // The failure-detection time, but never so short that a busy host's event-loop stall
    // (a GC, a burst of work) costs the leader its lease.
    ttlMs: Math.max(1500, cfg.heartbeatIntervalMs * cfg.heartbeatMisses),
  })
  const standby: { since: number; leader: LeaderInfo | null; view: WarmViewRecord | null } = {
    since: Date.now(),
    leader: null,
    view: null,
  }
  // Probes must answer at once even when Redis does not: they read what was last seen.
  const refresh = async (): Promise<void> => {
    standby.leader = await lease.current().catch(() => standby.leader)
    standby.view = await view.read().catch(() => standby.view)
  }
  const refreshTimer = setInterval(() => void refresh(), 1000)
  refreshTimer.unref()
  void refresh()
  const http = await startHttpServer({
    host: cfg.http.host,
    port: cfg.http.port,
    ...httpAccess(cfg),
    registry: { contentType: 'text/plain', metrics: () => Promise.resolve('') },
    logger: log,
    liveness: () => ({ ok: true, detail: { role: 'standby' } }),
    readiness: () => ({ ok: false, detail: { role: 'standby', leader: standby.leader } }),
    status: () => ({
      role: 'standby',
      nodeId: cfg.nodeId,
      since: standby.since,
      leader: standby.leader,
      view: standby.view,
    }),
  })
  // A standby holds nothing: on SIGTERM/SIGINT it just leaves (as PID 1 in a container, a signal
  // without a handler would be ignored until the grace period ends).
  const leave = (signal: NodeJS.Signals): void => {
    log.info({ signal }, 'standby stopping')
    void Promise.allSettled([lease.stop(), http.close(), backend.close()]).then(() => process.exit(0))
  }
  process.on('SIGTERM', leave)
  process.on('SIGINT', leave)
  out(JSON.stringify({ shoal: 'standby', role: 'coordinator', nodeId: cfg.nodeId, http: http.address }))
  log.info({ http: http.address }, 'coordinator standby: waiting for the leader lease')
  const elected = new Promise<number>((resolve) => lease.once('elected', resolve))
  lease.start()
  const epoch = await elected
  clearInterval(refreshTimer)
  process.off('SIGTERM', leave)
  process.off('SIGINT', leave)
  const previous = await view.read().catch(() => null)
  await http.close()
  log.info(
    { leaderEpoch: epoch, expectedMembers: previous?.members.length ?? 0 },
    'elected coordinator leader',
  )
  lease.on('retaken', (lapseMs) => {
    log.warn(
      { lapseMs, leaderEpoch: epoch },
      'leader lease had lapsed (Redis away or this process stalled longer than the lease); re-taken: no other replica claimed leadership meanwhile',
    )
  })
  lease.on('deposed', (reason) => {
    // Another replica may lead already: this process must not act again. Exit at once; the
    // supervisor (compose restart policy, Kubernetes) starts it again as a standby.
    log.error({ reason, leaderEpoch: epoch }, 'deposed as coordinator leader; exiting')
    process.exit(3)
  })
  return {
    lease,
    expectedMembers: previous?.members ?? [],
    view,
    close: async () => {
      await lease.stop()
      await backend.close()
    },
  }
}

async function runCoordinator(cfg: CoordinatorConfig): Promise<void> {
  const log = createLogger({ level: cfg.logLevel, name: 'coordinator', nodeId: cfg.nodeId })
  log.info({ config: describeConfig(cfg) }, 'starting coordinator')
  const ha = await awaitLeadership(cfg, log)
  const metrics = createMetrics('coordinator', { labels: { node_id: cfg.nodeId } })
  const heartbeatStaleMs = cfg.heartbeatIntervalMs * (cfg.heartbeatMisses + 2)
  const liveness = createLivenessMonitor({ intervalMs: cfg.heartbeatIntervalMs, heartbeatStaleMs })
  const transport = transportFor(cfg, cfg.nodeId, 'coordinator')
  const epochFloor = await storedEpochFloor(cfg, log)
  let coordinator: Coordinator
  const publishView = (): void => {
    if (ha === null || !ha.lease.valid) return
    const s = coordinator.status()
    void ha.view
      .write({
        leader: cfg.nodeId,
        leaderEpoch: ha.lease.epoch,
        members: s.members.filter((m) => m.state === 'alive' || m.state === 'suspect').map((m) => m.id),
        owners: s.assignment.owners,
      })
      .catch((err: unknown) => log.debug({ err }, 'warm view not written'))
  }
  coordinator = new Coordinator({
    nodeId: cfg.nodeId,
    // A restarted coordinator keeps partitions where they are only for the workers back within
    // its recovery window: leave room for their reconnect backoff (up to max(500, 2 x interval))
    // on a loaded host. It ends early once the members back claim every partition.
    recoveryWindowMs:
      cfg.recoveryWindowMs ??
      // After a takeover, workers find this replica only after giving up on the old leader (a
      // paused one still accepts connections): wait longer for them, but end as soon as every
      // member of the previous leader's view is back (usually well before).
      Math.max(cfg.heartbeatIntervalMs * cfg.heartbeatMisses * (ha?.expectedMembers.length ? 4 : 1), 2_000),
    ...(ha === null ? {} : { leadership: ha.lease, expectedMembers: ha.expectedMembers }),
    epochFloor,
    transport,
    listen: cfg.listen,
    partitions: cfg.partitions,
    heartbeatIntervalMs: cfg.heartbeatIntervalMs,
    heartbeatMisses: cfg.heartbeatMisses,
    checkpointIntervalMs: cfg.checkpointIntervalMs,
    logger: log,
    hooks: {
      ...metrics.coordinatorHooks,
      tick: () => liveness.markHeartbeatTick(),
      assignmentChanged: (a) => {
        metrics.coordinatorHooks.assignmentChanged?.(a)
        publishView()
      },
    },
  })
  await coordinator.start()
  // The standbys' warm view: who the members are (a new leader ends its recovery window once
  // they all rejoined) and the assignment, refreshed as members come and go.
  const viewTimer = ha === null ? null : setInterval(publishView, 1000)
  viewTimer?.unref()
  let stateClient: Promise<ShoalClient> | null = null
  // POST /events: on a worker thread with one client, dialing this coordinator (with TLS, by the
  // name its certificate is for); see src/ingest/ingest-threads.ts and http-ingest.ts.
  const selfAddress =
    cfg.tls?.cert !== undefined
      ? advertiseAddress(cfg, coordinator.listener?.port ?? cfg.listen.port)
      : coordinator.address
  const ingest = new IngestThreads({
    coordinator: selfAddress,
    transport: cfg.transport,
    transportOptions: {
      nodeId: `${cfg.nodeId}-http-ingest`,
      role: 'client',
      token: cfg.token,
      tls: readTls(cfg.tls),
    },
    routing: () => coordinator.routing(),
    ready: () => coordinator.readiness().ok,
    producerId: `http-ingest:${cfg.nodeId}:${randomUUID()}`,
    logger: log,
  })
  // The dashboard at / (docs/dashboard.md); it reads workers' /status with the cluster token.
  const dashboard = createDashboard({
    cluster: coordinator,
    auth: cfg.token !== undefined,
    workers: {
      token: cfg.token,
      tls:
        cfg.tls?.cert === undefined || cfg.tls.key === undefined
          ? undefined
          : { ca: cfg.tls.ca === undefined ? undefined : readFileSync(cfg.tls.ca) },
    },
    logger: log,
  })
  const http = await startHttpServer({
    host: cfg.http.host,
    port: cfg.http.port,
    ...httpAccess(cfg),
    // Large POST /events bodies from slow clients.
    requestTimeoutMs: 120_000,
    registry: {
      contentType: metrics.registry.contentType,
      metrics: () => {
        metrics.observeCluster(coordinator.status())
        return metrics.registry.metrics()
      },
    },
    logger: log,
    liveness: () => liveness.check(),
    readiness: () => coordinator.readiness(),
    status: () => {
      const s = coordinator.status()
      metrics.observeCluster(s)
      return s
    },
    routes: new Map<string, RouteHandler | PostRoute | GetRoute | StreamRoute>([
      ...dashboard.routes,
      [
        '/state/',
        async (req) => {
          const key = decodeURIComponent(req.url.pathname.slice('/state/'.length))
          stateClient ??= ShoalClient.connect({
            coordinator: coordinator.address,
            transport: transportFor(cfg, `${cfg.nodeId}-state-gateway`, 'client'),
          })
          const client = await stateClient
          const value = await client.getState(key)
          return value === undefined
            ? { status: 404, body: { key, found: false } }
            : { status: 200, body: { key, found: true, state: value } }
        },
      ],
      ['/events', eventsRoute(ingest)],
    ]),
  })
  dashboard.start()
  const setServing = (ok: boolean): void =>
    (coordinator.listener as Partial<GrpcListener> | null)?.setServing?.(ok)
  const readyTimer = setInterval(() => setServing(coordinator.readiness().ok), 200)
  readyTimer.unref()
  out(
    JSON.stringify({
      shoal: 'listening',
      role: 'coordinator',
      nodeId: cfg.nodeId,
      address: coordinator.address,
      http: http.address,
      transport: cfg.transport,
    }),
  )
  onShutdownSignal(log, async () => {
    clearInterval(readyTimer)
    if (viewTimer !== null) clearInterval(viewTimer)
    setServing(false)
    await (await stateClient?.catch(() => null))?.close()
    await ingest.close()
    await coordinator.stop({ timeoutMs: Math.min(cfg.drainTimeoutMs, 5000) })
    // Released last: a standby takes over the moment the lease is gone.
    await ha?.close()
    dashboard.close()
    await http.close()
    liveness.close()
  })
}

/**
 * The highest partition epoch in the shared state backend: a coordinator that starts over
 * existing state (a whole-cluster restart) hands out epochs above it, or its workers' claims
 * would be fenced by the previous run's owners. memory: state has no epochs to respect.
 */
async function storedEpochFloor(
  cfg: CoordinatorConfig,
  log: ReturnType<typeof createLogger>,
): Promise<number> {
  if (cfg.state.kind === 'file') {
    // Before anything else reads the state: it must have been written with this partition count.
    await checkFileLayout(cfg.state.dir, cfg.partitions)
    const floor = await PartitionedFileStore.epochFloor({ dir: cfg.state.dir }, cfg.partitions)
    log.info({ epochFloor: floor }, 'read the stored partition epochs')
    return floor
  }
  if (cfg.state.kind !== 'redis') return 0
  const backend = await createStateBackend(cfg.state.url)
  try {
    await checkBackendLayout(backend, cfg.partitions, redactUrl(cfg.state.url))
    const epochs = await Promise.all(Array.from({ length: cfg.partitions }, (_, p) => backend.getEpoch(p)))
    const floor = epochs.reduce<number>((m, e) => Math.max(m, e ?? 0), 0)
    log.info({ epochFloor: floor }, 'read the stored partition epochs')
    return floor
  } finally {
    await backend.close()
  }
}

async function runWorker(cfg: WorkerConfig): Promise<void> {
  // For the processing threads of a worker started without MAIN_THREAD_FLAGS (up.ts): their
  // heaps are set up after this. The main thread's is not: `shoal up` and the image pass it.
  if (!process.execArgv.some((f) => f.includes('memory-reducer'))) setFlagsFromString('--no-memory-reducer')
  // A job file that cannot load is SHOAL_ERR_JOB_INVALID now, before the worker starts or joins.
  if (!BUILTIN_JOBS.includes(cfg.job)) await checkJob(cfg.job)
  const log = createLogger({ level: cfg.logLevel, name: 'worker', nodeId: cfg.nodeId })
  log.info({ config: describeConfig(cfg) }, 'starting worker')
  const metrics = createMetrics('worker', { labels: { node_id: cfg.nodeId } })
  const observe = workerObserver(metrics)
  const transport = transportFor(cfg, cfg.nodeId, 'worker')
  // The HTTP server first: the worker announces its address when it joins.
  let node: ReturnType<typeof createWorkerNode> | null = null
  const heartbeatStaleMs = cfg.heartbeatIntervalMs * (cfg.heartbeatMisses + 2)
  const liveness = createLivenessMonitor({ intervalMs: cfg.heartbeatIntervalMs, heartbeatStaleMs })
  let stateHealthy = true
  const http = await startHttpServer({
    host: cfg.http.host,
    port: cfg.http.port,
    ...httpAccess(cfg),
    registry: {
      contentType: metrics.registry.contentType,
      metrics: () => {
        if (node !== null) observe(node)
        return metrics.registry.metrics()
      },
    },
    logger: log,
    liveness: () => liveness.check(),
    readiness: () => {
      const r = node?.worker.readiness() ?? { ok: false, detail: { starting: true } }
      // A state backend outage makes the worker unready (it cannot accept or restore).
      return stateHealthy ? r : { ok: false, detail: { ...r.detail, stateBackend: 'unavailable' } }
    },
    status: () => {
      if (node === null) return { starting: true }
      observe(node)
      const watermarks = node.dataPlane.watermarks()
      return {
        ...node.worker.status(),
        deadLettered: node.dataPlane.deadLettered,
        job: node.engine.job,
        sources: node.pumps.map((p) => p.status()),
        sinks: node.outputs.sinkStatus(),
        ...(watermarks.length === 0 ? {} : { watermarks }),
      }
    },
  })
  registerSinkMetrics(metrics.registry, () => node?.outputs.runners ?? [])
  registerWatermarkMetrics(metrics.registry, () => node?.dataPlane ?? null)
  registerSourceMetrics(metrics.registry, () => node?.pumps ?? [])
  burnThreads(log)
  // Durable state: memory: keeps it in the worker only; file: and redis:// get a replay log
  // and checkpoints (file: for a single worker, the directory is locked by one process).
  // redis: one shared store. file: one directory per partition (PartitionedFileStore), so the
  // workers of one host (shoal up) can hand partitions to each other.
  const backend = cfg.state.kind === 'redis' ? await createStateBackend(cfg.state.url) : null
  const store =
    backend !== null
      ? await openPartitionStore(backend, {
          durability: {
            replicas: cfg.durabilityReplicas,
            ...(cfg.durabilityAof ? { aof: { local: true, replicas: 0 } } : {}),
            timeoutMs: cfg.durabilityTimeoutMs,
          },
        })
      : cfg.state.kind === 'file'
        ? new PartitionedFileStore({ dir: cfg.state.dir })
        : undefined
  if (cfg.state.kind !== 'redis' && (cfg.durabilityReplicas > 0 || cfg.durabilityAof)) {
    log.warn(
      { state: cfg.state.kind },
      '--durability-replicas/--durability-aof apply to redis:// state only; ignored',
    )
  }
  const healthTimer = setInterval(() => {
    void backend?.health().then(
      (ok) => (stateHealthy = ok),
      () => (stateHealthy = false),
    )
  }, 1000)
  healthTimer.unref()
  // Sources read as consumer <node id> (stable across restarts); sinks behind SinkRunners.
  const sources = await Promise.all(cfg.sources.map((spec) => createSource(spec, { consumer: cfg.nodeId })))
  const sinks = await Promise.all(cfg.sinks.map((spec) => createSink(spec)))
  node = createWorkerNode({
    store,
    transport,
    sources,
    sinks,
    clientTransport: transportFor(cfg, `${cfg.nodeId}-sources`, 'client'),
    coordinator: formatHostPort(cfg.coordinator.host, cfg.coordinator.port),
    coordinators: cfg.coordinators.map((c) => formatHostPort(c.host, c.port)),
    listen: cfg.listen,
    httpAddress: http.address,
    memberId: cfg.nodeId,
    version: VERSION,
    job: cfg.job,
    threads: cfg.threads,
    durability: cfg.durability,
    heartbeatIntervalMs: cfg.heartbeatIntervalMs,
    heartbeatMisses: cfg.heartbeatMisses,
    logger: log,
    hooks: { ...metrics.workerHooks, tick: () => liveness.markHeartbeatTick() },
  })
  // Advertise the configured host with the port actually bound.
  const started = node
  await started.worker.startListening()
  started.worker.setAdvertise(advertiseAddress(cfg, started.worker.listener!.port))
  // The coordinator refuses a worker whose job, sources or sinks differ from the cluster's
  // (CONFIG_MISMATCH): retrying cannot help, so say why and exit 1.
  started.worker.setJoinIdentity(joinIdentity(cfg))
  started.worker.on('refused', (e) => {
    err(`shoal worker: ${e.code}: ${e.message}`)
    const exit = (): never => process.exit(1)
    setTimeout(exit, 2000).unref()
    void started.stop().then(exit, exit)
  })
  try {
    await started.start()
  } catch (e) {
    if (started.worker.refusal !== null) return // the 'refused' handler exits
    throw e
  }
  const setServing = (ok: boolean): void =>
    (started.worker.listener as Partial<GrpcListener> | null)?.setServing?.(ok)
  const readyTimer = setInterval(() => setServing(started.worker.readiness().ok), 200)
  readyTimer.unref()
  started.worker.on('shutdown', () => process.kill(process.pid, 'SIGTERM'))
  out(
    JSON.stringify({
      shoal: 'listening',
      role: 'worker',
      nodeId: cfg.nodeId,
      address: started.worker.dataAddress,
      http: http.address,
      transport: cfg.transport,
    }),
  )
  onShutdownSignal(log, async () => {
    clearInterval(readyTimer)
    setServing(false)
    await started.drain(cfg.drainTimeoutMs)
    clearInterval(healthTimer)
    await store?.close()
    await backend?.close()
    await http.close()
    liveness.close()
  })
}

/** `--coordinator` as the clients take it: every replica, comma-separated. */
function coordinatorsOf(cfg: { coordinators: readonly { host: string; port: number }[] }): string {
  return cfg.coordinators.map((c) => formatHostPort(c.host, c.port)).join(',')
}

async function withAdmin<T>(cfg: ClientConfig, f: (a: AdminClient) => Promise<T>): Promise<T> {
  const transport = transportFor(cfg, `cli-${process.pid}`, 'client')
  const admin = await AdminClient.connect(transport, coordinatorsOf(cfg))
  try {
    return await f(admin)
  } finally {
    await admin.close()
  }
}

async function withClient<T>(cfg: ClientConfig, f: (c: ShoalClient) => Promise<T>): Promise<T> {
  const client = await ShoalClient.connect({
    coordinator: coordinatorsOf(cfg),
    transport: transportFor(cfg, `cli-${process.pid}`, 'client'),
  })
  try {
    return await f(client)
  } finally {
    await client.close().catch(() => {})
  }
}

async function runStatus(cfg: ClientConfig): Promise<number> {
  const status = await withAdmin(cfg, (a) => a.status())
  process.stdout.write(cfg.json ? JSON.stringify(status, null, 2) + '\n' : formatStatus(status))
  return 0
}

async function runSavepoint(cfg: ClientConfig): Promise<number> {
  const r = await withAdmin(cfg, (a) => a.savepoint())
  if (cfg.json) out(JSON.stringify(r))
  else {
    out(
      `savepoint ${r.id}: ${r.partitions}/${r.assigned} partitions, ${r.keys} keys, ${r.durationMs} ms` +
        (r.failedMembers.length > 0 ? `; not acknowledged by ${r.failedMembers.join(', ')}` : ''),
    )
  }
  // Partial: some partitions are not in it (a member failed or none of its partitions is durable).
  return r.failedMembers.length === 0 && r.partitions === r.assigned ? 0 : 1
}

async function runSend(cfg: ClientConfig): Promise<number> {
  const file = cfg.positionals[0]
  const summary = await withClient(cfg, (client) =>
    sendNdjson(client, {
      input: openInput(file),
      keyField: cfg.keyField,
      strict: cfg.strict,
      progress: process.stderr.isTTY ? process.stderr : null,
      err: process.stderr,
      out: process.stdout,
    }),
  )
  const rate = summary.seconds > 0 ? Math.round(summary.acked / summary.seconds) : 0
  const line = `${summary.acked} of ${summary.sent} events acknowledged in ${summary.seconds.toFixed(2)} s (${rate}/s); ${summary.malformed} malformed lines; ${summary.failed} failed`
  if (cfg.json) out(JSON.stringify(summary))
  else err(line)
  return summary.malformed === 0 && summary.failed === 0 && summary.acked === summary.sent ? 0 : 1
}

async function runState(cfg: ClientConfig): Promise<number> {
  const [sub, key] = cfg.positionals
  if (sub === 'get' && key !== undefined) {
    const value = await withClient(cfg, (c) => c.getState(key))
    if (value === undefined) {
      err(`no state for key ${JSON.stringify(key)}`)
      return 1
    }
    out(cfg.json ? JSON.stringify({ key, state: value }) : JSON.stringify(value))
    return 0
  }
  if (sub === 'dump') {
    await withClient(cfg, async (c) => {
      for await (const [k, v] of c.dumpState()) out(JSON.stringify({ key: k, state: v }))
    })
    return 0
  }
  err('usage: shoal state get KEY | shoal state dump   --coordinator HOST:PORT')
  return 1
}

async function runUp(cfg: UpConfig): Promise<void> {
  // A job file that cannot load is SHOAL_ERR_JOB_INVALID now, before any node starts.
  if (!BUILTIN_JOBS.includes(cfg.job)) await checkJob(cfg.job)
  // The embedded default: durable state in a fresh directory per run (one directory per
  // partition, shared by the workers of this host). --state file:DIR keeps it across runs.
  let ephemeralState: string | null = null
  let stateUrl = cfg.state.url
  if (cfg.origins.state === undefined || cfg.origins.state === 'default') {
    ephemeralState = await mkdtemp(join(tmpdir(), 'shoal-up-'))
    stateUrl = `file:${ephemeralState}`
  }
  const nodeArgs = [
    '--state',
    stateUrl,
    '--heartbeat-interval',
    String(cfg.heartbeatIntervalMs),
    '--heartbeat-misses',
    String(cfg.heartbeatMisses),
    '--log-level',
    cfg.logLevel === 'info' ? 'warn' : cfg.logLevel,
  ]
  const cluster = await startLocalCluster({
    workers: cfg.workers,
    transport: cfg.transport,
    nodeArgs: [...nodeArgs, ...(cfg.token !== undefined ? ['--token', cfg.token] : [])],
    workerArgs: [
      ...cfg.sources.flatMap((s) => ['--source', specUrl(s)]),
      ...cfg.sinks.flatMap((s) => ['--sink', specUrl(s)]),
    ],
    coordinatorListen: formatHostPort(cfg.listen.host, cfg.listen.port),
    coordinatorHttp: formatHostPort(cfg.http.host, cfg.http.port),
    job: cfg.job,
    threads: cfg.threads,
    log: err,
  })
  err(
    `shoal: coordinator ${cluster.coordinator.address} (${cfg.transport}), http http://${cluster.coordinator.http}`,
  )
  for (const w of cluster.workers) err(`shoal: worker ${w.nodeId} ${w.address}, http http://${w.http}`)
  err(
    `shoal: state ${redactUrl(stateUrl)}${ephemeralState === null ? '' : ' (removed on exit; --state file:DIR keeps it)'}`,
  )
  err(
    `shoal: try  shoal status --coordinator ${cluster.coordinator.address}${cfg.transport === 'grpc' ? ' --transport grpc' : ''}`,
  )
  out(JSON.stringify({ shoal: 'up', coordinator: cluster.coordinator, workers: cluster.workers }))
  let stopping = false
  const stop = async (code: number): Promise<never> => {
    if (!stopping) {
      stopping = true
      err('shoal: stopping the cluster')
      await cluster.stop()
      if (ephemeralState !== null) await rm(ephemeralState, { recursive: true, force: true })
    }
    process.exit(code)
  }
  process.on('SIGINT', () => void stop(0))
  process.on('SIGTERM', () => void stop(0))
  void cluster.crashed.then((what) => {
    err(`shoal: a node stopped unexpectedly: ${what}`)
    return stop(1)
  })
  if (cfg.demo) {
    await runDemo(cfg, cluster.coordinator.address)
    await stop(0)
  }
}

async function runDemo(cfg: UpConfig, coordinator: string): Promise<void> {
  const N = Number(process.env.SHOAL_DEMO_EVENTS ?? 1_000_000)
  const keys = 10_000
  const transport = transportFor(cfg, `demo-${process.pid}`, 'client')
  // Wait until every partition has an owner that is ready.
  const admin = await AdminClient.connect(transport, coordinator)
  for (;;) {
    const s = await admin.status()
    if (
      s.coordinator.ready &&
      s.assignment.owners.every((o) => o !== null) &&
      s.members.every((m) => m.readyPartitions === m.partitions)
    )
      break
    await new Promise((r) => setTimeout(r, 100))
  }
  await admin.close()
  const client = await ShoalClient.connect({ coordinator, transport })
  err(`demo: sending ${N.toLocaleString('en')} events over ${keys.toLocaleString('en')} keys`)
  const t0 = performance.now()
  for (let i = 0; i < N; i++) {
    if (!client.send(`user-${i % keys}`, { value: i % 10, ts: i })) await client.drain()
  }
  await client.flush()
  const secs = (performance.now() - t0) / 1000
  err(
    `demo: ${N.toLocaleString('en')} events acknowledged in ${secs.toFixed(2)} s: ${Math.round(N / secs).toLocaleString('en')} events/s end to end`,
  )
  for (const k of ['user-0', 'user-1', 'user-4242'])
    err(`demo: state of ${k}: ${JSON.stringify(await client.getState(k))}`)
  await client.close()
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  const load = <R extends 'coordinator' | 'worker' | 'up' | 'client'>(role: R) =>
    loadConfig(role, { argv: rest, env: process.env, cwd: process.cwd() })
  try {
    switch (command) {
      case 'coordinator': {
        const cfg = load('coordinator')
        if (cfg.help) return help('coordinator')
        await runCoordinator(cfg)
        return -1
      }
      case 'worker': {
        const cfg = load('worker')
        if (cfg.help) return help('worker')
        await runWorker(cfg)
        return -1
      }
      case 'up': {
        const cfg = load('up')
        if (cfg.help) return help('up')
        await runUp(cfg)
        return -1
      }
      case 'status':
      case 'savepoint':
      case 'send':
      case 'state': {
        const cfg = load('client')
        if (cfg.help) return help('client')
        if (command === 'status') return await runStatus(cfg)
        if (command === 'savepoint') return await runSavepoint(cfg)
        if (command === 'send') return await runSend(cfg)
        return await runState(cfg)
      }
      case 'probe':
        return await runProbe(rest)
      case 'version':
      case '--version':
        out(VERSION)
        return 0
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        out(USAGE)
        return command === undefined ? 1 : 0
      default:
        err(`shoal: unknown command ${JSON.stringify(command)}\n\n${USAGE}`)
        return 1
    }
  } catch (e) {
    if (e instanceof ConfigError) {
      err(`shoal ${command}: ${e.code}: ${e.message}`)
      return 2
    }
    if (e instanceof ShoalError) {
      err(`shoal ${command}: ${e.code}: ${e.message}`)
      return 1
    }
    throw e
  }
}

function help(role: 'coordinator' | 'worker' | 'up' | 'client'): number {
  out(`flags (each also as its SHOAL_* environment variable):\n${formatFlagHelp(role).join('\n')}`)
  return 0
}

function isMain(): boolean {
  const entry = process.argv[1]
  if (entry === undefined) return false
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url))
  } catch {
    return false
  }
}

if (isMain()) {
  main(process.argv.slice(2)).then(
    (code) => {
      // -1: a long-running node; it exits from its signal handlers.
      if (code >= 0) process.exitCode = code
    },
    (e: unknown) => {
      err(`shoal: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`)
      process.exitCode = 1
    },
  )
}
