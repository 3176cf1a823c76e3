/**
 * Redis Streams consumer group as a Source (`--source redis://...?stream=S&group=G`).
 *
 * Every worker reads as consumer `<worker id>` (stable across restarts) with XREADGROUP ... >,
 * in batches. Entries are acknowledged (XACK) by the pump only once their event is applied
 * and durable on its owner. Decoding failures and entries without a key are added to the
 * dead-letter stream with the reason, the original id and fields, and acknowledged.
 *
 * Identity (exactly once across crashes, docs/connectors.md): an entry's dedup identity is
 * derived from its id and from the reader *incarnation* that first read it:
 *   producer = rs:<stream>:<group>:<consumer>#<incarnation>:<bucket>
 *   sequence = (ms mod 2^21) * 2^31 + seq        bucket = floor(ms / 2^21)   (id = ms-seq)
 * so sequences increase with entry ids within a producer, stay exact integers, and a bucket
 * (about 35 minutes of ids) changes the producer id. An incarnation is one run of a reader
 * (and a new one starts after a read whose reply was lost); each records, before its first
 * read, the group's last-delivered id L: every entry it reads is above L, every entry earlier
 * incarnations read is at or below it. Entries a reader held
 * unacknowledged when it died are still pending for its consumer name; one survivor (holding a
 * lock key) re-reads that consumer's pending list (XREADGROUP with the dead consumer's name and
 * an id cursor: ownership is not moved, so a survivor that dies too leaves the entries where
 * the next one finds them), finds each entry's incarnation from those records, and re-delivers
 * the entries under that incarnation's producer. The owner drops the ones it has
 * applied already. A restarted reader does the same with its own pending list first.
 */
import type { Cluster, Redis } from 'ioredis'
import { unpack } from 'msgpackr'
import { ErrorCodes, ShoalError } from '../../errors.ts'
import { parseStateUrl, redactUrl } from '../../state/index.ts'
import {
  checkDatabase,
  closeRedisClient,
  createRedisClient,
  type StateTlsOptions,
} from '../../state/redis/redis-backend.ts'
import { newBatchBuffer } from '../../client/encode.ts'
import { BulkEncoder, PreEncodedCommand } from '../../state/checkpoint/resp.ts'
import { JsonEventWriter } from '../../ingest/json-event.ts'
import {
  eventKey,
  type EncodedEvent,
  type Source,
  type SourceRead,
  type SourceRecord,
  type SourceStatus,
} from '../source.ts'
import type { RedisStreamSourceSpec } from '../spec.ts'

export interface RedisStreamSourceOptions {
  spec: RedisStreamSourceSpec
  /** This reader's consumer name: the worker's id (stable across restarts). */
  consumer: string
  tls?: StateTlsOptions
  /** How long a survivor's lock on a dead reader's pending list lasts unless renewed. @default 15000 */
  lockTtlMs?: number
  /** How often the group's consumers are checked for dead readers with pending entries. @default 1000 */
  scanIntervalMs?: number
  /**
   * A consumer not among the live readers is taken over only once it has not read for this
   * long (a worker that just joined may not be in the routing table yet). @default 2000
   */
  deadIdleMs?: number
  /** Non-blocking commands fail after this long. @default 5000 */
  commandTimeoutMs?: number
}

type Client = Redis | Cluster

/**
 * Entries per XREADGROUP or XACK command at most. Redis runs one command at a time: a
 * command over 100k entries held it for long enough to starve every other client.
 */
const MAX_ENTRIES_PER_COMMAND = 10_000

/** ms values below 2^21 per bucket, seq values below 2^31: 52 bits, exact as a JS number. */
const MS_BITS = 2 ** 21
const SEQ_LIMIT = 2 ** 31

/** The parts of the id {@link scanEntryId} read last. */
let scannedMs = 0
let scannedSeq = 0

/**
 * Read an entry id `ms-seq` (digits only, as Redis writes them) into scannedMs and scannedSeq;
 * false when it is anything else or a part is not an exact JS integer. Character by character,
 * nothing allocated: the reader numbers every entry it reads (slices and an array per entry were
 * ~3% of a reading worker's main thread).
 */
