/**
 * The job identity a worker announces when it joins (see Worker `setJoinIdentity`): the
 * coordinator refuses a worker whose job, sources or sinks differ from the cluster's.
 */
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { SinkSpec, SourceSpec } from '../connectors/spec.ts'
import { describeSpec } from '../connectors/url.ts'
import { BUILTIN_JOBS } from '../config/config.ts'
import type { JoinIdentity } from '../worker/worker.ts'

/**
 * A built-in job's name as is; a job file as `PATH sha256:<first 16 hex digits of the sha256
 * of its content>`, so two workers that run different code under one path differ. (Only the
 * entry file is hashed, not the modules it imports.)
 */
export function jobIdentity(job: string): string {
  if (BUILTIN_JOBS.includes(job)) return job
  const hash = createHash('sha256').update(readFileSync(job)).digest('hex').slice(0, 16)
  return `${job} sha256:${hash}`
}

/** What a worker with this configuration announces at join. */
export function joinIdentity(cfg: {
  readonly job: string
  readonly sources: readonly SourceSpec[]
  readonly sinks: readonly SinkSpec[]
}): JoinIdentity {
  return {
    jobId: jobIdentity(cfg.job),
    sources: cfg.sources.map(describeSpec),
    sinks: cfg.sinks.map(describeSpec),
  }
}
