/**
 * Subscribe to events that jobs emit (`ctx.emit(stream, event)`). The subscriber follows the
 * routing table and keeps one subscription per worker, adding workers as they join. Delivery
 * is live (from the moment of subscribing) and at least once across worker failures.
 */
import { Packr } from 'msgpackr'
import type { RoutingFields } from '../protocol/control.ts'
import type { Connection, Transport } from '../transport/transport.ts'
import { AdminClient } from './admin.ts'

export interface EmittedEvent {
  stream: string
  key: string
  event: unknown
  partition: number
  /** The worker that emitted it. */
  worker: string
}

export interface SubscriberOptions {
  coordinator: string
  transport: Transport
  /** Streams to receive; all when omitted. */
  streams?: string[]
  onEvent: (e: EmittedEvent) => void
}

const unpackr = new Packr({ useRecords: true, moreTypes: true })

export class Subscriber {
  readonly #opts: SubscriberOptions
  readonly #conns = new Map<string, Promise<Connection>>()
  #admin: AdminClient | null = null
  #closed = false

  private constructor(opts: SubscriberOptions) {
    this.#opts = opts
  }

  static async connect(opts: SubscriberOptions): Promise<Subscriber> {
    const s = new Subscriber(opts)
    s.#admin = await AdminClient.connect(opts.transport, opts.coordinator, {
      onRouting: (r) => void s.#follow(r).catch(() => undefined),
    })
    await s.#follow(await s.#admin.routing())
    return s
  }

  /** Number of workers currently subscribed to. */
  get workers(): number {
    return this.#conns.size
  }

  async close(): Promise<void> {
    this.#closed = true
    const conns = await Promise.allSettled([...this.#conns.values()])
    await Promise.all(
      conns.map((c) => (c.status === 'fulfilled' ? c.value.close({ timeoutMs: 500 }) : Promise.resolve())),
    )
    await this.#admin?.close()
  }

  async #follow(r: RoutingFields): Promise<void> {
    const wanted = new Set(r.routes.filter((x) => x !== null).map((x) => x.workerId))
    await Promise.all(
      [...wanted].map((id) => {
        const address = r.addresses[id]!
        const key = `${id}@${address}`
        const existing = this.#conns.get(key)
        if (existing !== undefined) return existing
        if (this.#closed) return Promise.resolve(null)
        const p = this.#subscribe(id, address, key)
        this.#conns.set(key, p)
        p.catch(() => this.#conns.delete(key))
        return p
      }),
    )
  }

  async #subscribe(worker: string, address: string, key: string): Promise<Connection> {
    const conn = await this.#opts.transport.connect(address)
    conn.send({ kind: 'control', body: { op: 'subscribe', streams: this.#opts.streams ?? null } })
    void (async () => {
      try {
        for await (const env of conn) {
          if (env.kind !== 'event' || env.body.op !== 'batch') continue
          const b = env.body
          for (const [stream, k, event] of unpackr.unpack(b.payload) as [string, string, unknown][]) {
            this.#opts.onEvent({ stream, key: k, event, partition: b.partition, worker })
          }
        }
      } catch {
        // The worker went away; the next routing update resubscribes to its successors.
      }
      this.#conns.delete(key)
    })()
    return conn
  }
}
