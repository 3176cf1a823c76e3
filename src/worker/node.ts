/** A complete worker: control plane (Worker), data plane (DataPlane) and processing (Engine). */
import type { Logger } from 'pino'
import { Engine } from '../processing/engine.ts'
import type { ListenAddress, Transport } from '../transport/transport.ts'
import type { Sink } from '../processing/sinks.ts'
import type { PartitionStore } from '../state/checkpoint/partition-store.ts'
import { ErrorCodes, ShoalError } from '../errors.ts'
import { DataPlane, type DataPlaneOptions } from './data-plane.ts'
import { OutputHub } from './outputs.ts'
import { Worker } from './worker.ts'

export interface WorkerNodeOptions {
  transport: Transport
  coordinator: string
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
  dataPlane?: Partial<Pick<DataPlaneOptions, 'maxInFlightBatches' | 'onDeadLetter' | 'onEmitted'>>
  /** Where emitted events go besides live subscribers. */
  sinks?: Sink[]
  /** Durable keyed state: replay log and checkpoints (see DataPlaneOptions.store). */
  store?: PartitionStore
  durability?: 'log' | 'none'
  hooks?: { tick?(): void; heartbeatSent?(): void; heartbeatMissed?(): void }
}

export interface WorkerNode {
  worker: Worker
  engine: Engine
  dataPlane: DataPlane
  outputs: OutputHub
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
  const outputs = new OutputHub({ sinks: o.sinks, logger: o.logger, memberId: o.memberId })
  const userOnEmitted = o.dataPlane?.onEmitted
  const dataPlane = new DataPlane({
    engine,
    logger: o.logger,
    ...o.dataPlane,
    ...(o.store === undefined ? {} : { store: o.store, durability: o.durability ?? 'log' }),
    onEmitted(partition, emitted) {
      userOnEmitted?.(partition, emitted)
      outputs.deliver(partition, emitted)
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
  return {
    worker,
    engine,
    dataPlane,
    outputs,
    start: () => worker.start(),
    async drain(timeoutMs) {
      await worker.drain({ timeoutMs })
      await engine.close()
      await outputs.close()
    },
    async stop() {
      await worker.stop({ timeoutMs: 500 })
      await engine.close()
      await outputs.close()
    },
  }
}
