/**
 * Sources and sinks from their parsed URLs (spec.ts). Postgres is loaded only when a Postgres
 * sink is configured, so a cluster without one never loads `pg`.
 */
import { NdjsonFileSink } from './file/sink.ts'
import { RedisStreamSink } from './redis-stream/sink.ts'
import { RedisStreamSource } from './redis-stream/source.ts'
import type { Sink } from './sink.ts'
import type { Source } from './source.ts'
import type { SinkSpec, SourceSpec } from './spec.ts'

export function createSource(spec: SourceSpec, options: { consumer: string }): Source {
  switch (spec.kind) {
    case 'redis-stream':
      return new RedisStreamSource({ spec, consumer: options.consumer })
  }
}

export async function createSink(spec: SinkSpec): Promise<Sink> {
  switch (spec.kind) {
    case 'redis-stream':
      return new RedisStreamSink(spec)
    case 'file':
      return new NdjsonFileSink(spec)
    case 'postgres': {
      if (spec.mode === 'state') {
        const { PostgresStateSink } = await import('./postgres/state-sink.ts')
        return new PostgresStateSink(spec)
      }
      const { PostgresEventsSink } = await import('./postgres/events-sink.ts')
      return new PostgresEventsSink(spec)
    }
  }
}
