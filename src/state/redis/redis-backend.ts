/**
 * State in Redis (ioredis): standalone, Sentinel or Cluster.
 *
 * Key layout, for backend prefix `P` (see docs/state.md):
 *
 * ```
 * P:<key>                 a global key
 * {P:p<N>}:<name>         key `{p<N>}:<name>` of partition N (hash tag `{P:p<N>}`)
 * {P:p<N>}#epoch          partition N's fencing epoch (never returned by scan)
 * ```
 *
 * All keys of a partition share the hash tag, hence one Cluster slot, so a partition's batch is
 * one MULTI/EXEC and a fenced write one Lua script, atomic on a cluster too. Other Redis-based
 * modules (replay logs, checkpoints) put their keys under the same tag ({@link redisPartitionTag})
 * to join those atomic steps.
 *
 * Outages never buffer and never read as empty: the offline queue is off, in-flight commands are
 * rejected when the connection drops (not silently re-sent, which could apply an INCRBY twice),
 * every command has a timeout, and all of these surface as STATE_UNAVAILABLE (retryable).
 * ioredis reconnects in the background with a jittered backoff; health() is false until it has.
 * This backend issues no blocking commands; {@link RedisBackend.duplicateClient} gives callers
 * that need them (XREAD BLOCK) their own connection.
 */
import type { ConnectionOptions } from 'node:tls'
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis'
import { ErrorCodes, ShoalError } from '../../errors.ts'
import { exponentialBackoff, type RetryDelay } from '../../util/backoff.ts'
import {
  StateError,
  StateUnavailableError,
  FencedError,
  badKey,
  closedError,
  normalizeBatch,
  parseKey,
  scanScope,
  validateEpoch,
  validateIncrement,
  validatePartition,
  validatePrefix,
  validateScanCount,
  validateTtl,
  validateValue,
  wrongType,
  type NormalizedBatch,
  type PutOptions,
  type ScanOptions,
  type StateBackend,
  type WriteBatch,
} from '../backend.ts'

export interface RedisHost {
  host: string
  port: number
}

/** Where and how to connect; built from a URL by parseStateUrl (src/state/index.ts). */
export interface RedisTarget {
  mode: 'standalone' | 'sentinel' | 'cluster'
  /** rediss:// forms: TLS to every node (and to sentinels). */
  tls: boolean
  /** The server (standalone), the sentinels, or the cluster's seed nodes. */
  hosts: RedisHost[]
  username?: string | undefined
  password?: string | undefined
  /** Database index (standalone and Sentinel only). */
  db?: number | undefined
  /** Sentinel: the monitored master's name. */
  masterName?: string | undefined
  /** The URL with its password redacted, for messages. */
  display: string
}

/** TLS settings for rediss:// (passed to tls.connect). */
export interface StateTlsOptions {
  /** CA certificate(s) to trust instead of the system store (PEM). */
  ca?: string | Buffer | (string | Buffer)[]
  /** Client certificate and key, for servers that require mutual TLS (PEM). */
  cert?: string | Buffer
  key?: string | Buffer
  /** Name to verify the server certificate against, when it differs from the host. */
  servername?: string
  /** @default true */
  rejectUnauthorized?: boolean
}

export interface RedisBackendOptions {
  target: RedisTarget
  /** Key prefix (cluster/job). @default 'shoal' */
  prefix?: string
  tls?: StateTlsOptions
  /** How long open() waits for the first connection before failing. @default 5000 */
  connectTimeoutMs?: number
  /** A command without a reply after this long fails with STATE_UNAVAILABLE. @default 5000 */
  commandTimeoutMs?: number
  /** Reconnect policy: attempt -> delay ms (null stops). @default jittered 50 ms .. 2 s */
  retryDelay?: RetryDelay
  /** Sentinel: credentials for the sentinels themselves (URL credentials are the master's). */
  sentinelUsername?: string
  sentinelPassword?: string
}

type Client = Redis | Cluster

// --- key layout ---------------------------------------------------------------------------------

/** The hash tag shared by every Redis key of a partition: `{<prefix>:p<N>}`. */
export function redisPartitionTag(prefix: string, partition: number): string {
  return `{${prefix}:p${validatePartition(partition)}}`
}

