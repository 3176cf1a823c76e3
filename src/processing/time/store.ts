/**
 * Column storage of a partition's keys and windows (docs/time.md "Efficiency"). A key is a slot
 * and a window an id: small integers into typed arrays that grow by doubling, with freed slots
 * and ids reused. An object per key and per window (with its start and end boxed as heap numbers
 * and a list per key) cost ~350 B of heap per open window; columns cost ~20 B beside the job's
 * own accumulator and the key (issue 12: 1M open windows per worker; docs/benchmarks.md
 * "Worker memory").
 */

/** A copy of `a` with room for at least `need` elements (doubling). */
function grown<T extends Float64Array | Int32Array | Uint8Array>(a: T, need: number): T {
  let n = a.length
  while (n < need) n *= 2
  const b = new (a.constructor as new (n: number) => T)(n)
  b.set(a)
  return b
}

/** Reusable integer ids: freed ones first, then the next new one. */
class Ids {
  #free = new Int32Array(16)
  #freeCount = 0
  /** One more than the highest id handed out. */
  top = 0

  take(): number {
    return this.#freeCount > 0 ? this.#free[--this.#freeCount]! : this.top++
  }

  give(id: number): void {
    if (this.#freeCount === this.#free.length) this.#free = grown(this.#free, this.#freeCount + 1)
    this.#free[this.#freeCount++] = id
  }

  clear(): void {
    this.#freeCount = 0
    this.top = 0
  }
}

export const DIRTY = 1
export const GONE = 2

/**
 * Keys of a partition: key -> slot, with per-slot flags, the first window (windowed jobs), the
 * state (other jobs) and, with a TTL, the last activity and the queued deadline.
 */
export class KeySlots {
  readonly slots = new Map<string, number>()
  readonly #ids = new Ids()
  flags = new Uint8Array(16)
  /** First window of the key (WindowPool id, start order), or -1. Windowed jobs. */
  head = new Int32Array(16)
  /** The job's state per slot. Jobs without a window. */
  readonly state: unknown[] = []
  /** Processing clock at the key's last event, and the TTL deadline queued (-1: none). TTL only. */
  active: Float64Array
  ttlAt: Float64Array

  constructor(readonly ttl: boolean) {
    this.active = new Float64Array(ttl ? 16 : 0)
    this.ttlAt = new Float64Array(ttl ? 16 : 0)
  }

  /** A new slot for `key`: no flags, no window, no state. */
  add(key: string, now: number): number {
    const s = this.#ids.take()
    if (s >= this.flags.length) {
      this.flags = grown(this.flags, s + 1)
      this.head = grown(this.head, s + 1)
      if (this.ttl) {
        this.active = grown(this.active, s + 1)
        this.ttlAt = grown(this.ttlAt, s + 1)
      }
    }
    this.flags[s] = 0
    this.head[s] = -1
    if (this.ttl) {
      this.active[s] = now
      this.ttlAt[s] = -1
    }
    this.slots.set(key, s)
    return s
  }

  /** Forget `key` (its slot is reused, its state cleared for that). */
  remove(key: string, slot: number): void {
    this.slots.delete(key)
    if (this.state.length > slot) this.state[slot] = undefined
    this.#ids.give(slot)
  }

  setState(slot: number, value: unknown): void {
    const st = this.state
    // Filled up to the slot, so the array stays packed (no holes, no dictionary mode).
    while (st.length < slot) st.push(undefined)
    st[slot] = value
  }

  getState(slot: number): unknown {
    return slot < this.state.length ? this.state[slot] : undefined
  }

  clear(): void {
    this.slots.clear()
    this.#ids.clear()
    this.state.length = 0
  }
}

/**
 * Windows of a partition: start, end, the job's accumulator, fired, the next window of the same
 * key (a list per key in start order). Tumbling and sliding windows do not store their end (it is
 * start + size); sessions do, and without `merge` keep their events (sparse).
 */
export class WindowPool {
  readonly #ids = new Ids()
  start = new Float64Array(16)
  #end: Float64Array
  fired = new Uint8Array(16)
  next = new Int32Array(16)
  readonly acc: unknown[] = []
  /** Sessions without merge: the events folded in, with their arrival numbers. */
  readonly events = new Map<number, [number, unknown][]>()

  /** `size`: the windows' size (tumbling, sliding), or undefined: each stores its end. */
  constructor(readonly size: number | undefined) {
    this.#end = new Float64Array(size === undefined ? 16 : 0)
  }

  alloc(start: number, end: number, acc: unknown): number {
    const id = this.#ids.take()
    if (id >= this.start.length) {
      this.start = grown(this.start, id + 1)
      this.fired = grown(this.fired, id + 1)
      this.next = grown(this.next, id + 1)
      if (this.size === undefined) this.#end = grown(this.#end, id + 1)
    }
    this.start[id] = start
    if (this.size === undefined) this.#end[id] = end
    this.fired[id] = 0
    this.next[id] = -1
    if (id < this.acc.length) this.acc[id] = acc
    else {
      while (this.acc.length < id) this.acc.push(undefined)
      this.acc.push(acc)
    }
    return id
  }

  free(id: number): void {
    this.acc[id] = undefined
    if (this.size === undefined) this.events.delete(id)
    this.#ids.give(id)
  }

  end(id: number): number {
    return this.size === undefined ? this.#end[id]! : this.start[id]! + this.size
  }

  /** Sessions: move a window's range. */
  setRange(id: number, start: number, end: number): void {
    this.start[id] = start
    this.#end[id] = end
  }

  clear(): void {
    this.#ids.clear()
    this.acc.length = 0
    this.events.clear()
  }
}
