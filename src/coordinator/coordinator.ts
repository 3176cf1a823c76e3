/**
 * The coordinator: membership, failure detection, sticky partition assignment with fencing
 * epochs, the routing table, and cluster status. It runs only control-plane code on its main
 * thread; nothing here waits on user code.
 *
 * Failure detection counts missed heartbeats on this node's own clock (never compares clocks
 * across hosts): every interval it checks whether each member was heard from since the last
 * tick; `heartbeatMisses` silent ticks in a row make the member dead. A closed connection makes
 * a member suspect at once; it stays an owner until declared dead, so a quick reconnect (a
 * network blip, a coordinator-side goaway) moves nothing. A crashed process is told apart from
 * a blip at once: when the connection closed, the coordinator dials the member's data port, and
 * a refused connection (nothing listens there any more: the process is gone, its host is up)
 * declares it dead without waiting for the missed heartbeats.
 *
 * Reassignment is revoke-before-assign: live previous owners must acknowledge a revoke before
 * the new assignment is committed and the new owners are told, so no partition is served by
 * two live workers. A dead owner cannot acknowledge; it is fenced by the epoch instead (every
 * move carries a fresh, higher epoch that all later state writes must carry).
 *
 * After a coordinator restart, workers rejoin and report what they own; during a recovery
 * window (one failure-detection period) the coordinator collects those reports and rebuilds
 * the assignment from them, so workers keep their partitions and epochs stay monotonic.
 */
import { EventEmitter } from 'node:events'
import net from 'node:net'
import type { Logger } from 'pino'
import { ErrorCodes, ShoalError } from '../errors.ts'
import {
  parseJoin,
  parsePartitionList,
  type JoinFields,
  type OwnedPartition,
  type RoutingFields,
} from '../protocol/control.ts'
import type { ControlBody, Envelope, HeartbeatLoad } from '../protocol/messages.ts'
import { validatePartitions } from '../protocol/partition.ts'
import { parseHostPort } from '../transport/address.ts'
import { Requests, isReplyOrError, reply, replyError } from '../transport/requests.ts'
import { Gateway } from './gateway.ts'
import type { Connection, Listener, ListenAddress, Transport } from '../transport/transport.ts'
import {
  computeAssignment,
  diffAssignments,
  emptyAssignment,
  validateAssignment,
  type Assignment,
} from './assignment.ts'

export type MemberState = 'alive' | 'suspect' | 'dead' | 'left'

export interface CoordinatorOptions {
  /** Shown in status (replicas of an HA pair tell themselves apart by it). @default 'coordinator' */
  nodeId?: string
  transport: Transport
  listen: ListenAddress
  /** Key groups; fixed for the life of the cluster. @default 256 */
  partitions?: number
  /** @default 500 */
  heartbeatIntervalMs?: number
  /** Silent intervals before a member is dead. @default 3 */
  heartbeatMisses?: number
  /** How long a live owner has to acknowledge a revoke before it is fenced. @default 5000 */
  revokeTimeoutMs?: number
  /**
   * Time after start to collect rejoining workers' ownership (ends early once the members back
   * claim every partition). Give it the workers' reconnect delay, or a restart moves partitions
   * of the workers that come back late. @default interval * misses
   */
  recoveryWindowMs?: number
  /**
   * The highest partition epoch already stored (read from the state backend at start): new
   * epochs start above it, so a restarted cluster's owners are not fenced by their
   * predecessors' epochs. @default 0
   */
  epochFloor?: number
  /** Milliseconds between checkpoints (one in flight at a time); 0 turns them off. @default 5000 */
  checkpointIntervalMs?: number
  /** A checkpoint not acknowledged by then counts as failed for the workers missing. @default 60000 */
  checkpointTimeoutMs?: number
  logger: Logger
  /** Observers (metrics) of membership and assignment changes. */
  hooks?: CoordinatorHooks
  /**
   * HA (src/coordinator/leader.ts): the leadership this coordinator holds. Its epoch goes into
   * every join reply, assignment, revoke, fence and checkpoint trigger (workers ignore a lower
   * one); while `valid()` is false (the lease may have expired) it changes nothing.
   */
  leadership?: { readonly epoch: number; readonly valid: boolean }
  /**
   * Members the previous leader had (its warm view): the recovery window ends as soon as all of
   * them rejoined instead of after the whole window.
   */
  expectedMembers?: readonly string[]
}

export interface CoordinatorHooks {
  /** Every heartbeat-loop iteration (liveness: the loop is ticking). */
  tick?(): void
  heartbeatSent?(): void
  heartbeatReceived?(memberId: string): void
  heartbeatMissed?(memberId: string): void
  assignmentChanged?(assignment: Assignment): void
  checkpointDone?(result: CheckpointRecord): void
}

/** One coordinator-triggered checkpoint across the cluster. */
export interface CheckpointRecord {
  id: number
  /** Partitions whose checkpoint committed, of those assigned when it started. */
  partitions: number
  assigned: number
  /** Keys written (changed since each partition's previous checkpoint). */
  keys: number
  durationMs: number
  /** A savepoint: every key of every partition written, not only the changed ones. */
  full: boolean
  /** Members that did not acknowledge (timeout, error). */
  failedMembers: string[]
  finishedAt: string
}

export interface MemberStatus {
  id: string
  state: MemberState
  dataAddress: string
  httpAddress: string | null
  capacity: number
  version: string
  /** Partitions owned, and how many of them the worker reported ready. */
  partitions: number
  readyPartitions: number
  missedHeartbeats: number
  /** Milliseconds since this coordinator last heard from the member (its own clock). */
  heartbeatAgeMs: number
  load: HeartbeatLoad | null
  joinedAt: string
}