/** The Redis key of a backend key. */
export function toRedisKey(prefix: string, key: string): string {
  const { partition, name } = parseKey(key)
  return partition === undefined ? `${prefix}:${name}` : `${redisPartitionTag(prefix, partition)}:${name}`
}

/** The backend key of a Redis key, or undefined if it is not one of this prefix's data keys. */
export function fromRedisKey(prefix: string, redisKey: string): string | undefined {
  const tagStart = `{${prefix}:p`
  if (redisKey.startsWith(tagStart)) {
    const close = redisKey.indexOf('}', tagStart.length)
    if (close < 0 || redisKey[close + 1] !== ':') return undefined
    const digits = redisKey.slice(tagStart.length, close)
    if (!/^(0|[1-9][0-9]*)$/.test(digits)) return undefined
    return `{p${digits}}:${redisKey.slice(close + 2)}`
  }
  if (redisKey.startsWith(`${prefix}:`)) {
    const key = redisKey.slice(prefix.length + 1)
    // `P:{p1}:x` would read back as a partition key: not a key this backend writes.
    if (key === '' || parseKeySafe(key)?.partition !== undefined) return undefined
    return key
  }
  return undefined
}

/** The Redis key of a partition's fencing epoch. */
export function redisEpochKey(prefix: string, partition: number): string {
  return `${redisPartitionTag(prefix, partition)}#epoch`
}

function parseKeySafe(key: string): ReturnType<typeof parseKey> | undefined {
  try {
    return parseKey(key)
  } catch {
    return undefined
  }
}

function globEscape(s: string): string {
  return s.replace(/[*?[\]\\]/g, '\\$&')
}

