/**
 * RedisStreamSink: emitted records XADDed to a Redis Stream, effectively once.
 *
 * Entry fields: `data` = JSON `{"stream","key","partition","event"}`, `partition`, `index`, and
 * `offset` when the record has an identity (absent when the worker runs without a replay log).
 * With `maxlen`, every XADD trims with `MAXLEN ~ N`.
 *
 * Effectively once: per output stream a guard hash holds, per partition, `offset:index` of the
 * last record written. One Lua script per (chunk, partition) skips records at or below the
 * guard, XADDs the rest and moves the guard, atomically, so a replayed batch (or a write whose
 * reply was lost) adds nothing twice. Records without identity (offset null) are added without
 * a guard: at least once. The guard is `<stream>:shoal-emitted` when the stream name has a hash
 * tag, else `{<stream>}:shoal-emitted`: either way it hashes to the stream's Cluster slot, which
 * the script needs. A chunk's scripts go out in one pipeline (one round trip; one slot).
 *
 * Dead letters: stream `<stream>:dlq`, fields data, error, attempts, partition, index, offset
 * (when not null). Added at least once (a dead letter retried after a lost reply may repeat).
 *
 * Errors: connection loss, timeouts and LOADING / BUSY / TRYAGAIN / CLUSTERDOWN / MASTERDOWN /
 * READONLY / MISCONF replies are SINK_UNAVAILABLE (the runner retries); OOM, WRONGTYPE and other
 * refusals are SINK_REJECTED. open() fails with SINK_SCHEMA when the stream key (or the guard)
 * holds another type, and with SINK_REJECTED when Redis refuses the credentials or TLS.
 */
import type { Cluster, Redis } from 'ioredis'
import { ErrorCodes, ShoalError } from '../../errors.ts'
import { parseStateUrl } from '../../state/index.ts'
import {
  checkDatabase,
  closeRedisClient,
  createRedisClient,
  type RedisTarget,
  type StateTlsOptions,
} from '../../state/redis/redis-backend.ts'
import type { RetryDelay } from '../../util/backoff.ts'
import type { DeadLetterRecord, EmittedBatch, Sink } from '../sink.ts'
import type { RedisStreamSinkSpec } from '../spec.ts'

export interface RedisStreamSinkOptions {
  /** TLS settings for rediss:// (CA, client certificate, servername). */
  tls?: StateTlsOptions
  /** How long open() waits for a connection. @default 5000 */
  connectTimeoutMs?: number
  /** A command (or a chunk's pipeline) without a reply after this long is SINK_UNAVAILABLE. @default 5000 */
  commandTimeoutMs?: number
  /** Reconnect policy of the client. @default jittered 50 ms .. 2 s */
  retryDelay?: RetryDelay
  /** Sentinel: credentials of the sentinels themselves. */
  sentinelUsername?: string
  sentinelPassword?: string
  /** @default `redis:<stream>` */
  name?: string
}

/**
 * xadd-guarded-2
 * KEYS[1] the output stream; KEYS[2] the guard hash (same slot)
 * ARGV[1] partition; ARGV[2] MAXLEN for `~` trimming ('' = none); ARGV[3] N, the record count
 * then per record: offset ('' = no identity: no guard), index, data
 * returns {written, skipped} when done, {written, skipped, error} when an XADD failed (the
 * guard covers exactly the records written before it)
 */
export const XADD_GUARDED_LUA = `
local guard = redis.call('HGET', KEYS[2], ARGV[1])
local go, gi = -1, -1
if guard then
  local a, b = string.match(guard, '^(%d+):(%d+)$')
  if not a then return redis.error_reply('ERR shoal guard ' .. KEYS[2] .. ' holds ' .. guard) end
  go, gi = tonumber(a), tonumber(b)
end
local written, skipped, last = 0, 0, nil
local n = tonumber(ARGV[3])
for r = 0, n - 1 do
  local o, i, d = ARGV[4 + 3 * r], ARGV[5 + 3 * r], ARGV[6 + 3 * r]
  local skip = false
  if o ~= '' then
    local on, ix = tonumber(o), tonumber(i)
    skip = on < go or (on == go and ix <= gi)
  end
  if skip then
    skipped = skipped + 1
  else
    local args = {'XADD', KEYS[1]}
    if ARGV[2] ~= '' then
      args[#args + 1] = 'MAXLEN'; args[#args + 1] = '~'; args[#args + 1] = ARGV[2]
    end
    args[#args + 1] = '*'
    args[#args + 1] = 'data'; args[#args + 1] = d
    args[#args + 1] = 'partition'; args[#args + 1] = ARGV[1]
    if o ~= '' then args[#args + 1] = 'offset'; args[#args + 1] = o end
    args[#args + 1] = 'index'; args[#args + 1] = i
    local res = redis.pcall(unpack(args))
    if type(res) == 'table' and res.err then
      if last then redis.call('HSET', KEYS[2], ARGV[1], last) end
      return {written, skipped, res.err}
    end
    written = written + 1
    if o ~= '' then last = o .. ':' .. i end
  end
end
if last then redis.call('HSET', KEYS[2], ARGV[1], last) end
return {written, skipped}
`

