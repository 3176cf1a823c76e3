/**
 * Postgres sinks: `mode=state` (committed keyed state, written behind checkpoints) and
 * `mode=events` (emitted records as rows, exactly once per identity). See state-sink.ts and
 * events-sink.ts for the tables and guarantees, docs/connectors.md for the user's view.
 */
import type { PostgresSinkSpec } from '../spec.ts'
import type { PostgresSinkOptions } from './client.ts'
import { PostgresEventsSink } from './events-sink.ts'
import { PostgresStateSink } from './state-sink.ts'

export { DEFAULT_POSTGRES_SINK_OPTIONS, type PostgresSinkOptions } from './client.ts'
export { classify as classifyPostgresError, toSinkError as toPostgresSinkError } from './errors.ts'
export { PostgresEventsSink } from './events-sink.ts'
export { toJsonText } from './json.ts'
export { PostgresStateSink, type PostgresSinkTarget } from './state-sink.ts'

/** The sink a parsed `--sink postgres://...` URL names. */
export function createPostgresSink(
  spec: PostgresSinkSpec,
  options?: PostgresSinkOptions,
): PostgresStateSink | PostgresEventsSink {
  return spec.mode === 'events' ? new PostgresEventsSink(spec, options) : new PostgresStateSink(spec, options)
}
