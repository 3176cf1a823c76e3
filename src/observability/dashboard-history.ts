/**
 * What the dashboard remembers between samples: a ring of 1 s samples of the figures the
 * coordinator already has (heartbeat loads, connector summaries), the partitions that moved
 * recently, and the last checkpoints. Pure bookkeeping with the clock passed in, so it is tested
 * without timers; src/observability/dashboard.ts samples the coordinator into it.
 */

/**
 * One member's figures in a sample: [eventsPerSec, lag, queueDepth, inFlight, rssBytes,
 * ackedPerSec, backpressure (0..1)]; the last two are null from workers that do not report them.
 */
export type MemberFigures = [number, number, number, number, number, number | null, number | null]

export interface HistorySample {
  /** Increases by one per sample for the life of the process (clients ask for samples after one). */
  seq: number
  /** Wall clock, ms since the epoch. */
  t: number
  /** Live members that reported a load, by id. */
  m: Record<string, MemberFigures>
  /** Sum of the sinks' lag (records buffered, not yet written); null when unknown. */
  sinkLag: number | null
  /** Sum of the sources' backlog (entries not yet read); null when unknown. */
  sourceBacklog: number | null
  /** Dead letters in total (workers' data planes, sources, sinks); null when unknown. */
  deadLetters: number | null
}

/** A fixed-size window of samples, oldest first. */
export class SampleRing {
  readonly capacity: number
  readonly #samples: HistorySample[] = []
  #seq = 0

  constructor(capacity: number) {
    if (!Number.isSafeInteger(capacity) || capacity < 1) {
      throw new RangeError(`capacity must be a positive integer (got ${String(capacity)})`)
    }
    this.capacity = capacity
  }

  get lastSeq(): number {
    return this.#seq
  }

  push(sample: Omit<HistorySample, 'seq'>): HistorySample {
    const s: HistorySample = { seq: ++this.#seq, ...sample }
    this.#samples.push(s)
    if (this.#samples.length > this.capacity) this.#samples.splice(0, this.#samples.length - this.capacity)
    return s
  }

  /** Samples with seq > `after` (all of them for after <= 0 or an unknown, older seq). */
  since(after: number): HistorySample[] {
    const first = this.#samples[0]
    if (first === undefined || after < first.seq) return [...this.#samples]
    return this.#samples.slice(after - first.seq + 1)
  }
}

export interface PartitionMove {
  partition: number
  /** The previous owner; null when the partition had none (first assignment after a gap). */
  from: string | null
  to: string | null
  epoch: number
  /** Wall clock, ms since the epoch. */
  at: number
}

/**
 * Notices owner changes between successive assignments. The first assignment with any owner is
 * the baseline (no moves): after a coordinator restart the rebuilt assignment is not a move.
 */
export class MoveTracker {
  readonly #keepMs: number
  readonly #max: number
  #owners: readonly (string | null)[] | null = null
  #moves: PartitionMove[] = []

  constructor(options: { keepMs: number; max?: number }) {
    this.#keepMs = options.keepMs
    this.#max = options.max ?? 4096
  }

  observe(owners: readonly (string | null)[], epochs: readonly number[], now: number): PartitionMove[] {
    const previous = this.#owners
    if (previous === null || previous.length !== owners.length) {
      if (owners.some((o) => o !== null)) this.#owners = [...owners]
      return []
    }
    const found: PartitionMove[] = []
    owners.forEach((to, partition) => {
      const from = previous[partition] ?? null
      if (from !== to) found.push({ partition, from, to, epoch: epochs[partition] ?? 0, at: now })
    })
    this.#owners = [...owners]
    if (found.length > 0) {
      this.#moves.push(...found)
      if (this.#moves.length > this.#max) this.#moves.splice(0, this.#moves.length - this.#max)
    }
    return found
  }

  /** Moves within the last keepMs, newest last. */
  recent(now: number): PartitionMove[] {
    const cutoff = now - this.#keepMs
    const i = this.#moves.findIndex((m) => m.at >= cutoff)
    if (i < 0) this.#moves = []
    else if (i > 0) this.#moves = this.#moves.slice(i)
    return [...this.#moves]
  }
}

/** The last `max` items with distinct ids, newest last. */
export class RecentById<T extends { id: number }> {
  readonly #max: number
  readonly #items: T[] = []

  constructor(max: number) {
    this.#max = max
  }

  add(item: T | null | undefined): boolean {
    if (item == null || this.#items.some((x) => x.id === item.id)) return false
    this.#items.push(item)
    if (this.#items.length > this.#max) this.#items.shift()
    return true
  }

  list(): T[] {
    return [...this.#items]
  }
}
