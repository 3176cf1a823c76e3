/**
 * Emitted events, fanned out to the worker's sinks and to live subscribers. A subscriber is a
 * client connection that sent Control `subscribe` {streams} to the worker's data port; it then
 * receives Event `batch` messages whose payload is msgpack [stream, key, event][] (producerId
 * `emit:<worker>`, partition of origin, increasing sequence). A subscriber that falls so far
 * behind that its connection's queue is full is disconnected with SHOAL_ERR_QUEUE_FULL (it
 * resubscribes); nothing is dropped silently.
 */
import { Packr } from 'msgpackr'
import type { Logger } from 'pino'
import { ErrorCodes, ShoalError } from '../errors.ts'
import type { Envelope } from '../protocol/messages.ts'
import type { EmittedRecord, Sink } from '../processing/sinks.ts'
import type { Connection } from '../transport/transport.ts'

const packr = new Packr({ useRecords: true, moreTypes: true })

export class OutputHub {
  readonly #sinks: Sink[]
  readonly #subscribers = new Map<Connection, Set<string> | null>()
  readonly #log: Logger
  readonly #producerId: string
  #sequence = 0
  #emitted = 0
  #tail: Promise<void> = Promise.resolve()
  #closed = false

  constructor(options: { sinks?: Sink[]; logger: Logger; memberId: string }) {
    this.#sinks = options.sinks ?? []
    this.#log = options.logger
    this.#producerId = `emit:${options.memberId}`
  }

  get emitted(): number {
    return this.#emitted
  }
  get subscribers(): number {
    return this.#subscribers.size
  }

  /** Handle Control `subscribe` from a data-port connection: `streams` null or absent means all. */
  subscribe(conn: Connection, env: Envelope): void {
    const streams = (env.body as { streams?: unknown }).streams
    if (
      streams !== undefined &&
      streams !== null &&
      !(Array.isArray(streams) && streams.every((s) => typeof s === 'string'))
    ) {
      throw new ShoalError(ErrorCodes.BAD_MESSAGE, 'subscribe: streams must be an array of strings or null')
    }
    const set = streams === undefined || streams === null ? null : new Set(streams)
    this.#subscribers.set(conn, set)
    void conn.closed().then(() => this.#subscribers.delete(conn))
    conn.send({
      kind: 'control',
      body: { op: 'subscribe', streams: set === null ? null : [...set] },
      corr: env.corr ?? undefined,
    })
  }

  /**
   * A batch emitted `payload` (msgpack [stream, key, event][]) from `partition`. Deliveries are
   * serialized, so sinks and subscribers see a partition's records in the order they were
   * emitted; close() waits for the queued ones.
   */
  deliver(partition: number, payload: Uint8Array): void {
    this.#tail = this.#tail
      .then(() => this.#deliver(partition, payload))
      .catch((err: unknown) => this.#log.error({ err, partition }, 'could not deliver emitted events'))
  }

  async #deliver(partition: number, payload: Uint8Array): Promise<void> {
    const records = packr.unpack(payload) as EmittedRecord[]
    this.#emitted += records.length
    for (const sink of this.#sinks) {
      try {
        await sink.write(partition, records)
      } catch (err) {
        this.#log.error({ err, partition }, 'sink write failed')
      }
    }
    for (const [conn, streams] of this.#subscribers) {
      const mine = streams === null ? records : records.filter((r) => streams.has(r[0]))
      if (mine.length === 0) continue
      try {
        conn.send({
          kind: 'event',
          body: {
            op: 'batch',
            partition,
            epoch: 0,
            producerId: this.#producerId,
            sequence: ++this.#sequence,
            count: mine.length,
            payload: mine === records ? payload : packr.pack(mine),
          },
        })
      } catch (err) {
        this.#subscribers.delete(conn)
        conn.destroy(
          err instanceof ShoalError ? err : new ShoalError(ErrorCodes.QUEUE_FULL, 'subscriber too slow'),
        )
      }
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#tail
    await Promise.all(this.#sinks.map((s) => s.close()))
  }
}