function scanEntryId(id: string): boolean {
  const n = id.length
  let ms = 0
  let i = 0
  for (; i < n; i++) {
    const c = id.charCodeAt(i)
    if (c === 45) break
    if (c < 48 || c > 57) return false
    ms = ms * 10 + (c - 48)
  }
  if (i === 0 || i >= n - 1) return false
  let seq = 0
  for (i++; i < n; i++) {
    const c = id.charCodeAt(i)
    if (c < 48 || c > 57) return false
    seq = seq * 10 + (c - 48)
  }
  if (!Number.isSafeInteger(ms) || !Number.isSafeInteger(seq)) return false
  scannedMs = ms
  scannedSeq = seq
  return true
}

/** Parse an entry id `ms-seq` into numbers; null when it is not one (see scanEntryId). */
export function parseEntryId(id: string): [ms: number, seq: number] | null {
  return scanEntryId(id) ? [scannedMs, scannedSeq] : null
}

export function compareEntryIds(a: string, b: string): number {
  const x = parseEntryId(a)
  const y = parseEntryId(b)
  if (x === null || y === null) return a < b ? -1 : a > b ? 1 : 0
  return x[0] - y[0] || x[1] - y[1]
}

/** The bucket of the id {@link identOf} numbered last. */
let identBucket = 0

/**
 * The sequence of an entry id, its bucket left in identBucket; -1 when it is not an id
 * (scanEntryId) or its seq part is too large to number exactly.
 */
function identOf(id: string): number {
  if (!scanEntryId(id) || scannedSeq >= SEQ_LIMIT) return -1
  identBucket = Math.floor(scannedMs / MS_BITS)
  return (scannedMs % MS_BITS) * SEQ_LIMIT + scannedSeq
}

/** The (bucket, sequence) identity of an entry id, or null when it has none (see identOf). */
export function entrySequence(id: string): { bucket: number; sequence: number } | null {
  const sequence = identOf(id)
  return sequence < 0 ? null : { bucket: identBucket, sequence }
}

/** The value of the entry's field `name` (the last one, if twice), compared as bytes: no string per entry. */
function dataField(fields: readonly Buffer[], name: string): Buffer | undefined {
  let data: Buffer | undefined
  for (let i = 0; i + 1 < fields.length; i += 2) if (isField(fields[i]!, name)) data = fields[i + 1]
  return data
}

function isField(b: Buffer, name: string): boolean {
  const n = name.length
  if (b.length === n) {
    let i = 0
    for (; i < n; i++) {
      const c = name.charCodeAt(i)
      if (c >= 0x80) break
      if (b[i] !== c) return false
    }
    if (i === n) return true
  }
  // A name with non-ASCII characters (UTF-8 never has fewer bytes than characters).
  return b.length >= n && b.toString('utf8') === name
}

/**
 * A record whose event was written ahead as batch record values (JsonEventWriter): the pump
 * copies those; the event object is parsed only if something asks for it (a dead letter).
 */
class EncodedRecord implements SourceRecord {
  readonly key: string
  readonly encoded: EncodedEvent
  readonly producerId: string
  readonly sequence: number
  readonly ack: string
  readonly #data: Buffer
  #event: unknown = undefined

  constructor(
    key: string,
    data: Buffer,
    encoded: EncodedEvent,
    producerId: string,
    sequence: number,
    ack: string,
  ) {
    this.key = key
    this.#data = data
    this.encoded = encoded
    this.producerId = producerId
    this.sequence = sequence
    this.ack = ack
  }

