/**
 * A control-plane client of the coordinator: cluster status and the routing table. `shoal
 * status` uses it; ShoalClient builds on it for routing.
 *
 * Coordinator replicas (docs/decisions.md, "Coordinator high availability"): given
 * `a:7400,b:7400`, it dials them in turn until one accepts (standbys do not listen, so that one
 * leads), and when that link closes or a request gets no answer in time (a paused leader still
 * holds the socket open) it moves on to the next, re-subscribes to routing pushes and retries
 * the request, until `failoverTimeoutMs` passes without any replica answering:
 * `SHOAL_ERR_NO_COORDINATOR` (retryable).
 */
import { ErrorCodes, ShoalError } from '../errors.ts'
import { parseRouting, type RoutingFields } from '../protocol/control.ts'
import type { Envelope } from '../protocol/messages.ts'
import { Requests } from '../transport/requests.ts'
import type { Connection, OutboundMessage, Transport } from '../transport/transport.ts'
import type { CheckpointRecord, ClusterStatus } from '../coordinator/coordinator.ts'

export interface AdminClientOptions {
  /** Reply deadline per request. @default 5000 (2000 with several replicas) */
  timeoutMs?: number
  /** Called with every routing table the coordinator pushes after a subscription. */
  onRouting?: (routing: RoutingFields) => void
  /** Called when this client moves to another coordinator replica (logging, progress). */
  onFailover?: (info: { from: string; reason: string }) => void
  /** Several replicas: how long to keep looking for a leader before NO_COORDINATOR. @default 30000 */
  failoverTimeoutMs?: number
}

/** `host:port` or a comma-separated list of replicas. */
export function coordinatorList(coordinator: string): string[] {
  const list = coordinator
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
  if (list.length === 0) throw new ShoalError(ErrorCodes.INVALID_OPTION, 'no coordinator address given')
  return list
}

export class AdminClient {
  #conn: Connection | null
  #address: string
  readonly #transport: Transport
  readonly #replicas: string[]
  #next: number
  readonly #requests = new Requests()
  readonly #timeoutMs: number
  readonly #failoverTimeoutMs: number
  readonly #options: AdminClientOptions
  #loop: Promise<void>
  #failover: Promise<void> | null = null
  #closed = false

  private constructor(
    transport: Transport,
    replicas: string[],
    conn: Connection,
    index: number,
    options: AdminClientOptions,
  ) {
    this.#transport = transport
    this.#replicas = replicas
    this.#conn = conn
    this.#address = replicas[index]!
    this.#next = index + 1
    this.#options = options
    this.#timeoutMs = options.timeoutMs ?? (replicas.length > 1 ? 2000 : 5000)
    this.#failoverTimeoutMs = options.failoverTimeoutMs ?? 30_000
    this.#loop = this.#read(conn)
  }

  static async connect(
    transport: Transport,
    coordinator: string,
    options: AdminClientOptions = {},
  ): Promise<AdminClient> {
    const replicas = coordinatorList(coordinator)
    if (replicas.length === 1) {
      const conn = await transport.connect(replicas[0]!, { reconnect: options.onRouting !== undefined })
      return new AdminClient(transport, replicas, conn, 0, options)
    }
    const { conn, index } = await dialAny(transport, replicas, 0, options.failoverTimeoutMs ?? 30_000)
    return new AdminClient(transport, replicas, conn, index, options)
  }

  /** The replica this client talks to now. */
  get address(): string {
    return this.#address
  }

  async status(): Promise<ClusterStatus> {
    const env = await this.#request({ kind: 'control', body: { op: 'status' } }, this.#timeoutMs)
    const status = (env.body as { status?: unknown }).status
    if (env.kind !== 'control' || typeof status !== 'object' || status === null) {
      throw new ShoalError(ErrorCodes.BAD_MESSAGE, 'the coordinator answered status with something else')
    }
    return status as ClusterStatus
  }

  /** A savepoint (full checkpoint of every partition); resolves with its record when done. */
  async savepoint(timeoutMs = 120_000): Promise<CheckpointRecord> {
    const env = await this.#request({ kind: 'control', body: { op: 'savepoint' } }, timeoutMs, false)
    const record = (env.body as { record?: unknown }).record
    if (env.kind !== 'control' || typeof record !== 'object' || record === null) {
      throw new ShoalError(ErrorCodes.BAD_MESSAGE, 'the coordinator answered savepoint with something else')
    }
    return record as CheckpointRecord
  }

  /** Fetch the routing table (and subscribe to pushed updates). */
  async routing(): Promise<RoutingFields> {
    const env = await this.#request({ kind: 'control', body: { op: 'routing' } }, this.#timeoutMs)
    if (env.kind !== 'control')
      throw new ShoalError(ErrorCodes.BAD_MESSAGE, `expected routing, got ${env.kind}`)
    return parseRouting(env.body)
  }