/** SCAN MATCH patterns covering every Redis key whose backend key starts with `prefix`. */
export function scanPatterns(keyPrefix: string, prefix: string): string[] {
  const scope = scanScope(prefix)
  if (scope.partition !== undefined) return [`${globEscape(toRedisKey(keyPrefix, prefix))}*`]
  const patterns: string[] = []
  if (scope.globals) patterns.push(`${globEscape(`${keyPrefix}:${prefix}`)}*`)
  if (scope.partitions) patterns.push(`${globEscape(`{${keyPrefix}:p`)}*`)
  return patterns
}

// --- Lua ------------------------------------------------------------------------------------------

/**
 * cas-1: compare-and-set one key.
 * KEYS[1] key
 * ARGV[1] '1' = expect the key absent, '0' = expect value ARGV[2]; ARGV[2] expected value
 * ARGV[3] '1' = delete, '0' = set ARGV[4]; ARGV[5] TTL in ms, '' for none
 * returns 1 when written, 0 when the current value did not match
 */
const CAS_LUA = `
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur then return 0 end
elseif (not cur) or cur ~= ARGV[2] then
  return 0
end
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[1])
elseif ARGV[5] == '' then
  redis.call('SET', KEYS[1], ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
end
return 1
`

/**
 * fenced-write-N: check and record a partition's epoch, then apply a batch; all keys share the
 * partition's hash tag.
 * KEYS[1] the epoch record; KEYS[2 .. 1+P] keys to set; KEYS[2+P ..] keys to delete
 * ARGV[1] the caller's epoch; ARGV[2] P, the number of sets; then per set: value, TTL ms ('' = none)
 * returns {1, epoch} when applied, {0, storedEpoch} when fenced (nothing written)
 */
const FENCED_WRITE_LUA = `
local stored = redis.call('GET', KEYS[1])
if stored and tonumber(stored) > tonumber(ARGV[1]) then return {0, stored} end
redis.call('SET', KEYS[1], ARGV[1])
local puts = tonumber(ARGV[2])
for i = 1, puts do
  local ttl = ARGV[2 + 2 * i]
  if ttl == '' then
    redis.call('SET', KEYS[1 + i], ARGV[1 + 2 * i])
  else
    redis.call('SET', KEYS[1 + i], ARGV[1 + 2 * i], 'PX', ttl)
  end
end
for i = 2 + puts, #KEYS do redis.call('DEL', KEYS[i]) end
return {1, ARGV[1]}
`

interface ScriptCommands {
  shoalCas(key: string, ...args: (string | Buffer)[]): Promise<number>
  shoalFencedWrite(numKeys: number, ...args: (string | Buffer | Uint8Array)[]): Promise<[number, string]>
}

// --- errors -------------------------------------------------------------------------------------

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

function isReplyError(err: unknown): err is Error {
  return err instanceof Error && err.name === 'ReplyError'
}

/** Map an ioredis failure to a ShoalError: outages are STATE_UNAVAILABLE, refusals STATE_BACKEND. */
export function toStateError(err: unknown, what: string, context = ''): ShoalError {
  if (err instanceof ShoalError) return err
  const message = err instanceof Error ? err.message : String(err)
  if (isReplyError(err)) {
    const reply = message.split(' ', 1)[0] ?? ''
    if (UNAVAILABLE_REPLIES.has(reply)) {
      return new StateUnavailableError(`redis ${what}: ${message}`, { cause: err, data: { reply } })
    }
    if (reply === 'WRONGTYPE' || /not an integer|overflow/.test(message)) {
      const e = wrongType(`redis ${what}: ${message}`)
      return e
    }
    return new StateError(ErrorCodes.STATE_BACKEND, `redis refused ${what}: ${message}`, {
      cause: err,
      data: { reply },
    })
  }
  return new StateUnavailableError(`redis ${what} failed: ${explain(err, message)}${context}`, { cause: err })
}

/** ioredis's connection-level failures, in words a reader of the error can act on. */
function explain(err: unknown, message: string): string {
  if (err instanceof Error && err.name === 'MaxRetriesPerRequestError') {
    return 'connection lost before the reply (the command may or may not have been applied)'
  }
  if (message.startsWith("Stream isn't writeable") || message.startsWith("Cluster isn't ready")) {
    return 'not connected'
  }
  if (message === 'Command timed out') return 'no reply within commandTimeoutMs'
  return message
}

// --- the backend --------------------------------------------------------------------------------

/** Configuration errors that retrying cannot fix: open() fails at once instead of waiting. */
const AUTH_FAILURE = /^(WRONGPASS|NOAUTH)|invalid (username|password)/
const TLS_FAILURE = /CERT|SELF_SIGNED|ERR_TLS|ERR_SSL|UNABLE_TO_VERIFY/

export class RedisBackend implements StateBackend {
  readonly kind = 'redis' as const
  readonly prefix: string
  readonly target: RedisTarget
  #client: Client
  #scripts: ScriptCommands
  #commandTimeoutMs: number
  #lastError: Error | undefined
  #closed = false
  #closing: Promise<void> | undefined

  private constructor(prefix: string, target: RedisTarget, client: Client, commandTimeoutMs: number) {
    this.prefix = prefix
    this.target = target
    this.#client = client
    this.#commandTimeoutMs = commandTimeoutMs
    client.defineCommand('shoalCas', { numberOfKeys: 1, lua: CAS_LUA })
    client.defineCommand('shoalFencedWrite', { lua: FENCED_WRITE_LUA })
    this.#scripts = client as unknown as ScriptCommands
    // Errors are reported to callers through their rejected operations and health(); keep the
    // last one for messages (and so ioredis never prints "Unhandled error event").
    client.on('error', (err: Error) => {
      this.#lastError = err
    })
    if (client instanceof Cluster) {
      client.on('node error', (err: Error) => {
        this.#lastError = err
      })
    }
  }

  /** Connect and wait for readiness (up to connectTimeoutMs). */
  static async open(options: RedisBackendOptions): Promise<RedisBackend> {
    const prefix = validatePrefix(options.prefix ?? 'shoal')
    const connectTimeoutMs = positive(options.connectTimeoutMs ?? 5000, 'connectTimeoutMs')
    const commandTimeoutMs = positive(options.commandTimeoutMs ?? 5000, 'commandTimeoutMs')
    const retryDelay = options.retryDelay ?? exponentialBackoff({ initialDelayMs: 50, maxDelayMs: 2000 })
    const client = createClient(options, connectTimeoutMs, commandTimeoutMs, retryDelay)
    const backend = new RedisBackend(prefix, options.target, client, commandTimeoutMs)
    try {
      await backend.#waitReady(connectTimeoutMs)
      await checkDatabase(client, options.target)
    } catch (err) {
      client.disconnect()
      throw err
    }
    return backend
  }

  #waitReady(timeoutMs: number): Promise<void> {
    const client = this.#client
    return new Promise<void>((resolve, reject) => {
      const done = (err?: ShoalError): void => {
        clearTimeout(timer)
        client.off('ready', onReady)
        client.off('error', onError)
        if (client instanceof Cluster) client.off('node error', onError)
        if (err === undefined) resolve()
        else reject(err)
      }
      const onReady = (): void => done()
      const onError = (err: Error): void => {
        const code = (err as NodeJS.ErrnoException).code
        if (typeof code === 'string' && TLS_FAILURE.test(code)) {
          done(
            new ShoalError(
              ErrorCodes.TLS_FAILED,
              `redis at ${this.target.display}: TLS verification failed: ${err.message} (${code})`,
              { cause: err, data: { tlsCode: code } },
            ),
          )
          return
        }
        if (AUTH_FAILURE.test(err.message)) {
          done(
            new StateError(
              ErrorCodes.STATE_BACKEND,
              `redis at ${this.target.display} refused authentication: ${err.message}`,
              { cause: err },
            ),
          )
        }
      }
      const timer = setTimeout(() => {
        done(
          new StateUnavailableError(
            `cannot reach redis at ${this.target.display} within ${timeoutMs} ms${this.#lastErrorText()}`,
            { cause: this.#lastError },
          ),
        )
      }, timeoutMs)
      client.on('ready', onReady)
      client.on('error', onError)
      if (client instanceof Cluster) client.on('node error', onError)
      // Failures also arrive as 'error' events; ioredis keeps retrying until ready or timeout.
      client.connect().catch(() => {})
    })
  }

  #lastErrorText(): string {
    return this.#lastError === undefined ? '' : ` (last error: ${this.#lastError.message})`
  }

  /** The underlying ioredis client, for Redis-specific modules (streams, checkpoints). */
  get client(): Client {
    return this.#client
  }

  /**
   * A new connection with the same options (lazy: call connect()), for blocking commands such
   * as XREAD BLOCK that would otherwise stall this backend's pipeline. The caller disconnects it.
   */
  duplicateClient(): Client {
    return this.#client.duplicate()
  }

  #check(): void {
    if (this.#closed) throw closedError('redis')
  }

  async #run<T>(what: string, fn: () => Promise<T>): Promise<T> {
    this.#check()
    try {
      return await fn()
    } catch (err) {
      throw toStateError(err, what, this.#statusText())
    }
  }

  #statusText(): string {
    const status = this.#client.status
    return status === 'ready' ? '' : ` (connection ${status}${this.#lastErrorText()})`
  }

  #key(key: string): string {
    return toRedisKey(this.prefix, key)
  }

  get(key: string): Promise<Buffer | undefined> {
    return this.#run('GET', async () => (await this.#client.getBuffer(this.#key(key))) ?? undefined)
  }

  getMany(keys: readonly string[]): Promise<(Buffer | undefined)[]> {
    return this.#run('GET (batch)', async () => {
      const redisKeys = keys.map((k) => this.#key(k))
      if (redisKeys.length === 0) return []
      if (this.#client instanceof Cluster) {
        // Auto-pipelining batches these per node; a multi-slot pipeline is not allowed.
        const client = this.#client
        const values = await Promise.all(redisKeys.map((k) => client.getBuffer(k)))
        return values.map((v) => v ?? undefined)
      }
      const pipeline = this.#client.pipeline()
      for (const k of redisKeys) pipeline.getBuffer(k)
      const results = (await pipeline.exec()) ?? []
      return results.map(([err, value]) => {
        if (err) throw err
        return (value as Buffer | null) ?? undefined
      })
    })
  }

  put(key: string, value: Uint8Array, options?: PutOptions): Promise<void> {
    return this.#run('SET', async () => {
      const k = this.#key(key)
      const v = toBuffer(validateValue(value))
      const ttl = validateTtl(options?.ttlMs)
      if (ttl === undefined) await this.#client.set(k, v)
      else await this.#client.set(k, v, 'PX', ttl)
    })
  }

  compareAndSet(
    key: string,
    expected: Uint8Array | null,
    next: Uint8Array | null,
    options?: PutOptions,
  ): Promise<boolean> {
    return this.#run('compare-and-set', async () => {
      const k = this.#key(key)
      const exp = expected === null ? Buffer.alloc(0) : toBuffer(validateValue(expected, 'expected'))
      const nxt = next === null ? Buffer.alloc(0) : toBuffer(validateValue(next, 'next'))
      const ttl = validateTtl(options?.ttlMs)
      const written = await this.#scripts.shoalCas(
        k,
        expected === null ? '1' : '0',
        exp,
        next === null ? '1' : '0',
        nxt,
        ttl === undefined ? '' : String(ttl),
      )
      return written === 1
    })
  }

  delete(key: string): Promise<boolean> {
    return this.#run('DEL', async () => (await this.#client.del(this.#key(key))) > 0)
  }

  incrBy(key: string, by?: number): Promise<number> {
    return this.#run('INCRBY', async () =>
      checkSafe(await this.#client.incrby(this.#key(key), validateIncrement(by)), key),
    )
  }

  hIncrBy(key: string, field: string, by?: number): Promise<number> {
    return this.#run('HINCRBY', async () => {
      if (typeof field !== 'string') throw badKey(`hash field must be a string (got ${typeof field})`)
      return checkSafe(await this.#client.hincrby(this.#key(key), field, validateIncrement(by)), key)
    })
  }

  hGetAll(key: string): Promise<Record<string, number>> {
    return this.#run('HGETALL', async () => {
      const raw = await this.#client.hgetall(this.#key(key))
      const out: Record<string, number> = Object.create(null) as Record<string, number>
      for (const [f, v] of Object.entries(raw)) out[f] = Number(v)
      return out
    })
  }

  async *scan(prefix: string, options?: ScanOptions): AsyncGenerator<string[]> {
    this.#check()
    if (typeof prefix !== 'string') throw badKey(`scan prefix must be a string (got ${typeof prefix})`)
    const count = validateScanCount(options?.count)
    const patterns = scanPatterns(this.prefix, prefix)
    const nodes = this.#client instanceof Cluster ? this.#client.nodes('master') : [this.#client]
    if (nodes.length === 0) {
      throw new StateUnavailableError(`redis SCAN: no master node known${this.#statusText()}`)
    }
    // SCAN may report a key more than once; report each once.
    const seen = new Set<string>()
    let batch: string[] = []
    for (const node of nodes) {
      // A cluster node's connection queues while reconnecting: fail now instead of at the timeout.
      if (node.status === 'reconnecting' || node.status === 'end' || node.status === 'close') {
        throw new StateUnavailableError(
          `redis SCAN: node ${String(node.options.host)}:${String(node.options.port)} is ${node.status}${this.#statusText()}`,
        )
      }
      for (const pattern of patterns) {
        let cursor = '0'
        do {
          this.#check()
          let reply: [string, string[]]
          try {
            reply = await node.scan(cursor, 'MATCH', pattern, 'COUNT', count)
          } catch (err) {
            throw toStateError(err, 'SCAN', this.#statusText())
          }
          cursor = reply[0]
          for (const redisKey of reply[1]) {
            const key = fromRedisKey(this.prefix, redisKey)
            if (key === undefined || !key.startsWith(prefix) || seen.has(key)) continue
            seen.add(key)
            batch.push(key)
          }
          if (batch.length >= count) {
            yield batch
            batch = []
          }
        } while (cursor !== '0')
      }
    }
    if (batch.length > 0) yield batch
  }

  writeBatch(partition: number, batch: WriteBatch): Promise<void> {
    return this.#run('MULTI/EXEC', async () => {
      const b = normalizeBatch(partition, batch)
      if (b.puts.length + b.deletes.length === 0) return
      const multi = this.#client.multi()
      for (const d of b.deletes) multi.del(this.#key(d.key))
      for (const p of b.puts) {
        if (p.ttlMs === undefined) multi.set(this.#key(p.key), toBuffer(p.value))
        else multi.set(this.#key(p.key), toBuffer(p.value), 'PX', p.ttlMs)
      }
      const results = await multi.exec()
      if (results === null) throw new StateUnavailableError('redis MULTI/EXEC was aborted')
      for (const [err] of results) if (err) throw err
    })
  }

  fencedWrite(partition: number, epoch: number, batch: WriteBatch): Promise<void> {
    return this.#run('fenced write', async () => {
      const b: NormalizedBatch = normalizeBatch(partition, batch)
      const e = validateEpoch(epoch)
      const keys = [
        redisEpochKey(this.prefix, partition),
        ...b.puts.map((p) => this.#key(p.key)),
        ...b.deletes.map((d) => this.#key(d.key)),
      ]
      const args: (string | Buffer)[] = [String(e), String(b.puts.length)]
      for (const p of b.puts) args.push(toBuffer(p.value), p.ttlMs === undefined ? '' : String(p.ttlMs))
      const [ok, stored] = await this.#scripts.shoalFencedWrite(keys.length, ...keys, ...args)
      if (ok !== 1) throw new FencedError(partition, e, Number(stored))
    })
  }

  getEpoch(partition: number): Promise<number | undefined> {
    return this.#run('GET epoch', async () => {
      const v = await this.#client.get(redisEpochKey(this.prefix, partition))
      return v === null ? undefined : Number(v)
    })
  }

  /** True when every master answers PING within min(commandTimeoutMs, 1 s). */
  async health(): Promise<boolean> {
    if (this.#closed) return false
    const client = this.#client
    if (client.status !== 'ready') return false
    const nodes = client instanceof Cluster ? client.nodes('master') : [client]
    // Cluster node connections are lazy ('wait' until first used): PING connects them.
    const down = (n: Redis): boolean => n.status !== 'ready' && n.status !== 'wait' && n.status !== 'connect'
    if (nodes.length === 0 || nodes.some(down)) return false
    if (client instanceof Cluster && !coversAllSlots(client, nodes)) return false
    const timeoutMs = Math.min(this.#commandTimeoutMs, 1000)
    let timer: NodeJS.Timeout | undefined
    try {
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error('health check timed out')), timeoutMs)
      })
      await Promise.race([Promise.all(nodes.map((n) => n.ping())), timeout])
      return true
    } catch {
      return false
    } finally {
      clearTimeout(timer)
    }
  }

  close(): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close(): Promise<void> {
    this.#closed = true
    await closeRedisClient(this.#client)
  }
}

