export * from './errors.ts'
export * from './protocol/messages.ts'
export { encodeFrame, encodeEnvelope, decodeEnvelope } from './protocol/codec.ts'
export { FrameParser } from './protocol/framing.ts'
export { partitionForKey, createPartitioner, DEFAULT_PARTITIONS } from './protocol/partition.ts'
export type { Transport, Connection, Listener, TransportOptions, TlsOptions } from './transport/transport.ts'
export { createTransport } from './transport/index.ts'
export {
  defineJob,
  type JobDefinition,
  type JobContext,
  type JobTimers,
  type Timer,
  type WatermarkOptions,
} from './processing/job.ts'
export { windows, type WindowSpec, type WindowRef } from './processing/windows.ts'
export { ShoalClient, type ShoalClientOptions } from './client/client.ts'
export { AdminClient } from './client/admin.ts'
export { Coordinator, type ClusterStatus, type CoordinatorOptions } from './coordinator/coordinator.ts'
export { createWorkerNode, type WorkerNode, type WorkerNodeOptions } from './worker/node.ts'
export { Subscriber, type EmittedEvent, type SubscriberOptions } from './client/subscriber.ts'
export type { Sink, EmittedRecord, EmittedBatch, StateBatch, DeadLetterRecord } from './connectors/sink.ts'
export type { Source, SourceRecord, SourceRead, SourceStatus } from './connectors/source.ts'
export type { SourceSpec, SinkSpec } from './connectors/spec.ts'
export { SinkRunner, type SinkRunnerOptions, type SinkStatus } from './connectors/runner.ts'
export { MemorySink } from './connectors/memory/sink.ts'
export { MemorySource, MemoryStream, type MemorySourceOptions } from './connectors/memory/source.ts'
export { NdjsonFileSink } from './connectors/file/sink.ts'
export { RedisStreamSink } from './connectors/redis-stream/sink.ts'
export { RedisStreamSource } from './connectors/redis-stream/source.ts'
export { SourcePump } from './connectors/pump.ts'
export { createStateBackend, type StateBackendOptions } from './state/index.ts'
export type { StateBackend } from './state/backend.ts'
