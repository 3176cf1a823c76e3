/**
 * Coordinator leadership through a lease in Redis (docs/decisions.md, "Coordinator high
 * availability"). Replicas sharing `--state redis://` compete for one key:
 *
 *   acquire   INCR <prefix>:leader-epoch, then SET <prefix>:leader "<id> <epoch>" NX PX ttl
 *   renew     Lua: PEXPIRE only if the key still holds our "<id> <epoch>" (fenced renewal)
 *   release   Lua: DEL only if it holds ours
 *
 * The leadership epoch (the INCR value) only grows: every assignment a leader sends carries it
 * and workers ignore a lower one, so a deposed leader cannot move a partition.
 *
 * A leader counts its lease from the moment it *sent* the last successful renewal, on its own
 * monotonic clock, and considers itself deposed `safetyMs` before that lease would expire in
 * Redis: when its process was paused (SIGSTOP, a long GC) or cut off from Redis, it knows it
 * may have been replaced before it acts again, without comparing clocks across hosts.
 */
import { EventEmitter } from 'node:events'
import type { Cluster, Redis } from 'ioredis'

const RENEW = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`

const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`

export interface LeaderLeaseOptions {
  redis: Redis | Cluster
  /** This replica's id (the coordinator's node id). */
  id: string
  /** Key prefix. @default 'shoal:coordinator' */
  prefix?: string
  /** Lease length. @default 1500 */
  ttlMs?: number
  /** How often a leader renews and a standby tries to acquire. @default ttlMs / 5 */
  intervalMs?: number
  /** A leader steps down this long before its lease could expire in Redis. @default ttlMs / 5 */
  safetyMs?: number
  /**
   * After this replica saw Redis in trouble (its connection came back, a lease command failed or
   * took longer than intervalMs), a standby waits this long before claiming a free lease: one
   * that lapsed while Redis was away lapsed because of Redis, and its holder gets the first
   * chance to re-take it. @default 2 x intervalMs
   */
  takeoverGraceMs?: number
}

export interface LeaderInfo {
  id: string
  epoch: number
}

/**
 * Events: 'elected' (epoch), 'deposed' (reason), 'retaken' (ms since the last renewal: the
 * lease had lapsed, typically while Redis restarted, and nobody claimed a leadership epoch in
 * between, so this leader holds it again). A deposed lease stops for good: the process that held
 * it restarts as a standby (a coordinator that was leader has state that a newer leader may have
 * superseded, so it never resumes leading).
 */
export class LeaderLease extends EventEmitter<{ elected: [number]; deposed: [string]; retaken: [number] }> {
  readonly #redis: Redis | Cluster
  readonly #id: string
  readonly #key: string
  readonly #epochKey: string
  readonly #ttl: number
  readonly #interval: number
  readonly #safety: number
  readonly #grace: number
  /**
   * performance.now() when this replica last saw Redis in trouble: its connection came back (not
   * the first connect), a lease command failed, or one took longer than the renewal interval.
   */
  #troubleAt = -Infinity
  #epoch = 0
  #value = ''
  /** performance.now() when the last successful acquire or renewal was sent. */
  #validFrom = -Infinity
  #leading = false
  #stopped = false
  #timer: NodeJS.Timeout | null = null
  #busy = false
  // For the deposition reason: what the renewals went through since the last success.
  #failures = 0
  #lastError = ''
  #lastAttempt = -Infinity
  #longestGap = 0

