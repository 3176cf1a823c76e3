/**
 * `--sink 'postgres://...?table=NAME[&mode=state]'`: committed keyed state written behind
 * checkpoints, one row per live key.
 *
 * Tables (created if missing, checked if present; SINK_SCHEMA names what does not fit):
 *
 *   NAME             key text primary key, state jsonb, partition integer, version bigint,
 *                    updated_at timestamptz; index on (partition). The key column is created
 *                    with collation "C" (byte order: cheaper index maintenance than a
 *                    language collation), the table with fillfactor 50: room on each page for a new
 *                    version of every row, so updates are HOT (no index maintenance; measured
 *                    2x faster for 1M updated keys, and less bloat than the default 100).
 *   NAME_tombstones  key, partition, version of deleted keys (see below).
 *   NAME_partitions  partition, full_version: the version of the last full write.
 *   NAME_dlq         dead letters (dead-letters.ts).
 *
 * Versions. A row is written only when its version is newer than the row's (`where t.version <
 * excluded.version`), so replays and late writes of an older checkpoint change nothing.
 *
 * Deletes and tombstones. A deleted key has no row left to compare versions with, so a late
 * upsert at a lower version (a retried older write reordered after the delete, or a previous
 * owner's write still in flight) would bring it back. A delete at version v therefore leaves a
 * tombstone (key, partition, v), and an upsert is skipped when its key has a tombstone at the
 * same or a higher version (an upsert above the tombstone removes it). Tombstones do not grow
 * without bound: a full write of a partition at version V (a new owner's first write after a
 * restore) makes every tombstone of that partition below V redundant and removes them, because
 * it also raises the partition's floor (NAME_partitions): writes below V are ignored, and rows
 * of the partition below V (keys not in the full state) are deleted. Between two full writes, a
 * partition keeps one tombstone per key deleted in that time.
 *
 * Atomicity and ordering. All of one writeState call is one transaction. Within it, the
 * outcome per key does not depend on the order of the batches (the highest version wins, a
 * delete included), and the transaction takes an advisory lock per partition it writes (in
 * partition order, so two writers cannot deadlock), so two writers of the same partition (an
 * old and a new owner) never interleave between a version check and a write.
 * (Opt-in `parallelism`: a big call split by partition over several connections, one
 * transaction per share; per-partition guarantees are unchanged, the call is not atomic.)
 *
 * Big writes (copyThresholdRows rows and more, e.g. a restore's full state) go through COPY
 * into a temporary table and one INSERT ... SELECT ... ON CONFLICT; smaller ones are INSERTs
 * with array parameters (unnest), chunkRows rows per statement.
 *
 * A key's partition never changes (it is the hash of the key); a repartitioned job needs a
 * new table.
 */
import type pg from 'pg'
import { InvalidOptionError } from '../../errors.ts'
import type { DeadLetterRecord, Sink, StateBatch } from '../sink.ts'
import type { PostgresSinkSpec } from '../spec.ts'
import {
  closedError,
  copyLines,
  copyText,
  createPool,
  inTransaction,
  resolvePostgresSinkOptions,
  type PostgresSinkOptions,
  type ResolvedPostgresSinkOptions,
  withClient,
} from './client.ts'
import { deadLetterTableSpec, DLQ_SUFFIX, insertDeadLetters } from './dead-letters.ts'
import { rejectedError } from './errors.ts'
import { jsonOrReject } from './json.ts'
import {
  ensureTables,
  indexName,
  parseTableName,
  sideTable,
  type TableName,
  type TableSpec,
} from './table.ts'

/** Where a sink writes: the connection URL (without Shoal's parameters) and the table. */
export type PostgresSinkTarget = Pick<PostgresSinkSpec, 'url' | 'table'> & {
  readonly mode?: PostgresSinkSpec['mode']
}

interface Delete {
  key: string
  partition: number
  version: number
}

type SinkState = 'ready' | 'closed'

/** From this many full batches in one call, their stale rows are found by one sequential scan. */
const FULL_SEQSCAN_PARTITIONS = 16

export class PostgresStateSink implements Sink {
  readonly name: string
  readonly accepts = Object.freeze({ events: false, state: true })
  /** The tables this sink writes: the state table and its side tables. */
  readonly tables: {
    readonly state: string
    readonly tombstones: string
    readonly partitions: string
    readonly dlq: string
  }
  readonly #t: TableName
  readonly #tomb: TableName
  readonly #parts: TableName
  readonly #dlq: TableName
  readonly #options: Readonly<ResolvedPostgresSinkOptions>
  readonly #pool: pg.Pool
  #state: SinkState = 'ready'
  #closing: Promise<void> | undefined