interface GuardedCommands {
  shoalXaddGuarded(
    stream: string,
    guard: string,
    ...args: string[]
  ): Promise<[number, number] | [number, number, string]>
}

type Client = Redis | Cluster

/** The hash tag Redis Cluster hashes for `key`: the content of the first non-empty `{...}`, else the key. */
export function hashTag(key: string): string {
  const open = key.indexOf('{')
  if (open >= 0) {
    const close = key.indexOf('}', open + 1)
    if (close > open + 1) return key.slice(open + 1, close)
  }
  return key
}

/**
 * The guard hash of an output stream, in the stream's slot: `<stream>:shoal-emitted` when the
 * name has a hash tag, else `{<stream>}:shoal-emitted`. Undefined when no key can share the
 * slot this way (a name with `}` but no tag): such a stream is refused on a cluster.
 */
export function guardKey(stream: string): string | undefined {
  const suffixed = `${stream}:shoal-emitted`
  if (hashTag(stream) !== stream) return suffixed
  if (stream.includes('}')) return undefined
  return `{${stream}}:shoal-emitted`
}

const UNAVAILABLE_REPLIES = new Set([
  'LOADING',
  'BUSY',
  'TRYAGAIN',
  'CLUSTERDOWN',
  'MASTERDOWN',
  'READONLY',
  'NOREPLICAS',
  'MISCONF',
])
const AUTH_FAILURE = /^(WRONGPASS|NOAUTH)|invalid (username|password)/
const TLS_FAILURE = /CERT|SELF_SIGNED|ERR_TLS|ERR_SSL|UNABLE_TO_VERIFY/

function isReplyError(err: unknown): err is Error {
  return err instanceof Error && err.name === 'ReplyError'
}

/** A reply error (also one a script returned as text) or a connection failure, as a sink error. */
export function toSinkError(err: unknown, what: string): ShoalError {
  if (err instanceof ShoalError) return err
  const message = err instanceof Error ? err.message : String(err)
  const reply = isReplyError(err) || typeof err === 'string' ? (message.split(' ', 1)[0] ?? '') : undefined
  if (reply === undefined || UNAVAILABLE_REPLIES.has(reply)) {
    return new ShoalError(ErrorCodes.SINK_UNAVAILABLE, `redis ${what} failed: ${message}`, {
      cause: err,
      retryable: true,
      ...(reply === undefined ? {} : { data: { reply } }),
    })
  }
  return new ShoalError(ErrorCodes.SINK_REJECTED, `redis refused ${what}: ${message}`, {
    cause: err,
    data: { reply },
  })
}

function encode(stream: string, key: string, partition: number, event: unknown): string {
  try {
    return JSON.stringify({ stream, key, partition, event })
  } catch (err) {
    throw new ShoalError(
      ErrorCodes.SINK_REJECTED,
      `record of stream ${JSON.stringify(stream)} cannot be written as JSON: ${err instanceof Error ? err.message : String(err)}`,
      { cause: err },
    )
  }
}

export class RedisStreamSink implements Sink {
  readonly name: string
  readonly accepts = { events: true, state: false } as const
  readonly stream: string
  /** The guard hash (see guardKey); for a standalone server any name would do. */
  readonly guard: string
  readonly dlq: string
  readonly #spec: RedisStreamSinkSpec
  readonly #target: RedisTarget
  readonly #options: RedisStreamSinkOptions
  readonly #connectTimeoutMs: number
  readonly #commandTimeoutMs: number
  #client: Client | undefined
  #lastError: Error | undefined

