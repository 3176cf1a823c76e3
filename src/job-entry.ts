/**
 * What `import ... from 'shoal'` gives a job module in a processing thread (job-hooks.ts): the
 * package's runtime exports under the same names. The job API (`defineJob`, `windows`), the
 * errors and the protocol helpers are the real ones. The nodes, clients, transports, connectors
 * and state backends, which a job has no use for inside `process`/`onTimer` (they are
 * synchronous and run batch by batch), are placeholders that throw a `SHOAL_ERR_JOB_INVALID`
 * error naming themselves when used. Why: loading the whole index (gRPC, ioredis, pg and the
 * node code) cost every processing thread ~17 MiB of RSS, measured (docs/benchmarks.md, "Worker
 * memory"). test/unit/job-entry.test.ts holds the names to the index's.
 */
import { ErrorCodes, ShoalError } from './errors.ts'

export * from './errors.ts'
export * from './protocol/messages.ts'
export { encodeFrame, encodeEnvelope, decodeEnvelope } from './protocol/codec.ts'
export { FrameParser } from './protocol/framing.ts'
export { partitionForKey, createPartitioner, DEFAULT_PARTITIONS } from './protocol/partition.ts'
export { defineJob } from './processing/job.ts'
export { windows } from './processing/windows.ts'

function notInJobs(name: string): ShoalError {
  return new ShoalError(
    ErrorCodes.JOB_INVALID,
    `${name} is not available to job code in a processing thread: a job's process and onTimer ` +
      `run synchronously, batch by batch; use ${name} from the program that runs the cluster`,
    { data: { export: name } },
  )
}

/** A placeholder for an export a job cannot use: calling, constructing or reading it throws. */
function placeholder(name: string): never {
  const target = { [name]: function () {} }[name]!
  return new Proxy(target, {
    apply() {
      throw notInJobs(name)
    },
    construct() {
      throw notInJobs(name)
    },
    get(t, prop, receiver) {
      // What inspection reads (a name in a stack or a log line) works; any API use throws.
      if (typeof prop === 'symbol' || prop === 'name' || prop === 'length' || prop === 'prototype')
        return Reflect.get(t, prop, receiver) as unknown
      throw notInJobs(`${name}.${prop}`)
    },
  }) as never
}

export const AdminClient = placeholder('AdminClient')
export const Coordinator = placeholder('Coordinator')
export const MemorySink = placeholder('MemorySink')
export const MemorySource = placeholder('MemorySource')
export const MemoryStream = placeholder('MemoryStream')
export const NdjsonFileSink = placeholder('NdjsonFileSink')
export const RedisStreamSink = placeholder('RedisStreamSink')
export const RedisStreamSource = placeholder('RedisStreamSource')
export const ShoalClient = placeholder('ShoalClient')
export const SinkRunner = placeholder('SinkRunner')
export const SourcePump = placeholder('SourcePump')
export const Subscriber = placeholder('Subscriber')
export const createStateBackend = placeholder('createStateBackend')
export const createTransport = placeholder('createTransport')
export const createWorkerNode = placeholder('createWorkerNode')
