/**
 * `--sink 'postgres://...?table=NAME&mode=events'`: emitted records as rows.
 *
 * Table NAME (created if missing, checked if present; SINK_SCHEMA names what does not fit):
 *
 *   stream text, key text, partition integer, log_offset bigint (null without a replay log),
 *   idx integer, event jsonb, emitted_at timestamptz default now(),
 *   unique index NAME_identity on (partition, log_offset, idx)
 *
 * Exactly once, for records with an identity: (partition, log_offset, idx) is the record's
 * identity (sink.ts), the same when a batch is replayed after a crash, and rows are inserted
 * with `on conflict do nothing`, so a replayed record is skipped. Records without a replay log
 * (`offset` null) have no identity: NULLs never conflict in a unique index, so they are simply
 * appended, at least once. All of one writeEvents call is one transaction, so a failed call
 * writes nothing; a duplicate is possible only when the connection is lost during COMMIT
 * and the call is retried after a commit that did happen.
 *
 * Dead letters go to NAME_dlq (dead-letters.ts).
 */
import type pg from 'pg'
import { InvalidOptionError } from '../../errors.ts'
import type { DeadLetterRecord, EmittedBatch, Sink } from '../sink.ts'
import {
  closedError,
  copyLines,
  copyText,
  createPool,
  inTransaction,
  resolvePostgresSinkOptions,
  withClient,
  type PostgresSinkOptions,
  type ResolvedPostgresSinkOptions,
} from './client.ts'
import { deadLetterTableSpec, DLQ_SUFFIX, insertDeadLetters } from './dead-letters.ts'
import { rejectedError } from './errors.ts'
import { jsonOrReject } from './json.ts'
import type { PostgresSinkTarget } from './state-sink.ts'
import {
  ensureTables,
  indexName,
  parseTableName,
  sideTable,
  type TableName,
  type TableSpec,
} from './table.ts'

interface Rows {
  stream: string[]
  key: string[]
  partition: number[]
  offset: (number | null)[]
  idx: number[]
  event: string[]
}

export class PostgresEventsSink implements Sink {
  readonly name: string
  readonly accepts = Object.freeze({ events: true, state: false })
  readonly tables: { readonly events: string; readonly dlq: string }
  readonly #t: TableName
  readonly #dlq: TableName
  readonly #options: Readonly<ResolvedPostgresSinkOptions>
  readonly #pool: pg.Pool
  #closed = false
  #closing: Promise<void> | undefined

