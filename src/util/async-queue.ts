/**
 * A single-consumer async queue with byte accounting and high/low water callbacks, so the
 * producer (a socket) can be paused while the consumer is behind. Push never blocks: the
 * bound is enforced by pausing the source, which pushes back through TCP flow control.
 */
export interface AsyncQueueOptions {
  /** Above this many bytes queued, onHigh() is called once. */
  highWaterBytes: number
  onHigh?: () => void
  /** Called once the queue falls to half the high-water mark after onHigh. */
  onLow?: () => void
}

export class AsyncQueue<T> implements AsyncIterable<T> {
  #items: T[] = []
  #sizes: number[] = []
  #head = 0
  #bytes = 0
  #high = false
  #waiter: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | null = null
  #ended = false
  #error: unknown = undefined
  #iterating = false
  readonly #opts: AsyncQueueOptions

  constructor(opts: AsyncQueueOptions) {
    this.#opts = opts
  }

  get length(): number {
    return this.#items.length - this.#head
  }
  get bytes(): number {
    return this.#bytes
  }
  get ended(): boolean {
    return this.#ended
  }

  /** Queue an item that accounts for `size` bytes. */
  push(item: T, size = 0): void {
    if (this.#ended) return
    const w = this.#waiter
    if (w !== null) {
      this.#waiter = null
      w.resolve({ value: item, done: false })
      return
    }
    this.#items.push(item)
    this.#sizes.push(size)
    this.#bytes += size
    if (!this.#high && this.#bytes > this.#opts.highWaterBytes) {
      this.#high = true
      this.#opts.onHigh?.()
    }
  }

  /** End the stream; queued items are still delivered, then `err` is thrown (or iteration ends). */
  end(err?: unknown): void {
    if (this.#ended) return
    this.#ended = true
    this.#error = err
    const w = this.#waiter
    if (w !== null && this.length === 0) {
      this.#waiter = null
      if (err === undefined) w.resolve({ value: undefined, done: true })
      else w.reject(err)
    }
  }

  /** Take the next item synchronously, if one is queued. */
  shift(): T | undefined {
    if (this.#head >= this.#items.length) return undefined
    const item = this.#items[this.#head] as T
    const size = this.#sizes[this.#head] ?? 0
    ;(this.#items as (T | undefined)[])[this.#head] = undefined
    this.#head++
    if (this.#head === this.#items.length) {
      this.#items.length = 0
      this.#sizes.length = 0
      this.#head = 0
    } else if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head)
      this.#sizes = this.#sizes.slice(this.#head)
      this.#head = 0
    }
    this.#bytes -= size
    if (this.#high && this.#bytes <= this.#opts.highWaterBytes / 2) {
      this.#high = false
      this.#opts.onLow?.()
    }
    return item
  }

  next(): Promise<IteratorResult<T>> {
    const item = this.shift()
    if (item !== undefined) return Promise.resolve({ value: item, done: false })
    if (this.#ended) {
      return this.#error === undefined
        ? Promise.resolve({ value: undefined, done: true })
        : Promise.reject(
            this.#error instanceof Error
              ? this.#error
              : new Error('AsyncQueue ended with a non-Error reason', { cause: this.#error }),
          )
    }
    if (this.#waiter !== null) return Promise.reject(new Error('AsyncQueue supports a single consumer'))
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject }
    })
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.#iterating) throw new Error('AsyncQueue supports a single consumer')
    this.#iterating = true
    return {
      next: () => this.next(),
      return: () => {
        // The consumer stopped early: drop what is queued and release the source.
        this.#iterating = false
        this.end()
        while (this.shift() !== undefined);
        return Promise.resolve({ value: undefined, done: true })
      },
    }
  }
}
