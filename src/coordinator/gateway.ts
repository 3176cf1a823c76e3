/**
 * The coordinator's ingest and query gateway, for clients that cannot reach workers directly
 * (a host outside the compose network, a simple client). It forwards each batch unchanged
 * (same producer id and sequence, so worker-side dedup still holds) to the partition's owner,
 * and relays the worker's ack back. State gets and dumps are forwarded the same way.
 *
 * The data path never requires it: smart clients send to the owners directly.
 */
import type { Logger } from 'pino'
import { ErrorCodes, ShoalError } from '../errors.ts'
import type { RoutingFields } from '../protocol/control.ts'
import type { Envelope, EventAckBody, EventBatchBody, StateBody } from '../protocol/messages.ts'
import { partitionForKey } from '../protocol/partition.ts'
import { Requests } from '../transport/requests.ts'
import type { Connection, OutboundMessage, Transport } from '../transport/transport.ts'

interface Waiting {
  client: Connection
  timer: NodeJS.Timeout
}

export class Gateway {
  readonly #transport: Transport
  readonly #routing: () => RoutingFields
  readonly #log: Logger
  readonly #conns = new Map<string, Promise<Connection>>()
  readonly #waiting = new Map<string, Waiting>()
  readonly #requests = new Requests()
  readonly #timeoutMs: number

  constructor(transport: Transport, routing: () => RoutingFields, logger: Logger, timeoutMs = 10_000) {
    this.#transport = transport
    this.#routing = routing
    this.#log = logger
    this.#timeoutMs = timeoutMs
  }

  /** Forward a batch from `client`; the worker's ack (or a refusal) goes back to it. */
  async forwardBatch(client: Connection, b: EventBatchBody): Promise<void> {
    const id = `${b.producerId}\u0000${b.partition}\u0000${b.sequence}`
    const refuse = (err: ShoalError): void =>
      trySend(client, {
        kind: 'event',
        body: {
          op: 'ack',
          partition: b.partition,
          producerId: b.producerId,
          sequence: b.sequence,
          ok: false,
          error: err.toJSON(),
        },
      })
    const routing = this.#routing()
    const route = routing.routes[b.partition]
    if (route == null) {
      refuse(
        new ShoalError(ErrorCodes.NOT_OWNER, `partition ${b.partition} has no owner`, { retryable: true }),
      )
      return
    }
    let worker: Connection
    try {
      worker = await this.#connTo(route.workerId, routing.addresses[route.workerId]!)
    } catch (err) {
      refuse(
        err instanceof ShoalError
          ? err
          : new ShoalError(ErrorCodes.CONNECT_FAILED, String(err), { retryable: true }),
      )
      return
    }
    const timer = setTimeout(() => this.#waiting.delete(id), this.#timeoutMs)
    timer.unref()
    this.#waiting.get(id)?.timer.refresh()
    this.#waiting.set(id, { client, timer })
    // The client routed by the coordinator, so stamp the owner's current epoch.
    trySend(worker, { kind: 'event', body: { ...b, epoch: route.epoch } })
  }

  /** Forward a state get (one reply) or dump (chunks then end) and relay the answer. */
  async forwardState(client: Connection, env: Envelope, body: StateBody): Promise<void> {
    const routing = this.#routing()
    const corr = env.corr ?? undefined
    if (body.op === 'get') {
      if (typeof body.key !== 'string') throw new ShoalError(ErrorCodes.BAD_MESSAGE, 'state get needs a key')
      const p = partitionForKey(body.key, routing.partitions)
      const route = routing.routes[p]
      if (route == null)
        throw new ShoalError(ErrorCodes.NOT_OWNER, `partition ${p} has no owner`, { retryable: true })
      const worker = await this.#connTo(route.workerId, routing.addresses[route.workerId]!)
      const res = await this.#requests.request(
        worker,
        { kind: 'state', body: { op: 'get', key: body.key, partition: p } },
        this.#timeoutMs,
      )
      client.send({ kind: res.kind, body: res.body, corr } as OutboundMessage)
      return
    }
    if (body.op === 'dump') {
      const workers = [...new Set(routing.routes.filter((r) => r !== null).map((r) => r.workerId))].sort()
      const parts: number[] = []
      for (const w of workers) {
        const conn = await this.#connTo(w, routing.addresses[w]!)
        const chunks: Envelope[] = []
        await this.#requests.requestStream(
          conn,
          { kind: 'state', body: { op: 'dump' } },
          this.#timeoutMs,
          (part) => {
            const b = part.body as StateBody
            if (b.op === 'chunk') {
              chunks.push(part)
              return false
            }
            return b.op === 'end'
          },
        )
        for (const c of chunks) {
          parts.push((c.body as StateBody).partition ?? -1)
          await client.write({ kind: 'state', body: c.body as StateBody, corr })
        }
      }
      trySend(client, { kind: 'state', body: { op: 'end' }, corr })
      return
    }
    throw new ShoalError(ErrorCodes.BAD_MESSAGE, `the gateway does not take state ${body.op}`)
  }

  async close(): Promise<void> {
    for (const w of this.#waiting.values()) clearTimeout(w.timer)
    this.#waiting.clear()
    const conns = await Promise.allSettled([...this.#conns.values()])
    await Promise.all(
      conns.map((c) => (c.status === 'fulfilled' ? c.value.close({ timeoutMs: 500 }) : Promise.resolve())),
    )
  }

  #connTo(workerId: string, address: string): Promise<Connection> {
    const key = `${workerId}@${address}`
    let c = this.#conns.get(key)
    if (c === undefined) {
      c = this.#transport.connect(address).then((conn) => {
        void this.#relay(key, conn)
        return conn
      })
      c.catch(() => this.#conns.delete(key))
      this.#conns.set(key, c)
    }
    return c
  }

  #relayAck(a: EventAckBody): void {
    const id = `${a.producerId}\u0000${a.partition}\u0000${a.sequence}`
    const w = this.#waiting.get(id)
    if (w === undefined) return
    this.#waiting.delete(id)
    clearTimeout(w.timer)
    trySend(w.client, { kind: 'event', body: a })
  }

  async #relay(key: string, worker: Connection): Promise<void> {
    try {
      for await (const env of worker) {
        if (this.#requests.settle(env)) continue
        if (env.kind !== 'event') continue
        if (env.body.op === 'ack') this.#relayAck(env.body)
        else if (env.body.op === 'acks') for (const a of env.body.acks) this.#relayAck(a)
      }
    } catch (err) {
      this.#log.debug({ err, worker: key }, 'gateway link to a worker ended')
    }
    this.#conns.delete(key)
  }
}

function trySend(conn: Connection, message: OutboundMessage): void {
  try {
    conn.send(message)
  } catch {
    // The client went away; it retries un-acked batches itself.
  }
}
