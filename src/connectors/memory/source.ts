/**
 * MemorySource: a Source over an in-process stream with consumer-group semantics, for tests
 * and embedding (a job fed from the same process). It keeps the contract of the real sources
 * (src/connectors/source.ts) so the pump, the data plane and the conformance suite can be
 * exercised without a server:
 *
 * - A `MemoryStream` holds entries (ids 1, 2, ...) and, per group, the last delivered id and
 *   the pending list: each delivered entry with the consumer holding it and the identity it was
 *   handed out under.
 * - Identity: producer `mem:<stream>:<group>:<consumer>#<incarnation>`, sequence = entry id.
 *   One incarnation reads ascending ids, so sequences increase per producer; a pending entry
 *   re-delivered (by its restarted reader or by a survivor) keeps the identity it was first
 *   handed out under, so the owner's dedup table drops it if it was applied.
 * - A reader opened under a name that holds pending entries re-delivers them first (a restart).
 *   The pending entries of a consumer that is not among the live readers and has not read for
 *   `deadIdleMs` are re-delivered by one survivor (a claim per consumer, held until they are
 *   acknowledged or the survivor closes).
 * - Re-delivery never moves an entry to the survivor (as the Redis source re-reads a dead
 *   consumer's list under its name): it walks the consumer's pending entries in id order from
 *   the oldest. The owner keeps one high-water sequence per producer and partition, so every
 *   sender of a producer's records must send them complete and in order from its first
 *   unapplied one. Moving entries let two survivors each hold a part of one reader's records
 *   (one claimed them while the reader was alive but missing from its view of the live
 *   readers, another after the reader stopped): the later part could be applied first and the
 *   earlier one then dropped as a duplicate, i.e. lost (seen in CI).
 * - Events must be objects with a key (`keyField`, a non-empty string or a number); anything
 *   else is dead-lettered with the reason and acknowledged, like the Redis source does.
 * - `stream.unavailable = true` makes every read, ack and dead letter fail with
 *   SOURCE_UNAVAILABLE (retryable), to test what the pump does when the system is down.
 */
import { ErrorCodes, ShoalError } from '../../errors.ts'
import { eventKey, type Source, type SourceRead, type SourceRecord, type SourceStatus } from '../source.ts'

interface Pending {
  consumer: string
  producerId: string
}

/** One consumer's pending list being re-delivered by this reader. */
interface Job {
  readonly consumer: string
  /** The last id handed out. */
  cursor: number
  /** Ids above this belong to a live incarnation (a restart's own list); Infinity otherwise. */
  readonly until: number
  /** Handed out and not acknowledged yet. */
  readonly out: Set<number>
}

interface Group {
  lastDelivered: number
  /** Entry id -> who holds it, under which identity. Insertion order = id order. */
  readonly pending: Map<number, Pending>
  readonly incarnations: Map<string, number>
  /** Consumer -> when it last read (ms, performance.now()). */
  readonly lastRead: Map<string, number>
  /** Consumer whose pending list a survivor is re-delivering -> that survivor. */
  readonly claims: Map<string, MemorySource>
}

export interface MemoryDeadLetter {
  readonly id: string
  readonly reason: string
  readonly consumer: string
  readonly event: unknown
}

export class MemoryStream {
  readonly name: string
  /** Dead-lettered entries, in order. */
  readonly deadLetters: MemoryDeadLetter[] = []
  /** While true, reads, acks and dead letters fail with SOURCE_UNAVAILABLE. */
  unavailable = false
  readonly #entries = new Map<number, unknown>()
  #lastId = 0
  readonly #groups = new Map<string, Group>()
  #waiters: (() => void)[] = []

  constructor(name = 'memory') {
    this.name = name
  }

  /** Append events; returns their ids. */
  append(events: readonly unknown[]): string[] {
    const ids: string[] = []
    for (const e of events) {
      this.#entries.set(++this.#lastId, e)
      ids.push(String(this.#lastId))
    }
    const w = this.#waiters
    this.#waiters = []
    for (const f of w) f()
    return ids
  }

  get length(): number {
    return this.#entries.size
  }

  /** Entries delivered to `group` and not acknowledged. */
  pending(group = 'shoal'): number {
    return this.#groups.get(group)?.pending.size ?? 0
  }

  /** Entries not yet delivered to any reader of `group`. */
  lag(group = 'shoal'): number {
    return this.#lastId - (this.#groups.get(group)?.lastDelivered ?? 0)
  }

  /** @internal */
  group(name: string): Group {
    let g = this.#groups.get(name)
    if (g === undefined) {
      g = {
        lastDelivered: 0,
        pending: new Map(),
        incarnations: new Map(),
        lastRead: new Map(),
        claims: new Map(),
      }
      this.#groups.set(name, g)
    }
    return g
  }

  /** @internal */
  entry(id: number): unknown {
    return this.#entries.get(id)
  }

  /** @internal */
  get lastId(): number {
    return this.#lastId
  }

  /** @internal Resolves on the next append or after `ms`. */
  waitForAppend(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms)
      timer.unref?.()
      function done(): void {
        clearTimeout(timer)
        resolve()
      }
      this.#waiters.push(done)
    })
  }
}