/**
 * QUIT (replies to commands in flight arrive first) for at most a second, then drop the
 * connection: a server that hangs, or a blocking read, never holds a close up for long.
 */
export async function closeRedisClient(client: Redis | Cluster): Promise<void> {
  if (client.status === 'ready') {
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      client.quit().catch(() => {}),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, 1000)
      }),
    ])
    clearTimeout(timer)
  }
  client.disconnect()
}

/**
 * Whether every slot's master has a live connection. ioredis drops a dead master's connection
 * from its pool while the slot map still names it, so pinging the pool alone would miss it.
 */
function coversAllSlots(cluster: Cluster, masters: Redis[]): boolean {
  const live = new Set(masters.map((n) => `${n.options.host ?? '127.0.0.1'}:${n.options.port ?? 6379}`))
  let covered = 0
  for (const owners of cluster.slots) {
    const master = owners?.[0]
    if (master === undefined) continue
    if (!live.has(master)) return false
    covered++
  }
  return covered === 16384
}

function positive(value: number, name: string): number {
  if (!Number.isFinite(value) || value <= 0) {
    throw new ShoalError(ErrorCodes.INVALID_OPTION, `options.${name} must be > 0 (got ${value})`)
  }
  return value
}

function toBuffer(value: Uint8Array): Buffer {
  return Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength)
}

