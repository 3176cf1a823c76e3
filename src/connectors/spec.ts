/**
 * Parsed `--source` and `--sink` URLs (ARCHITECTURE.md, "Connecting to real systems"). The
 * parser (url.ts) turns a URL into one of these, rejecting unknown query parameters and bad
 * values with CONFIG_INVALID naming the flag; connectors take the spec, never the raw URL.
 */

/** Redis Streams consumer group as a source. */
export interface RedisStreamSourceSpec {
  readonly kind: 'redis-stream'
  /**
   * The Redis connection URL without Shoal's query parameters, in any form `--state` takes:
   * redis://, rediss://, redis+sentinel://, redis+cluster:// (user and password included).
   */
  readonly redis: string
  readonly stream: string
  readonly group: string
  /** The event field holding the key. @default 'key' */
  readonly keyField: string
  /** The entry field holding the event. @default 'data' */
  readonly dataField: string
  /** @default 'json' */
  readonly format: 'json' | 'msgpack'
  /** Where a group created by Shoal starts. @default 'earliest' */
  readonly start: 'earliest' | 'latest'
  /** Dead-letter stream. @default `${stream}:dlq` */
  readonly dlq: string
  /** Entries per XREADGROUP. @default 10000 */
  readonly count: number
}

/** Emitted records XADDed to a Redis Stream, effectively once. */
export interface RedisStreamSinkSpec {
  readonly kind: 'redis-stream'
  readonly redis: string
  readonly stream: string
  /** Approximate MAXLEN (`~`) for XADD; null: no trimming. */
  readonly maxlen: number | null
}

/** A Postgres table: committed state written behind checkpoints, or emitted records as rows. */
export interface PostgresSinkSpec {
  readonly kind: 'postgres'
  /** The connection URL without Shoal's query parameters (table, mode). */
  readonly url: string
  readonly table: string
  /** @default 'state' */
  readonly mode: 'state' | 'events'
}

/** Emitted records appended as NDJSON lines to a file (`file:PATH` or `ndjson:PATH`). */
export interface FileSinkSpec {
  readonly kind: 'file'
  readonly path: string
}

export type SourceSpec = RedisStreamSourceSpec
export type SinkSpec = RedisStreamSinkSpec | PostgresSinkSpec | FileSinkSpec
