/**
 * PartitionStore on Redis. Keys of partition N (hash tag T = `{<prefix>:p<N>}`, one slot, so
 * every script below is atomic on a cluster too):
 *
 * ```
 * T#epoch        the fencing epoch (the same record StateBackend.fencedWrite uses)
 * T#leader       the leadership epoch of the newest claim's coordinator (coordinator HA)
 * T#log          the replay log: a Stream, one entry per batch, IDs 0-1, 0-2, ... (offset = seq)
 *                fields p (producer id), s (sequence), n (event count), e (epoch), d (payload)
 * T#cp           the committed-checkpoint record (hash): id, offset, dedup (msgpack), epoch, at,
 *                base, delta (segment generations), v (bumped by every change)
 * T#seg:<gen>    a state segment (hash key -> value): the base, or a committed delta
 * T#del:<gen>    the keys a delta segment deletes (set)
 * ```
 *
 * Appends are one Lua script (check the epoch, XADD `0-*`), pipelined; with durability options
 * the appends of one tick share one WAIT/WAITAOF.
 *
 * A checkpoint is staged, then committed by flipping the record:
 * 1. the changed keys go into a fresh segment `T#seg:<gen>` (and deletes into `T#del:<gen>`)
 *    with pre-encoded HSET/SADD commands in chunks, many in flight. The segment has a TTL, so an
 *    abandoned stage (crash, fenced owner) disappears by itself. Nothing reads it yet.
 * 2. one Lua script checks the epoch, checks that the segment holds exactly what was staged
 *    (nothing expired), and rewrites the small record: a full checkpoint's segment becomes the
 *    base (the old segments are UNLINKed, freed in the background); an incremental one becomes
 *    the delta. Offset, dedup table and epoch change in the same step.
 * 3. the delta is folded into the base by short fenced Lua steps (HSCAN the delta, HSET into the
 *    base; then HDEL the deletes), in the background; the last step clears `delta`.
 * Readers see base overlaid by delta (minus its deletes), which the fold does not change, so a
 * crash at any point leaves a committed checkpoint that reads exactly as written.
 */
import { randomBytes } from 'node:crypto'
import { setImmediate as yieldToLoop } from 'node:timers/promises'
import { Cluster, type ChainableCommander } from 'ioredis'
import { Packr } from 'msgpackr'
import { ErrorCodes, ShoalError } from '../../errors.ts'
import { FencedError, LeaderFencedError, StateError, validateEpoch, validatePartition } from '../backend.ts'
import { redisEpochKey, redisPartitionTag, toStateError, type RedisBackend } from '../redis/redis-backend.ts'
import {
  KeyedQueue,
  changedCount,
  changedPairs,
  checkpointAborted,
  closedStore,
  dedupFilter,
  invalid,
  validateAppend,
  validateCheckpoint,
  validateOffset,
  validateReplay,
  type CheckpointResult,
  type CheckpointWrite,
  type DurabilityOptions,
  type LoadedCheckpoint,
  type LogAppend,
  type LogEntry,
  type LogInfo,
  type PartitionStore,
  type PartitionStoreHooks,
  type PartitionStoreOptions,
  type ReplayOptions,
  type TrimResult,
} from './contract.ts'
import { BulkEncoder, PreEncodedCommand } from './resp.ts'

type Client = RedisBackend['client']

// --- Lua ------------------------------------------------------------------------------------------

/**
 * KEYS: epoch, log. ARGV: epoch, producerId, sequence, count, payload.
 * {1, id} appended | {0, storedEpoch} fenced
 */
const APPEND_LUA = `
local stored = redis.call('GET', KEYS[1])
if stored and tonumber(stored) > tonumber(ARGV[1]) then return {0, stored} end
if stored ~= ARGV[1] then redis.call('SET', KEYS[1], ARGV[1]) end
local id = redis.call('XADD', KEYS[2], '0-*', 'p', ARGV[2], 's', ARGV[3], 'n', ARGV[4], 'e', ARGV[1], 'd', ARGV[5])
return {1, id}
`

/**
 * KEYS: epoch, record, new segment, new deletes, old base, old delta, old delta deletes.
 * ARGV: epoch, gen ('' = nothing staged), full '1'|'0', staged fields, staged deletes,
 *       expected base gen, expected delta gen, checkpoint id, log offset, dedup, now ms.
 * {1, base, delta} committed | {0, storedEpoch} fenced | {2, base, delta} the record changed |
 * {3, committedOffset} offset behind the committed one | {4, fields, deletes} staging incomplete
 */
