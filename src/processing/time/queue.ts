/**
 * A per-partition priority queue of due times (docs/time.md "Efficiency"): a binary min-heap of
 * distinct times, each with a bucket of (key, kind, start) items in parallel arrays. Windows of
 * many keys often end at the same time, so a bucket costs a few bytes per item instead of an
 * object per item, and a whole bucket fires together. Items of a bucket are taken in (key,
 * kind, start) order: the order is a function of the set of items, not of how they were
 * inserted, so a restored partition fires in exactly the order the original did.
 */

export interface Bucket {
  t: number
  keys: string[]
  kinds: number[]
  starts: number[]
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

  push(t: number, key: string, kind: number, start: number): void {
    let b = this.#buckets.get(t)
    if (b === undefined) {
      b = { t, keys: [], kinds: [], starts: [] }
      this.#buckets.set(t, b)
      this.#heapPush(t)
    }
    b.keys.push(key)
    b.kinds.push(kind)
    b.starts.push(start)
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
    const { keys, kinds, starts } = bucket
    const order = Array.from({ length: keys.length }, (_, i) => i)
    if (order.length > 1) {
      order.sort((a, b) => {
        const ka = keys[a]!
        const kb = keys[b]!
        if (ka !== kb) return ka < kb ? -1 : 1
        return kinds[a]! - kinds[b]! || starts[a]! - starts[b]!
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
