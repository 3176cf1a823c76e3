/**
 * Sources and sinks from their parsed URLs (spec.ts). Each connector's module is loaded only
 * when one is configured, so a worker without a Redis Stream or Postgres connector never loads
 * ioredis or `pg` (15-18 MiB of a node's RSS each, measured).
 */
import { NdjsonFileSink } from './file/sink.ts'
import type { Sink } from './sink.ts'
import type { Source } from './source.ts'
import type { SinkSpec, SourceSpec } from './spec.ts'

export async function createSource(spec: SourceSpec, options: { consumer: string }): Promise<Source> {
  switch (spec.kind) {
    case 'redis-stream': {
      const { RedisStreamSource } = await import('./redis-stream/source.ts')
      return new RedisStreamSource({ spec, consumer: options.consumer })
    }
  }
}

export async function createSink(spec: SinkSpec): Promise<Sink> {
  switch (spec.kind) {
    case 'redis-stream': {
      const { RedisStreamSink } = await import('./redis-stream/sink.ts')
      return new RedisStreamSink(spec)
    }
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