const COMMIT_LUA = `
local stored = redis.call('GET', KEYS[1])
if stored and tonumber(stored) > tonumber(ARGV[1]) then return {0, stored} end
local rec = redis.call('HMGET', KEYS[2], 'base', 'delta', 'offset')
local base = rec[1] or ''
local delta = rec[2] or ''
if base ~= ARGV[6] or delta ~= ARGV[7] then return {2, base, delta} end
if rec[3] and tonumber(rec[3]) > tonumber(ARGV[9]) then return {3, rec[3]} end
local full = ARGV[3] == '1'
if delta ~= '' and not full then return {2, base, delta} end
local gen = ARGV[2]
if gen ~= '' then
  local n = redis.call('HLEN', KEYS[3])
  local d = redis.call('SCARD', KEYS[4])
  if n ~= tonumber(ARGV[4]) or d ~= tonumber(ARGV[5]) then return {4, n, d} end
  redis.call('PERSIST', KEYS[3])
end
if full then
  redis.call('UNLINK', KEYS[4], KEYS[5], KEYS[6], KEYS[7])
  base = gen
  delta = ''
elseif gen ~= '' then
  if base == '' then
    redis.call('UNLINK', KEYS[4])
    base = gen
  else
    redis.call('PERSIST', KEYS[4])
    delta = gen
  end
end
redis.call('HSET', KEYS[2], 'id', ARGV[8], 'offset', ARGV[9], 'dedup', ARGV[10], 'epoch', ARGV[1],
  'base', base, 'delta', delta, 'at', ARGV[11])
redis.call('HINCRBY', KEYS[2], 'v', 1)
if stored ~= ARGV[1] then redis.call('SET', KEYS[1], ARGV[1]) end
return {1, base, delta}
`

/**
 * One step of folding a delta into the base.
 * KEYS: epoch, record, base, delta, delta deletes. ARGV: epoch, delta gen, base gen, phase
 * ('s' fields | 'd' deletes), cursor, count.
 * {1, nextPhase, cursor} | {1, 'done', '0'} | {0, storedEpoch} fenced | {2, 'gone', '0'} not pending
 */
const MERGE_LUA = `
local stored = redis.call('GET', KEYS[1])
if stored and tonumber(stored) > tonumber(ARGV[1]) then return {0, stored} end
local rec = redis.call('HMGET', KEYS[2], 'delta', 'base')
if rec[1] ~= ARGV[2] or rec[2] ~= ARGV[3] then return {2, 'gone', '0'} end
if ARGV[4] == 's' then
  local r = redis.call('HSCAN', KEYS[4], ARGV[5], 'COUNT', ARGV[6])
  local kv = r[2]
  for i = 1, #kv, 7000 do redis.call('HSET', KEYS[3], unpack(kv, i, math.min(i + 6999, #kv))) end
  if r[1] ~= '0' then return {1, 's', r[1]} end
  return {1, 'd', '0'}
end
local r = redis.call('SSCAN', KEYS[5], ARGV[5], 'COUNT', ARGV[6])
local m = r[2]
for i = 1, #m, 7000 do redis.call('HDEL', KEYS[3], unpack(m, i, math.min(i + 6999, #m))) end
if r[1] ~= '0' then return {1, 'd', r[1]} end
redis.call('HSET', KEYS[2], 'delta', '')
redis.call('HINCRBY', KEYS[2], 'v', 1)
redis.call('UNLINK', KEYS[4], KEYS[5])
return {1, 'done', '0'}
`

/**
 * KEYS: epoch, leader. ARGV: epoch, leader epoch.
 * {1} claimed | {0, storedEpoch} fenced by a newer owner | {2, storedLeader} by a newer leader
 */
const CLAIM_LUA = `
local stored = redis.call('GET', KEYS[1])
if stored and tonumber(stored) > tonumber(ARGV[1]) then return {0, stored} end
local leader = redis.call('GET', KEYS[2])
if leader and tonumber(leader) > tonumber(ARGV[2]) then return {2, leader} end
if leader ~= ARGV[2] then redis.call('SET', KEYS[2], ARGV[2]) end
if stored ~= ARGV[1] then redis.call('SET', KEYS[1], ARGV[1]) end
return {1}
`

/**
 * KEYS: record, log. ARGV: up-to offset. Trims to min(up-to, committed offset).
 * {trimmedTo, removed}
 */
