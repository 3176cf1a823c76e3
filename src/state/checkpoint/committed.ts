import type { PackedChanges } from './contract.ts'

/** [key, value] pairs as packed changes (the values copied end to end). */
export function packPairs(list: readonly (readonly [string, Uint8Array])[]): PackedChanges {
  const keys = list.map(([k]) => k)
  const ends = new Uint32Array(list.length)
  const data = Buffer.allocUnsafe(list.reduce((n, [, v]) => n + v.length, 0))
  let at = 0
  list.forEach(([, v], i) => {
    data.set(v, at)
    at += v.length
    ends[i] = at
  })
  return { keys, data, ends }
}

/**
 * A partition's committed checkpoint state, as the memory and file PartitionStores keep it in a
 * worker's main thread: its keys in one array and their values end to end in one buffer
 * (`ends[i]` is where the value of `keys[i]` ends), like the PackedStates the processing threads
 * send. Why not a Map of key -> Buffer: a Buffer is a ~100-byte object of its own, and with one
 * per key a worker holding 1M keys on `file:` state spent ~230 B per key here (docs/benchmarks.md,
 * "Worker memory"); here a key costs its string, two array slots and its bytes.
 *
 * Immutable: a commit builds the next one (`merge`), which the store swaps in synchronously, so a
 * restore that took the previous one reads a consistent cut. Nothing looks a key up by name: a
 * checkpoint is written and restored whole.
 */
export class CommittedState {
  static readonly EMPTY = new CommittedState([], Buffer.alloc(0), new Uint32Array(0))

  readonly keys: readonly string[]
  readonly data: Buffer
  readonly ends: Uint32Array

  constructor(keys: readonly string[], data: Buffer, ends: Uint32Array) {
    if (keys.length !== ends.length) throw new Error('CommittedState: keys and ends differ in length')
    this.keys = keys
    this.data = data
    this.ends = ends
  }

  get size(): number {
    return this.keys.length
  }

  /** The value of keys[i]: a view into `data` (copy it to keep it past the next commit). */
  value(i: number): Buffer {
    return this.data.subarray(i === 0 ? 0 : this.ends[i - 1], this.ends[i])
  }

  *entries(): IterableIterator<[string, Buffer]> {
    for (let i = 0; i < this.keys.length; i++) yield [this.keys[i]!, this.value(i)]
  }

  /** Where each key's value is in `changes`: the index of its last listing. */
  static latest(changes: PackedChanges): Map<string, number> {
    const latest = new Map<string, number>()
    for (let i = 0; i < changes.keys.length; i++) latest.set(changes.keys[i]!, i)
    return latest
  }

  /** From packed changes (copied; a key listed twice keeps its last value). */
  static from(changes: PackedChanges): CommittedState {
    return CommittedState.EMPTY.merge(changes, new Set())
  }

  /**
   * The next committed state: this one without the `deleted` keys and the changed ones, then the
   * changed keys with their new values (copied; a key listed twice keeps its last value).
   * `latest`: CommittedState.latest(changes), when the caller has it already.
   */
  merge(
    changes: PackedChanges,
    deleted: ReadonlySet<string>,
    latest = CommittedState.latest(changes),
  ): CommittedState {
    if (changes.keys.length === 0 && deleted.size === 0) return this // immutable: share it
    const start = (ends: Uint32Array, i: number): number => (i === 0 ? 0 : ends[i - 1]!)
    let bytes = 0
    let count = 0
    for (let i = 0; i < this.keys.length; i++) {
      const k = this.keys[i]!
      if (latest.has(k) || deleted.has(k)) continue
      bytes += this.ends[i]! - start(this.ends, i)
      count++
    }
    for (const i of latest.values()) bytes += changes.ends[i]! - start(changes.ends, i)
    count += latest.size
    const keys = new Array<string>(count)
    const data = Buffer.allocUnsafe(bytes)
    const ends = new Uint32Array(count)
    let n = 0
    let at = 0
    for (let i = 0; i < this.keys.length; i++) {
      const k = this.keys[i]!
      if (latest.has(k) || deleted.has(k)) continue
      at += this.data.copy(data, at, start(this.ends, i), this.ends[i])
      keys[n] = k
      ends[n++] = at
    }
    for (const [k, i] of latest) {
      const from = start(changes.ends, i)
      const to = changes.ends[i]!
      data.set(changes.data.subarray(from, to), at)
      at += to - from
      keys[n] = k
      ends[n++] = at
    }
    return new CommittedState(keys, data, ends)
  }
}