export interface MemorySourceOptions {
  stream: MemoryStream
  /** This reader's consumer name (stable across restarts, like a worker id). */
  consumer: string
  /** @default 'shoal' */
  group?: string
  /** The event field holding the key. @default 'key' */
  keyField?: string
  /** @default 1000 */
  readCount?: number
  /**
   * A consumer not among the live readers is taken over once it has not read for this long (a
   * reader that just joined may not be in the routing table yet). @default 2000, as Redis
   */
  deadIdleMs?: number
}

export class MemorySource implements Source {
  readonly name: string
  readonly readCount: number
  readonly #stream: MemoryStream
  readonly #groupName: string
  readonly #me: string
  readonly #keyField: string
  readonly #deadIdleMs: number
  #group: Group | null = null
  #incarnation = 0
  /** Pending lists this instance re-delivers (its own earlier runs', dead readers'). */
  #jobs: Job[] = []
  /** Re-delivered entry id -> its job. */
  readonly #jobOf = new Map<number, Job>()
  #live: Set<string> | null = null
  #state: SourceStatus['state'] = 'starting'
  #read = 0
  #acked = 0
  #deadLettered = 0
  #redelivered = 0
  #errors = 0
  #lastError: string | null = null

  constructor(options: MemorySourceOptions) {
    if (options.consumer.length === 0)
      throw new ShoalError(ErrorCodes.INVALID_OPTION, 'consumer name is empty')
    this.#stream = options.stream
    this.#groupName = options.group ?? 'shoal'
    this.#me = options.consumer
    this.#keyField = options.keyField ?? 'key'
    this.#deadIdleMs = options.deadIdleMs ?? 2000
    this.readCount = options.readCount ?? 1000
    this.name = `memory:${options.stream.name}/${this.#groupName}`
  }

  get consumer(): string {
    return this.#me
  }
  get incarnation(): number {
    return this.#incarnation
  }