  constructor(target: PostgresSinkTarget, options: PostgresSinkOptions = {}) {
    if (target.mode !== undefined && target.mode !== 'state') {
      throw new InvalidOptionError(`PostgresStateSink takes mode=state (got mode=${String(target.mode)})`)
    }
    this.#t = parseTableName(target.table)
    this.#tomb = sideTable(this.#t, '_tombstones')
    this.#parts = sideTable(this.#t, '_partitions')
    this.#dlq = sideTable(this.#t, DLQ_SUFFIX)
    this.name = `postgres:${this.#t.display}`
    this.tables = {
      state: this.#t.display,
      tombstones: this.#tomb.display,
      partitions: this.#parts.display,
      dlq: this.#dlq.display,
    }
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
    const tomb = this.#tomb
    const parts = this.#parts
    return [
      {
        table: t,
        role: 'state sink table',
        columns: [
          { name: 'key', type: 'text' },
          { name: 'state', type: 'jsonb' },
          { name: 'partition', type: 'integer' },
          { name: 'version', type: 'bigint' },
          { name: 'updated_at', type: 'timestamptz' },
        ],
        create: [
          `create table if not exists ${t.sql} (
            key text collate "C" primary key,
            state jsonb not null,
            partition integer not null,
            version bigint not null,
            updated_at timestamptz not null default now()
          ) with (fillfactor = 50)`,
        ],
        // No index on partition: maintaining it on every upsert cost more than the full writes
        // that would use it (a 1M-key write-behind: 5.55 -> 3.7-3.9 s). A full write (after a
        // restore) finds a partition's rows with one pass over the table instead. Tables
        // created by earlier versions keep theirs; dropping it is safe.
        always: [],
        unique: [['key']],
      },
      {
        table: tomb,
        role: 'tombstone table',
        columns: [
          { name: 'key', type: 'text' },
          { name: 'partition', type: 'integer' },
          { name: 'version', type: 'bigint' },
        ],
        create: [
          `create table if not exists ${tomb.sql} (
            key text collate "C" primary key,
            partition integer not null,
            version bigint not null)`,
        ],
        always: [
          `create index if not exists ${indexName(tomb, '_partition_idx')} on ${tomb.sql} (partition)`,
        ],
        unique: [['key']],
      },
      {
        table: parts,
        role: 'partition table',
        columns: [
          { name: 'partition', type: 'integer' },
          { name: 'full_version', type: 'bigint' },
        ],
        create: [
          `create table if not exists ${parts.sql} (
            partition integer primary key,
            full_version bigint not null,
            updated_at timestamptz not null default now())`,
        ],
        unique: [['partition']],
      },
      deadLetterTableSpec(t),
    ]
  }