/**
 * What every worker of the cluster must share: its job and its sources and sinks (canonical,
 * password-redacted descriptions). A null field is not known yet (only workers older than these
 * fields have joined). Taken from the first worker that joins while no other worker is live.
 */
export interface ClusterDefinition {
  jobId: string | null
  sources: string[] | null
  sinks: string[] | null
  /** The member whose join set it. */
  definedBy: string
}

export interface ClusterStatus {
  /** The job, sources and sinks every worker must have; null until a worker joins. */
  definition: ClusterDefinition | null
  coordinator: {
    nodeId: string
    address: string
    transport: string
    ready: boolean
    recovering: boolean
    partitions: number
    epoch: number
    heartbeatIntervalMs: number
    heartbeatMisses: number
    uptimeMs: number
  }
  members: MemberStatus[]
  assignment: { epoch: number; owners: (string | null)[]; epochs: number[] }
  checkpoints: {
    intervalMs: number
    inFlight: boolean
    completed: number
    last: CheckpointRecord | null
    /** Per partition: the id of its last committed checkpoint (0: none since this coordinator started). */
    partitionCheckpoint: number[]
  }
}

interface Member {
  id: string
  conn: Connection | null
  state: MemberState
  dataAddress: string
  httpAddress: string | null
  capacity: number
  version: string
  missed: number
  heardSinceTick: boolean
  lastHeardAt: number
  load: HeartbeatLoad | null
  ready: Set<number>
  joinedAt: number
  /** What the member reported owning when it joined during recovery. */
  reported: OwnedPartition[]
  epochSeen: number
}

const LIVE: ReadonlySet<MemberState> = new Set(['alive', 'suspect'])

/** How a joining worker's job, sources and sinks differ from the cluster's (unknown fields never differ). */
export function definitionDifferences(
  cluster: Pick<ClusterDefinition, 'jobId' | 'sources' | 'sinks'>,
  worker: Pick<ClusterDefinition, 'jobId' | 'sources' | 'sinks'>,
): string[] {
  const out: string[] = []
  if (cluster.jobId !== null && worker.jobId !== null && cluster.jobId !== worker.jobId) {
    out.push(`job differs: cluster has ${cluster.jobId}, this worker has ${worker.jobId}`)
  }
  const list = (xs: readonly string[]): string => `[${xs.join(', ')}]`
  const same = (a: readonly string[], b: readonly string[]): boolean => {
    const x = [...a].sort()
    const y = [...b].sort()
    return x.length === y.length && x.every((v, i) => v === y[i])
  }
  for (const k of ['sources', 'sinks'] as const) {
    const c = cluster[k]
    const w = worker[k]
    if (c !== null && w !== null && !same(c, w)) {
      out.push(`${k} differ: cluster has ${list(c)}, this worker has ${list(w)}`)
    }
  }
  return out
}
/** Dead and departed members stay listed this long, for status and post-mortems. */
const FORGET_AFTER_MS = 10 * 60_000

