/** A complete worker: control plane (Worker), data plane (DataPlane) and processing (Engine). */
import type { Logger } from 'pino'
import { Engine } from '../processing/engine.ts'
import type { ListenAddress, Transport } from '../transport/transport.ts'
import type { Sink } from '../connectors/sink.ts'
import type { SinkRunnerOptions } from '../connectors/runner.ts'
import type { PartitionStore } from '../state/checkpoint/partition-store.ts'
import { ErrorCodes, ShoalError } from '../errors.ts'
import { DataPlane, type DataPlaneOptions } from './data-plane.ts'
import { OutputHub } from './outputs.ts'
import { Worker } from './worker.ts'
import { ShoalClient } from '../client/client.ts'
import { createPartitioner } from '../protocol/partition.ts'
import { SourcePump } from '../connectors/pump.ts'
import type { Source } from '../connectors/source.ts'

export interface WorkerNodeOptions {
  transport: Transport
  coordinator: string
  /** Coordinator replicas (HA); the worker follows whichever leads. Includes `coordinator`. */
  coordinators?: readonly string[]
  listen: ListenAddress
  advertise?: string | undefined
  httpAddress?: string | null
  memberId: string
  version: string
  /** Job module path or built-in name. @default 'count' */
  job?: string
  /** Processing threads (also the worker's capacity in the assignment). */
  threads: number
  /** Tasks queued per processing thread before batches are refused. @default 1024 */
  maxQueuePerThread?: number
  heartbeatIntervalMs?: number
  heartbeatMisses?: number
  logger: Logger
  dataPlane?: Partial<
    Pick<
      DataPlaneOptions,
      'maxInFlightBatches' | 'maxInFlightBytes' | 'onDeadLetter' | 'onEmitted' | 'tickIntervalMs'
    >
  >
  /**
   * Where emitted events (and, for state sinks, committed state) go besides live subscribers.
   * State sinks need durable state with the replay log (`store`, durability 'log').
   */
  sinks?: readonly Sink[]
  /** Buffering, retries and dead letters of every sink. */
  sinkRunner?: SinkRunnerOptions
  /** Durable keyed state: replay log and checkpoints (see DataPlaneOptions.store). */
  store?: PartitionStore
  durability?: 'log' | 'none'
  /**
   * Sources this worker reads (each as reader `memberId`); their records are routed to the
   * partitions' owners through a client on `clientTransport` (a transport with role 'client').
   */
  sources?: Source[]
  clientTransport?: Transport
  /** Source reading: records in flight per source before reading waits. @default max(20000, 2 x its read count) */
  sourceMaxInFlight?: number
  hooks?: { tick?(): void; heartbeatSent?(): void; heartbeatMissed?(): void }
}

export interface WorkerNode {
  worker: Worker
  engine: Engine
  dataPlane: DataPlane
  outputs: OutputHub
  /** Running source pumps (after start()). */
  readonly pumps: readonly SourcePump[]
  start(): Promise<void>
  /** Graceful: drain partitions, leave, close everything. */
  drain(timeoutMs: number): Promise<void>
  /** Abrupt: close links and threads without handing partitions back. */
  stop(): Promise<void>
}