  async writeState(batches: readonly StateBatch[]): Promise<void> {
    this.#checkOpen()
    if (batches.length === 0) return
    const { groups, fulls } = groupWrites(batches)
    let upsertCount = 0
    for (const g of groups) upsertCount += g.upserts.length
    const copy = upsertCount >= this.#options.copyThresholdRows
    // Encode before taking a connection: a state without a JSON form is rejected up front. For
    // COPY, straight into lines (one string per row, the fewest allocations for 1M keys).
    const encoded = groups.map((g) =>
      g.upserts.map(([key, state]) => {
        const json = jsonOrReject(
          state,
          () => `state of key ${JSON.stringify(key)} (partition ${g.partition}, version ${g.version})`,
        )
        return copy ? `${copyText(key)}\t${copyText(json)}\t${g.partition}\t${g.version}` : json
      }),
    )
    const lanes = copy ? Math.min(this.#options.parallelism, groups.length) : 1
    if (lanes <= 1) return this.#writeGroups(groups, encoded, fulls, copy)
    // Opt-in (options.parallelism): a big write split by partition over several connections,
    // one transaction each. Every partition's writes (its full replace included) stay in one
    // transaction, so the per-partition guarantees hold; only the call as a whole is no longer
    // atomic (a failed call may be partly written, and its retry rewrites it idempotently).
    const split = Array.from({ length: lanes }, () => ({
      groups: [] as WriteGroup[],
      encoded: [] as string[][],
      fulls: new Map<number, number>(),
    }))
    groups.forEach((g, i) => {
      const lane = split[g.partition % lanes]!
      lane.groups.push(g)
      lane.encoded.push(encoded[i]!)
      const full = fulls.get(g.partition)
      if (full !== undefined) lane.fulls.set(g.partition, full)
    })
    const results = await Promise.allSettled(
      split.map((l) => this.#writeGroups(l.groups, l.encoded, l.fulls, copy)),
    )
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failed !== undefined) throw failed.reason
  }

  async #writeGroups(
    groups: readonly WriteGroup[],
    encoded: readonly (readonly string[])[],
    fulls: ReadonlyMap<number, number>,
    copy: boolean,
  ): Promise<void> {
    if (groups.length === 0) return
    const partitions = [...new Set(groups.map((g) => g.partition))].sort((a, b) => a - b)
    await inTransaction(this.#pool, `write state to ${this.#t.display}`, async (client) => {
      await client.query('select pg_advisory_xact_lock(hashtext($1), p) from unnest($2::int[]) as u(p)', [
        `shoal-state:${this.#t.display}`,
        partitions,
      ])
      // Writes below a partition's last full write are stale (see the header): skipped whole,
      // as a group shares one partition and version.
      const floors = await this.#floors(client, partitions)
      const live = (p: number, v: number): boolean => v >= (floors.get(p) ?? -Infinity)
      const up: number[] = []
      groups.forEach((g, i) => {
        if (g.upserts.length > 0 && live(g.partition, g.version)) up.push(i)
      })
      if (up.length > 0) {
        const tombs = await client.query<{ any: boolean }>(
          `select exists (select 1 from ${this.#tomb.sql} where partition = any($1::int[])) as any`,
          [[...new Set(up.map((i) => groups[i]!.partition))]],
        )
        const withTombstones = tombs.rows[0]?.any === true
        if (copy)
          await this.#upsertCopy(
            client,
            up.map((i) => encoded[i]!),
            withTombstones,
          )
        else
          await this.#upsertUnnest(
            client,
            up.map((i) => [groups[i]!, encoded[i]!] as const),
            withTombstones,
          )
      }
      const deletes: Delete[] = []
      for (const g of groups) {
        if (!live(g.partition, g.version)) continue
        for (const key of g.deletes) deletes.push({ key, partition: g.partition, version: g.version })
      }
      for (let o = 0; o < deletes.length; o += this.#options.chunkRows) {
        await this.#delete(client, deletes.slice(o, o + this.#options.chunkRows))
      }
      const fullList = [...fulls].filter(([p, v]) => live(p, v))
      if (fullList.length > 0) await this.#replace(client, fullList)
    })
  }

  async #floors(client: pg.ClientBase, partitions: number[]): Promise<Map<number, number>> {
    const { rows } = await client.query<{ partition: number; full_version: string }>(
      `select partition, full_version from ${this.#parts.sql} where partition = any($1::int[])`,
      [partitions],
    )
    return new Map(rows.map((r) => [r.partition, Number(r.full_version)]))
  }

  /** The INSERT ... ON CONFLICT for rows from `source` (key, state, partition, version). */
  #upsertSql(source: string, tombstones: boolean): string {
    const t = this.#t.sql
    const tail = `on conflict (key) do update
        set state = excluded.state, partition = excluded.partition, version = excluded.version, updated_at = now()
        where t.version < excluded.version`
    if (!tombstones) {
      return `insert into ${t} as t (key, state, partition, version)
        select key, state, partition, version from ${source} ${tail}`
    }
    const tomb = this.#tomb.sql
    return `with src as materialized (select key, state, partition, version from ${source}),
        cleared as (delete from ${tomb} tb using src where tb.key = src.key and tb.version < src.version)
      insert into ${t} as t (key, state, partition, version)
        select key, state, partition, version from src
         where not exists (select 1 from ${tomb} tb where tb.key = src.key and tb.version >= src.version)
      ${tail}`
  }

  /** Big writes: COPY into a temporary table, then one INSERT ... SELECT. */
  async #upsertCopy(
    client: pg.ClientBase,
    lines: readonly (readonly string[])[],
    tombstones: boolean,
  ): Promise<void> {
    await client.query(
      `create temp table shoal_state_stage (key text collate "C", state jsonb, partition integer, version bigint)
         on commit drop`,
    )
    function* all(): Generator<string> {
      for (const group of lines) yield* group
    }
    await copyLines(client, 'shoal_state_stage', all())
    await client.query(this.#upsertSql('shoal_state_stage', tombstones))
    await client.query('drop table shoal_state_stage')
  }

  /** Small writes: INSERTs with array parameters, chunkRows rows each. */
  async #upsertUnnest(
    client: pg.ClientBase,
    groups: readonly (readonly [WriteGroup, readonly string[]])[],
    tombstones: boolean,
  ): Promise<void> {
    const sql = this.#upsertSql(
      'unnest($1::text[], $2::jsonb[], $3::int[], $4::bigint[]) as s(key, state, partition, version)',
      tombstones,
    )
    let keys: string[] = []
    let states: string[] = []
    let parts: number[] = []
    let versions: number[] = []
    const flush = async (): Promise<void> => {
      if (keys.length === 0) return
      await client.query(sql, [keys, states, parts, versions])
      keys = []
      states = []
      parts = []
      versions = []
    }
    for (const [g, json] of groups) {
      for (let i = 0; i < g.upserts.length; i++) {
        keys.push(g.upserts[i]![0])
        states.push(json[i]!)
        parts.push(g.partition)
        versions.push(g.version)
        if (keys.length === this.#options.chunkRows) await flush()
      }
    }
    await flush()
  }

  async #delete(client: pg.ClientBase, rows: readonly Delete[]): Promise<void> {
    const t = this.#t.sql
    const tomb = this.#tomb.sql
    await client.query(
      `with d as materialized (
          select * from unnest($1::text[], $2::int[], $3::bigint[]) as d(key, partition, version)),
        gone as (delete from ${t} t using d where t.key = d.key and t.version < d.version)
      insert into ${tomb} as tb (key, partition, version)
        select key, partition, version from d
         where not exists (select 1 from ${t} t where t.key = d.key and t.version >= d.version)
      on conflict (key) do update set partition = excluded.partition, version = excluded.version
        where tb.version < excluded.version`,
      [rows.map((r) => r.key), rows.map((r) => r.partition), rows.map((r) => r.version)],
    )
  }

  /** Full writes: drop the partitions' older rows and tombstones, raise their floors. */
  async #replace(client: pg.ClientBase, fulls: readonly (readonly [number, number])[]): Promise<void> {
    if (fulls.length >= FULL_SEQSCAN_PARTITIONS) {
      // Many partitions at once (a restore): one pass over the table beats an index scan per
      // partition, whose rows are spread over every page. Freshly written tables often have no
      // statistics yet, and the planner then picks the index (measured: 8 s instead of 0.5 s
      // for 256 partitions of 1M rows). Last statement of the transaction: LOCAL is enough.
      await client.query('set local enable_indexscan = off; set local enable_bitmapscan = off')
    }
    await client.query(
      `with f as materialized (select * from unnest($1::int[], $2::bigint[]) as f(partition, version)),
        gone as (delete from ${this.#t.sql} t using f where t.partition = f.partition and t.version < f.version),
        pruned as (delete from ${this.#tomb.sql} tb using f where tb.partition = f.partition and tb.version < f.version)
      insert into ${this.#parts.sql} as p (partition, full_version)
        select partition, version from f
      on conflict (partition) do update set full_version = excluded.full_version, updated_at = now()
        where p.full_version < excluded.full_version`,
      [fulls.map((f) => f[0]), fulls.map((f) => f[1])],
    )
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
    this.#state = 'closed'
    this.#closing = this.#pool.end().catch(() => {})
    return this.#closing
  }

  #checkOpen(): void {
    if (this.#state === 'closed') throw closedError(this.name)
  }
}

