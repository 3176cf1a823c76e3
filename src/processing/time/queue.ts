/**
 * A per-partition priority queue of due times (docs/time.md "Efficiency"): a binary min-heap of
 * distinct times, each with a bucket of (key, kind, start) items in parallel arrays. Windows of
 * many keys often end at the same time, so a bucket costs a few bytes per item instead of an
 * object per item, and a whole bucket fires together. Items of a bucket are taken in (key,
 * kind, start) order: the order is a function of the set of items, not of how they were
 * inserted, so a restored partition fires in exactly the order the original did.
 *
 * Kinds and starts are kept only once a bucket holds one that is not 0: a bucket of window ends
 * of a tumbling or sliding job (whose starts the runtime derives from the time) holds only keys,
 * 8 B per open window instead of 24 (issue 12: 1M open windows per worker).
 */

export interface Bucket {
  t: number
  keys: string[]
  /** null: every item's kind is 0. */
  kinds: number[] | null
  /** null: every item's start is 0. */
  starts: number[] | null
}

export function kindAt(b: Bucket, i: number): number {
  return b.kinds === null ? 0 : b.kinds[i]!
}

export function startAt(b: Bucket, i: number): number {
  return b.starts === null ? 0 : b.starts[i]!
}

export class TimeQueue {
  readonly #heap: number[] = []
  readonly #buckets = new Map<number, Bucket>()
  #size = 0

  /** Items queued (stale ones included: they are checked when taken). */
  get size(): number {
    return this.#size
  }

  /** Earliest due time, or Infinity. */
  get next(): number {
    return this.#heap.length === 0 ? Infinity : this.#heap[0]!
  }

  /** A due time without items (the caller finds what is due itself): one bucket per time. */
  pushTime(t: number): void {
    if (this.#buckets.has(t)) return
    this.#buckets.set(t, { t, keys: [], kinds: null, starts: null })
    this.#heapPush(t)
  }

  push(t: number, key: string, kind: number, start: number): void {
    let b = this.#buckets.get(t)
    if (b === undefined) {
      b = { t, keys: [], kinds: null, starts: null }
      this.#buckets.set(t, b)
      this.#heapPush(t)
    }
    const n = b.keys.length
    b.keys.push(key)
    if (b.kinds !== null) b.kinds.push(kind)
    else if (kind !== 0) (b.kinds = new Array<number>(n).fill(0)).push(kind)
    if (b.starts !== null) b.starts.push(start)
    else if (start !== 0) (b.starts = new Array<number>(n).fill(0)).push(start)
    this.#size++
  }

  /**
   * Remove and return the earliest bucket if it is due (t <= upTo), with its items in their
   * firing order (`order`: indexes into the bucket's arrays). Items pushed while a bucket is
   * being handled go into a new bucket, taken next.
   */
  takeDue(upTo: number): { bucket: Bucket; order: number[] } | null {
    if (this.#heap.length === 0 || this.#heap[0]! > upTo) return null
    const t = this.#heapPop()
    const bucket = this.#buckets.get(t)!
    this.#buckets.delete(t)
    this.#size -= bucket.keys.length
    const { keys } = bucket
    const order = Array.from({ length: keys.length }, (_, i) => i)
    if (order.length > 1) {
      order.sort((a, b) => {
        const ka = keys[a]!
        const kb = keys[b]!
        if (ka !== kb) return ka < kb ? -1 : 1
        return kindAt(bucket, a) - kindAt(bucket, b) || startAt(bucket, a) - startAt(bucket, b)
      })
    }
    return { bucket, order }
  }

  clear(): void {
    this.#heap.length = 0
    this.#buckets.clear()
    this.#size = 0
  }

  #heapPush(t: number): void {
    const h = this.#heap
    let i = h.length
    h.push(t)
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (h[parent]! <= t) break
      h[i] = h[parent]!
      i = parent
    }
    h[i] = t
  }

  #heapPop(): number {
    const h = this.#heap
    const top = h[0]!
    const last = h.pop()!
    if (h.length > 0) {
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        if (l >= h.length) break
        const r = l + 1
        const c = r < h.length && h[r]! < h[l]! ? r : l
        if (h[c]! >= last) break
        h[i] = h[c]!
        i = c
      }
      h[i] = last
    }
    return top
  }
}