export function createWorkerNode(o: WorkerNodeOptions): WorkerNode {
  const engine = new Engine({
    job: o.job ?? 'count',
    threads: o.threads,
    ...(o.maxQueuePerThread === undefined ? {} : { maxQueuePerThread: o.maxQueuePerThread }),
  })
  const outputs = new OutputHub({
    ...(o.sinks === undefined ? {} : { sinks: o.sinks }),
    logger: o.logger,
    memberId: o.memberId,
    ...(o.sinkRunner === undefined ? {} : { runner: o.sinkRunner }),
  })
  if (outputs.wantsState && (o.store === undefined || o.durability === 'none')) {
    throw new ShoalError(
      ErrorCodes.INVALID_OPTION,
      'a state sink (postgres mode=state) writes committed checkpoints behind: it needs durable state ' +
        '(--state file:DIR or redis://...) with --durability log',
    )
  }
  const userOnEmitted = o.dataPlane?.onEmitted
  const dataPlane = new DataPlane({
    engine,
    logger: o.logger,
    ...o.dataPlane,
    ...(o.store === undefined ? {} : { store: o.store, durability: o.durability ?? 'log' }),
    ...(outputs.runners.length === 0 ? {} : { outputs }),
    onEmitted(partition, offset, emitted) {
      userOnEmitted?.(partition, offset, emitted)
      outputs.deliver(partition, offset, emitted)
    },
    onControl(conn, env) {
      if (env.kind === 'control' && env.body.op === 'subscribe') return outputs.subscribe(conn, env)
      throw new ShoalError(
        ErrorCodes.BAD_MESSAGE,
        `a worker's data port does not take control ${env.kind === 'control' ? env.body.op : ''}`,
      )
    },
  })
  const worker = new Worker({
    transport: o.transport,
    coordinator: o.coordinator,
    ...(o.coordinators === undefined ? {} : { coordinators: o.coordinators }),
    listen: o.listen,
    advertise: o.advertise,
    httpAddress: o.httpAddress ?? null,
    memberId: o.memberId,
    capacity: o.threads,
    version: o.version,
    heartbeatIntervalMs: o.heartbeatIntervalMs,
    heartbeatMisses: o.heartbeatMisses,
    logger: o.logger,
    host: dataPlane,
    hooks: o.hooks,
    onDataConnection: (conn) => void dataPlane.serve(conn),
  })
  dataPlane.bind(worker)
  const pumps: SourcePump[] = []
  let sourceClient: ShoalClient | null = null
  let liveTimer: NodeJS.Timeout | null = null
  const startSources = async (): Promise<void> => {
    const sources = o.sources ?? []
    if (sources.length === 0) return
    if (o.clientTransport === undefined) {
      throw new ShoalError(ErrorCodes.INVALID_OPTION, 'sources need a clientTransport to route records')
    }
    const client = await ShoalClient.connect({
      // Every replica: the sources' client follows the leader like the worker does.
      coordinator: [...new Set([o.coordinator, ...(o.coordinators ?? [])])].join(','),
      transport: o.clientTransport,
      producerId: `src:${o.memberId}`,
      // Never give up on a batch: the next one of its producer would make it look applied.
      deliveryTimeoutMs: Infinity,
    })
    sourceClient = client
    const partitionOf = createPartitioner(client.partitions)
    const live = (): void => {
      const readers = Object.keys(client.routing.addresses)
      for (const p of pumps) p.source.setLiveReaders(readers)
    }
    for (const source of sources) {
      const pump = new SourcePump({
        source,
        target: client,
        partitionOf,
        logger: o.logger,
        ...(o.sourceMaxInFlight === undefined ? {} : { maxInFlightRecords: o.sourceMaxInFlight }),
      })
      await pump.start()
      pumps.push(pump)
    }
    live()
    liveTimer = setInterval(live, 500)
    liveTimer.unref()
  }
  const stopSources = async (timeoutMs: number): Promise<void> => {
    if (liveTimer !== null) clearInterval(liveTimer)
    await Promise.all(pumps.map((p) => p.close(timeoutMs).catch(() => {})))
    await sourceClient?.close().catch(() => {})
  }
  return {
    worker,
    engine,
    dataPlane,
    outputs,
    pumps,
    async start() {
      await outputs.start()
      await worker.start()
      await startSources()
    },
    async drain(timeoutMs) {
      // Stop reading first: what was read is applied and acknowledged before partitions leave.
      await stopSources(Math.min(timeoutMs, 5000))
      await worker.drain({ timeoutMs })
      dataPlane.close()
      await engine.close()
      await outputs.close()
    },
    async stop() {
      await stopSources(0)
      await worker.stop({ timeoutMs: 500 })
      dataPlane.close()
      await engine.close()
      await outputs.close()
    },
  }
}