const TRIM_LUA = `
local committed = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local upto = math.min(tonumber(ARGV[1]), committed)
if upto < 1 then return {0, 0} end
local removed = redis.call('XTRIM', KEYS[2], 'MINID', '0-' .. string.format('%d', upto + 1))
return {upto, removed}
`

type Reply = [number | string, ...(string | number)[]]
interface Scripts {
  shoalCpClaim(...args: string[]): Promise<Reply>
  shoalCpAppend(...args: (string | Buffer)[]): Promise<Reply>
  shoalCpCommit(...args: (string | Buffer)[]): Promise<Reply>
  shoalCpMerge(...args: string[]): Promise<Reply>
  shoalCpTrim(...args: string[]): Promise<[number, number]>
}
type PipelineScripts = { [K in keyof Scripts]: (...args: Parameters<Scripts[K]>) => ChainableCommander }

const packr = new Packr({ useRecords: false, moreTypes: false })
const CHUNK_BYTES = 1 << 20
const SCAN_COUNT = 1000
const MERGE_COUNT = 1000
/** Staging chunks encoded between two turns of the event loop (about 2 ms of encoding). */
const YIELD_EVERY_CHUNKS = 8

interface Keys {
  epoch: string
  leader: string
  log: string
  record: string
  seg(gen: string): string
  del(gen: string): string
}

interface PendingAppend {
  args: (string | Buffer)[]
  resolve(offset: number): void
  reject(err: unknown): void
  partition: number
  epoch: number
}

let genCounter = 0

export class RedisPartitionStore implements PartitionStore {
  readonly kind = 'redis' as const
  readonly #backend: RedisBackend
  readonly #client: Client
  readonly #scripts: Scripts
  readonly #durability: Required<Pick<DurabilityOptions, 'replicas' | 'timeoutMs'>> &
    Pick<DurabilityOptions, 'aof'>
  readonly #durable: boolean
  readonly #chunkKeys: number
  readonly #chunkWindow: number
  readonly #stageTtlMs: number
  readonly #backgroundMerge: boolean
  readonly #hooks: PartitionStoreHooks
  readonly #queue = new KeyedQueue()
  /** Background folds of committed deltas, per partition. Never reject. */
  readonly #merges = new Map<number, Promise<void>>()
  #groups = new Map<string, PendingAppend[]>()
  #chunksSinceYield = 0
  #closed = false

  constructor(backend: RedisBackend, options: PartitionStoreOptions) {
    this.#backend = backend
    this.#client = backend.client
    const d = options.durability ?? {}
    this.#durability = { replicas: d.replicas ?? 0, timeoutMs: d.timeoutMs ?? 1000, aof: d.aof }
    this.#durable = this.#durability.replicas > 0 || d.aof !== undefined
    this.#chunkKeys = options.chunkKeys ?? 1000
    this.#chunkWindow = options.chunkWindow ?? 32
    this.#stageTtlMs = options.stageTtlMs ?? 600_000
    this.#backgroundMerge = options.backgroundMerge ?? true
    this.#hooks = options.hooks ?? {}
    this.#client.defineCommand('shoalCpClaim', { numberOfKeys: 2, lua: CLAIM_LUA })
    this.#client.defineCommand('shoalCpAppend', { numberOfKeys: 2, lua: APPEND_LUA })
    this.#client.defineCommand('shoalCpCommit', { numberOfKeys: 7, lua: COMMIT_LUA })
    this.#client.defineCommand('shoalCpMerge', { numberOfKeys: 5, lua: MERGE_LUA })
    this.#client.defineCommand('shoalCpTrim', { numberOfKeys: 2, lua: TRIM_LUA })
    this.#scripts = this.#client as unknown as Scripts
  }

  #keys(partition: number): Keys {
    const tag = redisPartitionTag(this.#backend.prefix, partition)
    return {
      epoch: redisEpochKey(this.#backend.prefix, partition),
      leader: `${tag}#leader`,
      log: `${tag}#log`,
      record: `${tag}#cp`,
      seg: (gen) => `${tag}#seg:${gen}`,
      del: (gen) => `${tag}#del:${gen}`,
    }
  }

  #check(): void {
    if (this.#closed) throw closedStore('redis')
  }

  async #run<T>(what: string, fn: () => Promise<T>): Promise<T> {
    this.#check()
    try {
      return await fn()
    } catch (err) {
      throw toStateError(err, what)
    }
  }