function checkSafe(n: number, key: string): number {
  if (!Number.isSafeInteger(n)) {
    throw wrongType(`counter ${JSON.stringify(key)} is beyond ±2^53-1 and cannot be read exactly`)
  }
  return n
}

function tlsOptions(options: RedisBackendOptions): ConnectionOptions | undefined {
  if (!options.target.tls) return undefined
  const t = options.tls ?? {}
  const out: ConnectionOptions = {}
  if (t.ca !== undefined) out.ca = t.ca
  if (t.cert !== undefined) out.cert = t.cert
  if (t.key !== undefined) out.key = t.key
  if (t.servername !== undefined) out.servername = t.servername
  if (t.rejectUnauthorized !== undefined) out.rejectUnauthorized = t.rejectUnauthorized
  return out
}

function createClient(
  options: RedisBackendOptions,
  connectTimeoutMs: number,
  commandTimeoutMs: number,
  retryDelay: RetryDelay,
): Client {
  const { target } = options
  const tls = tlsOptions(options)
  // No buffering while disconnected, no silent re-sends, bounded waits.
  const common: RedisOptions = {
    lazyConnect: true,
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    enableReadyCheck: true,
    // A server restarting from its AOF answers LOADING for a while; ioredis re-checks after
    // loading_eta_seconds or 1 s (its default cap is 10 s), which made every client wait >= 1 s
    // after a short restart: the leader's lease expired and each worker's writes stalled.
    maxLoadingRetryTime: 100,
    connectTimeout: connectTimeoutMs,
    commandTimeout: commandTimeoutMs,
    retryStrategy: (attempt) => retryDelay(attempt),
    ...(target.username === undefined ? {} : { username: target.username }),
    ...(target.password === undefined ? {} : { password: target.password }),
    ...(tls === undefined ? {} : { tls }),
  }
  switch (target.mode) {
    case 'standalone': {
      const h = target.hosts[0]
      if (h === undefined) throw new ShoalError(ErrorCodes.INVALID_OPTION, `${target.display}: no host`)
      return new Redis({ ...common, host: h.host, port: h.port, db: target.db ?? 0 })
    }
    case 'sentinel':
      return new Redis({
        ...common,
        sentinels: target.hosts,
        name: target.masterName ?? 'mymaster',
        role: 'master',
        db: target.db ?? 0,
        enableTLSForSentinelMode: target.tls,
        sentinelRetryStrategy: (attempt) => retryDelay(attempt),
        ...(options.sentinelUsername === undefined ? {} : { sentinelUsername: options.sentinelUsername }),
        ...(options.sentinelPassword === undefined ? {} : { sentinelPassword: options.sentinelPassword }),
        ...(tls === undefined ? {} : { sentinelTLS: tls }),
      })
    case 'cluster': {
      const { retryStrategy: _ignored, ...nodeOptions } = common
      const clusterOptions: ClusterOptions = {
        lazyConnect: true,
        enableOfflineQueue: false,
        enableReadyCheck: true,
        // Off: ioredis groups auto-pipelined commands by the slot of their first argument, which
        // for our scripts (EVALSHA numkeys key...) is the key count, so concurrent scripts of
        // different partitions landed in one pipeline and failed with "All keys in the pipeline
        // should belong to the same slots allocation group" (redis/ioredis#2109). Explicit
        // per-partition pipelines keep the batching where it matters.
        enableAutoPipelining: false,
        scaleReads: 'master',
        maxRedirections: 16,
        retryDelayOnFailover: 100,
        retryDelayOnClusterDown: 100,
        retryDelayOnTryAgain: 100,
        slotsRefreshTimeout: Math.min(connectTimeoutMs, 2000),
        clusterRetryStrategy: (attempt) => retryDelay(attempt),
        // Reconnect to a lost master in place (it stays in the pool, visibly not ready) rather
        // than dropping it until some MOVED error triggers a slot refresh.
        clusterNodeRetryStrategy: (attempt) => retryDelay(attempt),
        redisOptions: nodeOptions,
      }
      return new Cluster(target.hosts, clusterOptions)
    }
  }
}

