/**
 * The Source contract: where events enter Shoal from a system outside it.
 *
 * A worker never sends what a Source reads itself: a SourcePump (pump.ts) reads records, routes
 * each by key to the partition that owns it (like a client batch), and acknowledges a record to
 * the source only once its event is applied and durable on its owner. A Source therefore has
 * to do three things well: read in batches, give every record a stable identity, and
 * acknowledge.
 *
 * Identity: every record carries (producerId, sequence), with sequences increasing per producer
 * in the order the source hands records out. A record handed out again (after a reader crashed
 * before acknowledging it) must carry the same identity, so the owner's dedup table drops it
 * if it was applied already; records of one producer may be re-delivered by another reader
 * while the first still sends them (the owner applies each once: docs/connectors.md).
 *
 * Errors: read/ack throw SOURCE_UNAVAILABLE (retryable) when the system cannot be reached; the
 * pump backs off and retries. Records that cannot be decoded never reach the pump: a source
 * dead-letters them itself, with the reason, and acknowledges them.
 */

export interface SourceRecord {
  readonly key: string
  /** The event (a source that gives `encoded` may build it only when asked). */
  readonly event: unknown
  /** Dedup identity (see above). */
  readonly producerId: string
  readonly sequence: number
  /** What to acknowledge once the event is applied (e.g. a stream entry id). */
  readonly ack: string
  /**
   * The event already written as a batch record's values (src/ingest/json-event.ts): the pump
   * writes it into its batch without encoding `event`. Optional; same event as `event`.
   */
  readonly encoded?: EncodedEvent
}

/** An event's record values, values[from..to), with its key list (PreparedEvent.set). */
export interface EncodedEvent {
  readonly values: Buffer
  readonly from: number
  readonly to: number
  readonly names: string[]
}

export interface SourceRead {
  readonly records: readonly SourceRecord[]
  /** These records may have been delivered before (for status and metrics). */
  readonly redelivery: boolean
}

export interface SourceStatus {
  readonly name: string
  readonly state: 'starting' | 'reading' | 'retrying' | 'closed'
  /** Records handed out in total. */
  readonly read: number
  /** Records acknowledged in total. */
  readonly acked: number
  /** Records sent to the dead letter in total. */
  readonly deadLettered: number
  /** Re-delivered records (a crashed reader's, or this reader's own after a restart). */
  readonly redelivered: number
  /** Entries waiting in the source not yet handed to any reader, when the source can tell. */
  readonly backlog: number | null
  readonly errors: number
  readonly lastError: string | null
}

export interface Source {
  /** A short name for logs, metrics labels and /status (no password). */
  readonly name: string
  /** Records per read the source was configured for (e.g. the URL's `count`). */
  readonly readCount?: number
  /** Connect and create what is missing (a consumer group). Throws SOURCE_UNAVAILABLE or INVALID_OPTION. */
  open(): Promise<void>
  /**
   * Up to `max` records, waiting up to `blockMs` when none is ready (then an empty read).
   * Re-deliveries come before new records.
   */
  read(max: number, blockMs: number): Promise<SourceRead>
  /** The records with these `ack` values are applied and durable. */
  ack(acks: readonly string[]): Promise<void>
  /**
   * These records can never be applied (their batch was refused for good, e.g. the job's init
   * threw): store them in the source's dead letter with the reason, then acknowledge them.
   */
  deadLetter(records: readonly SourceRecord[], reason: string): Promise<void>
  /**
   * The readers alive in the cluster now (worker ids). Records a reader not in this list held
   * unacknowledged are re-delivered by one survivor. Until the first call nothing is taken over.
   */
  setLiveReaders(readers: readonly string[]): void
  status(): SourceStatus
  close(): Promise<void>
}

/**
 * The key of a decoded event: the event must be an object whose `keyField` is a non-empty
 * string or a finite number (the rule every source applies before routing), else why not.
 */
export function eventKey(
  event: unknown,
  keyField: string,
  /** What held the event, for the error: "field 'data'", "the entry". */
  holder: string,
): { key: string } | { error: string } {
  if (typeof event !== 'object' || event === null || Array.isArray(event)) {
    const got = event === null ? 'null' : Array.isArray(event) ? 'an array' : typeof event
    return { error: `${holder} must hold an object (got ${got})` }
  }
  const key = (event as Record<string, unknown>)[keyField]
  if (typeof key === 'string' && key.length > 0) return { key }
  if (typeof key === 'number' && Number.isFinite(key)) return { key: String(key) }
  return { error: `the event has no key: field '${keyField}' must be a non-empty string or a number` }
}
