/**
 * MemorySink: emitted records and committed state kept in this process, for tests and small
 * jobs. Effectively once like the real sinks: a record with an identity (offset not null) is
 * stored once however often its batch is replayed; state rows keep the newest version.
 */
import type { DeadLetterRecord, EmittedBatch, Sink, StateBatch } from '../sink.ts'

export interface MemorySinkRecord {
  readonly partition: number
  readonly offset: number | null
  readonly index: number
  readonly stream: string
  readonly key: string
  readonly event: unknown
}

export interface MemorySinkRow {
  readonly partition: number
  readonly state: unknown
  readonly version: number
}

export interface MemorySinkOptions {
  /** @default 'memory' */
  name?: string
  /** @default { events: true, state: true } */
  accepts?: { events: boolean; state: boolean }
}

export class MemorySink implements Sink {
  readonly name: string
  readonly accepts: { readonly events: boolean; readonly state: boolean }
  /** Emitted records in write order. */
  readonly records: MemorySinkRecord[] = []
  /** State rows by key. */
  readonly rows = new Map<string, MemorySinkRow>()
  readonly deadLetters: DeadLetterRecord[] = []
  /** Identities `partition:offset:index` already stored. */
  readonly #seen = new Set<string>()
  /**
   * Newest version seen per partition (also for deletes, whose rows are gone), so a replayed
   * older batch cannot resurrect a deleted key.
   */
  readonly #versions = new Map<number, number>()
  #open = false

  constructor(options: MemorySinkOptions = {}) {
    this.name = options.name ?? 'memory'
    this.accepts = options.accepts ?? { events: true, state: true }
  }

  get isOpen(): boolean {
    return this.#open
  }

  open(): Promise<void> {
    this.#open = true
    return Promise.resolve()
  }

  writeEvents(batches: readonly EmittedBatch[]): Promise<void> {
    for (const b of batches) {
      b.records.forEach(([stream, key, event], i) => {
        const index = b.firstIndex + i
        if (b.offset !== null) {
          const id = `${b.partition}:${b.offset}:${index}`
          if (this.#seen.has(id)) return
          this.#seen.add(id)
        }
        this.records.push({ partition: b.partition, offset: b.offset, index, stream, key, event })
      })
    }
    return Promise.resolve()
  }

  writeState(batches: readonly StateBatch[]): Promise<void> {
    for (const b of batches) {
      // Versions only grow per partition: an older batch is a replay, already superseded.
      if ((this.#versions.get(b.partition) ?? -Infinity) > b.version) continue
      this.#versions.set(b.partition, b.version)
      const row = { partition: b.partition, version: b.version }
      if (b.full) {
        const live = new Set(b.upserts.map(([k]) => k))
        for (const [k, r] of this.rows) if (r.partition === b.partition && !live.has(k)) this.rows.delete(k)
      }
      for (const [key, state] of b.upserts) {
        const cur = this.rows.get(key)
        if (cur === undefined || cur.version <= b.version) this.rows.set(key, { ...row, state })
      }
      for (const key of b.deletes) {
        const cur = this.rows.get(key)
        if (cur !== undefined && cur.version <= b.version) this.rows.delete(key)
      }
    }
    return Promise.resolve()
  }

  deadLetter(records: readonly DeadLetterRecord[]): Promise<void> {
    this.deadLetters.push(...records)
    return Promise.resolve()
  }

  close(): Promise<void> {
    this.#open = false
    return Promise.resolve()
  }
}
