/**
 * A worker's data plane: event batches in, acks out, state queries answered. It runs on the
 * main thread but does per-batch work only (ownership check, dedup, hand-off to the engine);
 * job code runs in the engine's threads.
 *
 * Flow control: a connection's messages are read one at a time; when the engine has more than
 * `maxInFlightBatches` batches queued the reader waits, the connection's inbound queue fills,
 * the transport pauses the socket, and TCP (or HTTP/2) flow control slows the sender. Nothing
 * is buffered without bound and nothing is dropped: every batch gets an ack, ok or not.
 *
 * Exactly-once bookkeeping: each batch carries (producerId, sequence) per partition; a batch
 * whose sequence is not above the last accepted one is a duplicate and is acked without being
 * applied again (after the original has finished, so the ack never runs ahead of the state).
 */
import type { Logger } from 'pino'
import { Packr } from 'msgpackr'
import { ErrorCodes, ShoalError } from '../errors.ts'
import type { Envelope, EventBatchBody, HeartbeatLoad, StateBody } from '../protocol/messages.ts'
import { partitionForKey } from '../protocol/partition.ts'
import type { Engine } from '../processing/engine.ts'
import type { DeadLetter } from '../processing/task-types.ts'
import type { Connection } from '../transport/transport.ts'
import { isReplyOrError } from '../transport/requests.ts'
import type { PartitionHost } from './worker.ts'

export interface OwnershipView {
  serves(partition: number, epoch?: number): boolean
  readonly partitionCount: number
}

export interface DataPlaneOptions {
  engine: Engine
  logger: Logger
  /** Batches queued in the engine before readers stop reading. @default 4 per thread */
  maxInFlightBatches?: number
  /** Producers remembered per partition for dedup (least recently seen are forgotten). @default 10000 */
  maxProducersPerPartition?: number
  /** Receives dead-lettered events (a job threw). */
  onDeadLetter?: (partition: number, letters: DeadLetter[]) => void
  /** Receives emitted events: msgpack [stream, key, event][] per batch. */
  onEmitted?: (partition: number, emitted: Uint8Array) => void
  /** Control messages on the data port (e.g. `subscribe`); throw a ShoalError to refuse one. */
  onControl?: (conn: Connection, env: Envelope) => void
}

interface PartitionRuntime {
  /** Last accepted sequence per producer (insertion order doubles as recency for eviction). */
  producers: Map<string, number>
  /** Settles when every batch accepted so far has been applied. */
  tail: Promise<void>
  inFlight: number
  paused: boolean
}

const packr = new Packr({ useRecords: true, moreTypes: true })

export class DataPlane implements PartitionHost {
  readonly #engine: Engine
  readonly #log: Logger
  readonly #opts: DataPlaneOptions
  readonly #partitions = new Map<number, PartitionRuntime>()
  readonly #roomWaiters: (() => void)[] = []
  readonly #maxInFlight: number
  #ownership: OwnershipView | null = null
  #pausedAll = false
  #rateAt = performance.now()
  #eventsPerSec = 0
  #lastEvents = 0
  #backpressuredMs = 0
  #deadLettered = 0

  constructor(options: DataPlaneOptions) {
    this.#opts = options
    this.#engine = options.engine
    this.#log = options.logger
    this.#maxInFlight = options.maxInFlightBatches ?? 4 * options.engine.threads
  }

  /** Wire the ownership source (the Worker) after both exist. */
  bind(ownership: OwnershipView): void {
    this.#ownership = ownership
  }

  get deadLettered(): number {
    return this.#deadLettered
  }
  get backpressuredMs(): number {
    return this.#backpressuredMs
  }

  // --- PartitionHost -------------------------------------------------------------------------------