  open(): Promise<void> {
    if (this.#group !== null) return Promise.resolve()
    const g = this.#stream.group(this.#groupName)
    this.#incarnation = (g.incarnations.get(this.#me) ?? 0) + 1
    g.incarnations.set(this.#me, this.#incarnation)
    g.lastRead.set(this.#me, performance.now())
    // This reader's own pending entries (from before a restart) are re-delivered first, unless
    // a survivor is at it already.
    if (!g.claims.has(this.#me)) this.#startJob(g, this.#me, g.lastDelivered)
    this.#group = g
    this.#state = 'reading'
    return Promise.resolve()
  }

  setLiveReaders(readers: readonly string[]): void {
    this.#live = new Set(readers)
  }

  async read(max: number, blockMs: number): Promise<SourceRead> {
    const g = this.#ready()
    this.#check('read')
    g.lastRead.set(this.#me, performance.now())
    const limit = Math.max(1, max)
    const again = this.#redeliver(g, limit)
    if (again !== null) return again
    if (g.lastDelivered >= this.#stream.lastId) {
      await this.#stream.waitForAppend(Math.max(1, blockMs))
      if (this.#group === null) throw new ShoalError(ErrorCodes.CLOSED, `${this.name} is not open`)
      this.#check('read')
    }
    const producerId = this.#producer(this.#me, this.#incarnation)
    const records: SourceRecord[] = []
    const bad: MemoryDeadLetter[] = []
    while (records.length < limit && g.lastDelivered < this.#stream.lastId) {
      const id = ++g.lastDelivered
      const rec = this.#record(id, producerId, bad)
      g.pending.set(id, { consumer: this.#me, producerId })
      if (rec !== null) records.push(rec)
    }
    this.#settleBad(g, bad)
    this.#read += records.length
    return { records, redelivery: false }
  }

  /** Pending entries of this reader's earlier runs, then of dead readers (one survivor each). */
  #redeliver(g: Group, limit: number): SourceRead | null {
    this.#claimDead(g)
    for (const job of this.#jobs) {
      const records: SourceRecord[] = []
      const bad: MemoryDeadLetter[] = []
      let exhausted = true
      for (const [id, p] of g.pending) {
        if (id <= job.cursor) continue
        if (id > job.until) break
        if (p.consumer !== job.consumer) continue
        if (records.length >= limit) {
          exhausted = false
          break
        }
        job.cursor = id
        // Under the identity first handed out; the entry stays the consumer's.
        const rec = this.#record(id, p.producerId, bad)
        if (rec !== null) {
          records.push(rec)
          job.out.add(id)
          this.#jobOf.set(id, job)
        }
      }
      this.#settleBad(g, bad)
      if (records.length > 0) {
        this.#read += records.length
        this.#redelivered += records.length
        return { records, redelivery: true }
      }
      if (exhausted) this.#endJobIfDone(g, job)
    }
    return null
  }

  #startJob(g: Group, consumer: string, until: number): void {
    g.claims.set(consumer, this)
    this.#jobs.push({ consumer, cursor: 0, until, out: new Set() })
  }

  /** A job whose list is walked to the end and whose entries are all acknowledged lets go. */
  #endJobIfDone(g: Group, job: Job): void {
    if (job.out.size > 0) return
    for (const [id, p] of g.pending) {
      if (id > job.until) break
      if (id > job.cursor && p.consumer === job.consumer) return
    }
    this.#jobs = this.#jobs.filter((j) => j !== job)
    if (g.claims.get(job.consumer) === this) g.claims.delete(job.consumer)
  }

  #claimDead(g: Group): void {
    const live = this.#live
    if (live === null) return
    const now = performance.now()
    const holders = new Set<string>()
    for (const p of g.pending.values()) holders.add(p.consumer)
    for (const consumer of holders) {
      if (consumer === this.#me || live.has(consumer) || g.claims.has(consumer)) continue
      if (now - (g.lastRead.get(consumer) ?? 0) < this.#deadIdleMs) continue
      this.#startJob(g, consumer, Infinity)
    }
  }

  #producer(consumer: string, incarnation: number): string {
    return `mem:${this.#stream.name}:${this.#groupName}:${consumer}#${incarnation}`
  }

  #record(id: number, producerId: string, bad: MemoryDeadLetter[]): SourceRecord | null {
    const event = this.#stream.entry(id)
    const k = eventKey(event, this.#keyField, 'the entry')
    if ('error' in k) {
      bad.push({ id: String(id), reason: k.error, consumer: this.#me, event })
      return null
    }
    return { key: k.key, event, producerId, sequence: id, ack: String(id) }
  }

  #settleBad(g: Group, bad: readonly MemoryDeadLetter[]): void {
    for (const b of bad) {
      this.#stream.deadLetters.push(b)
      g.pending.delete(Number(b.id))
    }
    this.#deadLettered += bad.length
  }

  ack(acks: readonly string[]): Promise<void> {
    const g = this.#ready()
    this.#check('ack')
    for (const a of acks) {
      const id = Number(a)
      this.#settleOut(id)
      if (g.pending.delete(id)) this.#acked++
    }
    return Promise.resolve()
  }

  deadLetter(records: readonly SourceRecord[], reason: string): Promise<void> {
    const g = this.#ready()
    this.#check('dead letter')
    for (const r of records) {
      this.#stream.deadLetters.push({ id: r.ack, reason, consumer: this.#me, event: r.event })
      const id = Number(r.ack)
      this.#settleOut(id)
      if (g.pending.delete(id)) this.#acked++
    }
    this.#deadLettered += records.length
    return Promise.resolve()
  }

  /** An entry re-delivered by one of this reader's jobs is acknowledged (or dead-lettered). */
  #settleOut(id: number): void {
    const job = this.#jobOf.get(id)
    if (job === undefined) return
    this.#jobOf.delete(id)
    job.out.delete(id)
  }

  status(): SourceStatus {
    return {
      name: this.name,
      state: this.#state,
      read: this.#read,
      acked: this.#acked,
      deadLettered: this.#deadLettered,
      redelivered: this.#redelivered,
      backlog: this.#group === null ? null : this.#stream.lag(this.#groupName),
      errors: this.#errors,
      lastError: this.#lastError,
    }
  }

  /** Stop reading. Unacknowledged entries stay pending under this consumer (as after a crash). */
  close(): Promise<void> {
    if (this.#state === 'closed') return Promise.resolve()
    this.#state = 'closed'
    const g = this.#group
    this.#group = null
    // The lists it was re-delivering stay where they were: the next survivor starts over from
    // their oldest unacknowledged entry.
    if (g !== null) for (const [consumer, holder] of g.claims) if (holder === this) g.claims.delete(consumer)
    this.#jobs = []
    this.#jobOf.clear()
    return Promise.resolve()
  }

  #ready(): Group {
    if (this.#group === null) throw new ShoalError(ErrorCodes.CLOSED, `${this.name} is not open`)
    return this.#group
  }

  #check(what: string): void {
    if (!this.#stream.unavailable) {
      if (this.#state === 'retrying') this.#state = 'reading'
      return
    }
    this.#errors++
    this.#lastError = `${what}: the stream is unavailable`
    this.#state = 'retrying'
    throw new ShoalError(
      ErrorCodes.SOURCE_UNAVAILABLE,
      `${what} on ${this.name}: the stream is unavailable`,
      {
        retryable: true,
      },
    )
  }
}