  constructor(o: LeaderLeaseOptions) {
    super()
    this.#redis = o.redis
    this.#id = o.id
    const prefix = o.prefix ?? 'shoal:coordinator'
    this.#key = `${prefix}:leader`
    this.#epochKey = `${prefix}:leader-epoch`
    this.#ttl = o.ttlMs ?? 1500
    this.#interval = o.intervalMs ?? Math.max(50, Math.floor(this.#ttl / 5))
    this.#safety = o.safetyMs ?? Math.floor(this.#ttl / 5)
    this.#grace = o.takeoverGraceMs ?? 2 * this.#interval
    let connected = (this.#redis as { status?: string }).status === 'ready'
    this.#redis.on('ready', () => {
      if (connected) this.#troubleAt = performance.now()
      connected = true
    })
    this.#redis.defineCommand('shoalLeaseRenew', { numberOfKeys: 1, lua: RENEW })
    this.#redis.defineCommand('shoalLeaseRelease', { numberOfKeys: 1, lua: RELEASE })
  }

  /** The leadership epoch while leading (0 before). */
  get epoch(): number {
    return this.#epoch
  }

  /** Leading, and the lease cannot have expired yet by this process's own clock. */
  get valid(): boolean {
    return this.#leading && performance.now() - this.#validFrom < this.#ttl - this.#safety
  }

  get leading(): boolean {
    return this.#leading
  }

  start(): void {
    if (this.#timer !== null || this.#stopped) return
    this.#timer = setInterval(() => void this.#step(), this.#interval)
    void this.#step()
  }

  /** Who leads now, as recorded in Redis (null when nobody holds the lease). */
  async current(): Promise<LeaderInfo | null> {
    const v = await this.#redis.get(this.#key)
    return v === null ? null : parseValue(v)
  }

  /** Stop competing; a leader releases its lease so a standby takes over at once. */
  async stop(): Promise<void> {
    this.#stopped = true
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
    if (this.#leading) {
      this.#leading = false
      await (this.#redis as unknown as { shoalLeaseRelease(k: string, v: string): Promise<number> })
        .shoalLeaseRelease(this.#key, this.#value)
        .catch(() => 0)
    }
  }

  async #step(): Promise<void> {
    if (this.#busy || this.#stopped) return
    this.#busy = true
    try {
      if (this.#leading) await this.#renew()
      else await this.#acquire()
    } finally {
      this.#busy = false
    }
  }

  async #acquire(): Promise<void> {
    const askedAt = performance.now()
    try {
      // Cheap check first: an epoch is spent only when the lease is free.
      const held = await this.#redis.exists(this.#key)
      const now = performance.now()
      if (now - askedAt > this.#interval) this.#troubleAt = now
      if (held === 1) return
      // Redis was just away for this replica too: a lease that lapsed meanwhile lapsed because
      // of Redis, not its holder, who gets the first chance to re-take it (#retake). Only
      // liveness depends on this; safety does not.
      if (now - this.#troubleAt < this.#grace) return
      const epoch = await this.#redis.incr(this.#epochKey)
      const value = `${this.#id} ${epoch}`
      // The lease runs from no earlier than this send (the commands before it may have waited
      // long for a Redis that was unreachable).
      const sentAt = performance.now()
      const ok = await this.#redis.set(this.#key, value, 'PX', this.#ttl, 'NX')
      if (ok !== 'OK' || this.#stopped) return
      this.#epoch = epoch
      this.#value = value
      this.#validFrom = sentAt
      this.#leading = true
      this.emit('elected', epoch)
    } catch {
      // Redis unreachable: a standby just keeps trying.
      this.#troubleAt = performance.now()
    }
  }

  async #renew(): Promise<void> {
    // Past the safety margin (a stall, slow renewals) the leader stops acting (`valid` is false)
    // but is deposed only if the lease is no longer its own: the fenced renewal below succeeds
    // only while the key still holds this leader's value, which means nobody else held it in
    // between; a key that is gone is re-taken only if nobody claimed an epoch since (#retake).
    // So a coordinator survives a stall or a Redis restart longer than its lease when no standby
    // stepped in, and a replaced one never resumes.
    const sentAt = performance.now()
    // A gap between attempts well above the interval means this process did not run (a stall).
    this.#longestGap = Math.max(this.#longestGap, sentAt - Math.max(this.#lastAttempt, this.#validFrom))
    this.#lastAttempt = sentAt
    let renewed: number
    try {
      renewed = await (
        this.#redis as unknown as { shoalLeaseRenew(k: string, v: string, ttl: number): Promise<number> }
      ).shoalLeaseRenew(this.#key, this.#value, this.#ttl)
    } catch (err) {
      // Not acting once past the margin (valid is false); the next renewal decides.
      this.#failures++
      this.#lastError = err instanceof Error ? err.message : String(err)
      return
    }
    if (renewed !== 1) {
      const retaken = await this.#retake()
      if (retaken !== false) return
      const since = performance.now() - this.#validFrom
      const seen =
        `last renewal ${Math.round(since)} ms ago, ${this.#failures} failed since` +
        `${this.#lastError === '' ? '' : ` (last: ${this.#lastError})`}, longest gap between attempts ` +
        `${Math.round(this.#longestGap)} ms`
      this.#depose(
        since >= this.#ttl - this.#safety
          ? `the lease expired (renewals failed, Redis was unreachable or this process was paused): ${seen}`
          : `another coordinator holds the lease: ${seen}`,
      )
      return
    }
    this.#validFrom = sentAt
    this.#failures = 0
    this.#lastError = ''
    this.#longestGap = 0
  }

  /**
   * The key no longer holds this leader's value. If it is free and no replica has claimed a
   * leadership epoch since this leader's (a standby claims one before it tries the key), nobody
   * led in between, so this leader may hold the lease again: typical after a Redis restart that
   * outlasted the lease (the key comes back with its expiry passed). Not atomic, so the epoch is
   * read again after the SET: a claim that slipped in between makes this leader let go.
   * True: re-taken; false: depose; null: Redis failed, the next renewal decides.
   */
  async #retake(): Promise<boolean | null> {
    const mine = String(this.#epoch)
    try {
      const sentAt = performance.now()
      if ((await this.#redis.get(this.#epochKey)) !== mine) return false
      if ((await this.#redis.set(this.#key, this.#value, 'PX', this.#ttl, 'NX')) !== 'OK') return false
      if ((await this.#redis.get(this.#epochKey)) !== mine || this.#stopped) {
        await (this.#redis as unknown as { shoalLeaseRelease(k: string, v: string): Promise<number> })
          .shoalLeaseRelease(this.#key, this.#value)
          .catch(() => 0)
        return false
      }
      const lapse = sentAt - this.#validFrom
      this.#validFrom = sentAt
      this.#failures = 0
      this.#lastError = ''
      this.#longestGap = 0
      this.emit('retaken', Math.round(lapse))
      return true
    } catch (err) {
      this.#failures++
      this.#lastError = err instanceof Error ? err.message : String(err)
      return null
    }
  }

  #depose(reason: string): void {
    if (!this.#leading) return
    this.#leading = false
    this.#stopped = true
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
    this.emit('deposed', reason)
  }
}

function parseValue(v: string): LeaderInfo | null {
  const i = v.lastIndexOf(' ')
  const epoch = Number(v.slice(i + 1))
  return i <= 0 || !Number.isSafeInteger(epoch) ? null : { id: v.slice(0, i), epoch }
}

/** What the leader publishes for standbys (and operators): members and the assignment. */
export interface WarmViewRecord {
  leader: string
  leaderEpoch: number
  members: string[]
  owners: (string | null)[]
  /** Wall-clock ms when written. */
  at?: number
}

/**
 * The leader's view, kept in Redis so a standby is warm: on takeover it knows which members to
 * expect back (and ends its recovery window when they all rejoined), and a standby's /status
 * shows the cluster it would take over. Writes are guarded by the leadership epoch: a record
 * with a lower epoch never replaces a newer leader's.
 */
export class WarmView {
  readonly #redis: Redis | Cluster
  readonly #key: string

  constructor(redis: Redis | Cluster, prefix = 'shoal:coordinator') {
    this.#redis = redis
    this.#key = `${prefix}:view`
    this.#redis.defineCommand('shoalViewWrite', { numberOfKeys: 1, lua: VIEW_WRITE })
  }

  async write(view: WarmViewRecord): Promise<void> {
    await (
      this.#redis as unknown as { shoalViewWrite(k: string, epoch: number, v: string): Promise<number> }
    ).shoalViewWrite(this.#key, view.leaderEpoch, JSON.stringify({ ...view, at: Date.now() }))
  }

  async read(): Promise<WarmViewRecord | null> {
    const v = await this.#redis.hget(this.#key, 'view')
    if (v === null) return null
    const parsed = JSON.parse(v) as Partial<WarmViewRecord>
    if (!Array.isArray(parsed.members) || typeof parsed.leaderEpoch !== 'number') return null
    return parsed as WarmViewRecord
  }
}

const VIEW_WRITE = `
local cur = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if tonumber(ARGV[1]) < cur then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'view', ARGV[2])
return 1`