/**
 * Select the URL's database explicitly: ioredis selects it on connect but, when the server
 * refuses (an index above `databases`, 16 by default), it only emits an error and goes on in
 * database 0, where it would read and write another cluster's keys.
 */
export async function checkDatabase(client: Redis | Cluster, target: RedisTarget): Promise<void> {
  if (client instanceof Cluster || target.db === undefined || target.db === 0) return
  try {
    await client.select(target.db)
  } catch (err) {
    throw new ShoalError(
      ErrorCodes.INVALID_OPTION,
      `${target.display}: database ${target.db} cannot be selected (${err instanceof Error ? err.message : String(err)})`,
    )
  }
}

/**
 * A lazily connecting ioredis client (standalone, Sentinel or Cluster) configured like the
 * state backend's: no offline queue, no silent re-sends, bounded waits. For connectors, which
 * talk to Redis with their own commands; call `connect()` and attach an 'error' listener.
 */
export function createRedisClient(options: RedisBackendOptions): Redis | Cluster {
  const connectTimeoutMs = positive(options.connectTimeoutMs ?? 5000, 'connectTimeoutMs')
  const commandTimeoutMs = positive(options.commandTimeoutMs ?? 5000, 'commandTimeoutMs')
  const retryDelay = options.retryDelay ?? exponentialBackoff({ initialDelayMs: 50, maxDelayMs: 2000 })
  return createClient(options, connectTimeoutMs, commandTimeoutMs, retryDelay)
}

export function openRedisBackend(options: RedisBackendOptions): Promise<RedisBackend> {
  return RedisBackend.open(options)
}
