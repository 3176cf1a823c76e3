/**
 * Table names and schema checks shared by the Postgres sinks.
 *
 * A sink's table is `name` or `schema.name`, letters, digits and `_` only: it is quoted (so
 * `Clicks` is the case-sensitive "Clicks"), and its side tables (`name_dlq`, ...) must not
 * exceed Postgres' 63-byte identifier limit, which would otherwise truncate them silently.
 *
 * `ensureTables` runs under a transaction-level advisory lock per table, so workers opening
 * the same sink at once do not race on `create table if not exists` (which can fail with 23505
 * on pg_type when two sessions create the same table concurrently).
 */
import pg from 'pg'
import { InvalidOptionError } from '../../errors.ts'
import { schemaError } from './errors.ts'

/** The longest suffix a sink appends to its table name for a side table. */
export const LONGEST_SUFFIX = '_tombstones'
const MAX_IDENTIFIER_BYTES = 63
const PART = /^[A-Za-z_][A-Za-z0-9_]*$/

export interface TableName {
  /** null: the connection's current schema (search_path). */
  readonly schema: string | null
  readonly name: string
  /** Quoted and qualified, for SQL text. */
  readonly sql: string
  /** As written, for messages and the sink's name. */
  readonly display: string
}

export function parseTableName(table: string, option = 'table'): TableName {
  const parts = table.split('.')
  const bad = (why: string): never => {
    throw new InvalidOptionError(
      `postgres sink ${option} must be NAME or SCHEMA.NAME of letters, digits and _, ${why} (got ${JSON.stringify(table)})`,
    )
  }
  if (parts.length > 2) bad('with at most one dot')
  if (!parts.every((p) => PART.test(p))) bad('not starting with a digit')
  const name = parts[parts.length - 1]!
  const schema = parts.length === 2 ? parts[0]! : null
  if (schema !== null && schema.length > MAX_IDENTIFIER_BYTES)
    bad(`the schema at most ${MAX_IDENTIFIER_BYTES} characters`)
  const room = MAX_IDENTIFIER_BYTES - LONGEST_SUFFIX.length
  if (name.length > room)
    bad(`the name at most ${room} characters (room for side tables like NAME${LONGEST_SUFFIX})`)
  return tableName(schema, name)
}

function tableName(schema: string | null, name: string): TableName {
  const sql = (schema === null ? '' : pg.escapeIdentifier(schema) + '.') + pg.escapeIdentifier(name)
  return { schema, name, sql, display: schema === null ? name : `${schema}.${name}` }
}

/** A side table next to `t`: same schema, `${name}${suffix}`. */
export function sideTable(t: TableName, suffix: string): TableName {
  return tableName(t.schema, t.name + suffix)
}

/** An index name for `t` (unqualified: an index lives in its table's schema). */
export function indexName(t: TableName, suffix: string): string {
  return pg.escapeIdentifier(`${t.name}${suffix}`)
}

// --- schema checks --------------------------------------------------------------------------------

/** information_schema.columns.data_type values. */
export type ColumnType = 'text' | 'jsonb' | 'integer' | 'bigint' | 'timestamptz'

const ACCEPTED: Record<ColumnType, readonly string[]> = {
  text: ['text', 'character varying'],
  jsonb: ['jsonb'],
  integer: ['integer', 'bigint'],
  bigint: ['bigint'],
  timestamptz: ['timestamp with time zone', 'timestamp without time zone'],
}

export interface ColumnSpec {
  readonly name: string
  readonly type: ColumnType
  /** The sink writes NULL into it: it must be nullable. */
  readonly nullable?: boolean
}

export interface TableSpec {
  readonly table: TableName
  /** What the table is for, in messages: "state sink table", "dead-letter table". */
  readonly role: string
  readonly columns: readonly ColumnSpec[]
  /** `create table if not exists` (and its indexes), run when the table is missing. */
  readonly create: readonly string[]
  /** Run whether or not the table existed (`create index if not exists ...`). */
  readonly always?: readonly string[]
  /** Column sets that need a unique index without predicate (for ON CONFLICT). */
  readonly unique?: readonly (readonly string[])[]
}