  constructor(target: PostgresSinkTarget, options: PostgresSinkOptions = {}) {
    if (target.mode !== undefined && target.mode !== 'events') {
      throw new InvalidOptionError(`PostgresEventsSink takes mode=events (got mode=${String(target.mode)})`)
    }
    this.#t = parseTableName(target.table)
    this.#dlq = sideTable(this.#t, DLQ_SUFFIX)
    this.name = `postgres:${this.#t.display}`
    this.tables = { events: this.#t.display, dlq: this.#dlq.display }
    this.#options = resolvePostgresSinkOptions(options)
    this.#pool = createPool(target.url, this.#options)
  }

  async open(): Promise<void> {
    this.#checkOpen()
    await withClient(this.#pool, `open ${this.#t.display}`, (client) =>
      ensureTables(client, this.#tableSpecs()),
    )
  }

  #tableSpecs(): TableSpec[] {
    const t = this.#t
    return [
      {
        table: t,
        role: 'events sink table',
        columns: [
          { name: 'stream', type: 'text' },
          { name: 'key', type: 'text' },
          { name: 'partition', type: 'integer' },
          { name: 'log_offset', type: 'bigint', nullable: true },
          { name: 'idx', type: 'integer' },
          { name: 'event', type: 'jsonb' },
          { name: 'emitted_at', type: 'timestamptz' },
        ],
        create: [
          `create table if not exists ${t.sql} (
            stream text not null,
            key text not null,
            partition integer not null,
            log_offset bigint,
            idx integer not null,
            event jsonb not null,
            emitted_at timestamptz not null default now())`,
          `create unique index if not exists ${indexName(t, '_identity')} on ${t.sql} (partition, log_offset, idx)`,
        ],
        unique: [['partition', 'log_offset', 'idx']],
      },
      deadLetterTableSpec(t),
    ]
  }

  async writeEvents(batches: readonly EmittedBatch[]): Promise<void> {
    this.#checkOpen()
    const rows = toRows(batches)
    const n = rows.key.length
    if (n === 0) return
    await inTransaction(this.#pool, `insert into ${this.#t.display}`, async (client) => {
      if (n >= this.#options.copyThresholdRows) await this.#insertStaged(client, rows)
      else {
        const chunk = this.#options.chunkRows
        for (let o = 0; o < n; o += chunk) {
          const end = Math.min(n, o + chunk)
          await client.query(
            `insert into ${this.#t.sql} (stream, key, partition, log_offset, idx, event)
             select * from unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::int[], $6::jsonb[])
             on conflict (partition, log_offset, idx) do nothing`,
            [
              rows.stream.slice(o, end),
              rows.key.slice(o, end),
              rows.partition.slice(o, end),
              rows.offset.slice(o, end),
              rows.idx.slice(o, end),
              rows.event.slice(o, end),
            ],
          )
        }
      }
    })
  }

  async #insertStaged(client: pg.ClientBase, rows: Rows): Promise<void> {
    await client.query(
      `create temp table shoal_events_stage (stream text, key text, partition integer, log_offset bigint,
         idx integer, event jsonb) on commit drop`,
    )
    function* lines(): Generator<string> {
      for (let i = 0; i < rows.key.length; i++) {
        const offset = rows.offset[i]!
        yield (
          `${copyText(rows.stream[i]!)}\t${copyText(rows.key[i]!)}\t${rows.partition[i]!}\t` +
          `${offset === null ? '\\N' : offset}\t${rows.idx[i]!}\t${copyText(rows.event[i]!)}`
        )
      }
    }
    await copyLines(client, 'shoal_events_stage', lines())
    await client.query(
      `insert into ${this.#t.sql} (stream, key, partition, log_offset, idx, event)
       select stream, key, partition, log_offset, idx, event from shoal_events_stage
       on conflict (partition, log_offset, idx) do nothing`,
    )
    await client.query('drop table shoal_events_stage')
  }

  async deadLetter(records: readonly DeadLetterRecord[]): Promise<void> {
    this.#checkOpen()
    if (records.length === 0) return
    await inTransaction(this.#pool, `dead-letter into ${this.#dlq.display}`, (client) =>
      insertDeadLetters(client, this.#dlq, records),
    )
  }

  close(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing
    this.#closed = true
    this.#closing = this.#pool.end().catch(() => {})
    return this.#closing
  }

  #checkOpen(): void {
    if (this.#closed) throw closedError(this.name)
  }
}

/** Column arrays of the records, events serialized (SINK_REJECTED for one without a JSON form). */
function toRows(batches: readonly EmittedBatch[]): Rows {
  const rows: Rows = { stream: [], key: [], partition: [], offset: [], idx: [], event: [] }
  for (const b of batches) {
    if (!Number.isInteger(b.partition) || b.partition < 0 || b.partition > 0x7fffffff) {
      throw rejectedError(`emitted batch partition must be an integer >= 0 (got ${String(b.partition)})`)
    }
    if (b.offset !== null && (!Number.isSafeInteger(b.offset) || b.offset < 0)) {
      throw rejectedError(
        `emitted batch offset must be a safe integer >= 0 or null (got ${String(b.offset)})`,
      )
    }
    if (!Number.isInteger(b.firstIndex) || b.firstIndex < 0 || b.firstIndex + b.records.length > 0x7fffffff) {
      throw rejectedError(`emitted batch firstIndex must be an integer >= 0 (got ${String(b.firstIndex)})`)
    }
    b.records.forEach(([stream, key, event], i) => {
      const idx = b.firstIndex + i
      rows.stream.push(stream)
      rows.key.push(key)
      rows.partition.push(b.partition)
      rows.offset.push(b.offset)
      rows.idx.push(idx)
      rows.event.push(
        jsonOrReject(
          event,
          () =>
            `event of stream ${JSON.stringify(stream)} key ${JSON.stringify(key)} ` +
            `(partition ${b.partition}, offset ${String(b.offset)}, index ${idx})`,
        ),
      )
    })
  }
  return rows
}
