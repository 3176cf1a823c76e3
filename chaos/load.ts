/**
 * Continuous load for the chaos suite, and the record of what was acknowledged.
 *
 * Client events: a ShoalClient in this process sends counted events (event i: key
 * `c<i*7919 mod keys>`, value (i mod 17) - 5, as test/helpers/totals.ts) at a steady rate. The
 * client acknowledges batches of a partition in the order their events were sent (`onAck`), so
 * a FIFO of event numbers per partition says exactly which events each ack covers; the
 * acknowledged per-key {count, sum} is what the cluster must hold at the end. Events sent and
 * never acknowledged are "in doubt": either outcome is allowed. A batch the client gives up on
 * (deliveryTimeoutMs, e.g. a partition without an owner for that long) is reported in the same
 * order (onGiveUp) and its events leave the FIFO as in doubt; without that, every later ack of
 * the partition would be credited to the events before it (the given-up ones) and the spot
 * checks would report keys short of what was "acknowledged".
 *
 * Stream entries: XADD to the source stream with explicit ids `<base>-<n>`, so an XADD whose
 * reply was lost (Redis killed) is resolved by retrying it: "ID equal or smaller" means it is
 * in the stream. Every entry confirmed in the stream must be applied exactly once.
 */
import { Redis } from 'ioredis'
import { ShoalClient } from '../src/client/client.ts'
import { InvalidOptionError } from '../src/errors.ts'
import { partitionForKey } from '../src/protocol/partition.ts'
import { createTransport } from '../src/transport/index.ts'
import type { Transport } from '../src/transport/transport.ts'

export type Totals = Map<string, { count: number; sum: number }>

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

function add(t: Totals, key: string, value: number): void {
  const e = t.get(key)
  if (e === undefined) t.set(key, { count: 1, sum: value })
  else {
    e.count++
    e.sum += value
  }
}

export const clientKey = (i: number, keys: number): string => `c${(i * 7919) % keys}`
export const clientValue = (i: number): number => (i % 17) - 5
export const streamKey = (n: number, keys: number): string => `s${(n * 7919) % keys}`
export const streamValue = (n: number): number => (n % 13) - 4

/** One ShoalClient and the events it was given, per partition, not yet acknowledged. */
class Tracked {
  readonly client: ShoalClient
  readonly label: string
  /** Per partition: event numbers sent, in order; `heads[p]` is the first not yet settled. */
  readonly pending: number[][]
  readonly heads: number[]
  /** Events of batches the client gave up on: in doubt. */
  readonly gaveUp: number[] = []
  failure: string | null = null
  closed = false

  constructor(client: ShoalClient, label: string, partitions: number) {
    this.client = client
    this.label = label
    this.pending = Array.from({ length: partitions }, () => [])
    this.heads = new Array<number>(partitions).fill(0)
  }

  unackedEvents(): number[] {
    return [...this.gaveUp, ...this.pending.flatMap((q, p) => q.slice(this.heads[p]))]
  }
}

export interface LoadOptions {
  rate: number
  keys: number
  /** Replica list "host:a,host:b": ShoalClient's way to follow the leader. */
  coordinatorList: string
  /** Pause sending above this many unacknowledged events (the client buffers the rest). */
  maxUnacked?: number
  /** The client gives a batch up after this long. @default 120000 */
  deliveryTimeoutMs?: number
  /** The clients' transport (tests: an in-process one). @default TCP */
  transport?: (nodeId: string) => Transport
  say: (line: string) => void
}

export class ClientLoad {
  readonly acked: Totals = new Map()
  /** Per key: events given to a client (acknowledged or not). */
  readonly sentCounts = new Map<string, number>()
  sent = 0
  ackedEvents = 0
  /** How the client follows the leader: 'replica list' or the runner's fallback. */
  mode: 'replica-list' | 'runner-reconnects' = 'replica-list'
  modeReason = ''
  #clients: Tracked[] = []
  #current: Tracked | null = null
  #timer: NodeJS.Timeout | null = null
  #partitions = 0
  #lastAckAt = performance.now()
  #maxGap = 0
  #paused = 0
  readonly #o: LoadOptions

  constructor(o: LoadOptions) {
    this.#o = o
  }

  get currentCoordinator(): string {
    return this.#current?.label ?? ''
  }

  /** Connect (with the replica list; see `mode`). `leader` is the fallback's address. */
  async connect(leader: string): Promise<void> {
    try {
      this.#current = await this.#open(this.#o.coordinatorList)
      this.mode = 'replica-list'
    } catch (err) {
      if (!(err instanceof InvalidOptionError)) throw err
      // ShoalClient does not take the replica list yet: one replica's address, and the runner
      // opens a new client on the new leader after a takeover (see rotate()).
      this.mode = 'runner-reconnects'
      this.modeReason = err.message
      this.#current = await this.#open(leader)
    }
  }