  constructor(spec: RedisStreamSinkSpec, options: RedisStreamSinkOptions = {}) {
    if (spec.stream === '')
      throw new ShoalError(ErrorCodes.INVALID_OPTION, 'redis sink: stream must not be empty')
    const parsed = parseStateUrl(spec.redis)
    if (parsed.kind !== 'redis') {
      throw new ShoalError(ErrorCodes.INVALID_OPTION, `redis sink: ${spec.redis} is not a Redis URL`)
    }
    this.#spec = spec
    this.#target = parsed.target
    this.#options = options
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 5000
    this.#commandTimeoutMs = options.commandTimeoutMs ?? 5000
    this.stream = spec.stream
    this.guard = guardKey(spec.stream) ?? `${spec.stream}:shoal-emitted`
    this.dlq = `${spec.stream}:dlq`
    this.name = options.name ?? `redis:${spec.stream}`
  }

  /** The ioredis client while open (for tests and diagnostics). */
  get client(): Client | undefined {
    return this.#client
  }

  async open(): Promise<void> {
    if (this.#target.mode === 'cluster' && guardKey(this.stream) === undefined) {
      throw new ShoalError(
        ErrorCodes.SINK_SCHEMA,
        `redis sink: stream name ${JSON.stringify(this.stream)} has a '}' but no {hash tag}, so no guard key can share its cluster slot; rename it or add a tag such as {${this.stream.replace(/[{}]/g, '')}}`,
        { data: { stream: this.stream } },
      )
    }
    const client = this.#client ?? (await this.#connect())
    const [streamType, guardType] = await this.#timed(
      'TYPE',
      Promise.all([client.type(this.stream), client.type(this.guard)]),
    )
    if (streamType !== 'none' && streamType !== 'stream') {
      throw new ShoalError(
        ErrorCodes.SINK_SCHEMA,
        `redis sink: key ${JSON.stringify(this.stream)} holds a ${streamType}, not a stream; name another stream or delete the key`,
        { data: { stream: this.stream, type: streamType } },
      )
    }
    if (guardType !== 'none' && guardType !== 'hash') {
      throw new ShoalError(
        ErrorCodes.SINK_SCHEMA,
        `redis sink: key ${JSON.stringify(this.guard)} (the guard of stream ${JSON.stringify(this.stream)}) holds a ${guardType}, not a hash`,
        { data: { stream: this.stream, guard: this.guard, type: guardType } },
      )
    }
  }

  async #connect(): Promise<Client> {
    const client = createRedisClient({
      target: this.#target,
      connectTimeoutMs: this.#connectTimeoutMs,
      commandTimeoutMs: this.#commandTimeoutMs,
      ...(this.#options.tls === undefined ? {} : { tls: this.#options.tls }),
      ...(this.#options.retryDelay === undefined ? {} : { retryDelay: this.#options.retryDelay }),
      ...(this.#options.sentinelUsername === undefined
        ? {}
        : { sentinelUsername: this.#options.sentinelUsername }),
      ...(this.#options.sentinelPassword === undefined
        ? {}
        : { sentinelPassword: this.#options.sentinelPassword }),
    })
    client.defineCommand('shoalXaddGuarded', { numberOfKeys: 2, lua: XADD_GUARDED_LUA })
    // Failures reach callers through rejected writes; keep the last for messages (and so ioredis
    // never prints "Unhandled error event").
    const keep = (err: Error): void => {
      this.#lastError = err
    }
    client.on('error', keep)
    if ('nodes' in client) client.on('node error', keep)
    try {
      await new Promise<void>((resolve, reject) => {
        const done = (err?: ShoalError): void => {
          clearTimeout(timer)
          client.off('ready', onReady)
          client.off('error', onError)
          client.off('node error', onError)
          if (err === undefined) resolve()
          else reject(err)
        }
        const onReady = (): void => done()
        const onError = (err: Error): void => {
          const code = (err as NodeJS.ErrnoException).code
          if (AUTH_FAILURE.test(err.message) || (typeof code === 'string' && TLS_FAILURE.test(code))) {
            done(
              new ShoalError(
                ErrorCodes.SINK_REJECTED,
                `redis sink: ${this.#target.display} refused the connection: ${err.message}`,
                { cause: err },
              ),
            )
          }
        }
        const timer = setTimeout(() => {
          const last = this.#lastError === undefined ? '' : ` (last error: ${this.#lastError.message})`
          done(
            new ShoalError(
              ErrorCodes.SINK_UNAVAILABLE,
              `redis sink: cannot reach ${this.#target.display} within ${this.#connectTimeoutMs} ms${last}`,
              { retryable: true, cause: this.#lastError },
            ),
          )
        }, this.#connectTimeoutMs)
        client.on('ready', onReady)
        client.on('error', onError)
        client.on('node error', onError)
        client.connect().catch(() => {})
      })
      await checkDatabase(client, this.#target).catch((err: unknown) => {
        throw new ShoalError(ErrorCodes.SINK_SCHEMA, `redis sink: ${(err as Error).message}`)
      })
    } catch (err) {
      client.disconnect()
      throw err
    }
    this.#client = client
    return client
  }

  #ready(): Client {
    if (this.#client === undefined) {
      throw new ShoalError(ErrorCodes.SINK_UNAVAILABLE, `redis sink ${this.name} is not open`, {
        retryable: true,
      })
    }
    return this.#client
  }

  /**
   * Bound a reply's wait: a cluster pipeline waits for readiness without the per-command
   * timeout. A write abandoned here may still land; its retry is deduplicated by the guard.
   */
  async #timed<T>(what: string, p: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new ShoalError(
              ErrorCodes.SINK_UNAVAILABLE,
              `redis ${what}: no reply within ${this.#commandTimeoutMs} ms`,
              { retryable: true },
            ),
          ),
        this.#commandTimeoutMs,
      )
    })
    try {
      return await Promise.race([p, timeout])
    } catch (err) {
      throw toSinkError(err, what)
    } finally {
      clearTimeout(timer)
    }
  }

  async writeEvents(batches: readonly EmittedBatch[]): Promise<void> {
    const client = this.#ready()
    // Per partition, in order: offset, index, data triples.
    const parts = new Map<number, string[]>()
    for (const b of batches) {
      let args = parts.get(b.partition)
      if (args === undefined) parts.set(b.partition, (args = []))
      const offset = b.offset === null ? '' : String(b.offset)
      b.records.forEach(([stream, key, event], i) => {
        args.push(offset, String(b.firstIndex + i), encode(stream, key, b.partition, event))
      })
    }
    if (parts.size === 0) return
    const maxlen = this.#spec.maxlen === null ? '' : String(this.#spec.maxlen)
    const pipeline = client.pipeline() as unknown as GuardedCommands & { exec(): ReturnType<Redis['exec']> }
    for (const [partition, args] of parts) {
      void pipeline.shoalXaddGuarded(
        this.stream,
        this.guard,
        String(partition),
        maxlen,
        String(args.length / 3),
        ...args,
      )
    }
    const results = await this.#timed('XADD (guarded)', pipeline.exec())
    if (results === null) throw toSinkError(new Error('pipeline aborted'), 'XADD (guarded)')
    // The first failure decides; partitions that did succeed are skipped by their guards on retry.
    for (const [err, reply] of results) {
      if (err) throw toSinkError(err, 'XADD (guarded)')
      const r = reply as [number, number] | [number, number, string]
      if (r[2] !== undefined) throw toSinkError(r[2], `XADD to ${this.stream}`)
    }
  }

  async deadLetter(records: readonly DeadLetterRecord[]): Promise<void> {
    if (records.length === 0) return
    const client = this.#ready()
    const pipeline = client.pipeline()
    for (const r of records) {
      const [stream, key, event] = r.record
      let data: string
      try {
        data = JSON.stringify({ stream, key, partition: r.partition, event })
      } catch {
        // The dead letter must take what the stream could not: keep a description instead.
        data = JSON.stringify({ stream, key, partition: r.partition, event: String(event) })
      }
      const fields = ['data', data, 'error', r.error, 'attempts', String(r.attempts)]
      fields.push('partition', String(r.partition), 'index', String(r.index))
      if (r.offset !== null) fields.push('offset', String(r.offset))
      pipeline.xadd(this.dlq, '*', ...fields)
    }
    const results = await this.#timed(`XADD ${this.dlq}`, pipeline.exec())
    if (results === null) throw toSinkError(new Error('pipeline aborted'), `XADD ${this.dlq}`)
    for (const [err] of results) if (err) throw toSinkError(err, `XADD ${this.dlq}`)
  }

  async close(): Promise<void> {
    const client = this.#client
    this.#client = undefined
    if (client !== undefined) await closeRedisClient(client)
  }
}