  get event(): unknown {
    return (this.#event ??= JSON.parse(this.#data.toString('utf8')) as unknown)
  }
}

/** One entry's event, or why it cannot be one. */
export function decodeEntry(
  fields: readonly Buffer[] | null,
  spec: Pick<RedisStreamSourceSpec, 'dataField' | 'keyField' | 'format'>,
): { key: string; event: unknown } | { error: string } {
  if (fields === null) return { error: 'the entry was deleted from the stream before it was processed' }
  const data = dataField(fields, spec.dataField)
  if (data === undefined) return { error: `the entry has no field '${spec.dataField}'` }
  let event: unknown
  try {
    event = spec.format === 'msgpack' ? unpack(data) : JSON.parse(data.toString('utf8'))
  } catch (err) {
    return { error: `field '${spec.dataField}' is not valid ${spec.format}: ${(err as Error).message}` }
  }
  const k = eventKey(event, spec.keyField, `field '${spec.dataField}'`)
  return 'error' in k ? k : { key: k.key, event }
}

interface PendingJob {
  consumer: string
  cursor: string
  lockKey: string
  /** Incarnation starts of this consumer, ascending: [incarnation, group's last id before it]. */
  incarnations: [number, string][]
  /** This reader's own list: stop at this id (what is above belongs to the live incarnation). */
  until: string | null
  /** Entries of this job handed out and not yet acknowledged. */
  outstanding: number
  exhausted: boolean
  renew: NodeJS.Timeout | null
  lost: boolean
}

/** Compare-and-delete / compare-and-extend of a lock held by value. */
const UNLOCK = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0`
const RENEW = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0`

export class RedisStreamSource implements Source {
  readonly name: string
  readonly readCount: number
  readonly #spec: RedisStreamSourceSpec
  readonly #me: string
  readonly #opts: RedisStreamSourceOptions
  #client: Client | null = null
  #blocking: Client | null = null
  readonly #json: JsonEventWriter
  #incarnation = 0
  /** A read's reply was lost: entries may be pending here unseen, start a new incarnation. */
  #renewIncarnation = false
  readonly #metaKey: string
  #jobs: PendingJob[] = []
  /** Ack value -> the re-delivery job it belongs to. */
  readonly #jobOf = new Map<string, PendingJob>()
  #live: Set<string> | null = null
  #scanTimer: NodeJS.Timeout | null = null
  #scanning = false
  readonly #lockValue = `${process.pid}:${Math.random().toString(36).slice(2)}`
  #state: SourceStatus['state'] = 'starting'
  #read = 0
  #acked = 0
  #deadLettered = 0
  #redelivered = 0
  #backlog: number | null = null
  #errors = 0
  #lastError: string | null = null