/** Upserts and deletes that share a partition and a version. */
interface WriteGroup {
  readonly partition: number
  readonly version: number
  readonly upserts: readonly (readonly [key: string, state: unknown])[]
  readonly deletes: readonly string[]
}

/**
 * The batches of one call as groups with at most one write per key (the newest, upsert or
 * delete), and the highest full version per partition. Partitions and versions are checked here.
 */
function groupWrites(batches: readonly StateBatch[]): { groups: WriteGroup[]; fulls: Map<number, number> } {
  const fulls = new Map<number, number>()
  const seen = new Set<number>()
  let repeated = false
  for (const b of batches) {
    if (!Number.isInteger(b.partition) || b.partition < 0 || b.partition > 0x7fffffff) {
      throw rejectedError(`state batch partition must be an integer >= 0 (got ${String(b.partition)})`)
    }
    if (!Number.isSafeInteger(b.version) || b.version < 0) {
      throw rejectedError(`state batch version must be a safe integer >= 0 (got ${String(b.version)})`)
    }
    if (seen.has(b.partition)) repeated = true
    seen.add(b.partition)
    if (b.full) fulls.set(b.partition, Math.max(b.version, fulls.get(b.partition) ?? -1))
  }
  // A key belongs to one partition: with one batch per partition no key can repeat across
  // batches, and the batches are the groups (no per-key work for a 1M-key write).
  if (!repeated) return { groups: [...batches], fulls }
  const last = new Map<string, { partition: number; version: number; state?: unknown; deleted: boolean }>()
  for (const b of batches) {
    const newer = (key: string): boolean => (last.get(key)?.version ?? -1) <= b.version
    for (const [key, state] of b.upserts) {
      if (newer(key)) last.set(key, { partition: b.partition, version: b.version, state, deleted: false })
    }
    for (const key of b.deletes) {
      if (newer(key)) last.set(key, { partition: b.partition, version: b.version, deleted: true })
    }
  }
  const groups = new Map<
    string,
    { partition: number; version: number; upserts: [string, unknown][]; deletes: string[] }
  >()
  for (const [key, w] of last) {
    const id = `${w.partition}:${w.version}`
    let g = groups.get(id)
    if (g === undefined)
      groups.set(id, (g = { partition: w.partition, version: w.version, upserts: [], deletes: [] }))
    if (w.deleted) g.deletes.push(key)
    else g.upserts.push([key, w.state])
  }
  return { groups: [...groups.values()], fulls }
}
