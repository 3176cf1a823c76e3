/**
 * A control-plane client of the coordinator: cluster status and the routing table. `shoal
 * status` uses it; ShoalClient builds on it for routing.
 */
import { ErrorCodes, ShoalError } from '../errors.ts'
import { parseRouting, type RoutingFields } from '../protocol/control.ts'
import type { Envelope } from '../protocol/messages.ts'
import { Requests } from '../transport/requests.ts'
import type { Connection, Transport } from '../transport/transport.ts'
import type { CheckpointRecord, ClusterStatus } from '../coordinator/coordinator.ts'

export interface AdminClientOptions {
  /** Reply deadline per request. @default 5000 */
  timeoutMs?: number
  /** Called with every routing table the coordinator pushes after a subscription. */
  onRouting?: (routing: RoutingFields) => void
}

export class AdminClient {
  readonly #conn: Connection
  readonly #requests = new Requests()
  readonly #timeoutMs: number
  readonly #onRouting: ((routing: RoutingFields) => void) | undefined
  readonly #loop: Promise<void>

  private constructor(conn: Connection, options: AdminClientOptions) {
    this.#conn = conn
    this.#timeoutMs = options.timeoutMs ?? 5000
    this.#onRouting = options.onRouting
    this.#loop = this.#read()
  }

  static async connect(
    transport: Transport,
    coordinator: string,
    options: AdminClientOptions = {},
  ): Promise<AdminClient> {
    const conn = await transport.connect(coordinator, { reconnect: options.onRouting !== undefined })
    return new AdminClient(conn, options)
  }

  async status(): Promise<ClusterStatus> {
    const env = await this.#requests.request(
      this.#conn,
      { kind: 'control', body: { op: 'status' } },
      this.#timeoutMs,
    )
    const status = (env.body as { status?: unknown }).status
    if (env.kind !== 'control' || typeof status !== 'object' || status === null) {
      throw new ShoalError(ErrorCodes.BAD_MESSAGE, 'the coordinator answered status with something else')
    }
    return status as ClusterStatus
  }

  /** Fetch the routing table (and subscribe to pushed updates). */
  /** A savepoint (full checkpoint of every partition); resolves with its record when done. */
  async savepoint(timeoutMs = 120_000): Promise<CheckpointRecord> {
    const env = await this.#requests.request(
      this.#conn,
      { kind: 'control', body: { op: 'savepoint' } },
      timeoutMs,
    )
    const record = (env.body as { record?: unknown }).record
    if (env.kind !== 'control' || typeof record !== 'object' || record === null) {
      throw new ShoalError(ErrorCodes.BAD_MESSAGE, 'the coordinator answered savepoint with something else')
    }
    return record as CheckpointRecord
  }

  async routing(): Promise<RoutingFields> {
    const env = await this.#requests.request(
      this.#conn,
      { kind: 'control', body: { op: 'routing' } },
      this.#timeoutMs,
    )
    if (env.kind !== 'control')
      throw new ShoalError(ErrorCodes.BAD_MESSAGE, `expected routing, got ${env.kind}`)
    return parseRouting(env.body)
  }

  async close(): Promise<void> {
    await this.#conn.close({ timeoutMs: 1000 })
    await this.#loop
  }

  async #read(): Promise<void> {
    try {
      for await (const env of this.#conn) this.#onMessage(env)
    } catch {
      // closed() carries the reason
    }
    this.#requests.rejectAll(new ShoalError(ErrorCodes.CLOSED, 'connection to the coordinator closed'))
  }

  #onMessage(env: Envelope): void {
    if (this.#requests.settle(env)) return
    if (env.kind === 'control' && env.body.op === 'routing' && this.#onRouting !== undefined) {
      try {
        this.#onRouting(parseRouting(env.body))
      } catch {
        // A malformed push is ignored; the next one or a fetch replaces it.
      }
    }
  }
}