  async #open(coordinator: string): Promise<Tracked> {
    let tracked: Tracked | null = null
    let lastErr: unknown
    for (let attempt = 1; attempt <= 20; attempt++) {
      try {
        const client = await ShoalClient.connect({
          coordinator,
          transport: this.#transport(`chaos-client-${process.pid}`),
          retryDelayMs: 20,
          deliveryTimeoutMs: this.#o.deliveryTimeoutMs ?? 120_000,
          queryTimeoutMs: 60_000,
          // Every worker is reachable from here; 'auto' would send a worker's traffic through the
          // leader for the rest of the run after one failed dial (during a partition).
          gateway: 'never',
          onAck: (p, n) => this.#onAck(tracked!, p, n),
          onGiveUp: (p, n) => this.#onGiveUp(tracked!, p, n),
        })
        tracked = new Tracked(client, coordinator, client.partitions)
        this.#partitions = client.partitions
        this.#clients.push(tracked)
        return tracked
      } catch (err) {
        if (err instanceof InvalidOptionError) throw err
        lastErr = err
        await sleep(250)
      }
    }
    throw new Error(`cannot connect a client to ${coordinator}: ${String(lastErr)}`)
  }

  /** Fallback mode only: new events go to a client of `leader`; the old one drains. */
  async rotate(leader: string): Promise<boolean> {
    if (this.mode !== 'runner-reconnects' || this.#current?.label === leader) return false
    const old = this.#current
    this.#current = await this.#open(leader)
    if (old !== null) void this.#retire(old)
    return true
  }

  async #retire(t: Tracked): Promise<void> {
    try {
      await t.client.flush()
    } catch (err) {
      t.failure = (err as Error).message
    }
    await t.client.close().catch(() => {})
    t.closed = true
  }

  #transport(nodeId: string): Transport {
    return this.#o.transport?.(nodeId) ?? createTransport('tcp', { nodeId, role: 'client' })
  }

  #onAck(t: Tracked, p: number, n: number): void {
    this.#settle(t, p, n, (i) => add(this.acked, clientKey(i, this.#o.keys), clientValue(i)))
    this.ackedEvents += n
    const now = performance.now()
    this.#maxGap = Math.max(this.#maxGap, now - this.#lastAckAt)
    this.#lastAckAt = now
  }

  /** A batch given up: its events (the partition's oldest unsettled) are in doubt. */
  #onGiveUp(t: Tracked, p: number, n: number): void {
    this.#settle(t, p, n, (i) => t.gaveUp.push(i))
  }

  /** The next `n` events of partition `p`'s FIFO, settled in send order. */
  #settle(t: Tracked, p: number, n: number, each: (i: number) => void): void {
    const q = t.pending[p]!
    let h = t.heads[p]!
    for (let j = 0; j < n && h < q.length; j++, h++) each(q[h]!)
    if (h > 4096 && h * 2 > q.length) {
      q.splice(0, h)
      h = 0
    }
    t.heads[p] = h
  }

  start(): void {
    const tickMs = 20
    const perTick = Math.max(1, Math.round((this.#o.rate * tickMs) / 1000))
    const max = this.#o.maxUnacked ?? 50_000
    this.#timer = setInterval(() => {
      const t = this.#current
      if (t === null) return
      if (t.client.unacked >= max) {
        this.#paused++
        return
      }
      const keys = this.#o.keys
      for (let j = 0; j < perTick; j++) {
        const i = this.sent++
        const key = clientKey(i, keys)
        this.sentCounts.set(key, (this.sentCounts.get(key) ?? 0) + 1)
        t.pending[partitionForKey(key, this.#partitions)]!.push(i)
        t.client.send(key, { value: clientValue(i) })
      }
    }, tickMs)
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
  }

  /** The longest time without any ack since the last call (and the one still running). */
  takeAckGap(): number {
    const now = performance.now()
    const gap = Math.max(this.#maxGap, now - this.#lastAckAt)
    this.#maxGap = 0
    this.#lastAckAt = now
    return gap
  }

  /** Ticks skipped because too much was unacknowledged (the client pushing back). */
  get pausedTicks(): number {
    return this.#paused
  }

  /** Every client flushed (each within `timeoutMs`); what could not be is reported. */
  async flushAll(timeoutMs: number): Promise<string[]> {
    const problems: string[] = []
    await Promise.all(
      this.#clients.map(async (t) => {
        if (t.closed) {
          if (t.failure !== null) problems.push(`client of ${t.label}: ${t.failure}`)
          return
        }
        let timer: NodeJS.Timeout | undefined
        try {
          await Promise.race([
            t.client.flush(),
            new Promise<never>((_, reject) => {
              timer = setTimeout(() => reject(new Error(`flush not done within ${timeoutMs} ms`)), timeoutMs)
            }),
          ])
        } catch (err) {
          t.failure = (err as Error).message
          problems.push(`client of ${t.label}: ${t.failure}`)
        } finally {
          clearTimeout(timer)
        }
      }),
    )
    return problems
  }

  /** Events sent and not acknowledged (by any client), as per-key totals. */
  inDoubt(): { events: number; totals: Totals } {
    const totals: Totals = new Map()
    let events = 0
    for (const t of this.#clients) {
      for (const i of t.unackedEvents()) {
        add(totals, clientKey(i, this.#o.keys), clientValue(i))
        events++
      }
    }
    return { events, totals }
  }

  /** Events a client gave up on (stats.failed); they are in doubt (see onGiveUp). */
  failedEvents(): number {
    return this.#clients.reduce((n, t) => n + t.client.stats.failed, 0)
  }

  /** A client of its own (not tracked), connected like the current one. */
  fresh(name: string): Promise<ShoalClient> {
    return ShoalClient.connect({
      coordinator: this.#current!.label,
      transport: this.#transport(`${name}-${process.pid}`),
      gateway: 'never',
      queryTimeoutMs: 60_000,
    })
  }

  /** --self-test: one event the bookkeeping does not know of (a separate client). */
  async sendUntracked(key: string, value: number): Promise<void> {
    const client = await this.fresh('chaos-self-test')
    client.send(key, { value })
    await client.flush()
    await client.close()
  }

  /** --self-test: an acknowledgement for an event that was never sent. */
  phantomAck(key: string, value: number): void {
    add(this.acked, key, value)
  }

  /** The current client (for the final dump). */
  get client(): ShoalClient | null {
    return this.#current?.client ?? null
  }

  async close(): Promise<void> {
    this.stop()
    await Promise.all(this.#clients.filter((t) => !t.closed).map((t) => t.client.close().catch(() => {})))
  }
}

export interface StreamLoadOptions {
  redisUrl: string
  stream: string
  rate: number
  keys: number
}

/** XADDs counted entries with explicit ids; `confirmed` entries are known to be in the stream. */
export class StreamLoad {
  readonly produced: Totals = new Map()
  /** Entries 0..confirmed-1 are in the stream. */
  confirmed = 0
  errors = 0
  readonly #redis: Redis
  readonly #o: StreamLoadOptions
  readonly #base = Date.now()
  #running = false
  #loop: Promise<void> = Promise.resolve()

  constructor(o: StreamLoadOptions) {
    this.#o = o
    this.#redis = new Redis(o.redisUrl, { maxRetriesPerRequest: 1, lazyConnect: false })
    this.#redis.on('error', () => {}) // reconnects; errors surface per command
  }

  start(): void {
    this.#running = true
    this.#loop = this.#run()
  }

  async stop(): Promise<void> {
    this.#running = false
    await this.#loop
  }

  async #run(): Promise<void> {
    const tickMs = 50
    let owed = 0
    let last = performance.now()
    while (this.#running) {
      await sleep(tickMs)
      const now = performance.now()
      owed += ((now - last) * this.#o.rate) / 1000
      last = now
      // After an outage, catch up gradually (at most 4 ticks' worth at once).
      owed = Math.min(owed, (this.#o.rate * tickMs * 4) / 1000)
      const n = Math.floor(owed)
      if (n === 0) continue
      if (await this.#produce(this.confirmed, this.confirmed + n)) owed -= n
    }
  }

  /** XADD entries from..to-1; advances `confirmed` over every entry known to be in the stream. */
  async #produce(from: number, to: number): Promise<boolean> {
    const p = this.#redis.pipeline()
    for (let n = from; n < to; n++) {
      p.xadd(
        this.#o.stream,
        `${this.#base}-${n + 1}`,
        'data',
        JSON.stringify({ key: streamKey(n, this.#o.keys), value: streamValue(n) }),
      )
    }
    let results: [Error | null, unknown][] | null
    try {
      results = await p.exec()
    } catch {
      this.errors++
      return false
    }
    for (let k = 0; k < (results?.length ?? 0); k++) {
      const [err] = results![k]!
      // Already there: an earlier attempt's reply was lost after Redis applied it.
      if (err !== null && !/equal or smaller/i.test(err.message)) {
        this.errors++
        return false
      }
      const n = from + k
      add(this.produced, streamKey(n, this.#o.keys), streamValue(n))
      this.confirmed = n + 1
    }
    return this.confirmed === to
  }

  /**
   * Whether the group has read every entry (its last-delivered id is the stream's last id) and
   * acknowledged them (pending 0). (XINFO's `lag` is not used: Redis 7.0 reports a stale one
   * after a restart from the AOF.)
   */
  async drained(
    group: string,
  ): Promise<{ delivered: string; last: string; pending: number; deadLetters: number }> {
    const field = (xs: unknown[], name: string): unknown => xs[xs.indexOf(name) + 1]
    const groups = (await this.#redis.xinfo('GROUPS', this.#o.stream)) as unknown[][]
    const g = groups.find((x) => field(x, 'name') === group)
    const info = (await this.#redis.xinfo('STREAM', this.#o.stream)) as unknown[]
    const pending = Number(((await this.#redis.xpending(this.#o.stream, group)) as [number])[0])
    const deadLetters = await this.#redis.xlen(`${this.#o.stream}:dlq`)
    return {
      delivered: g === undefined ? '(no group)' : String(field(g, 'last-delivered-id')),
      last: String(field(info, 'last-generated-id')),
      pending,
      deadLetters,
    }
  }

  close(): void {
    this.#redis.disconnect()
  }
}
