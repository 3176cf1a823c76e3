/**
 * A worker's control plane: it joins the coordinator, exchanges heartbeats with it on the main
 * thread, takes and gives back partitions as told (restoring before it reports a partition
 * ready, releasing before it acknowledges a revoke), and drains on request or SIGTERM.
 *
 * The worker watches the coordinator too: after `heartbeatMisses` silent intervals it stops
 * reporting ready and stops serving its partitions (the coordinator will have declared it dead
 * and moved them), until it is back in touch and has rejoined.
 *
 * What serving a partition means (accepting event batches, running the job, checkpointing) is
 * the PartitionHost's business; the control plane only sequences it.
 */
import { EventEmitter } from 'node:events'
import type { Logger } from 'pino'
import { ErrorCodes, ShoalError, type SerializedError } from '../errors.ts'
import {
  parseAssign,
  parseFenced,
  parseJoined,
  parsePause,
  type OwnedPartition,
} from '../protocol/control.ts'
import type { Envelope, HeartbeatLoad } from '../protocol/messages.ts'
import { Requests, isReplyOrError, reply } from '../transport/requests.ts'
import type { Connection, Listener, ListenAddress, Transport } from '../transport/transport.ts'

/** What the data plane does when partitions arrive and leave. All methods may be slow. */
export interface PartitionHost {
  /**
   * Load the partition's state (and replay its log) so it can serve at `epoch`; `leader` is the
   * leadership epoch of the coordinator that assigned it (coordinator HA; 0 without).
   */
  restore(partition: number, epoch: number, leader?: number): Promise<void>
  /** Record in the state store that a newer leader confirmed this owner (kept on a rejoin). */
  claim?(partition: number, epoch: number, leader: number): Promise<void>
  /** Stop serving: finish in-flight work and checkpoint. Called on revoke and drain. */
  release(partition: number, epoch: number): Promise<void>
  /** Drop the partition at once: it was fenced, another worker owns it now. */
  fence(partition: number): void
  pause(partitions: number[] | null): void
  resume(partitions: number[] | null): void
  load(): HeartbeatLoad
  /** Checkpoint the listed partitions (coordinator-triggered); resolves with those committed. */
  checkpoint?(
    checkpointId: string,
    partitions: readonly number[],
    full?: boolean,
  ): Promise<PartitionCheckpoint[]>
  /** The coordinator recorded a checkpoint of these partitions: trim what it covers. */
  checkpointComplete?(partitions: readonly number[]): Promise<void>
}

/** What a checkpoint of one partition committed. */
export interface PartitionCheckpoint {
  partition: number
  epoch: number
  logOffset: number
  keys: number
}

export type PartitionState = 'restoring' | 'ready' | 'releasing'

export interface WorkerOptions {
  transport: Transport
  /** The coordinator's transport address. */
  coordinator: string
  /**
   * Coordinator replicas (docs/decisions.md, "Coordinator high availability"): with more than
   * one, the worker dials them in turn until one accepts its join (standbys do not listen), and
   * moves to the next when its link closes or the coordinator falls silent. Includes
   * `coordinator`.
   */
  coordinators?: readonly string[]
  /** Where this worker's data listener binds. */
  listen: ListenAddress
  /** Address clients use to reach the data listener. @default the bound address */
  advertise?: string | undefined
  httpAddress?: string | null
  memberId: string
  capacity: number
  version: string
  /** Until the coordinator says otherwise in `joined`. @default 500 */
  heartbeatIntervalMs?: number
  /** @default 3 */
  heartbeatMisses?: number
  /** Longest wait for the coordinator's reply to join and leave. @default 5000 */
  requestTimeoutMs?: number
  host?: PartitionHost
  logger: Logger
  /** Handles data-plane connections (clients sending events, state queries). */
  onDataConnection?: (conn: Connection) => void
  /** Observers (metrics). */
  hooks?: { tick?(): void; heartbeatSent?(): void; heartbeatMissed?(): void }
  /**
   * The job identity announced at join: the built-in job name, or `PATH sha256:<16 hex>` of
   * the job file. The coordinator refuses a worker whose job, sources or sinks differ from the
   * cluster's (CONFIG_MISMATCH). Unset: none is announced and the coordinator does not check.
   */
  jobId?: string
  /** Canonical redacted descriptions of the worker's sources (connectors/url.ts describeSpec). */
  sources?: readonly string[]
  /** Canonical redacted descriptions of the worker's sinks. */
  sinks?: readonly string[]
}