  constructor(options: RedisStreamSourceOptions) {
    this.#opts = options
    this.#spec = options.spec
    this.#me = options.consumer
    if (this.#me.length === 0) throw new ShoalError(ErrorCodes.INVALID_OPTION, 'consumer name is empty')
    this.name = `redis:${options.spec.stream}/${options.spec.group}`
    this.readCount = options.spec.count
    this.#json = new JsonEventWriter(options.spec.keyField)
    // Reader bookkeeping beside the stream; one hash per group.
    this.#metaKey = `${options.spec.stream}:shoal:${options.spec.group}:readers`
  }

  get consumer(): string {
    return this.#me
  }
  get incarnation(): number {
    return this.#incarnation
  }

  async open(): Promise<void> {
    if (this.#client !== null) return
    const target = parseRedisTarget(this.#spec.redis)
    const common = {
      target,
      ...(this.#opts.tls === undefined ? {} : { tls: this.#opts.tls }),
    }
    const client = createRedisClient({ ...common, commandTimeoutMs: this.#opts.commandTimeoutMs ?? 5000 })
    // Blocking reads wait up to their BLOCK time: they get a connection (and timeout) of their own.
    const blocking = createRedisClient({ ...common, commandTimeoutMs: 60_000 })
    for (const c of [client, blocking]) c.on('error', (err: Error) => this.#noteError(err))
    try {
      await Promise.all([client.connect(), blocking.connect()])
      await Promise.all([checkDatabase(client, target), checkDatabase(blocking, target)])
      const type = await client.type(this.#spec.stream)
      if (type !== 'none' && type !== 'stream') {
        throw new ShoalError(
          ErrorCodes.INVALID_OPTION,
          `--source: key '${this.#spec.stream}' holds a ${type}, not a stream`,
        )
      }
      await this.#ensureGroup(client)
    } catch (err) {
      client.disconnect()
      blocking.disconnect()
      throw toSourceError(err, `open ${this.name}`)
    }
    this.#client = client
    this.#blocking = blocking
    try {
      // This reader's own pending entries (from before a restart) come first.
      await this.#newIncarnation(client)
    } catch (err) {
      await this.close()
      throw toSourceError(err, `open ${this.name}`)
    }
    this.#state = 'reading'
    const interval = this.#opts.scanIntervalMs ?? 1000
    this.#scanTimer = setInterval(() => void this.#scan(), interval)
    this.#scanTimer.unref()
  }

  async #ensureGroup(client: Client): Promise<void> {
    try {
      await client.xgroup(
        'CREATE',
        this.#spec.stream,
        this.#spec.group,
        this.#spec.start === 'latest' ? '$' : '0',
        'MKSTREAM',
      )
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('BUSYGROUP')) throw err
    }
  }

  /** Start an incarnation (see the header) and re-deliver what earlier ones left pending. */
  async #newIncarnation(client: Client): Promise<void> {
    const inc = Number(await client.hincrby(this.#metaKey, `${this.#me}#inc`, 1))
    const groups = (await client.xinfo('GROUPS', this.#spec.stream)) as unknown[][]
    let last = '0-0'
    for (const g of groups) {
      const info = pairs(g)
      if (info.get('name') === this.#spec.group) last = String(info.get('last-delivered-id'))
    }
    await client.hset(this.#metaKey, `${this.#me}@${inc}`, last)
    this.#incarnation = inc
    const own = this.#jobs.find((j) => j.consumer === this.#me)
    if (own !== undefined) {
      own.until = last
      own.exhausted = false
      own.incarnations.push([inc, last])
    } else {
      await this.#startJob(this.#me, last)
    }
  }

  setLiveReaders(readers: readonly string[]): void {
    this.#live = new Set(readers)
  }

  async read(max: number, blockMs: number): Promise<SourceRead> {
    const client = this.#ready()
    if (this.#renewIncarnation) {
      try {
        await this.#newIncarnation(client)
      } catch (err) {
        throw this.#fail(err, 'new incarnation')
      }
      this.#renewIncarnation = false
    }
    for (const job of this.#jobs) {
      if (job.exhausted || job.lost) continue
      const r = await this.#readPending(client, job, max)
      if (r !== null) return r
    }
    this.#reapJobs()
    // A read of more than MAX_ENTRIES_PER_COMMAND is several commands: one XREADGROUP of 100k
    // entries kept redis-server busy for long enough (with two other readers doing the same)
    // that the coordinator's lease renewal waited past its TTL and the leader was deposed.
    const records: SourceRecord[] = []
    for (let first = true, taken = 0; taken < max; first = false) {
      const want = Math.min(Math.max(1, max - taken), MAX_ENTRIES_PER_COMMAND)
      let reply: unknown
      try {
        reply = await this.#blocking!.callBuffer(
          'XREADGROUP',
          'GROUP',
          this.#spec.group,
          this.#me,
          'COUNT',
          String(want),
          ...(first ? ['BLOCK', String(Math.max(1, blockMs))] : []),
          'STREAMS',
          this.#spec.stream,
          '>',
        )
      } catch (err) {
        if (err instanceof Error && err.message.startsWith('NOGROUP')) {
          // The group (or the stream) was deleted under us: create it again and read on.
          await this.#ensureGroup(client).catch(() => {})
        }
        // The server may have delivered entries whose reply never arrived (and this read's
        // earlier commands' entries are not handed out either): they are pending here and
        // above everything this incarnation sent. A new incarnation re-delivers them.
        this.#renewIncarnation = true
        throw this.#fail(err, 'XREADGROUP')
      }
      const got = streamEntries(reply)
      taken += got.length
      // Decoded command by command: the awaits between them let heartbeats through.
      if (got.length > 0) {
        for (const r of await this.#toRecords(got, this.#me, this.#incarnation, null)) records.push(r)
      }
      if (got.length < want) break
    }
    if (this.#state !== 'closed') this.#state = 'reading'
    return { records, redelivery: false }
  }

  async #readPending(client: Client, job: PendingJob, max: number): Promise<SourceRead | null> {
    let reply: unknown
    try {
      // The consumer's own pending entries after the cursor; reading as that consumer does not
      // move them to this one.
      reply = await client.callBuffer(
        'XREADGROUP',
        'GROUP',
        this.#spec.group,
        job.consumer,
        'COUNT',
        String(Math.min(Math.max(1, max), MAX_ENTRIES_PER_COMMAND)),
        'STREAMS',
        this.#spec.stream,
        job.cursor,
      )
    } catch (err) {
      throw this.#fail(err, 'XREADGROUP (pending)')
    }
    let entries = streamEntries(reply)
    if (job.until !== null) entries = entries.filter(([id]) => compareEntryIds(id, job.until!) <= 0)
    if (entries.length === 0) {
      job.exhausted = true
      this.#reapJobs()
      return null
    }
    job.cursor = entries[entries.length - 1]![0]
    const records = await this.#toRecords(entries, job.consumer, null, job)
    this.#redelivered += records.length
    return { records, redelivery: true }
  }

  /** Decode entries; dead-letter (and ack) the bad ones. */
  async #toRecords(
    entries: [string, Buffer[] | null][],
    consumer: string,
    incarnation: number | null,
    job: PendingJob | null,
  ): Promise<SourceRecord[]> {
    const records: SourceRecord[] = []
    const bad: { id: string; fields: Buffer[] | null; reason: string }[] = []
    const json = this.#spec.format === 'json' ? this.#json : null
    // The read's record values, end to end (a record keeps the buffer it was written into).
    const values = newBatchBuffer(json === null ? 0 : 64 * entries.length + 64)
    let pidConsumer = ''
    let pidInc = -1
    let pidBucket = -1
    let producerId = ''
    for (const [id, fields] of entries) {
      const sequence = identOf(id)
      const bucket = identBucket
      if (sequence < 0) {
        bad.push({ id, fields, reason: `entry id ${id} is outside the range Shoal numbers exactly` })
        continue
      }
      // JSON of a flat object: its record values written here, no object built (json-event.ts).
      const data = json === null || fields === null ? undefined : dataField(fields, this.#spec.dataField)
      let fastKey = data === undefined ? null : json!.scan(data, 0, data.length)
      // Keys eventKey refuses (empty; Infinity was a number) take the slow path to their error.
      if (fastKey === '' || fastKey === 'Infinity' || fastKey === '-Infinity') fastKey = null
      let decoded: { key: string; event: unknown } | { error: string } | null = null
      if (fastKey === null) {
        decoded = decodeEntry(fields, this.#spec)
        if ('error' in decoded) {
          bad.push({ id, fields, reason: decoded.error })
          continue
        }
      }
      const inc = incarnation ?? incarnationOf(job!.incarnations, id)
      // One string per (consumer, incarnation, bucket), not per entry: the pump groups records
      // into batches by producer id, and comparing fresh concatenations cost a flatten each.
      if (consumer !== pidConsumer || inc !== pidInc || bucket !== pidBucket) {
        pidConsumer = consumer
        pidInc = inc
        pidBucket = bucket
        producerId = `rs:${this.#spec.stream}:${this.#spec.group}:${consumer}#${inc}:${bucket}`
      }
      if (decoded === null) {
        const from = values.pos
        json!.writeValues(values)
        const encoded = { values: values.buf, from, to: values.pos, names: json!.names }
        records.push(new EncodedRecord(fastKey!, data!, encoded, producerId, sequence, id))
      } else {
        records.push({
          key: decoded.key,
          event: decoded.event,
          producerId,
          sequence,
          ack: id,
        })
      }
      if (job !== null) {
        job.outstanding++
        this.#jobOf.set(id, job)
      }
    }
    this.#read += records.length
    if (bad.length > 0) await this.#toDeadLetter(bad, consumer)
    return records
  }

  async #toDeadLetter(
    bad: readonly { id: string; fields: readonly Buffer[] | null; reason: string }[],
    consumer: string,
  ): Promise<void> {
    const client = this.#ready()
    try {
      // Stream and dead letter may live in different cluster slots: separate commands.
      for (const b of bad) {
        await client.xadd(
          this.#spec.dlq,
          '*',
          'id',
          b.id,
          'reason',
          b.reason,
          'stream',
          this.#spec.stream,
          'consumer',
          consumer,
          ...(b.fields ?? []),
        )
      }
      await client.xack(this.#spec.stream, this.#spec.group, ...bad.map((b) => b.id))
    } catch (err) {
      // Not acknowledged: the entries stay pending and are dead-lettered again on re-delivery.
      throw this.#fail(err, 'dead letter')
    }
    this.#deadLettered += bad.length
  }

  async ack(acks: readonly string[]): Promise<void> {
    if (acks.length === 0) return
    const client = this.#ready()
    let acked = 0
    try {
      // Short commands (see MAX_ENTRIES_PER_COMMAND), sent together, each written in one pass:
      // ioredis's Command over thousands of ids (spread, flattened, measured, written argument by
      // argument) was ~4% of a reading worker's main thread.
      const calls: Promise<unknown>[] = []
      for (let i = 0; i < acks.length; i += MAX_ENTRIES_PER_COMMAND) {
        const enc = new BulkEncoder('XACK', this.#spec.stream)
        enc.member(this.#spec.group)
        for (let j = i, end = Math.min(acks.length, i + MAX_ENTRIES_PER_COMMAND); j < end; j++) {
          enc.member(acks[j]!)
        }
        const cmd = new PreEncodedCommand('XACK', [this.#spec.stream], enc.finish())
        void client.sendCommand(cmd)
        calls.push(cmd.promise)
      }
      for (const n of await Promise.all(calls)) acked += Number(n)
    } catch (err) {
      throw this.#fail(err, 'XACK')
    }
    // Counted by Redis: an entry re-delivered while its first reader was still working on it is
    // acknowledged once, whoever gets there first.
    this.#acked += acked
    // Only re-deliveries of a dead reader's entries have a job (none while nobody died).
    if (this.#jobOf.size > 0)
      for (const id of acks) {
        const job = this.#jobOf.get(id)
        if (job === undefined) continue
        this.#jobOf.delete(id)
        job.outstanding--
      }
    this.#reapJobs()
  }

  async deadLetter(records: readonly SourceRecord[], reason: string): Promise<void> {
    if (records.length === 0) return
    const client = this.#ready()
    try {
      for (const r of records) {
        await client.xadd(
          this.#spec.dlq,
          '*',
          'id',
          r.ack,
          'reason',
          reason,
          'stream',
          this.#spec.stream,
          'consumer',
          this.#me,
          this.#spec.dataField,
          JSON.stringify(r.event),
        )
      }
    } catch (err) {
      throw this.#fail(err, 'dead letter')
    }
    this.#deadLettered += records.length
    await this.ack(records.map((r) => r.ack))
  }

  /** Finished jobs release their lock. */
  #reapJobs(): void {
    const done = this.#jobs.filter((j) => j.lost || (j.exhausted && j.outstanding === 0))
    if (done.length === 0) return
    this.#jobs = this.#jobs.filter((j) => !done.includes(j))
    for (const job of done) void this.#release(job)
  }

  /** Stop renewing a job's lock and release it (unless it was lost to another survivor). */
  async #release(job: PendingJob): Promise<void> {
    if (job.renew !== null) clearInterval(job.renew)
    if (!job.lost) await this.#client?.eval(UNLOCK, 1, job.lockKey, this.#lockValue).catch(() => {})
  }

  /** Take over a consumer's pending list if nobody else holds it. */
  async #startJob(consumer: string, until: string | null = null): Promise<boolean> {
    if (this.#isClosed()) return false
    const client = this.#ready()
    if (this.#jobs.some((j) => j.consumer === consumer)) return false
    const lockKey = `${this.#spec.stream}:shoal:${this.#spec.group}:pel:${consumer}`
    const ttl = this.#opts.lockTtlMs ?? 15_000
    const got = await client.set(lockKey, this.#lockValue, 'PX', ttl, 'NX')
    if (got !== 'OK') return false
    if (this.#isClosed()) {
      // Closed while the lock was being taken (a scan in flight): it would hold it for its TTL.
      await client.eval(UNLOCK, 1, lockKey, this.#lockValue).catch(() => {})
      return false
    }
    const meta = await client.hgetall(this.#metaKey)
    const incarnations: [number, string][] = []
    for (const [field, value] of Object.entries(meta)) {
      const at = field.lastIndexOf('@')
      if (at <= 0 || field.slice(0, at) !== consumer) continue
      const inc = Number(field.slice(at + 1))
      if (Number.isSafeInteger(inc)) incarnations.push([inc, value])
    }
    incarnations.sort((a, b) => compareEntryIds(a[1], b[1]) || a[0] - b[0])
    const job: PendingJob = {
      consumer,
      cursor: '0',
      lockKey,
      incarnations,
      until,
      outstanding: 0,
      exhausted: false,
      renew: null,
      lost: false,
    }
    job.renew = setInterval(
      () => {
        void this.#client
          ?.eval(RENEW, 1, lockKey, this.#lockValue, String(ttl))
          .then((ok) => {
            // Lost (expired while this process stalled): another survivor may own it now.
            if (ok !== 1) job.lost = true
          })
          .catch(() => {})
      },
      Math.max(100, Math.floor(ttl / 3)),
    )
    job.renew.unref()
    this.#jobs.push(job)
    return true
  }

  /** Dead readers (not live, entries pending) are taken over; idle empty ones removed. */
  async #scan(): Promise<void> {
    const client = this.#client
    if (client === null || this.#scanning) return
    this.#scanning = true
    try {
      const groups = (await client.xinfo('GROUPS', this.#spec.stream)) as unknown[][]
      for (const g of groups) {
        const info = pairs(g)
        if (info.get('name') === this.#spec.group) {
          const lag = info.get('lag')
          this.#backlog = typeof lag === 'number' ? lag : null
        }
      }
      const live = this.#live
      if (live === null) return
      const consumers = (await client.xinfo('CONSUMERS', this.#spec.stream, this.#spec.group)) as unknown[][]
      for (const c of consumers) {
        const info = pairs(c)
        const name = String(info.get('name'))
        const pending = Number(info.get('pending'))
        if (name === this.#me || live.has(name)) continue
        const idle = Number(info.get('idle'))
        if (pending > 0 && idle >= (this.#opts.deadIdleMs ?? 2000)) await this.#startJob(name)
        else if (pending === 0 && idle > 60_000) {
          // A reader gone for a minute with nothing pending: tidy the group's consumer list.
          await client.xgroup('DELCONSUMER', this.#spec.stream, this.#spec.group, name)
        }
      }
    } catch (err) {
      this.#noteError(err)
    } finally {
      this.#scanning = false
    }
  }

  status(): SourceStatus {
    return {
      name: this.name,
      state: this.#state,
      read: this.#read,
      acked: this.#acked,
      deadLettered: this.#deadLettered,
      redelivered: this.#redelivered,
      backlog: this.#backlog,
      errors: this.#errors,
      lastError: this.#lastError,
    }
  }

  async close(): Promise<void> {
    if (this.#state === 'closed') return
    this.#state = 'closed'
    if (this.#scanTimer !== null) clearInterval(this.#scanTimer)
    // Let go of the pending lists being re-delivered at once rather than after the lock's TTL:
    // the next survivor re-reads each from its oldest entry, so what this reader handed out
    // and did not see acknowledged is sent again, complete and in order.
    const jobs = this.#jobs
    this.#jobs = []
    await Promise.all(jobs.map((job) => this.#release(job)))
    const clients = [this.#client, this.#blocking]
    this.#client = null
    this.#blocking = null
    await Promise.all(clients.flatMap((c) => (c === null ? [] : [closeRedisClient(c)])))
  }

  #ready(): Client {
    if (this.#client === null) throw new ShoalError(ErrorCodes.CLOSED, `${this.name} is not open`)
    return this.#client
  }

  /** A method, not a field read: state changes across awaits, which narrowing would not see. */
  #isClosed(): boolean {
    return this.#state === 'closed'
  }

  #fail(err: unknown, what: string): ShoalError {
    this.#noteError(err)
    if (this.#state !== 'closed') this.#state = 'retrying'
    return toSourceError(err, `${what} on ${this.name}`)
  }

  #noteError(err: unknown): void {
    this.#errors++
    this.#lastError = err instanceof Error ? err.message : String(err)
  }
}

function parseRedisTarget(url: string) {
  const parsed = parseStateUrl(url)
  if (parsed.kind !== 'redis') {
    throw new ShoalError(ErrorCodes.INVALID_OPTION, `--source: ${redactUrl(url)} is not a Redis URL`)
  }
  return parsed.target
}

/** The incarnation that read `id`: the last one whose start mark is below it (0: none). */
function incarnationOf(incarnations: readonly [number, string][], id: string): number {
  let found = 0
  for (const [inc, last] of incarnations) {
    if (compareEntryIds(last, id) < 0) found = inc
    else break
  }
  return found
}

/** [[stream, [[id, fields|null], ...]]] (buffers) -> [id, fields|null][]. */
function streamEntries(reply: unknown): [string, Buffer[] | null][] {
  if (!Array.isArray(reply) || reply.length === 0) return []
  const stream = reply[0] as [Buffer, [Buffer, Buffer[] | null][]]
  const out: [string, Buffer[] | null][] = []
  for (const [id, fields] of stream[1] ?? []) out.push([id.toString('latin1'), fields ?? null])
  return out
}

function pairs(flat: unknown[]): Map<string, unknown> {
  const m = new Map<string, unknown>()
  for (let i = 0; i + 1 < flat.length; i += 2) m.set(String(flat[i]), flat[i + 1])
  return m
}

function toSourceError(err: unknown, what: string): ShoalError {
  if (err instanceof ShoalError) return err
  const message = err instanceof Error ? err.message : String(err)
  return new ShoalError(ErrorCodes.SOURCE_UNAVAILABLE, `${what}: ${message}`, { retryable: true, cause: err })
}