  restore(partition: number): Promise<void> {
    this.#partitions.set(partition, {
      producers: new Map(),
      tail: Promise.resolve(),
      inFlight: 0,
      paused: false,
    })
    return Promise.resolve()
  }

  async release(partition: number): Promise<void> {
    const rt = this.#partitions.get(partition)
    if (rt === undefined) return
    await rt.tail
    this.#partitions.delete(partition)
    await this.#engine.drop(partition)
  }

  fence(partition: number): void {
    this.#partitions.delete(partition)
    void this.#engine.drop(partition).catch(() => {})
  }

  pause(partitions: number[] | null): void {
    if (partitions === null) this.#pausedAll = true
    else this.#setPaused(partitions, true)
  }

  resume(partitions: number[] | null): void {
    if (partitions === null) {
      this.#pausedAll = false
      for (const rt of this.#partitions.values()) rt.paused = false
    } else {
      this.#setPaused(partitions, false)
    }
  }

  #setPaused(partitions: number[], paused: boolean): void {
    for (const p of partitions) {
      const rt = this.#partitions.get(p)
      if (rt !== undefined) rt.paused = paused
    }
  }

  load(): HeartbeatLoad {
    const now = performance.now()
    if (now - this.#rateAt >= 1000) {
      const events = this.#engine.eventsProcessed
      this.#eventsPerSec = ((events - this.#lastEvents) * 1000) / (now - this.#rateAt)
      this.#lastEvents = events
      this.#rateAt = now
    }
    return {
      queueDepth: this.#engine.queueDepth,
      inFlight: this.#engine.inFlight,
      eventsPerSec: Math.round(this.#eventsPerSec),
      rssBytes: process.memoryUsage.rss(),
      lag: 0,
    }
  }

  // --- connections ---------------------------------------------------------------------------------

  async serve(conn: Connection): Promise<void> {
    try {
      for await (const env of conn) {
        try {
          if (env.kind === 'event' && env.body.op === 'batch') {
            if (this.#engine.inFlight >= this.#maxInFlight) await this.#waitForRoom()
            this.#onBatch(conn, env.body)
          } else if (env.kind === 'state') {
            await this.#onState(conn, env, env.body)
          } else if (env.kind === 'control' && this.#opts.onControl !== undefined) {
            if (isReplyOrError(env)) continue
            this.#opts.onControl(conn, env)
          } else {
            throw new ShoalError(
              ErrorCodes.BAD_MESSAGE,
              `a worker's data port does not take ${env.kind} messages`,
            )
          }
        } catch (err) {
          if (!(err instanceof ShoalError)) throw err
          trySend(conn, {
            kind: 'control',
            body: { op: 'error', code: err.code, message: err.message, fatal: false },
            corr: env.corr ?? undefined,
          })
        }
      }
    } catch (err) {
      this.#log.debug({ err, peer: conn.peer.nodeId }, 'data connection ended with an error')
    }
  }

  #waitForRoom(): Promise<void> {
    const since = performance.now()
    return new Promise<void>((resolve) =>
      this.#roomWaiters.push(() => {
        this.#backpressuredMs += performance.now() - since
        resolve()
      }),
    )
  }

  #room(): void {
    while (this.#roomWaiters.length > 0 && this.#engine.inFlight < this.#maxInFlight)
      this.#roomWaiters.shift()!()
  }

  #onBatch(conn: Connection, b: EventBatchBody): void {
    const ack = (ok: boolean, error?: ShoalError): void => {
      trySend(conn, {
        kind: 'event',
        body: {
          op: 'ack',
          partition: b.partition,
          producerId: b.producerId,
          sequence: b.sequence,
          ok,
          error: error === undefined ? undefined : error.toJSON(),
        },
      })
    }
    const rt = this.#partitions.get(b.partition)
    if (rt === undefined || this.#ownership === null || !this.#ownership.serves(b.partition, b.epoch)) {
      ack(
        false,
        new ShoalError(
          ErrorCodes.NOT_OWNER,
          `this worker does not serve partition ${b.partition} at epoch ${b.epoch}`,
          {
            retryable: true,
          },
        ),
      )
      return
    }
    if (rt.paused || this.#pausedAll) {
      ack(false, new ShoalError(ErrorCodes.PAUSED, `partition ${b.partition} is paused`, { retryable: true }))
      return
    }
    const last = rt.producers.get(b.producerId)
    if (last !== undefined && b.sequence <= last) {
      // Duplicate (a retry): ack once everything accepted before it has been applied.
      void rt.tail.then(() => ack(true))
      return
    }
    rt.producers.delete(b.producerId)
    rt.producers.set(b.producerId, b.sequence)
    if (rt.producers.size > (this.#opts.maxProducersPerPartition ?? 10_000)) {
      rt.producers.delete(rt.producers.keys().next().value!)
    }
    rt.inFlight++
    const done = this.#engine.batch(b.partition, b.payload).then(
      (res) => {
        if (res.deadLetters !== null) {
          this.#deadLettered += res.deadLetters.length
          for (const d of res.deadLetters.slice(0, 3)) {
            this.#log.warn(
              { partition: b.partition, key: d.key, error: d.error },
              'job threw; event dead-lettered',
            )
          }
          this.#opts.onDeadLetter?.(b.partition, res.deadLetters)
        }
        if (res.emitted !== null) this.#opts.onEmitted?.(b.partition, res.emitted)
        ack(true)
      },
      (err: unknown) => {
        // The batch did not run (engine closed, queue full): forget it so the retry is applied.
        if (rt.producers.get(b.producerId) === b.sequence) {
          if (last === undefined) rt.producers.delete(b.producerId)
          else rt.producers.set(b.producerId, last)
        }
        ack(false, err instanceof ShoalError ? err : new ShoalError(ErrorCodes.JOB_FAILED, String(err)))
      },
    )
    rt.tail = rt.tail.then(() => done)
    void done.finally(() => {
      rt.inFlight--
      this.#room()
    })
  }

  async #onState(conn: Connection, env: Envelope, body: StateBody): Promise<void> {
    const own = this.#ownership
    switch (body.op) {
      case 'get': {
        if (typeof body.key !== 'string')
          throw new ShoalError(ErrorCodes.BAD_MESSAGE, 'state get needs a key')
        const p = body.partition ?? partitionForKey(body.key, own?.partitionCount ?? 256)
        const rt = this.#partitions.get(p)
        if (rt === undefined || own === null || !own.serves(p)) {
          throw new ShoalError(ErrorCodes.NOT_OWNER, `this worker does not serve partition ${p}`, {
            retryable: true,
          })
        }
        await rt.tail
        const r = await this.#engine.get(p, body.key)
        trySend(conn, {
          kind: 'state',
          body: { op: 'result', key: body.key, partition: p, found: r.found, data: r.data ?? undefined },
          corr: env.corr ?? undefined,
        })
        return
      }
      case 'dump': {
        // Every partition this worker serves, one chunk each, then an end marker.
        const parts = [...this.#partitions.keys()]
          .filter((p) => own?.serves(p) === true)
          .sort((a, b) => a - b)
        for (const p of parts) {
          await this.#partitions.get(p)?.tail
          const r = await this.#engine.dump(p)
          await conn.write({
            kind: 'state',
            body: { op: 'chunk', partition: p, data: r.data },
            corr: env.corr ?? undefined,
          })
        }
        trySend(conn, {
          kind: 'state',
          body: { op: 'end', data: packr.pack(parts) },
          corr: env.corr ?? undefined,
        })
        return
      }
      default:
        throw new ShoalError(ErrorCodes.BAD_MESSAGE, `a worker does not take state ${body.op}`)
    }
  }
}

function trySend(conn: Connection, message: Parameters<Connection['send']>[0]): void {
  try {
    conn.send(message)
  } catch {
    // The connection closed; the sender retries un-acked batches elsewhere.
  }
}