  async close(): Promise<void> {
    this.#closed = true
    await this.#conn?.close({ timeoutMs: 1000 })
    await this.#loop
  }

  /**
   * One request; with several replicas, a lost link or a silent coordinator moves this client
   * to the next replica and the request is sent again there (status and routing are safe to
   * repeat; a savepoint is not retried: `retry` false).
   */
  async #request(message: OutboundMessage, timeoutMs: number, retry = true): Promise<Envelope> {
    const deadline = performance.now() + this.#failoverTimeoutMs
    for (;;) {
      if (this.#closed) throw new ShoalError(ErrorCodes.CLOSED, 'admin client closed')
      if (this.#failover !== null) await this.#failover
      const conn = this.#conn
      if (conn === null) throw noCoordinator(this.#replicas)
      try {
        return await this.#requests.request(conn, message, timeoutMs)
      } catch (err) {
        if (this.#replicas.length === 1 || !retry || this.#closed || performance.now() > deadline) throw err
        if (!(err instanceof ShoalError)) throw err
        const silent = err.code === ErrorCodes.TIMEOUT
        const lost = err.code === ErrorCodes.CLOSED || err.code === ErrorCodes.CONNECTION_LOST
        const notLeader = err.code === ErrorCodes.NOT_LEADER
        if (!silent && !lost && !notLeader) throw err
        if (this.#conn === conn) void this.#moveOn(silent ? 'no answer in time' : err.message)
      }
    }
  }

  /** Several replicas: leave the current one and find the leader. */
  #moveOn(reason: string): Promise<void> {
    this.#failover ??= (async () => {
      const from = this.#address
      const old = this.#conn
      this.#conn = null
      if (old !== null) void old.close({ timeoutMs: 0 }).catch(() => {})
      this.#options.onFailover?.({ from, reason })
      try {
        const { conn, index } = await dialAny(
          this.#transport,
          this.#replicas,
          this.#next,
          this.#failoverTimeoutMs,
        )
        if (this.#closed) {
          void conn.close({ timeoutMs: 0 }).catch(() => {})
          return
        }
        this.#conn = conn
        this.#address = this.#replicas[index]!
        this.#next = index + 1
        this.#loop = this.#read(conn)
        if (this.#options.onRouting !== undefined) {
          // Subscribe again on the new leader; its table replaces ours.
          const env = await this.#requests.request(
            conn,
            { kind: 'control', body: { op: 'routing' } },
            this.#timeoutMs,
          )
          if (env.kind === 'control') this.#onMessage({ ...env, corr: undefined })
        }
      } catch {
        // No replica answered within failoverTimeoutMs: requests fail with NO_COORDINATOR; the
        // next one starts looking again.
      }
    })().finally(() => {
      this.#failover = null
    })
    return this.#failover
  }

  async #read(conn: Connection): Promise<void> {
    try {
      for await (const env of conn) this.#onMessage(env)
    } catch {
      // closed() carries the reason
    }
    if (this.#conn !== conn && this.#replicas.length > 1) return // replaced already
    this.#requests.rejectAll(new ShoalError(ErrorCodes.CLOSED, 'connection to the coordinator closed'))
    if (this.#replicas.length > 1 && !this.#closed) void this.#moveOn('connection closed')
  }

  #onMessage(env: Envelope): void {
    if (this.#requests.settle(env)) return
    if (env.kind === 'control' && env.body.op === 'routing' && this.#options.onRouting !== undefined) {
      try {
        this.#options.onRouting(parseRouting(env.body))
      } catch {
        // A malformed push is ignored; the next one or a fetch replaces it.
      }
    }
  }
}

function noCoordinator(replicas: string[]): ShoalError {
  return new ShoalError(
    ErrorCodes.NO_COORDINATOR,
    `no coordinator leads: none of ${replicas.join(', ')} accepted a connection (a failover may be in progress)`,
    { retryable: true },
  )
}

/**
 * Dial the replicas in turn from `start` until one accepts, for up to `timeoutMs`. A paused
 * process still accepts TCP connections, so each dial is bounded too.
 */
async function dialAny(
  transport: Transport,
  replicas: string[],
  start: number,
  timeoutMs: number,
): Promise<{ conn: Connection; index: number }> {
  const deadline = performance.now() + timeoutMs
  for (let i = start; ; i++) {
    const index = i % replicas.length
    try {
      const conn = await transport.connect(replicas[index]!, { signal: AbortSignal.timeout(2000) })
      return { conn, index }
    } catch {
      if (performance.now() > deadline) throw noCoordinator(replicas)
      if ((i + 1 - start) % replicas.length === 0) await new Promise((r) => setTimeout(r, 200))
    }
  }
}