interface ColumnRow {
  column_name: string
  data_type: string
  is_nullable: 'YES' | 'NO'
  column_default: string | null
  is_identity: 'YES' | 'NO'
  is_generated: string
}

/** Create each table if missing, else check that it fits; SINK_SCHEMA naming every problem. */
export async function ensureTables(client: pg.ClientBase, specs: readonly TableSpec[]): Promise<void> {
  await client.query('begin')
  try {
    for (const spec of specs) {
      await client.query('select pg_advisory_xact_lock(hashtext($1))', [`shoal-sink:${spec.table.display}`])
      const { rows } = await client.query<ColumnRow>(
        `select column_name, data_type, is_nullable, column_default, is_identity, is_generated
           from information_schema.columns
          where table_schema = coalesce($1, current_schema()) and table_name = $2`,
        [spec.table.schema, spec.table.name],
      )
      if (rows.length === 0) {
        const exists = await client.query<{ r: string | null }>('select to_regclass($1)::text as r', [
          spec.table.sql,
        ])
        if (exists.rows[0]?.r != null) {
          throw schemaError(
            `postgres ${spec.role} ${spec.table.display} exists but shows no columns (a view, or no privilege on it?)`,
            { table: spec.table.display },
          )
        }
        for (const sql of spec.create) await client.query(sql)
      } else {
        const problems = checkColumns(spec, rows)
        problems.push(...(await checkUnique(client, spec)))
        if (problems.length > 0) {
          throw schemaError(
            `postgres ${spec.role} ${spec.table.display} does not fit: ${problems.join('; ')}`,
            { table: spec.table.display, problems },
          )
        }
      }
      for (const sql of spec.always ?? []) await client.query(sql)
    }
    await client.query('commit')
  } catch (err) {
    await client.query('rollback').catch(() => {})
    throw err
  }
}

function checkColumns(spec: TableSpec, rows: readonly ColumnRow[]): string[] {
  const problems: string[] = []
  const byName = new Map(rows.map((r) => [r.column_name, r]))
  for (const c of spec.columns) {
    const row = byName.get(c.name)
    if (row === undefined) problems.push(`missing column ${c.name} (${c.type})`)
    else if (!ACCEPTED[c.type].includes(row.data_type)) {
      problems.push(`column ${c.name} is ${row.data_type}, expected ${c.type}`)
    } else if (c.nullable === true && row.is_nullable === 'NO') {
      problems.push(`column ${c.name} is NOT NULL, but the sink writes NULL into it`)
    }
  }
  const ours = new Set(spec.columns.map((c) => c.name))
  for (const r of rows) {
    const filled = r.column_default !== null || r.is_identity === 'YES' || r.is_generated === 'ALWAYS'
    if (!ours.has(r.column_name) && r.is_nullable === 'NO' && !filled) {
      problems.push(`extra column ${r.column_name} is NOT NULL without a default (the sink cannot fill it)`)
    }
  }
  return problems
}

async function checkUnique(client: pg.ClientBase, spec: TableSpec): Promise<string[]> {
  if (spec.unique === undefined || spec.unique.length === 0) return []
  const { rows } = await client.query<{ cols: string[] }>(
    `select array_agg(a.attname::text order by k.i) as cols
       from pg_index x
       cross join lateral unnest(x.indkey::int2[]) with ordinality as k(attnum, i)
       join pg_attribute a on a.attrelid = x.indrelid and a.attnum = k.attnum
      where x.indrelid = $1::regclass and x.indisunique and x.indpred is null and x.indexprs is null
      group by x.indexrelid`,
    [spec.table.sql],
  )
  const have = rows.map((r) => [...r.cols].sort().join(','))
  return spec.unique
    .filter((cols) => !have.includes([...cols].sort().join(',')))
    .map((cols) => `no unique index on (${cols.join(', ')}) without a predicate`)
}