export class Coordinator extends EventEmitter<{
  'member-joined': [id: string]
  'member-suspect': [id: string, reason: string]
  'member-dead': [id: string, reason: string]
  'member-left': [id: string]
  assignment: [assignment: Assignment]
}> {
  readonly #opts: Required<
    Omit<CoordinatorOptions, 'hooks' | 'leadership' | 'expectedMembers' | 'nodeId'>
  > & {
    hooks: CoordinatorHooks
  }
  readonly #leadership: { readonly epoch: number; readonly valid: boolean } | undefined
  readonly #nodeId: string
  readonly #expected: ReadonlySet<string>
  /** The leadership epoch stamped on what this coordinator sends (0 without HA). */
  get #leader(): number {
    return this.#leadership?.epoch ?? 0
  }
  /** False once an HA lease may have expired: a deposed leader changes nothing. */
  get #leads(): boolean {
    return this.#leadership?.valid ?? true
  }
  readonly #log: Logger
  readonly #members = new Map<string, Member>()
  /** Disjoint from the ids workers use for their own requests (see Requests). */
  readonly #requests = new Requests(0x40000000)
  readonly #routingSubscribers = new Set<Connection>()
  #assignment: Assignment
  #listener: Listener | null = null
  #ticker: NodeJS.Timeout | null = null
  #tickN = 0
  #lastTickAt = performance.now()
  #recovering = true
  #started = 0
  #stopping = false
  readonly #gateway: Gateway
  #rebalancing: Promise<void> | null = null
  #checkpointTimer: NodeJS.Timeout | null = null
  /** Ids increase across coordinator restarts (they start from the clock). */
  #checkpointId = Date.now()
  #checkpointInFlight = false
  #checkpointsCompleted = 0
  #lastCheckpoint: CheckpointRecord | null = null
  #partitionCheckpoint: number[] = []
  #rebalanceAgain = false
  #definition: ClusterDefinition | null = null

  constructor(options: CoordinatorOptions) {
    super()
    const partitions = validatePartitions(options.partitions ?? 256)
    const heartbeatIntervalMs = options.heartbeatIntervalMs ?? 500
    const heartbeatMisses = options.heartbeatMisses ?? 3
    this.#opts = {
      transport: options.transport,
      listen: options.listen,
      partitions,
      heartbeatIntervalMs,
      heartbeatMisses,
      revokeTimeoutMs: options.revokeTimeoutMs ?? 5000,
      checkpointIntervalMs: options.checkpointIntervalMs ?? 5000,
      checkpointTimeoutMs: options.checkpointTimeoutMs ?? 60_000,
      epochFloor: options.epochFloor ?? 0,
      recoveryWindowMs: options.recoveryWindowMs ?? heartbeatIntervalMs * heartbeatMisses,
      logger: options.logger,
      hooks: options.hooks ?? {},
    }
    this.#leadership = options.leadership
    this.#nodeId = options.nodeId ?? 'coordinator'
    this.#expected = new Set(options.expectedMembers ?? [])
    this.#log = options.logger
    this.#assignment = emptyAssignment(partitions, options.epochFloor ?? 0)
    this.#gateway = new Gateway(options.transport, () => this.routing(), options.logger)
  }

  get address(): string {
    if (this.#listener === null) throw new ShoalError(ErrorCodes.CLOSED, 'coordinator is not listening')
    return this.#listener.address
  }

  get assignment(): Assignment {
    return this.#assignment
  }

  get listener(): Listener | null {
    return this.#listener
  }

  async start(): Promise<void> {
    this.#started = performance.now()
    this.#listener = await this.#opts.transport.listen(this.#opts.listen, (conn) => this.#onConnection(conn))
    this.#log.info(
      {
        address: this.#listener.address,
        transport: this.#opts.transport.name,
        partitions: this.#opts.partitions,
      },
      'coordinator listening',
    )
    this.#ticker = setInterval(() => this.#tick(), this.#opts.heartbeatIntervalMs)
    this.#ticker.unref()
    this.#partitionCheckpoint = new Array<number>(this.#opts.partitions).fill(0)
    if (this.#opts.checkpointIntervalMs > 0) {
      this.#checkpointTimer = setInterval(() => void this.checkpoint(), this.#opts.checkpointIntervalMs)
      this.#checkpointTimer.unref()
    }
    const recovery = setTimeout(() => this.#endRecovery(), this.#opts.recoveryWindowMs)
    recovery.unref()
  }

  /** Ready: listening and past the recovery window (the assignment is authoritative). */
  readiness(): { ok: boolean; detail: Record<string, unknown> } {
    const ok = this.#listener !== null && !this.#recovering && !this.#stopping && this.#leads
    return {
      ok,
      detail: {
        listening: this.#listener !== null,
        recovering: this.#recovering,
        stopping: this.#stopping,
        ...(this.#leadership === undefined ? {} : { leaseValid: this.#leads }),
      },
    }
  }

  /** Time since the heartbeat loop last ran, for liveness. */
  heartbeatLoopAgeMs(): number {
    return performance.now() - this.#lastTickAt
  }

  /**
   * Trigger a checkpoint on every live member now (the timer calls this; one runs at a time,
   * a call while one is in flight returns null). Each worker checkpoints the partitions it
   * serves and acknowledges them; the coordinator records them and tells the worker it may trim
   * the logs behind them.
   */
  async checkpoint(options: { full?: boolean } = {}): Promise<CheckpointRecord | null> {
    if (this.#checkpointInFlight || this.#stopping || this.#recovering || !this.#leads) return null
    const members = [...this.#members.values()].filter((m) => m.state === 'alive' && m.conn !== null)
    if (members.length === 0) return null
    this.#checkpointInFlight = true
    const id = ++this.#checkpointId
    const t0 = performance.now()
    const assigned = this.#assignment.owners.filter((o) => o !== null).length
    let partitions = 0
    let keys = 0
    const failedMembers: string[] = []
    try {
      await Promise.all(
        members.map(async (m) => {
          const conn = m.conn!
          try {
            const res = await this.#requests.request(
              conn,
              {
                kind: 'checkpoint',
                body: { op: 'trigger', checkpointId: id, full: options.full === true, leader: this.#leader },
              },
              this.#opts.checkpointTimeoutMs,
            )
            if (res.kind !== 'checkpoint' || res.body.op !== 'ack') {
              throw new ShoalError(
                ErrorCodes.CHECKPOINT_ABORTED,
                res.kind === 'checkpoint' && res.body.error !== undefined
                  ? res.body.error.message
                  : `unexpected ${res.kind} reply to a checkpoint trigger`,
              )
            }
            const done = (res.body.partitions ?? []).filter(
              (p) => Number.isInteger(p) && p >= 0 && p < this.#partitionCheckpoint.length,
            )
            for (const p of done) this.#partitionCheckpoint[p] = id
            partitions += done.length
            keys += typeof res.body.keys === 'number' ? res.body.keys : 0
            // Recorded: the worker may drop the log entries these checkpoints cover.
            trySend(conn, {
              kind: 'checkpoint',
              body: { op: 'complete', checkpointId: id, partitions: done },
            })
          } catch (err) {
            failedMembers.push(m.id)
            this.#log.warn({ err, member: m.id, checkpointId: id }, 'checkpoint not acknowledged')
          }
        }),
      )
      const record: CheckpointRecord = {
        id,
        partitions,
        assigned,
        keys,
        durationMs: Math.round(performance.now() - t0),
        full: options.full === true,
        failedMembers,
        finishedAt: new Date().toISOString(),
      }
      this.#checkpointsCompleted++
      this.#lastCheckpoint = record
      this.#opts.hooks.checkpointDone?.(record)
      this.#log.debug(record, 'checkpoint done')
      return record
    } finally {
      this.#checkpointInFlight = false
    }
  }

  /**
   * A savepoint: a full checkpoint of every partition, now (after the one in flight, if any).
   * Rejects with CHECKPOINT_ABORTED when there is nothing to checkpoint or the coordinator is
   * not ready.
   */
  async savepoint(): Promise<CheckpointRecord> {
    for (let waited = 0; ; waited++) {
      const record = await this.checkpoint({ full: true })
      if (record !== null) return record
      if (this.#stopping || waited >= 600) break
      await new Promise((r) => setTimeout(r, 100))
    }
    throw new ShoalError(
      ErrorCodes.CHECKPOINT_ABORTED,
      'no savepoint: the coordinator is not ready or has no live workers',
      {
        retryable: true,
      },
    )
  }

  /** Graceful stop: refuse new work, say goodbye to every connection (workers reconnect elsewhere or later). */
  async stop(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.#stopping) return
    this.#stopping = true
    if (this.#ticker !== null) clearInterval(this.#ticker)
    if (this.#checkpointTimer !== null) clearInterval(this.#checkpointTimer)
    this.#requests.rejectAll(new ShoalError(ErrorCodes.CLOSED, 'coordinator is stopping'))
    await this.#gateway.close()
    await this.#listener?.close({ timeoutMs: options.timeoutMs ?? 2000 })
    this.#log.info('coordinator stopped')
  }

  status(): ClusterStatus {
    const now = performance.now()
    const a = this.#assignment
    const owned = new Map<string, number>()
    for (const o of a.owners) if (o !== null) owned.set(o, (owned.get(o) ?? 0) + 1)
    return {
      definition:
        this.#definition === null
          ? null
          : {
              ...this.#definition,
              sources: this.#definition.sources && [...this.#definition.sources],
              sinks: this.#definition.sinks && [...this.#definition.sinks],
            },
      coordinator: {
        nodeId: this.#nodeId,
        address: this.#listener?.address ?? '',
        transport: this.#opts.transport.name,
        ready: this.readiness().ok,
        recovering: this.#recovering,
        partitions: a.partitions,
        epoch: a.epoch,
        heartbeatIntervalMs: this.#opts.heartbeatIntervalMs,
        heartbeatMisses: this.#opts.heartbeatMisses,
        uptimeMs: Math.round(now - this.#started),
      },
      members: [...this.#members.values()]
        .sort((x, y) => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0))
        .map((m) => ({
          id: m.id,
          state: m.state,
          dataAddress: m.dataAddress,
          httpAddress: m.httpAddress,
          capacity: m.capacity,
          version: m.version,
          partitions: owned.get(m.id) ?? 0,
          readyPartitions: [...m.ready].filter((p) => a.owners[p] === m.id).length,
          missedHeartbeats: m.missed,
          heartbeatAgeMs: Math.round(now - m.lastHeardAt),
          load: m.load,
          joinedAt: new Date(Date.now() - (now - m.joinedAt)).toISOString(),
        })),
      checkpoints: {
        intervalMs: this.#opts.checkpointIntervalMs,
        inFlight: this.#checkpointInFlight,
        completed: this.#checkpointsCompleted,
        last: this.#lastCheckpoint,
        partitionCheckpoint: [...this.#partitionCheckpoint],
      },
      assignment: { epoch: a.epoch, owners: [...a.owners], epochs: [...a.epochs] },
    }
  }

  /**
   * Per partition: whether its current owner reported it ready (restored and serving); false
   * while it restores, and for unowned partitions. For the dashboard's partition map.
   */
  partitionsReady(): boolean[] {
    const a = this.#assignment
    return a.owners.map((owner, p) => {
      if (owner === null) return false
      return this.#members.get(owner)?.ready.has(p) === true
    })
  }

  routing(): RoutingFields {
    const a = this.#assignment
    const addresses: Record<string, string> = {}
    const routes = a.owners.map((owner, p) => {
      if (owner === null) return null
      const m = this.#members.get(owner)
      if (m === undefined) return null
      addresses[owner] = m.dataAddress
      return { workerId: owner, epoch: a.epochs[p] ?? 0 }
    })
    // Not authoritative yet (recovering, or not leading): an ownerless table here does not mean
    // an empty cluster.
    const recovering = this.#recovering || !this.#leads
    return {
      epoch: a.epoch,
      partitions: a.partitions,
      routes,
      addresses,
      ...(recovering ? { recovering } : {}),
      // Clients order tables by leader, then epoch: this leader's epochs may be below a deposed
      // one's (see RoutingFields.leader).
      ...(this.#leader > 0 ? { leader: this.#leader } : {}),
    }
  }

  /** Ask workers (all, or one) to pause or resume processing of some or all partitions. */
  pause(memberId?: string, partitions?: number[]): void {
    this.#broadcast(memberId, { op: 'pause', partitions: partitions ?? null })
  }
  resume(memberId?: string, partitions?: number[]): void {
    this.#broadcast(memberId, { op: 'resume', partitions: partitions ?? null })
  }
  /** Ask a worker to drain (finish in flight, hand its partitions back) and, with shutdown, exit. */
  drain(memberId: string, options: { shutdown?: boolean } = {}): void {
    this.#broadcast(memberId, { op: options.shutdown === true ? 'shutdown' : 'drain' })
  }

  #broadcast(memberId: string | undefined, body: ControlBody): void {
    for (const m of this.#members.values()) {
      if ((memberId === undefined || m.id === memberId) && m.conn !== null && LIVE.has(m.state)) {
        trySend(m.conn, { kind: 'control', body })
      }
    }
  }

  // --- connections -------------------------------------------------------------------------------

  #onConnection(conn: Connection): void {
    if (conn.peer.role === 'worker') void this.#serveWorker(conn)
    else void this.#serveClient(conn)
  }

  async #serveWorker(conn: Connection): Promise<void> {
    let member: Member | null = null
    try {
      for await (const env of conn) {
        if (this.#requests.settle(env)) continue
        try {
          member = this.#onWorkerMessage(conn, member, env) ?? member
        } catch (err) {
          if (!(err instanceof ShoalError)) throw err
          if (isReplyOrError(env)) {
            // A late reply (its request timed out) or the peer's own error report: log, never
            // answer, so two peers cannot bounce errors back and forth.
            this.#log.debug({ err, kind: env.kind, corr: env.corr }, 'ignored an unmatched reply')
            continue
          }
          this.#log.warn({ err, from: env.from, kind: env.kind }, 'rejected a message from a worker')
          trySend(conn, {
            kind: 'control',
            body: { op: 'error', code: err.code, message: err.message, fatal: false },
            corr: env.corr ?? undefined,
          })
        }
      }
    } catch (err) {
      this.#log.debug({ err, peer: conn.peer.nodeId }, 'worker connection ended with an error')
    }
    this.#routingSubscribers.delete(conn)
    if (member !== null && member.conn === conn) {
      member.conn = null
      if (member.state === 'alive') {
        this.#suspect(member, 'connection closed')
        void this.#probeGone(member)
      }
    }
  }

  #onWorkerMessage(conn: Connection, member: Member | null, env: Envelope): Member | undefined {
    // Heartbeats only record liveness: taken even while the lease is in doubt, so a leader that
    // resumes does not declare everyone dead for the heartbeats it refused.
    if (!this.#leads && env.kind !== 'heartbeat') {
      throw new ShoalError(ErrorCodes.NOT_LEADER, 'this coordinator no longer leads; follow the leader', {
        retryable: true,
      })
    }
    if (env.kind === 'control') {
      const body = env.body
      if (body.op === 'join') return this.#onJoin(conn, parseJoin(body), env)
      if (member === null || member.conn !== conn) {
        throw new ShoalError(ErrorCodes.NOT_REGISTERED, `${body.op} before join: send a join first`)
      }
      switch (body.op) {
        case 'assigned': {
          for (const { partition, epoch } of parsePartitionList(body).partitions) {
            if (
              this.#assignment.owners[partition] === member.id &&
              this.#assignment.epochs[partition] === epoch
            ) {
              member.ready.add(partition)
            }
          }
          return
        }
        case 'leave': {
          const { partitions } = parsePartitionList(body)
          this.#log.info({ member: member.id, partitions: partitions.length }, 'worker leaving')
          member.state = 'left'
          member.ready.clear()
          reply(conn, env, { kind: 'control', body: { op: 'drained' } })
          this.emit('member-left', member.id)
          this.#rebalance('worker left')
          return
        }
        case 'routing':
          this.#routingSubscribers.add(conn)
          reply(conn, env, { kind: 'control', body: { op: 'routing', ...this.routing() } })
          return
        default:
          throw new ShoalError(ErrorCodes.BAD_MESSAGE, `a worker may not send control ${body.op}`)
      }
    }
    if (env.kind === 'heartbeat') {
      if (member === null || member.conn !== conn) {
        throw new ShoalError(ErrorCodes.NOT_REGISTERED, 'heartbeat before join: send a join first')
      }
      member.heardSinceTick = true
      member.lastHeardAt = performance.now()
      member.load = env.body.load ?? member.load
      member.epochSeen = Math.max(member.epochSeen, env.body.epoch)
      this.#opts.hooks.heartbeatReceived?.(member.id)
      if (member.state === 'suspect') {
        member.state = 'alive'
        this.#log.info({ member: member.id }, 'member alive again')
      }
      return
    }
    throw new ShoalError(
      ErrorCodes.BAD_MESSAGE,
      `the coordinator does not handle ${env.kind} messages from workers yet`,
    )
  }

  /**
   * The cluster's definition is the job, sources and sinks of the first worker to join while no
   * other worker is live (so a cluster can change them by restarting all its workers); a worker
   * joining a live cluster must match it, or it is refused with CONFIG_MISMATCH naming every
   * difference, before anything about it is recorded. Fields a worker does not report (a
   * version older than them) are unknown: accepted unchecked, and filled in by the next worker
   * that reports them.
   */
  #checkDefinition(join: JoinFields): void {
    const others = [...this.#members.values()].some((m) => m.id !== join.memberId && LIVE.has(m.state))
    const current = this.#definition
    const unknown = (['jobId', 'sources', 'sinks'] as const).filter((k) => join[k] === null)
    if (unknown.length > 0) {
      this.#log.warn(
        { member: join.memberId, version: join.version, unknown },
        'worker did not report its job, sources or sinks (an older version?): accepted unchecked',
      )
    }
    if (current === null || !others) {
      const next: ClusterDefinition = {
        jobId: join.jobId,
        sources: join.sources,
        sinks: join.sinks,
        definedBy: join.memberId,
      }
      if (current !== null && definitionDifferences(current, join).length > 0) {
        this.#log.info(
          { previous: current, definition: next },
          "no other live worker: the cluster takes the joining worker's job, sources and sinks",
        )
      }
      this.#definition = next
      return
    }
    const differences = definitionDifferences(current, join)
    if (differences.length > 0) {
      throw new ShoalError(
        ErrorCodes.CONFIG_MISMATCH,
        `worker ${join.memberId} refused: ${differences.join('; ')}. Every worker of a cluster needs the same --job, --source and --sink (SHOAL_JOB, SHOAL_SOURCE, SHOAL_SINK); the cluster's are those of ${current.definedBy}`,
        { data: { memberId: join.memberId, differences, definedBy: current.definedBy } },
      )
    }
    current.jobId ??= join.jobId
    current.sources ??= join.sources
    current.sinks ??= join.sinks
  }

  #onJoin(conn: Connection, join: JoinFields, env: Envelope): Member {
    this.#checkDefinition(join)
    const a = this.#assignment
    const previous = this.#members.get(join.memberId)
    const now = performance.now()
    if (previous?.conn != null && previous.conn !== conn) {
      // The worker reconnected before we noticed its old link died: the new link wins.
      this.#routingSubscribers.delete(previous.conn)
      previous.conn.destroy()
    }
    const wasDead = previous !== undefined && !LIVE.has(previous.state)
    const member: Member = previous ?? {
      id: join.memberId,
      conn,
      state: 'alive',
      dataAddress: join.dataAddress,
      httpAddress: join.httpAddress,
      capacity: join.capacity,
      version: join.version,
      missed: 0,
      heardSinceTick: true,
      lastHeardAt: now,
      load: null,
      ready: new Set(),
      joinedAt: now,
      reported: [],
      epochSeen: 0,
    }
    Object.assign(member, {
      conn,
      state: 'alive',
      dataAddress: join.dataAddress,
      httpAddress: join.httpAddress,
      capacity: join.capacity,
      version: join.version,
      missed: 0,
      heardSinceTick: true,
      lastHeardAt: now,
      epochSeen: Math.max(member.epochSeen, join.epoch),
    })
    if (wasDead) member.joinedAt = now
    this.#members.set(member.id, member)

    let kept: OwnedPartition[]
    if (this.#recovering) {
      // Provisional: the rebuilt assignment decides, and fences any conflicting claim.
      member.reported = join.owned.filter((o) => o.partition < a.partitions)
      kept = member.reported
    } else {
      kept = join.owned.filter(
        (o) => a.owners[o.partition] === member.id && a.epochs[o.partition] === o.epoch,
      )
    }
    const dropped = join.owned.filter((o) => !kept.includes(o)).map((o) => o.partition)
    member.ready = new Set(kept.map((o) => o.partition))
    if (dropped.length > 0) {
      this.#log.warn({ member: member.id, partitions: dropped.length }, 'rejoining worker was fenced')
      trySend(conn, {
        kind: 'control',
        body: {
          op: 'fenced',
          leader: this.#leader,
          epoch: a.epoch,
          partitions: dropped,
          reason: wasDead
            ? 'the worker was declared dead and its partitions moved'
            : 'these partitions are no longer assigned to the worker',
        },
      })
    }
    reply(conn, env, {
      kind: 'control',
      body: {
        op: 'joined',
        leader: this.#leader,
        memberId: member.id,
        partitions: a.partitions,
        heartbeatIntervalMs: this.#opts.heartbeatIntervalMs,
        heartbeatMisses: this.#opts.heartbeatMisses,
        epoch: a.epoch,
        kept,
      },
    })
    this.#log.info(
      {
        member: member.id,
        address: join.dataAddress,
        capacity: join.capacity,
        kept: kept.length,
        rejoin: previous !== undefined,
      },
      'worker joined',
    )
    this.emit('member-joined', member.id)
    // HA takeover: every member the previous leader had is back, so the assignment can be
    // rebuilt now rather than after the whole recovery window.
    if (this.#recovering && this.#expected.size > 0) {
      const back = [...this.#expected].every((id) => this.#members.get(id)?.state === 'alive')
      if (back) queueMicrotask(() => this.#endRecovery())
    }
    // Any restart: the members back claim every partition between them, so whoever is still
    // missing owned nothing and waiting longer cannot change the assignment.
    if (this.#recovering && this.#claimsCoverAll()) queueMicrotask(() => this.#endRecovery())
    // Partitions the assignment gives this worker but it did not report (it restarted, or an
    // assign was lost with the link) are sent again.
    if (!this.#recovering) this.#resendAssignments(member)
    this.#rebalance('worker joined')
    return member
  }

  #resendAssignments(member: Member): void {
    const a = this.#assignment
    const missing: OwnedPartition[] = []
    a.owners.forEach((owner, p) => {
      if (owner === member.id && !member.ready.has(p)) missing.push({ partition: p, epoch: a.epochs[p] ?? 0 })
    })
    if (missing.length > 0 && member.conn !== null) {
      trySend(member.conn, {
        kind: 'control',
        body: { op: 'assign', epoch: a.epoch, partitions: missing, leader: this.#leader },
      })
    }
  }

  async #serveClient(conn: Connection): Promise<void> {
    try {
      for await (const env of conn) {
        try {
          if (env.kind === 'event' && (env.body.op === 'batch' || env.body.op === 'batches')) {
            for (const b of env.body.op === 'batch' ? [env.body] : env.body.batches) {
              await this.#gateway.forwardBatch(conn, b)
            }
            continue
          }
          if (env.kind === 'state') {
            await this.#gateway.forwardState(conn, env, env.body)
            continue
          }
          if (env.kind !== 'control')
            throw new ShoalError(ErrorCodes.BAD_MESSAGE, `unexpected ${env.kind} from a client`)
          switch (env.body.op) {
            case 'routing':
              this.#routingSubscribers.add(conn)
              reply(conn, env, { kind: 'control', body: { op: 'routing', ...this.routing() } })
              break
            case 'status':
              reply(conn, env, { kind: 'control', body: { op: 'status', status: this.status() } })
              break
            case 'savepoint':
              // Answered when done; the loop goes on serving this client meanwhile.
              void this.savepoint().then(
                (record) =>
                  trySend(conn, {
                    kind: 'control',
                    body: { op: 'savepoint', record },
                    corr: env.corr ?? undefined,
                  }),
                (err: unknown) => {
                  if (err instanceof ShoalError)
                    trySend(conn, {
                      kind: 'control',
                      body: { op: 'error', code: err.code, message: err.message, fatal: false },
                      corr: env.corr ?? undefined,
                    })
                },
              )
              break
            default:
              throw new ShoalError(ErrorCodes.BAD_MESSAGE, `a client may not send control ${env.body.op}`)
          }
        } catch (err) {
          if (!(err instanceof ShoalError)) throw err
          replyError(conn, env, err)
        }
      }
    } catch (err) {
      this.#log.debug({ err }, 'client connection ended with an error')
    }
    this.#routingSubscribers.delete(conn)
  }

  // --- failure detection -------------------------------------------------------------------------

  #tick(): void {
    this.#lastTickAt = performance.now()
    this.#opts.hooks.tick?.()
    // A deposed leader declares nobody dead and moves nothing: the process is on its way out.
    if (!this.#leads) return
    this.#tickN++
    const now = performance.now()
    for (const m of this.#members.values()) {
      if (!LIVE.has(m.state)) {
        if (now - m.lastHeardAt > FORGET_AFTER_MS) this.#members.delete(m.id)
        continue
      }
      if (m.heardSinceTick) {
        m.missed = 0
      } else {
        m.missed++
        this.#opts.hooks.heartbeatMissed?.(m.id)
      }
      m.heardSinceTick = false
      if (m.missed >= this.#opts.heartbeatMisses) {
        this.#declareDead(m, `missed ${m.missed} heartbeats (${this.#opts.heartbeatIntervalMs} ms apart)`)
        continue
      }
      if (
        m.conn !== null &&
        trySend(m.conn, { kind: 'heartbeat', body: { n: this.#tickN, epoch: this.#assignment.epoch } })
      ) {
        this.#opts.hooks.heartbeatSent?.()
      }
    }
  }

  #suspect(m: Member, reason: string): void {
    m.state = 'suspect'
    this.#log.warn({ member: m.id, reason }, 'member suspect')
    this.emit('member-suspect', m.id, reason)
  }

  /**
   * After a member's connection closed: is its process gone? A dial of its data port that is
   * refused says so (a live worker always listens there; a stopped or cut-off one does not
   * refuse: its dial hangs or fails otherwise, and the heartbeats decide). Saves the
   * failure-detection period (heartbeatIntervalMs x heartbeatMisses) on every crash.
   */
  async #probeGone(m: Member): Promise<void> {
    if (this.#opts.transport.name === 'memory') return
    const address = m.dataAddress
    // Still the same silence: no rejoin meanwhile, nothing else decided.
    const same = (): boolean =>
      m.state === 'suspect' && m.conn === null && m.dataAddress === address && this.#leads
    // A killed process's connections can close a little before its listening socket does (the
    // kernel tears the process down in steps; seen here: the port still accepted 30 ms after the
    // coordinator saw the close), so a dial that connects is tried again a little later.
    for (const delayMs of PROBE_DELAYS_MS) {
      if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs).unref())
      if (!same()) return
      if (await portRefuses(address, this.#opts.heartbeatIntervalMs)) {
        if (same()) this.#declareDead(m, `connection closed and its data port ${address} refuses connections`)
        return
      }
    }
  }

  #declareDead(m: Member, reason: string): void {
    if (!LIVE.has(m.state)) return
    m.state = 'dead'
    m.ready.clear()
    this.#log.warn({ member: m.id, reason }, 'member dead; its partitions move')
    if (m.conn !== null) {
      // If it is only hung, it finds out when it wakes: the link is gone and its rejoin is fenced.
      this.#routingSubscribers.delete(m.conn)
      m.conn.destroy(new ShoalError(ErrorCodes.FENCED, `declared dead: ${reason}`))
      m.conn = null
    }
    this.emit('member-dead', m.id, reason)
    this.#rebalance('member dead')
  }

  // --- assignment --------------------------------------------------------------------------------

  #claimsCoverAll(): boolean {
    const claimed = new Uint8Array(this.#opts.partitions)
    let n = 0
    for (const m of this.#members.values()) {
      if (!LIVE.has(m.state)) continue
      for (const { partition } of m.reported) {
        if (claimed[partition] === 0) n++
        claimed[partition] = 1
      }
    }
    return n === this.#opts.partitions
  }

  #endRecovery(): void {
    if (!this.#recovering) return
    const P = this.#opts.partitions
    const owners: (string | null)[] = new Array<string | null>(P).fill(null)
    const epochs: number[] = new Array<number>(P).fill(0)
    let epoch = this.#opts.epochFloor
    const live = [...this.#members.values()].filter((m) => LIVE.has(m.state))
    for (const m of live) {
      epoch = Math.max(epoch, m.epochSeen)
      for (const { partition, epoch: e } of m.reported) {
        epoch = Math.max(epoch, e)
        // Two claims: the higher epoch is the newer owner; the other is fenced below.
        if (owners[partition] === null || e > (epochs[partition] ?? 0)) {
          owners[partition] = m.id
          epochs[partition] = e
        }
      }
    }
    this.#assignment = validateAssignment({ partitions: P, epoch, owners, epochs })
    for (const m of live) {
      const lost = m.reported.filter((o) => owners[o.partition] !== m.id).map((o) => o.partition)
      m.reported = []
      if (lost.length > 0 && m.conn !== null) {
        for (const p of lost) m.ready.delete(p)
        trySend(m.conn, {
          kind: 'control',
          body: {
            op: 'fenced',
            leader: this.#leader,
            epoch,
            partitions: lost,
            reason: 'another worker holds these at a newer epoch',
          },
        })
      }
    }
    this.#recovering = false
    const kept = owners.filter((o) => o !== null).length
    this.#log.info(
      { epoch, members: live.length, keptPartitions: kept },
      'recovery window over; assignment rebuilt',
    )
    this.#opts.hooks.assignmentChanged?.(this.#assignment)
    for (const m of live) this.#resendAssignments(m)
    // Subscribers (clients, gateways) got the ownerless table while recovering; the rebalance
    // below publishes only if something moves.
    this.#publishRouting()
    this.#rebalance('recovery finished')
  }

  /** Recompute the assignment; rebalances never overlap, and one more runs if asked meanwhile. */
  #rebalance(reason: string): void {
    if (this.#recovering || this.#stopping || !this.#leads) return
    if (this.#rebalancing !== null) {
      this.#rebalanceAgain = true
      return
    }
    this.#rebalancing = (async () => {
      do {
        this.#rebalanceAgain = false
        await this.#rebalanceOnce(reason)
      } while (this.#rebalanceAgain && !this.#stopping)
    })()
      .catch((err: unknown) => this.#log.error({ err }, 'rebalance failed'))
      .finally(() => {
        this.#rebalancing = null
      })
  }

  async #rebalanceOnce(reason: string): Promise<void> {
    const live = [...this.#members.values()].filter((m) => LIVE.has(m.state))
    const current = this.#assignment
    const next = computeAssignment(
      current,
      live.map((m) => ({ id: m.id, capacity: m.capacity })),
    )
    if (next === current) return
    const diff = diffAssignments(current, next)
    this.#log.info(
      { reason, fromEpoch: diff.fromEpoch, toEpoch: diff.toEpoch, moves: diff.moves.length },
      'rebalancing',
    )

    // 1. Revoke from live owners and wait for them to let go.
    await Promise.all(
      diff.workers
        .filter((w) => w.revoke.length > 0)
        .map(async (w) => {
          const m = this.#members.get(w.workerId)
          if (m === undefined || !LIVE.has(m.state) || m.conn === null) return
          for (const r of w.revoke) m.ready.delete(r.partition)
          try {
            await this.#requests.request(
              m.conn,
              {
                kind: 'control',
                body: {
                  op: 'revoke',
                  epoch: next.epoch,
                  partitions: w.revoke.map((r) => ({ ...r })),
                  leader: this.#leader,
                },
              },
              this.#opts.revokeTimeoutMs,
            )
          } catch (err) {
            this.#log.warn({ err, member: m.id }, 'revoke not acknowledged; fencing the member')
            this.#declareDead(m, 'did not acknowledge a revoke')
          }
        }),
    )
    if (this.#stopping) return

    // 2. Commit, then 3. tell the new owners.
    this.#assignment = next
    this.#opts.hooks.assignmentChanged?.(next)
    this.emit('assignment', next)
    for (const w of diff.workers) {
      if (w.assign.length === 0) continue
      const m = this.#members.get(w.workerId)
      if (m === undefined || !LIVE.has(m.state) || m.conn === null) continue
      trySend(m.conn, {
        kind: 'control',
        body: {
          op: 'assign',
          leader: this.#leader,
          epoch: next.epoch,
          partitions: w.assign.map((e) => ({ partition: e.partition, epoch: e.epoch })),
        },
      })
    }
    this.#publishRouting()
  }

  #publishRouting(): void {
    const routing = this.routing()
    for (const c of this.#routingSubscribers)
      trySend(c, { kind: 'control', body: { op: 'routing', ...routing } })
  }
}

/** When a closed member's data port is dialed, ms after the close and between the dials. */
const PROBE_DELAYS_MS = [0, 100, 200, 400]

/** Whether a TCP dial of `address` (HOST:PORT) is refused within timeoutMs (any other outcome: false). */
function portRefuses(address: string, timeoutMs: number): Promise<boolean> {
  let target: { host: string; port: number }
  try {
    target = parseHostPort(address)
  } catch {
    return Promise.resolve(false)
  }
  return new Promise((resolve) => {
    const socket = net.connect({ host: target.host, port: target.port })
    const done = (refused: boolean): void => {
      clearTimeout(timer)
      socket.destroy()
      resolve(refused)
    }
    const timer = setTimeout(() => done(false), timeoutMs)
    socket.once('connect', () => done(false))
    socket.once('error', (err: NodeJS.ErrnoException) => done(err.code === 'ECONNREFUSED'))
  })
}

/** Send, tolerating a connection that closed meanwhile (its loop notices and cleans up). */
function trySend(conn: Connection, message: Parameters<Connection['send']>[0]): boolean {
  try {
    conn.send(message)
    return true
  } catch {
    return false
  }
}