  claim(partition: number, epoch: number, leader?: number): Promise<void> {
    return this.#run('claim', async () => {
      validatePartition(partition)
      validateEpoch(epoch)
      if (leader === undefined) {
        await this.#backend.fencedWrite(partition, epoch, {})
        return
      }
      validateEpoch(leader)
      const k = this.#keys(partition)
      const [ok, stored] = await this.#scripts.shoalCpClaim(k.epoch, k.leader, String(epoch), String(leader))
      if (ok === 0) throw new FencedError(partition, epoch, Number(stored))
      if (ok === 2) throw new LeaderFencedError(partition, leader, Number(stored))
    })
  }

  // --- the log ------------------------------------------------------------------------------------

  appendBatch(partition: number, epoch: number, entry: LogAppend): Promise<number> {
    return this.#run('log append', async () => {
      validateAppend(partition, epoch, entry)
      const k = this.#keys(partition)
      const args = [
        k.epoch,
        k.log,
        String(epoch),
        entry.producerId,
        String(entry.sequence),
        String(entry.count),
        toBuffer(entry.payload),
      ]
      if (!this.#durable) return appended(await this.#scripts.shoalCpAppend(...args), partition, epoch)
      return new Promise<number>((resolve, reject) =>
        this.#enqueueDurable({ args, resolve, reject, partition, epoch }),
      )
    })
  }

  /**
   * Appends made in one tick share a pipeline ending in one WAIT/WAITAOF: per connection on a
   * single server, per partition on a cluster (a keyless WAIT travels with its pipeline's slot).
   */
  #enqueueDurable(a: PendingAppend): void {
    const group = this.#client instanceof Cluster ? String(a.partition) : '*'
    let pending = this.#groups.get(group)
    if (pending === undefined) {
      pending = []
      this.#groups.set(group, pending)
      if (this.#groups.size === 1) queueMicrotask(() => this.#flushDurable())
    }
    pending.push(a)
  }

  #flushDurable(): void {
    const groups = this.#groups
    this.#groups = new Map()
    for (const appends of groups.values()) {
      const pipe = this.#client.pipeline()
      for (const a of appends) (pipe as unknown as PipelineScripts).shoalCpAppend(...a.args)
      this.#execDurable(pipe, appends.length, 'log append').then(
        (results) => {
          appends.forEach((a, i) => {
            try {
              a.resolve(appended(results[i] as Reply, a.partition, a.epoch))
            } catch (err) {
              a.reject(err)
            }
          })
        },
        (err: unknown) => {
          for (const a of appends) a.reject(toStateError(err, 'log append'))
        },
      )
    }
  }

  /**
   * Run `pipe` (its first `n` commands are the writes) followed by the configured WAIT/WAITAOF;
   * resolves with the writes' replies, rejects with the first write error or DURABILITY_TIMEOUT.
   */
  async #execDurable(pipe: ChainableCommander, n: number, what: string): Promise<unknown[]> {
    const d = this.#durability
    if (d.replicas > 0) pipe.wait(d.replicas, d.timeoutMs)
    if (d.aof !== undefined) pipe.call('WAITAOF', d.aof.local ? 1 : 0, d.aof.replicas, d.timeoutMs)
    const results = (await pipe.exec()) ?? []
    if (results.length < n)
      throw new StateError(ErrorCodes.STATE_UNAVAILABLE, `redis ${what}: pipeline aborted`)
    const replies: unknown[] = []
    for (let i = 0; i < n; i++) {
      const [err, reply] = results[i] as [Error | null, unknown]
      if (err) throw err
      replies.push(reply)
    }
    let i = n
    if (d.replicas > 0) {
      const [err, acked] = results[i++] as [Error | null, unknown]
      if (err) throw err
      if (Number(acked) < d.replicas) {
        throw durabilityTimeout(
          `WAIT: ${String(acked)} of ${d.replicas} replicas acknowledged within ${d.timeoutMs} ms`,
          {
            acked: Number(acked),
            required: d.replicas,
          },
        )
      }
    }
    if (d.aof !== undefined) {
      const [err, reply] = results[i++] as [Error | null, unknown]
      if (err) {
        if (/unknown command/i.test(err.message)) {
          throw new StateError(
            ErrorCodes.STATE_BACKEND,
            `redis refused WAITAOF (it needs Redis >= 7.2): ${err.message}`,
            {
              cause: err,
            },
          )
        }
        throw err
      }
      const [local, replicas] = (reply as [number, number] | null) ?? [0, 0]
      const needLocal = d.aof.local ? 1 : 0
      if (local < needLocal || replicas < d.aof.replicas) {
        throw durabilityTimeout(
          `WAITAOF: local ${local}/${needLocal}, replicas ${replicas}/${d.aof.replicas} fsynced within ${d.timeoutMs} ms`,
          { local, replicas, requiredLocal: needLocal, requiredReplicas: d.aof.replicas },
        )
      }
    }
    return replies
  }

  async *replay(
    partition: number,
    fromOffset: number,
    options: ReplayOptions = {},
  ): AsyncGenerator<LogEntry> {
    this.#check()
    validateReplay(partition, fromOffset, options)
    const k = this.#keys(partition)
    const keep = dedupFilter(options.dedup)
    const pageSize = options.pageSize ?? 256
    const end = options.toOffset === undefined ? '+' : `0-${options.toOffset}`
    let after = fromOffset
    for (;;) {
      this.#check()
      let page: [Buffer, Buffer[]][]
      try {
        page = await this.#client.xrangeBuffer(k.log, `(0-${after}`, end, 'COUNT', pageSize)
      } catch (err) {
        throw toStateError(err, 'XRANGE')
      }
      for (const [id, fields] of page) {
        const e = parseEntry(id, fields)
        after = e.offset
        if (keep(e)) yield e
      }
      if (page.length < pageSize) return
    }
  }

  trim(partition: number, upToOffset: number): Promise<TrimResult> {
    return this.#run('log trim', async () => {
      validatePartition(partition)
      validateOffset(upToOffset, 'upToOffset')
      const k = this.#keys(partition)
      const [trimmedTo, removed] = await this.#scripts.shoalCpTrim(k.record, k.log, String(upToOffset))
      return { trimmedTo: Number(trimmedTo), removed: Number(removed) }
    })
  }

  logInfo(partition: number): Promise<LogInfo> {
    return this.#run('XINFO STREAM', async () => {
      validatePartition(partition)
      const k = this.#keys(partition)
      let info: unknown[]
      try {
        info = (await this.#client.xinfo('STREAM', k.log)) as unknown[]
      } catch (err) {
        if (err instanceof Error && /no such key/i.test(err.message)) {
          return { length: 0, firstOffset: undefined, lastOffset: 0 }
        }
        throw err
      }
      const field = (name: string): unknown => info[info.indexOf(name) + 1]
      const first = field('first-entry') as [string, unknown] | null
      return {
        length: Number(field('length')),
        firstOffset: first === null || first === undefined ? undefined : offsetOf(first[0]),
        lastOffset: offsetOf(String(field('last-generated-id'))),
      }
    })
  }

  // --- checkpoints --------------------------------------------------------------------------------

  writeCheckpoint(partition: number, epoch: number, cp: CheckpointWrite): Promise<CheckpointResult> {
    return new Promise<CheckpointResult>((resolve) => {
      this.#check()
      const deleted = validateCheckpoint(partition, epoch, cp)
      resolve(this.#queue.run(partition, () => this.#writeCheckpoint(partition, epoch, cp, deleted)))
    })
  }

  async #writeCheckpoint(
    p: number,
    epoch: number,
    cp: CheckpointWrite,
    deleted: Set<string>,
  ): Promise<CheckpointResult> {
    this.#check()
    const k = this.#keys(p)
    const nothing = changedCount(cp.changed) === 0 && (cp.full || deleted.size === 0)
    const gen = nothing
      ? ''
      : `${epoch}.${Date.now().toString(36)}.${randomBytes(4).toString('hex')}.${++genCounter}`
    const seg = k.seg(gen)
    const del = k.del(gen)
    let staged = { fields: 0, members: 0 }
    // Once the commit script is sent its outcome may be unknown (a lost reply): from then on the
    // staged segment is never deleted here (uncommitted, it still expires by its TTL).
    let commitSent = false
    try {
      if (gen !== '') staged = await this.#stage(seg, del, cp, deleted)
    } catch (err) {
      this.#discard(seg, del)
      throw err instanceof ShoalError ? err : toStateError(err, 'checkpoint staging')
    }
    // A hook throwing here is a simulated crash: leave the staged segments to their TTL.
    await this.#hooks.beforeCommit?.(p, cp.checkpointId)
    try {
      // One delta at a time: finish folding the previous one (a full checkpoint replaces it).
      await this.#merges.get(p)
      if (!cp.full) await this.#settleLocked(p, epoch)
      const rec = await this.#client.hmget(k.record, 'base', 'delta')
      const base = rec[0] ?? ''
      const delta = rec[1] ?? ''
      const args = [
        k.epoch,
        k.record,
        seg,
        del,
        k.seg(base),
        k.seg(delta),
        k.del(delta),
        String(epoch),
        gen,
        cp.full ? '1' : '0',
        String(staged.fields),
        String(staged.members),
        base,
        delta,
        cp.checkpointId,
        String(cp.logOffset),
        packr.pack({ ...cp.dedup }),
        String(Date.now()),
      ]
      let reply: Reply
      commitSent = true
      if (this.#durable) {
        const pipe = this.#client.pipeline()
        ;(pipe as unknown as PipelineScripts).shoalCpCommit(...args)
        const [r] = await this.#execDurable(pipe, 1, 'checkpoint commit')
        reply = r as Reply
      } else {
        reply = await this.#scripts.shoalCpCommit(...args)
      }
      const [status] = reply
      // A definite refusal: the stage is ours alone and unreferenced, so it can go now.
      if (Number(status) !== 1) commitSent = false
      switch (Number(status)) {
        case 1:
          break
        case 0:
          throw new FencedError(p, epoch, Number(reply[1]))
        case 3:
          throw invalid(
            `partition ${p}: checkpoint logOffset ${cp.logOffset} is behind the committed checkpoint's ${String(reply[1])}`,
            { partition: p, logOffset: cp.logOffset, committed: Number(reply[1]) },
          )
        case 4:
          throw checkpointAborted(
            `partition ${p}: checkpoint ${cp.checkpointId} staged ${staged.fields} keys and ${staged.members} deletes, ` +
              `but the segment holds ${String(reply[1])} and ${String(reply[2])} (expired? raise stageTtlMs)`,
            { partition: p, checkpointId: cp.checkpointId },
          )
        default:
          throw checkpointAborted(
            `partition ${p}: checkpoint ${cp.checkpointId} not committed: the partition's checkpoint record changed meanwhile (a concurrent writer?)`,
            { partition: p, checkpointId: cp.checkpointId },
          )
      }
      const delta2 = String(reply[2] ?? '')
      const result: CheckpointResult = {
        changed: staged.fields,
        deleted: cp.full ? 0 : staged.members,
        merging: delta2 !== '',
      }
      await this.#hooks.afterCommit?.(p, cp.checkpointId)
      if (delta2 !== '') {
        const merge = this.#merge(p, epoch, String(reply[1] ?? ''), delta2)
        if (this.#backgroundMerge) this.#track(p, merge)
        else {
          await merge
          result.merging = false
        }
      }
      return result
    } catch (err) {
      if (!commitSent) this.#discard(seg, del)
      throw err instanceof ShoalError ? err : toStateError(err, 'checkpoint commit')
    }
  }

  /** Best-effort removal of an uncommitted stage (it would expire anyway). */
  #discard(seg: string, del: string): void {
    this.#client.unlink(seg, del).catch(() => {})
  }

  /** Write the changed keys and deletes into fresh segments; returns the distinct counts. */
  async #stage(
    seg: string,
    del: string,
    cp: CheckpointWrite,
    deleted: Set<string>,
  ): Promise<{ fields: number; members: number }> {
    let fields = 0
    let members = 0
    let failure: unknown
    const window: Promise<void>[] = []
    const ttl = this.#stageTtlMs
    const fail = (err: unknown): void => {
      failure ??= err
    }
    const send = async (
      enc: BulkEncoder,
      name: string,
      key: string,
      add: (n: number) => void,
    ): Promise<void> => {
      const cmd = new PreEncodedCommand(name, [key], enc.finish())
      void this.#client.sendCommand(cmd)
      const done = (cmd.promise as Promise<unknown>).then((n) => add(Number(n)), fail)
      const expire = this.#client.pexpire(key, ttl).then(() => undefined, fail)
      window.push(Promise.all([done, expire]).then(() => undefined))
      if (window.length >= this.#chunkWindow) await window.shift()
      // Encoding is synchronous: let I/O (heartbeats, replies) run every few chunks, store-wide.
      if (++this.#chunksSinceYield >= YIELD_EVERY_CHUNKS) {
        this.#chunksSinceYield = 0
        await yieldToLoop()
      }
      if (failure !== undefined) throw toStateError(failure, 'checkpoint staging')
    }
    const maxArgs = this.#chunkKeys * 2
    const hset = new BulkEncoder('HSET', seg)
    const addFields = (n: number): void => {
      fields += n
    }
    for (const pair of changedPairs(cp.changed, deleted)) {
      hset.pair(pair[0], pair[1])
      if (hset.args >= maxArgs || hset.bytes >= CHUNK_BYTES) await send(hset, 'hset', seg, addFields)
    }
    if (hset.args > 0) await send(hset, 'hset', seg, addFields)
    if (!cp.full && deleted.size > 0) {
      const sadd = new BulkEncoder('SADD', del)
      const addMembers = (n: number): void => {
        members += n
      }
      for (const key of deleted) {
        sadd.member(key)
        if (sadd.args >= this.#chunkKeys || sadd.bytes >= CHUNK_BYTES)
          await send(sadd, 'sadd', del, addMembers)
      }
      if (sadd.args > 0) await send(sadd, 'sadd', del, addMembers)
    }
    await Promise.all(window)
    if (failure !== undefined) throw toStateError(failure, 'checkpoint staging')
    return { fields, members }
  }

  #track(p: number, merge: Promise<void>): void {
    const tracked = merge.then(
      () => undefined,
      () => undefined,
    )
    this.#merges.set(p, tracked)
    void tracked.then(() => {
      if (this.#merges.get(p) === tracked) this.#merges.delete(p)
    })
  }

  /** Fold delta `delta` into base `base` in short fenced steps. */
  async #merge(p: number, epoch: number, base: string, delta: string): Promise<void> {
    const k = this.#keys(p)
    const keys = [k.epoch, k.record, k.seg(base), k.seg(delta), k.del(delta)]
    let phase = 's'
    let cursor = '0'
    for (;;) {
      let reply: Reply
      try {
        reply = await this.#scripts.shoalCpMerge(
          ...keys,
          String(epoch),
          delta,
          base,
          phase,
          cursor,
          String(MERGE_COUNT),
        )
      } catch (err) {
        throw toStateError(err, 'checkpoint merge')
      }
      const [status, next, nextCursor] = reply
      if (Number(status) === 0) throw new FencedError(p, epoch, Number(next))
      if (Number(status) === 2 || next === 'done') return
      phase = String(next)
      cursor = String(nextCursor)
    }
  }

  /** Wait for a background fold, then fold whatever delta is still pending. */
  async #settleLocked(p: number, epoch: number): Promise<void> {
    await this.#merges.get(p)
    const k = this.#keys(p)
    for (;;) {
      const [base, delta] = await this.#client.hmget(k.record, 'base', 'delta')
      if (delta === null || delta === undefined || delta === '') return
      await this.#merge(p, epoch, base ?? '', delta)
    }
  }

  settle(partition: number, epoch: number): Promise<void> {
    return this.#run('checkpoint merge', async () => {
      validatePartition(partition)
      validateEpoch(epoch)
      await this.#queue.run(partition, async () => {
        const stored = await this.#backend.getEpoch(partition)
        if (stored !== undefined && stored > epoch) throw new FencedError(partition, epoch, stored)
        await this.#settleLocked(partition, epoch)
      })
    })
  }

  loadCheckpoint(partition: number): Promise<LoadedCheckpoint> {
    return this.#run('checkpoint load', async () => {
      validatePartition(partition)
      const k = this.#keys(partition)
      const rec = await this.#client.hgetallBuffer(k.record)
      const text = (name: string): string | undefined => rec[name]?.toString('utf8')
      if (text('id') === undefined) {
        return {
          partition,
          checkpointId: undefined,
          logOffset: 0,
          dedup: {},
          epoch: undefined,
          committedAt: 0,
          entries: () => noEntries(),
        }
      }
      const dedupBytes = rec.dedup
      const dedup = dedupBytes === undefined ? {} : (packr.unpack(dedupBytes) as Record<string, number>)
      const base = text('base') ?? ''
      const delta = text('delta') ?? ''
      const version = text('v') ?? '0'
      return {
        partition,
        checkpointId: text('id'),
        logOffset: Number(text('offset') ?? 0),
        dedup: { ...dedup },
        epoch: Number(text('epoch')),
        committedAt: Number(text('at') ?? 0),
        entries: () => this.#entries(partition, k, base, delta, version),
      }
    })
  }

  /** Delta first (remembering its keys), then the base minus those and the deletes. */
  async *#entries(
    p: number,
    k: Keys,
    base: string,
    delta: string,
    version: string,
  ): AsyncGenerator<[string, Buffer][]> {
    const deleted = new Set<string>()
    const seen = new Set<string>()
    if (delta !== '') {
      for await (const members of this.#sscan(k.del(delta))) for (const m of members) deleted.add(m)
      for await (const batch of this.#hscan(k.seg(delta))) {
        for (const [name] of batch) seen.add(name)
        yield batch
      }
    }
    if (base !== '') {
      for await (const batch of this.#hscan(k.seg(base))) {
        const out = delta === '' ? batch : batch.filter(([name]) => !seen.has(name) && !deleted.has(name))
        if (out.length > 0) yield out
      }
    }
    this.#check()
    let now: string | null
    try {
      now = await this.#client.hget(k.record, 'v')
    } catch (err) {
      throw toStateError(err, 'checkpoint load')
    }
    if ((now ?? '0') !== version) {
      throw checkpointAborted(
        `partition ${p}: the checkpoint changed while it was being read; load it again`,
        {
          partition: p,
        },
      )
    }
  }

  async *#hscan(key: string): AsyncGenerator<[string, Buffer][]> {
    let cursor = '0'
    do {
      this.#check()
      let reply: [Buffer, Buffer[]]
      try {
        reply = await this.#client.hscanBuffer(key, cursor, 'COUNT', SCAN_COUNT)
      } catch (err) {
        throw toStateError(err, 'HSCAN')
      }
      cursor = reply[0].toString()
      const flat = reply[1]
      const batch: [string, Buffer][] = []
      for (let i = 0; i + 1 < flat.length; i += 2) {
        batch.push([(flat[i] as Buffer).toString('utf8'), flat[i + 1] as Buffer])
      }
      if (batch.length > 0) yield batch
    } while (cursor !== '0')
  }

  async *#sscan(key: string): AsyncGenerator<string[]> {
    let cursor = '0'
    do {
      this.#check()
      let reply: [string, string[]]
      try {
        reply = await this.#client.sscan(key, cursor, 'COUNT', SCAN_COUNT)
      } catch (err) {
        throw toStateError(err, 'SSCAN')
      }
      cursor = reply[0]
      if (reply[1].length > 0) yield reply[1]
    } while (cursor !== '0')
  }

  async close(): Promise<void> {
    if (this.#closed) return
    await this.#queue.idle()
    this.#closed = true
    await Promise.all(this.#merges.values())
  }
}

// --- helpers ------------------------------------------------------------------------------------

function appended(reply: Reply, partition: number, epoch: number): number {
  if (Number(reply[0]) !== 1) throw new FencedError(partition, epoch, Number(reply[1]))
  return offsetOf(String(reply[1]))
}

/** The offset of a stream ID `0-N`. */
function offsetOf(id: string): number {
  const dash = id.indexOf('-')
  const n = Number(id.slice(dash + 1))
  if (dash < 0 || id.slice(0, dash) !== '0' || !Number.isSafeInteger(n)) {
    throw new StateError(
      ErrorCodes.STATE_BACKEND,
      `replay log entry ${JSON.stringify(id)} is not a Shoal log ID (0-N)`,
    )
  }
  return n
}

function parseEntry(id: Buffer, fields: Buffer[]): LogEntry {
  const e: LogEntry = {
    offset: offsetOf(id.toString('latin1')),
    epoch: 0,
    producerId: '',
    sequence: 0,
    count: 0,
    payload: Buffer.alloc(0),
  }
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = (fields[i] as Buffer).toString('latin1')
    const value = fields[i + 1] as Buffer
    switch (name) {
      case 'p':
        e.producerId = value.toString('utf8')
        break
      case 's':
        e.sequence = Number(value.toString('latin1'))
        break
      case 'n':
        e.count = Number(value.toString('latin1'))
        break
      case 'e':
        e.epoch = Number(value.toString('latin1'))
        break
      case 'd':
        e.payload = value
        break
    }
  }
  return e
}

async function* noEntries(): AsyncGenerator<[string, Buffer][]> {}

function toBuffer(value: Uint8Array): Buffer {
  return Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength)
}

function durabilityTimeout(message: string, data: Record<string, unknown>): ShoalError {
  return new ShoalError(
    ErrorCodes.DURABILITY_TIMEOUT,
    `redis ${message}; the write is on the primary but not as durable as required`,
    {
      retryable: true,
      data,
    },
  )
}