/** What a worker announces at join for the coordinator to compare (see WorkerOptions.jobId). */
export interface JoinIdentity {
  jobId: string
  sources: readonly string[]
  sinks: readonly string[]
}

interface Owned {
  epoch: number
  state: PartitionState
}

const idleHost: PartitionHost = {
  restore: () => Promise.resolve(),
  release: () => Promise.resolve(),
  fence() {},
  pause() {},
  resume() {},
  load: () => ({ queueDepth: 0, inFlight: 0, eventsPerSec: 0, rssBytes: process.memoryUsage.rss(), lag: 0 }),
}

export class Worker extends EventEmitter<{
  joined: []
  /**
   * The coordinator refused this worker for good (CONFIG_MISMATCH: its job, sources or sinks
   * differ from the cluster's). The worker stops trying to join; start() rejects with the error
   * when it happens on the first join.
   */
  refused: [err: ShoalError]
  assigned: [partitions: number[]]
  revoked: [partitions: number[]]
  fenced: [partitions: number[], reason: string]
  suspect: []
  shutdown: []
}> {
  readonly #opts: WorkerOptions
  readonly #log: Logger
  readonly #host: PartitionHost
  readonly #owned = new Map<number, Owned>()
  readonly #requests = new Requests()
  #conn: Connection | null = null
  #listener: Listener | null = null
  #dataAddress = ''
  #registered = false
  #joining = false
  #coordinatorSuspect = false
  #draining = false
  #stopped = false
  #epoch = 0
  #partitions = 0
  #interval: number
  #misses: number
  #ticker: NodeJS.Timeout | null = null
  #tickN = 0
  #heard = false
  #missed = 0
  #lastTickAt = performance.now()
  #fencedTotal = 0
  #identity: JoinIdentity | null = null
  #refused: ShoalError | null = null
  /** Serializes assign/revoke/fence handling so they apply in the order the coordinator sent them. */
  #work: Promise<void> = Promise.resolve()
  /** Coordinator replicas to follow (more than one: HA mode, see WorkerOptions.coordinators). */
  readonly #replicas: readonly string[]
  #nextReplica = 0
  #dialing: Promise<void> | null = null
  /** The replica followed now (HA mode). */
  #leaderAddress: string | undefined
  /** Highest leadership epoch seen: a coordinator with a lower one was deposed. */
  #leaderEpoch = 0

  constructor(options: WorkerOptions) {
    super()
    this.#opts = options
    this.#log = options.logger
    this.#host = options.host ?? idleHost
    this.#interval = options.heartbeatIntervalMs ?? 500
    this.#misses = options.heartbeatMisses ?? 3
    const replicas = [...new Set([options.coordinator, ...(options.coordinators ?? [])])]
    this.#replicas = replicas
    if (options.jobId !== undefined) {
      this.#identity = {
        jobId: options.jobId,
        sources: [...(options.sources ?? [])],
        sinks: [...(options.sinks ?? [])],
      }
    }
  }

  get memberId(): string {
    return this.#opts.memberId
  }
  get dataAddress(): string {
    return this.#dataAddress
  }
  /** Size of the cluster's key-group space, once joined (0 before). */
  get partitionCount(): number {
    return this.#partitions
  }
  get listener(): Listener | null {
    return this.#listener
  }
  /** Partitions this worker owns and their state. */
  partitions(): Map<number, { epoch: number; state: PartitionState }> {
    return new Map([...this.#owned].map(([p, o]) => [p, { ...o }]))
  }

  /** Whether this worker may serve `partition` at `epoch` right now. */
  serves(partition: number, epoch?: number): boolean {
    const o = this.#owned.get(partition)
    return (
      o !== undefined &&
      o.state === 'ready' &&
      !this.#coordinatorSuspect &&
      !this.#draining &&
      (epoch === undefined || epoch === 0 || epoch === o.epoch)
    )
  }

  /** Bind the data listener (start() does it too); lets the caller learn the port first. */
  async startListening(): Promise<Listener> {
    this.#listener ??= await this.#opts.transport.listen(this.#opts.listen, (conn) => {
      if (this.#opts.onDataConnection !== undefined) this.#opts.onDataConnection(conn)
      else void conn.close()
    })
    if (this.#dataAddress === '') this.#dataAddress = this.#opts.advertise ?? this.#listener.address
    return this.#listener
  }

  /** The address clients should dial; set before start() (it is announced in the join). */
  setAdvertise(address: string): void {
    this.#dataAddress = address
  }

  /** The job identity announced at join (instead of WorkerOptions.jobId/sources/sinks); set before start(). */
  setJoinIdentity(identity: JoinIdentity): void {
    this.#identity = { jobId: identity.jobId, sources: [...identity.sources], sinks: [...identity.sinks] }
  }

  /**
   * No coordinator has been heard from for the failure-detection time (it died, hangs, or a
   * failover is in progress): the worker serves nothing until it is back in touch.
   */
  get coordinatorSilent(): boolean {
    return this.#coordinatorSuspect
  }

  /** The error the coordinator refused this worker with, if it did (see the 'refused' event). */
  get refusal(): ShoalError | null {
    return this.#refused
  }

  async start(): Promise<void> {
    await this.startListening()
    if (this.#replicas.length > 1) {
      this.#ticker = setInterval(() => this.#tick(), this.#interval)
      this.#ticker.unref()
      await this.#follow('starting')
    } else {
      this.#conn = await this.#opts.transport.connect(this.#opts.coordinator, {
        reconnect: { initialDelayMs: 50, maxDelayMs: Math.max(500, this.#interval * 2) },
      })
      void this.#watchStatus(this.#conn)
      void this.#serveCoordinator(this.#conn)
      this.#ticker = setInterval(() => this.#tick(), this.#interval)
      this.#ticker.unref()
      await this.#join()
    }
    if (this.#refused !== null) {
      await this.stop()
      throw this.#refused
    }
  }

  readiness(): { ok: boolean; detail: Record<string, unknown> } {
    const restoring = [...this.#owned.values()].filter((o) => o.state !== 'ready').length
    const ok = this.#registered && !this.#coordinatorSuspect && !this.#draining && restoring === 0
    return {
      ok,
      detail: {
        registered: this.#registered,
        coordinatorReachable: !this.#coordinatorSuspect,
        draining: this.#draining,
        partitions: this.#owned.size,
        partitionsNotReady: restoring,
      },
    }
  }

  heartbeatLoopAgeMs(): number {
    return performance.now() - this.#lastTickAt
  }

  status(): Record<string, unknown> {
    return {
      memberId: this.#opts.memberId,
      dataAddress: this.#dataAddress,
      coordinator: this.#opts.coordinator,
      registered: this.#registered,
      coordinatorReachable: !this.#coordinatorSuspect,
      draining: this.#draining,
      epoch: this.#epoch,
      fencedPartitionsTotal: this.#fencedTotal,
      heartbeatIntervalMs: this.#interval,
      heartbeatMisses: this.#misses,
      partitions: [...this.#owned].sort((a, b) => a[0] - b[0]).map(([p, o]) => ({ partition: p, ...o })),
    }
  }

  /**
   * Graceful drain: stop taking work, release every partition (finish in flight, checkpoint),
   * hand them back with a leave, then close. Bounded by timeoutMs.
   */
  async drain(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.#draining) return
    this.#draining = true
    const timeoutMs = options.timeoutMs ?? 20_000
    const deadline = performance.now() + timeoutMs
    this.#log.info({ partitions: this.#owned.size, timeoutMs }, 'draining')
    await this.#enqueue(async () => {
      const released: OwnedPartition[] = []
      for (const [partition, o] of this.#owned) {
        o.state = 'releasing'
        await withDeadline(this.#host.release(partition, o.epoch), deadline - performance.now()).catch(
          (err: unknown) => this.#log.warn({ err, partition }, 'release failed during drain'),
        )
        released.push({ partition, epoch: o.epoch })
      }
      this.#owned.clear()
      const conn = this.#conn
      if (conn !== null && this.#registered) {
        await this.#requests
          .request(
            conn,
            { kind: 'control', body: { op: 'leave', partitions: released } },
            Math.max(100, deadline - performance.now()),
          )
          .catch((err: unknown) => this.#log.warn({ err }, 'coordinator did not acknowledge the leave'))
      }
    })
    await this.stop({ timeoutMs: Math.max(100, deadline - performance.now()) })
  }

  /** Close connections and timers. Without drain() first, partitions are simply dropped. */
  async stop(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.#stopped) return
    this.#stopped = true
    if (this.#ticker !== null) clearInterval(this.#ticker)
    this.#requests.rejectAll(new ShoalError(ErrorCodes.CLOSED, 'worker stopped'))
    const timeoutMs = options.timeoutMs ?? 2000
    await Promise.all([this.#conn?.close({ timeoutMs }), this.#listener?.close({ timeoutMs })])
  }

  // --- coordinator link --------------------------------------------------------------------------

  async #watchStatus(conn: Connection): Promise<void> {
    for await (const s of conn.status()) {
      if (this.#replicas.length > 1) {
        // HA: no redial of the same replica; the next one that accepts is the leader.
        if ((s.type === 'disconnected' || s.type === 'closed') && conn === this.#conn && !this.#stopped) {
          this.#registered = false
          this.#log.warn(
            { err: s.error, coordinator: conn.peer.address },
            'lost the coordinator; following the leader',
          )
          void this.#follow('link lost')
        }
        continue
      }
      if (s.type === 'disconnected') {
        this.#registered = false
        this.#log.warn({ err: s.error }, 'lost the coordinator; reconnecting')
      } else if (s.type === 'ready') {
        void this.#join()
      } else if (s.type === 'closed' && !this.#stopped) {
        this.#registered = false
        this.#log.error({ err: s.error }, 'coordinator connection closed for good')
      }
    }
  }

  /**
   * HA mode: drop the current link and dial the replicas in turn (after the one that failed)
   * until one accepts and takes the join. A standby does not listen, so the first replica that
   * answers is the leader; one that answers with a lower leadership epoch than this worker has
   * seen was deposed and is skipped. Meanwhile the worker is suspect and serves nothing.
   */
  #follow(reason: string): Promise<void> {
    this.#dialing ??= (async () => {
      const old = this.#conn
      this.#conn = null
      this.#registered = false
      if (old !== null) void old.close({ timeoutMs: 0 }).catch(() => {})
      // The replica just left is tried again only after a while: it is dead or paused (a paused
      // one accepts the connection and never answers), and a standby takes over within the
      // lease time, so the others are the ones to keep trying meanwhile.
      const left = old === null ? undefined : this.#leaderAddress
      const avoidUntil = performance.now() + 2 * this.#interval * this.#misses
      for (let attempt = 0; !this.#stopped && this.#refused === null; attempt++) {
        const address = this.#replicas[this.#nextReplica++ % this.#replicas.length]!
        if ((attempt + 1) % this.#replicas.length === 0) await sleep(Math.min(200, this.#interval))
        if (address === left && performance.now() < avoidUntil) continue
        let conn: Connection
        try {
          conn = await this.#opts.transport.connect(address, {
            signal: AbortSignal.timeout(Math.max(500, this.#interval)),
          })
        } catch (err) {
          this.#log.debug({ err, coordinator: address, reason }, 'coordinator replica not reachable')
          continue
        }
        this.#conn = conn
        void this.#serveCoordinator(conn)
        await this.#join()
        if (this.#registered && this.#conn === conn) {
          this.#leaderAddress = address
          void this.#watchStatus(conn)
          this.#log.info(
            { coordinator: address, leader: this.#leaderEpoch },
            'following the coordinator leader',
          )
          return
        }
        this.#conn = null
        void conn.close({ timeoutMs: 0 }).catch(() => {})
      }
    })().finally(() => {
      this.#dialing = null
    })
    return this.#dialing
  }

  async #join(): Promise<void> {
    const conn = this.#conn
    if (conn === null || this.#joining || this.#stopped || this.#draining || this.#refused !== null) return
    this.#joining = true
    try {
      // What this join reports; the coordinator's `kept` answers for these entries only.
      const reported = new Map(this.#owned)
      const owned = [...reported].map(([partition, o]) => ({ partition, epoch: o.epoch }))
      const res = await this.#requests.request(
        conn,
        {
          kind: 'control',
          body: {
            op: 'join',
            memberId: this.#opts.memberId,
            dataAddress: this.#dataAddress,
            httpAddress: this.#opts.httpAddress ?? null,
            capacity: this.#opts.capacity,
            version: this.#opts.version,
            epoch: this.#epoch,
            owned,
            ...(this.#identity === null
              ? {}
              : {
                  jobId: this.#identity.jobId,
                  sources: [...this.#identity.sources],
                  sinks: [...this.#identity.sinks],
                }),
          },
        },
        this.#opts.requestTimeoutMs ?? 5000,
      )
      if (res.kind !== 'control' || res.body.op !== 'joined') {
        throw new ShoalError(ErrorCodes.BAD_MESSAGE, `expected joined, got ${res.kind}`)
      }
      const joined = parseJoined(res.body)
      const leader = typeof res.body.leader === 'number' ? res.body.leader : 0
      if (leader < this.#leaderEpoch) {
        throw new ShoalError(
          ErrorCodes.NOT_LEADER,
          `coordinator ${conn.peer.address} leads at epoch ${leader}, below ${this.#leaderEpoch}: it was deposed`,
          { retryable: true },
        )
      }
      this.#leaderEpoch = leader
      this.#partitions = joined.partitions
      this.#epoch = Math.max(this.#epoch, joined.epoch)
      if (joined.heartbeatIntervalMs !== this.#interval || joined.heartbeatMisses !== this.#misses) {
        this.#interval = joined.heartbeatIntervalMs
        this.#misses = joined.heartbeatMisses
        if (this.#ticker !== null) clearInterval(this.#ticker)
        this.#ticker = setInterval(() => this.#tick(), this.#interval)
        this.#ticker.unref()
      }
      const kept = new Set(joined.kept.map((k) => k.partition))
      // Only entries reported in the join and still the same: an assign handled while the reply
      // was on its way (the coordinator sends it right after) set a new entry, not to be fenced.
      const lost = [...reported].filter(([p, o]) => !kept.has(p) && this.#owned.get(p) === o).map(([p]) => p)
      if (lost.length > 0) this.#fence(lost, 'not kept on rejoin')
      if (leader > 0 && this.#host.claim !== undefined) this.#confirmKept(leader)
      this.#registered = true
      this.#heard = true
      this.#missed = 0
      this.#setSuspect(false)
      this.#log.info(
        { partitions: joined.partitions, kept: kept.size, epoch: joined.epoch },
        'joined the cluster',
      )
      this.emit('joined')
    } catch (err) {
      if (err instanceof ShoalError && err.code === ErrorCodes.CONFIG_MISMATCH) {
        // Retrying cannot help: the configuration must change. Stop serving and say why.
        this.#refused = err
        this.#registered = false
        if (this.#owned.size > 0) this.#fence([...this.#owned.keys()], 'refused by the coordinator')
        this.#log.error({ err }, 'the coordinator refused this worker')
        this.emit('refused', err)
      } else if (!this.#stopped && this.#replicas.length > 1) {
        this.#log.warn({ err, coordinator: conn.peer.address }, 'join failed; trying the next coordinator')
      } else if (!this.#stopped) {
        this.#log.warn({ err }, 'join failed; retrying')
        setTimeout(() => void this.#join(), this.#interval).unref()
      }
    } finally {
      this.#joining = false
    }
  }

  async #serveCoordinator(conn: Connection): Promise<void> {
    try {
      for await (const env of conn) {
        this.#heard = true
        if (this.#requests.settle(env)) continue
        try {
          this.#onCoordinatorMessage(conn, env)
        } catch (err) {
          if (!(err instanceof ShoalError)) throw err
          if (isReplyOrError(env)) {
            // A late reply (its request timed out) or the peer's own error report: log, never
            // answer, so two peers cannot bounce errors back and forth.
            this.#log.debug({ err, kind: env.kind, corr: env.corr }, 'ignored an unmatched reply')
            continue
          }
          this.#log.warn({ err, kind: env.kind }, 'rejected a message from the coordinator')
          conn.send({
            kind: 'control',
            body: { op: 'error', code: err.code, message: err.message, fatal: false },
            corr: env.corr ?? undefined,
          })
        }
      }
    } catch (err) {
      if (!this.#stopped) this.#log.error({ err }, 'coordinator connection failed')
    }
  }

  #onCoordinatorMessage(conn: Connection, env: Envelope): void {
    if (env.kind === 'heartbeat') {
      this.#epoch = Math.max(this.#epoch, env.body.epoch)
      return
    }
    if (env.kind === 'checkpoint') {
      this.#onCheckpoint(conn, env)
      return
    }
    if (env.kind !== 'control')
      throw new ShoalError(ErrorCodes.BAD_MESSAGE, `unexpected ${env.kind} from the coordinator`)
    const body = env.body
    const leader = (body as { leader?: unknown }).leader
    if (typeof leader === 'number' && leader < this.#leaderEpoch) {
      throw new ShoalError(
        ErrorCodes.NOT_LEADER,
        `${body.op} from a deposed coordinator (leadership epoch ${leader} < ${this.#leaderEpoch}) ignored`,
      )
    }
    switch (body.op) {
      case 'assign': {
        const a = parseAssign(body)
        this.#epoch = Math.max(this.#epoch, a.epoch)
        const by = typeof leader === 'number' ? leader : this.#leaderEpoch
        void this.#enqueue(() => this.#assign(conn, a.partitions, by))
        return
      }
      case 'revoke': {
        const r = parseAssign(body)
        this.#epoch = Math.max(this.#epoch, r.epoch)
        void this.#enqueue(async () => {
          const released = await this.#revoke(r.partitions)
          reply(conn, env, { kind: 'control', body: { op: 'revoked', partitions: released } })
        })
        return
      }
      case 'fenced': {
        const f = parseFenced(body)
        this.#epoch = Math.max(this.#epoch, f.epoch)
        // Applied at once, not queued behind assigns: a restore retrying for a partition that is
        // no longer ours stops only when the fence removes it. The data plane makes this safe: a
        // restore or checkpoint of the partition under way stops without writing anything.
        this.#fence(f.partitions, f.reason)
        return
      }
      case 'pause':
        this.#host.pause(parsePause(body).partitions)
        return
      case 'resume':
        this.#host.resume(parsePause(body).partitions)
        return
      case 'drain':
        void this.drain()
        return
      case 'shutdown':
        this.emit('shutdown')
        return
      case 'routing':
        return
      default:
        throw new ShoalError(ErrorCodes.BAD_MESSAGE, `a worker does not handle control ${body.op}`)
    }
  }

  #onCheckpoint(conn: Connection, env: Envelope & { kind: 'checkpoint' }): void {
    const body = env.body
    const host = this.#host
    switch (body.op) {
      case 'trigger': {
        // Every partition this worker serves now; restoring and releasing ones are not ready.
        const ready = [...this.#owned].filter(([, o]) => o.state === 'ready').map(([p]) => p)
        const id = String(body.checkpointId)
        const answer = (message: Parameters<typeof reply>[2]): void => {
          try {
            reply(conn, env, message)
          } catch {
            // The coordinator's link closed meanwhile; it times the checkpoint out.
          }
        }
        void (host.checkpoint?.(id, ready, body.full === true) ?? Promise.resolve([])).then(
          (done) =>
            answer({
              kind: 'checkpoint',
              body: {
                op: 'ack',
                checkpointId: body.checkpointId,
                partitions: done.map((d) => d.partition),
                offsets: done.map((d) => d.logOffset),
                keys: done.reduce((n, d) => n + d.keys, 0),
              },
            }),
          (err: unknown) => {
            this.#log.warn({ err, checkpointId: id }, 'checkpoint failed')
            answer({
              kind: 'checkpoint',
              body: { op: 'abort', checkpointId: body.checkpointId, error: toSerialized(err) },
            })
          },
        )
        return
      }
      case 'complete':
        void host
          .checkpointComplete?.(body.partitions ?? [])
          .catch((err: unknown) => this.#log.debug({ err }, 'trim after checkpoint failed'))
        return
      case 'ack':
      case 'abort':
        // Replies go the other way; a stray one is ignored.
        return
    }
  }

  #enqueue(task: () => Promise<void>): Promise<void> {
    const run = this.#work.then(task)
    this.#work = run.catch((err: unknown) => this.#log.error({ err }, 'partition task failed'))
    return this.#work
  }

  async #assign(conn: Connection, partitions: OwnedPartition[], leader: number): Promise<void> {
    if (this.#draining) {
      // Leaving: take nothing new. The coordinator moves these on when the leave arrives.
      this.#log.debug({ partitions: partitions.length }, 'draining; not taking assigned partitions')
      return
    }
    const fresh = partitions.filter((p) => p.partition < this.#partitions || this.#partitions === 0)
    for (const { partition, epoch } of fresh) this.#owned.set(partition, { epoch, state: 'restoring' })
    const ready: OwnedPartition[] = []
    await Promise.all(
      fresh.map(async ({ partition, epoch }) => {
        if (await this.#restoreWithRetry(partition, epoch, leader)) {
          const o = this.#owned.get(partition)
          if (o?.epoch === epoch) {
            o.state = 'ready'
            ready.push({ partition, epoch })
          }
        }
      }),
    )
    if (ready.length > 0) {
      ready.sort((a, b) => a.partition - b.partition)
      try {
        conn.send({ kind: 'control', body: { op: 'assigned', partitions: ready } })
      } catch {
        // The link is gone; the rejoin reports what we own.
      }
      this.emit(
        'assigned',
        ready.map((r) => r.partition),
      )
    }
  }

  /**
   * Restore, retrying retryable failures (the state backend is down, a lock not yet released)
   * with backoff for as long as the partition is still ours at this epoch. A non-retryable
   * failure (fenced by a newer epoch, corrupt state) leaves it not ready, and readiness false.
   */
  async #restoreWithRetry(partition: number, epoch: number, leader: number): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#host.restore(partition, epoch, leader > 0 ? leader : undefined)
        return true
      } catch (err) {
        const retryable = err instanceof ShoalError && err.retryable
        const stillOurs = this.#owned.get(partition)?.epoch === epoch && !this.#stopped
        if (!stillOurs) {
          this.#log.info({ err, partition, epoch }, 'restore abandoned: the partition is no longer ours')
          return false
        }
        if (!retryable) {
          this.#log.error({ err, partition, epoch }, 'restore failed; the partition stays not ready')
          return false
        }
        const delay = Math.min(5000, 100 * 2 ** Math.min(attempt, 6))
        this.#log.warn({ err, partition, epoch, attempt, retryInMs: delay }, 'restore failed; retrying')
        await new Promise((r) => setTimeout(r, delay))
        if (this.#owned.get(partition)?.epoch !== epoch || this.#stopped) return false
      }
    }
  }

  /**
   * Kept on a rejoin under coordinator HA: record the current leader with each kept partition's
   * claim, so a deposed leader's late assignment of it cannot be claimed by another worker. A
   * claim refused (a newer owner or leader got there first) fences the partition here.
   */
  #confirmKept(leader: number): void {
    void this.#enqueue(async () => {
      const host = this.#host
      await Promise.all(
        [...this.#owned].map(async ([partition, o]) => {
          try {
            await host.claim!(partition, o.epoch, leader)
          } catch (err) {
            if (err instanceof ShoalError && err.code === ErrorCodes.FENCED) {
              if (this.#owned.get(partition) === o) this.#fence([partition], errorText(err))
            } else {
              // Redis down: the claim at restore time stands; the next rejoin tries again.
              this.#log.warn({ err, partition }, 'could not confirm a kept partition with the new leader')
            }
          }
        }),
      )
    })
  }

  async #revoke(partitions: OwnedPartition[]): Promise<OwnedPartition[]> {
    const released: OwnedPartition[] = []
    await Promise.all(
      partitions.map(async ({ partition, epoch }) => {
        const o = this.#owned.get(partition)
        if (o === undefined) {
          released.push({ partition, epoch })
          return
        }
        o.state = 'releasing'
        try {
          await this.#host.release(partition, o.epoch)
        } catch (err) {
          this.#log.warn({ err, partition }, 'release failed; handing the partition back anyway')
        }
        this.#owned.delete(partition)
        released.push({ partition, epoch })
      }),
    )
    this.emit(
      'revoked',
      released.map((r) => r.partition),
    )
    return released
  }

  #fence(partitions: number[], reason: string): void {
    const dropped = partitions.filter((p) => this.#owned.delete(p))
    if (dropped.length === 0) return
    for (const p of dropped) this.#host.fence(p)
    this.#fencedTotal += dropped.length
    this.#log.warn({ partitions: dropped.length, reason }, 'fenced: partitions moved to another worker')
    this.emit('fenced', dropped, reason)
  }

  #setSuspect(suspect: boolean): void {
    if (suspect === this.#coordinatorSuspect) return
    this.#coordinatorSuspect = suspect
    if (suspect) {
      this.#log.warn(
        { missed: this.#missed },
        'coordinator silent; not serving partitions until it is reachable again',
      )
      this.emit('suspect')
    }
  }

  #tick(): void {
    this.#lastTickAt = performance.now()
    this.#opts.hooks?.tick?.()
    if (this.#heard) {
      this.#missed = 0
      if (this.#registered) this.#setSuspect(false)
    } else {
      this.#missed++
      this.#opts.hooks?.heartbeatMissed?.()
    }
    this.#heard = false
    if (this.#missed >= this.#misses) {
      this.#setSuspect(true)
      // HA: a silent coordinator (paused, cut off) is left for the replica that leads now.
      if (this.#replicas.length > 1 && this.#dialing === null && !this.#stopped)
        void this.#follow('coordinator silent')
    }
    const conn = this.#conn
    if (conn === null || !this.#registered || conn.state !== 'ready') return
    try {
      conn.send({
        kind: 'heartbeat',
        body: { n: ++this.#tickN, epoch: this.#epoch, load: this.#host.load() },
      })
      this.#opts.hooks?.heartbeatSent?.()
    } catch {
      // Closed meanwhile: the status watcher handles it.
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref())
}

function withDeadline<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new ShoalError(ErrorCodes.TIMEOUT, `timed out after ${Math.round(ms)} ms`)),
        Math.max(0, ms),
      )
      timer.unref()
    }),
  ])
}

function toSerialized(err: unknown): SerializedError {
  if (err instanceof ShoalError) return err.toJSON()
  return new ShoalError(ErrorCodes.INTERNAL, err instanceof Error ? err.message : String(err)).toJSON()
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
