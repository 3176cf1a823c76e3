/**
 * PostgresStateSink and PostgresEventsSink against a real PostgreSQL server: schema creation and
 * checks, version guards, tombstones and full writes, big writes (COPY) and small ones (unnest),
 * values without a plain JSON form, exactly-once rows, dead letters, error mapping, and an outage
 * (the server stopped immediately mid-write, then restarted on the same data directory).
 */
import { createServer, type AddressInfo, type Socket } from 'node:net'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest'
import {
  PostgresEventsSink,
  PostgresStateSink,
  classifyPostgresError,
  createPostgresSink,
  toPostgresSinkError,
  type PostgresSinkOptions,
} from '../../../src/connectors/postgres/index.ts'
import type { EmittedBatch, StateBatch } from '../../../src/connectors/sink.ts'
import { ErrorCodes, ShoalError } from '../../../src/errors.ts'
import { freePort, startPostgres, type PostgresServer } from '../../helpers/postgres.ts'

let server: PostgresServer
beforeAll(async () => {
  server = await startPostgres()
}, 30_000)
afterAll(async () => {
  await server?.dispose()
})

const fast: PostgresSinkOptions = { connectTimeoutMs: 2000, statementTimeoutMs: 10_000 }
let tables = 0
const uniqueTable = (tag: string): string => `it_${tag}_${++tables}`

async function stateSink(table = uniqueTable('state'), options = fast): Promise<PostgresStateSink> {
  const sink = new PostgresStateSink({ url: server.url, table }, options)
  onTestFinished(() => sink.close())
  await sink.open()
  return sink
}

async function eventsSink(table = uniqueTable('events'), options = fast): Promise<PostgresEventsSink> {
  const sink = new PostgresEventsSink({ url: server.url, table }, options)
  onTestFinished(() => sink.close())
  await sink.open()
  return sink
}

const sb = (
  partition: number,
  version: number,
  upserts: StateBatch['upserts'],
  deletes: string[] = [],
  full = false,
): StateBatch => ({ partition, version, upserts, deletes, full })

async function rowsOf(
  table: string,
): Promise<Record<string, { state: unknown; version: number; partition: number }>> {
  const rows = await server.query<{ key: string; state: unknown; version: string; partition: number }>(
    `select key, state, version, partition from ${table} order by key`,
  )
  return Object.fromEntries(
    rows.map((r) => [r.key, { state: r.state, version: Number(r.version), partition: r.partition }]),
  )
}

async function count(table: string): Promise<number> {
  return Number((await server.query<{ n: string }>(`select count(*) as n from ${table}`))[0]!.n)
}

async function failure(p: Promise<unknown>): Promise<ShoalError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(err).toBeInstanceOf(ShoalError)
  return err as ShoalError
}

describe('construction', () => {
  it('refuses table names that are not NAME or SCHEMA.NAME', () => {
    for (const table of ['', 'a-b', '1abc', 'a.b.c', 'x; drop table y', '"q"', 'a'.repeat(53)]) {
      expect(() => new PostgresStateSink({ url: server.url, table }), table).toThrow(
        expect.objectContaining({ code: ErrorCodes.INVALID_OPTION }),
      )
    }
    expect(new PostgresStateSink({ url: server.url, table: 'public.ok_1' }).name).toBe('postgres:public.ok_1')
  })

  it('refuses the other mode and bad options', () => {
    expect(() => new PostgresStateSink({ url: server.url, table: 't', mode: 'events' })).toThrow(/mode=state/)
    expect(() => new PostgresEventsSink({ url: server.url, table: 't', mode: 'state' })).toThrow(
      /mode=events/,
    )
    expect(() => new PostgresStateSink({ url: server.url, table: 't' }, { poolMax: 0 })).toThrow(/poolMax/)
    expect(
      () =>
        new PostgresStateSink(
          { url: server.url, table: 't' },
          { statementTimeoutMs: 5000, queryTimeoutMs: 1000 },
        ),
    ).toThrow(/queryTimeoutMs/)
    const spec = { kind: 'postgres', url: server.url, table: 'x' } as const
    expect(createPostgresSink({ ...spec, mode: 'state' })).toBeInstanceOf(PostgresStateSink)
    expect(createPostgresSink({ ...spec, mode: 'events' })).toBeInstanceOf(PostgresEventsSink)
  })
})

describe('schema', () => {
  it('creates the tables with the documented columns', async () => {
    const table = uniqueTable('create')
    const sink = await stateSink(table)
    expect(sink.accepts).toEqual({ events: false, state: true })
    const cols = await server.query<{ column_name: string; data_type: string; is_nullable: string }>(
      `select column_name, data_type, is_nullable from information_schema.columns
        where table_name = $1 order by ordinal_position`,
      [table],
    )
    expect(cols.map((c) => `${c.column_name} ${c.data_type} ${c.is_nullable}`)).toEqual([
      'key text NO',
      'state jsonb NO',
      'partition integer NO',
      'version bigint NO',
      'updated_at timestamp with time zone NO',
    ])
    const idx = await server.query<{ indexname: string }>(
      `select indexname from pg_indexes where tablename = $1`,
      [table],
    )
    // Only the primary key: an index on partition cost more on every write than it saved (docs/connectors-postgres.md).
    expect(idx.map((i) => i.indexname).sort()).toEqual([`${table}_pkey`])
    for (const side of ['_dlq', '_tombstones', '_partitions']) expect(await count(table + side)).toBe(0)
    const ev = uniqueTable('create_ev')
    await eventsSink(ev)
    const evIdx = await server.query<{ indexdef: string }>(
      `select indexdef from pg_indexes where tablename = $1`,
      [ev],
    )
    expect(evIdx.map((i) => i.indexdef)).toEqual([
      expect.stringMatching(/UNIQUE INDEX .* \(partition, log_offset, idx\)/),
    ])
  })

  it('accepts an existing table that fits, with extra columns', async () => {
    const table = uniqueTable('fits')
    await server.query(
      `create table ${table} (key text primary key, state jsonb not null, partition int not null,
        version bigint not null, updated_at timestamptz not null default now(), note text, n int not null default 0)`,
    )
    const sink = await stateSink(table)
    await sink.writeState([sb(0, 1, [['a', 1]])])
    expect(await rowsOf(table)).toEqual({ a: { state: 1, version: 1, partition: 0 } })
  })

  it('refuses a table with a wrong column type or missing columns: SINK_SCHEMA naming them', async () => {
    const table = uniqueTable('wrong')
    await server.query(
      `create table ${table} (key text primary key, state text not null, version int not null)`,
    )
    const sink = new PostgresStateSink({ url: server.url, table }, fast)
    onTestFinished(() => sink.close())
    const err = await failure(sink.open())
    expect(err.code).toBe(ErrorCodes.SINK_SCHEMA)
    expect(err.retryable).toBe(false)
    expect(err.message).toContain(table)
    expect(err.message).toContain('column state is text, expected jsonb')
    expect(err.message).toContain('column version is integer, expected bigint')
    expect(err.message).toContain('missing column partition (integer)')
    expect(err.message).toContain('missing column updated_at')
  })

  it('refuses a table without a unique key, or with a NOT NULL column it cannot fill', async () => {
    const noKey = uniqueTable('nokey')
    await server.query(
      `create table ${noKey} (key text, state jsonb not null, partition int not null, version bigint not null,
        updated_at timestamptz not null default now())`,
    )
    const a = new PostgresStateSink({ url: server.url, table: noKey }, fast)
    onTestFinished(() => a.close())
    expect((await failure(a.open())).message).toContain('no unique index on (key)')

    const extra = uniqueTable('extra')
    await server.query(
      `create table ${extra} (stream text not null, key text not null, partition int not null, log_offset bigint,
        idx int not null, event jsonb not null, emitted_at timestamptz not null default now(), owner text not null)`,
    )
    const b = new PostgresEventsSink({ url: server.url, table: extra }, fast)
    onTestFinished(() => b.close())
    const err = await failure(b.open())
    expect(err.code).toBe(ErrorCodes.SINK_SCHEMA)
    expect(err.message).toContain('extra column owner is NOT NULL without a default')
    expect(err.message).toContain('no unique index on (partition, log_offset, idx)')
  })

  it('refuses an events table whose log_offset is NOT NULL', async () => {
    const table = uniqueTable('ev_notnull')
    await server.query(
      `create table ${table} (stream text not null, key text not null, partition int not null,
        log_offset bigint not null, idx int not null, event jsonb not null, emitted_at timestamptz not null default now());
       create unique index on ${table} (partition, log_offset, idx)`,
    )
    const sink = new PostgresEventsSink({ url: server.url, table }, fast)
    onTestFinished(() => sink.close())
    expect((await failure(sink.open())).message).toContain('column log_offset is NOT NULL')
  })

  it('lets several sinks open the same new table at once', async () => {
    const table = uniqueTable('race')
    const sinks = Array.from({ length: 4 }, () => new PostgresStateSink({ url: server.url, table }, fast))
    onTestFinished(() => Promise.all(sinks.map((s) => s.close())).then(() => undefined))
    await Promise.all(sinks.map((s) => s.open()))
    await sinks[0]!.writeState([sb(0, 1, [['a', 1]])])
    expect(await count(table)).toBe(1)
  })

  it('works in a named schema', async () => {
    await server.query('create schema if not exists shoal_out')
    const sink = await stateSink('shoal_out.scores')
    await sink.writeState([sb(0, 1, [['a', { n: 1 }]])])
    expect(await rowsOf('shoal_out.scores')).toEqual({ a: { state: { n: 1 }, version: 1, partition: 0 } })
    expect(await count('shoal_out.scores_dlq')).toBe(0)
  })

  it('reports a table dropped under it as SINK_SCHEMA at write time', async () => {
    const table = uniqueTable('dropped')
    const sink = await stateSink(table)
    await server.query(`drop table ${table}`)
    const err = await failure(sink.writeState([sb(0, 1, [['a', 1]])]))
    expect(err.code).toBe(ErrorCodes.SINK_SCHEMA)
    expect(err.data?.sqlstate).toBe('42P01')
  })
})

describe('mode=state', () => {
  it('upserts with a version guard: an older version is ignored, the same one is a no-op', async () => {
    const table = uniqueTable('guard')
    const sink = await stateSink(table)
    await sink.writeState([
      sb(0, 2, [
        ['a', { n: 2 }],
        ['b', 'two'],
      ]),
      sb(1, 7, [['c', [7]]]),
    ])
    await sink.writeState([sb(0, 1, [['a', { n: 1 }]])])
    await sink.writeState([sb(0, 2, [['a', { n: 99 }]])])
    await sink.writeState([sb(0, 3, [['b', 'three']])])
    expect(await rowsOf(table)).toEqual({
      a: { state: { n: 2 }, version: 2, partition: 0 },
      b: { state: 'three', version: 3, partition: 0 },
      c: { state: [7], version: 7, partition: 1 },
    })
  })

  it('deletes keys; a late upsert below the delete does not bring a key back, a newer one does', async () => {
    const table = uniqueTable('tomb')
    const sink = await stateSink(table)
    await sink.writeState([
      sb(0, 1, [
        ['a', 1],
        ['b', 1],
      ]),
    ])
    await sink.writeState([sb(0, 5, [], ['a'])])
    expect(Object.keys(await rowsOf(table))).toEqual(['b'])
    await sink.writeState([sb(0, 4, [['a', 4]])]) // late: below the delete
    await sink.writeState([sb(0, 5, [['a', 5]])]) // same version as the delete
    expect(Object.keys(await rowsOf(table))).toEqual(['b'])
    expect(await server.query(`select key, version from ${table}_tombstones`)).toEqual([
      { key: 'a', version: '5' },
    ])
    await sink.writeState([sb(0, 6, [['a', 6]])])
    expect((await rowsOf(table)).a).toEqual({ state: 6, version: 6, partition: 0 })
    expect(await count(`${table}_tombstones`)).toBe(0) // cleared by the newer upsert
    // A delete below the row's version changes nothing and leaves no tombstone.
    await sink.writeState([sb(0, 3, [], ['a'])])
    expect((await rowsOf(table)).a?.version).toBe(6)
    expect(await count(`${table}_tombstones`)).toBe(0)
  })

  it('takes the batches of one call in any order: the newest write of a key wins', async () => {
    const table = uniqueTable('order')
    const sink = await stateSink(table)
    await sink.writeState([
      sb(0, 6, [], ['x']),
      sb(0, 5, [
        ['x', 5],
        ['y', 5],
      ]),
      sb(0, 8, [['y', 8]]),
      sb(0, 7, [['y', 7]], ['z']),
      sb(0, 4, [['z', 4]]),
    ])
    expect(await rowsOf(table)).toEqual({ y: { state: 8, version: 8, partition: 0 } })
    expect(
      (await server.query(`select key from ${table}_tombstones order by key`)).map((r) => r.key),
    ).toEqual(['x', 'z'])
  })

  it('a full write replaces the partition, raises its floor and prunes its tombstones', async () => {
    const table = uniqueTable('full')
    const sink = await stateSink(table)
    await sink.writeState([
      sb(3, 1, [
        ['a', 1],
        ['b', 1],
        ['c', 1],
      ]),
      sb(4, 1, [['other', 1]]),
    ])
    await sink.writeState([sb(3, 2, [], ['c'])])
    expect(await count(`${table}_tombstones`)).toBe(1)
    // A new owner restored partition 3 at version 10: only a and d are live.
    await sink.writeState([
      sb(
        3,
        10,
        [
          ['a', 10],
          ['d', 10],
        ],
        [],
        true,
      ),
    ])
    expect(await rowsOf(table)).toEqual({
      a: { state: 10, version: 10, partition: 3 },
      d: { state: 10, version: 10, partition: 3 },
      other: { state: 1, version: 1, partition: 4 },
    })
    expect(await count(`${table}_tombstones`)).toBe(0)
    expect(await server.query(`select partition, full_version from ${table}_partitions`)).toEqual([
      { partition: 3, full_version: '10' },
    ])
    // The previous owner's write at version 9, late: a new key must not appear, nor b come back.
    await sink.writeState([
      sb(3, 9, [
        ['b', 9],
        ['e', 9],
      ]),
    ])
    expect(Object.keys(await rowsOf(table))).toEqual(['a', 'd', 'other'])
    // A stale full write changes nothing either.
    await sink.writeState([sb(3, 8, [['a', 8]], [], true)])
    expect(Object.keys(await rowsOf(table))).toEqual(['a', 'd', 'other'])
    await sink.writeState([sb(3, 11, [['e', 11]])])
    expect(Object.keys(await rowsOf(table))).toEqual(['a', 'd', 'e', 'other'])
  })

  for (const [path, options] of [
    ['COPY', { ...fast }],
    ['unnest', { ...fast, copyThresholdRows: 1_000_000, chunkRows: 3000 }],
  ] as const) {
    it(`writes 10k keys in one call (${path}), keys and states with special characters intact`, async () => {
      const table = uniqueTable(`big_${path.toLowerCase()}`)
      const sink = await stateSink(table, options)
      const odd = ['tab\tkey', 'new\nline', 'back\\slash', 'quote"\'', 'ünï €😀', 'cr\rx', '\\N', 'NULL', '']
      const batches: StateBatch[] = Array.from({ length: 16 }, (_, p) => sb(p, 1, []))
      for (let i = 0; i < 10_000; i++) {
        const key = i < odd.length ? odd[i]! : `key-${i}`
        ;(batches[i % 16]!.upserts as [string, unknown][]).push([key, { i, s: odd[i % odd.length] }])
      }
      await sink.writeState(batches)
      expect(await count(table)).toBe(10_000)
      const rows = await rowsOf(table)
      for (let i = 0; i < odd.length; i++)
        expect(rows[odd[i]!], odd[i]).toEqual({ state: { i, s: odd[i] }, version: 1, partition: i % 16 })
      const sum = await server.query<{ s: string }>(`select sum((state->>'i')::int) as s from ${table}`)
      expect(Number(sum[0]!.s)).toBe((9999 * 10_000) / 2)
      // Every other key again at version 2 (313 of 625 per partition), and one delete.
      await sink.writeState(
        batches.map((b) =>
          sb(
            b.partition,
            2,
            b.upserts.filter((_, j) => j % 2 === 0),
            b.partition === 0 ? ['key-16'] : [],
          ),
        ),
      )
      expect(await count(table)).toBe(9999)
      expect((await rowsOf(table))['key-32']).toEqual({
        state: { i: 32, s: odd[32 % odd.length] },
        version: 2,
        partition: 0,
      })
      expect(
        Number(
          (await server.query<{ n: string }>(`select count(*) as n from ${table} where version = 2`))[0]!.n,
        ),
      ).toBe(16 * 313)
    })
  }

  it('with parallelism, splits a big write by partition over connections, with the same result', async () => {
    const table = uniqueTable('parallel')
    const sink = await stateSink(table, { ...fast, copyThresholdRows: 100, parallelism: 3 })
    const write = (version: number, full: boolean, n: number): Promise<void> =>
      sink.writeState(
        Array.from({ length: 8 }, (_, p) =>
          sb(
            p,
            version,
            Array.from({ length: n }, (_, i) => [`k${p}-${i}`, { version, i }] as [string, unknown]),
            [],
            full,
          ),
        ),
      )
    await write(1, false, 300)
    await write(2, true, 200) // a restore of every partition: keys 200..299 go
    expect(await count(table)).toBe(8 * 200)
    const v = await server.query<{ v: string }>(`select distinct version as v from ${table}`)
    expect(v).toEqual([{ v: '2' }])
    expect(await count(`${table}_partitions`)).toBe(8)
    expect(() => new PostgresStateSink({ url: server.url, table }, { parallelism: 5 })).toThrow(/parallelism/)
  })

  it('converts bigint, Map, Set and bytes; rejects what has no JSON form before writing', async () => {
    const table = uniqueTable('json')
    const sink = await stateSink(table)
    await sink.writeState([
      sb(0, 1, [
        ['big', { n: 12345678901234567890n, small: 5n }],
        [
          'map',
          new Map<unknown, unknown>([
            ['a', 1],
            [2, new Set(['x'])],
          ]),
        ],
        ['bytes', Buffer.from('hi')],
      ]),
    ])
    const raw = await server.query<{ key: string; t: string }>(
      `select key, state::text as t from ${table} order by key`,
    )
    expect(raw).toEqual([
      { key: 'big', t: '{"n": 12345678901234567890, "small": 5}' },
      { key: 'bytes', t: '"aGk="' },
      { key: 'map', t: '{"2": ["x"], "a": 1}' },
    ])
    const err = await failure(sink.writeState([sb(0, 2, [['bad', new Map([[{}, 1]])]])]))
    expect(err.code).toBe(ErrorCodes.SINK_REJECTED)
    expect(err.message).toMatch(/state of key "bad" \(partition 0, version 2\) cannot be stored as JSON/)
  })

  it('maps a state Postgres refuses (\\u0000 in jsonb) to SINK_REJECTED, on both write paths', async () => {
    for (const copyThresholdRows of [0, 1_000_000]) {
      const table = uniqueTable('nul')
      const sink = await stateSink(table, { ...fast, copyThresholdRows })
      await sink.writeState([sb(0, 1, [['ok', 1]])])
      const err = await failure(
        sink.writeState([
          sb(0, 2, [
            ['ok', 2],
            ['nul', { s: 'nul \u0000' }],
          ]),
        ]),
      )
      expect(err.code).toBe(ErrorCodes.SINK_REJECTED)
      expect(err.data?.sqlstate).toBe('22P05')
      // One transaction: nothing of the refused call was written.
      expect(await rowsOf(table)).toEqual({ ok: { state: 1, version: 1, partition: 0 } })
    }
  })
})

describe('mode=events', () => {
  const records = (n: number, tag: string): EmittedBatch['records'] =>
    Array.from({ length: n }, (_, i) => ['out', `k${i % 97}`, { i, tag }] as const)

  for (const [path, options] of [
    ['COPY', { ...fast }],
    ['unnest', { ...fast, copyThresholdRows: 1_000_000 }],
  ] as const) {
    it(`stores a replayed batch exactly once (${path}), and appends records without identity`, async () => {
      const table = uniqueTable(`ev_${path.toLowerCase()}`)
      const sink = await eventsSink(table, options)
      const batches: EmittedBatch[] = [
        { partition: 0, offset: 100, firstIndex: 0, records: records(6000, 'a') },
        { partition: 1, offset: 100, firstIndex: 0, records: records(10, 'b') },
      ]
      await sink.writeEvents(batches)
      await sink.writeEvents(batches) // replay after a crash
      await sink.writeEvents([
        batches[1]!,
        { partition: 1, offset: 101, firstIndex: 0, records: records(3, 'c') },
      ])
      expect(await count(table)).toBe(6013)
      const nulls: EmittedBatch = { partition: 0, offset: null, firstIndex: 0, records: records(2, 'n') }
      await sink.writeEvents([nulls])
      await sink.writeEvents([nulls])
      expect(await count(table)).toBe(6017)
      const sample = await server.query(
        `select stream, key, partition, log_offset, idx, event from ${table} where partition = 1 and log_offset = 101 order by idx`,
      )
      expect(sample).toEqual(
        [0, 1, 2].map((i) => ({
          stream: 'out',
          key: `k${i}`,
          partition: 1,
          log_offset: '101',
          idx: i,
          event: { i, tag: 'c' },
        })),
      )
    })
  }

  it('rejects an event Postgres refuses, writing nothing of the call', async () => {
    const table = uniqueTable('ev_nul')
    const sink = await eventsSink(table)
    const err = await failure(
      sink.writeEvents([
        {
          partition: 0,
          offset: 1,
          firstIndex: 0,
          records: [
            ['s', 'a', 1],
            ['s', 'b', 'x\u0000'],
          ],
        },
      ]),
    )
    expect(err.code).toBe(ErrorCodes.SINK_REJECTED)
    expect(await count(table)).toBe(0)
  })
})

describe('dead letters', () => {
  it('stores records jsonb cannot hold as text, and NULs in text columns escaped', async () => {
    const table = uniqueTable('dlq')
    const sink = await eventsSink(table)
    await sink.deadLetter([
      { partition: 1, offset: 5, index: 0, record: ['s', 'k', { ok: true }], error: 'E1', attempts: 3 },
      {
        partition: 1,
        offset: 5,
        index: 1,
        record: ['s', 'k\u0000', { s: 'nul \u0000' }],
        error: 'E2 \u0000',
        attempts: 8,
      },
      {
        partition: 2,
        offset: null,
        index: 0,
        record: ['s', 'k', new Map([[{}, 1]])],
        error: 'E3',
        attempts: 1,
      },
    ])
    const rows = await server.query(
      `select partition, log_offset, idx, stream, key, record, record_text, error, attempts from ${table}_dlq order by id`,
    )
    expect(rows).toEqual([
      {
        partition: 1,
        log_offset: '5',
        idx: 0,
        stream: 's',
        key: 'k',
        record: { ok: true },
        record_text: null,
        error: 'E1',
        attempts: 3,
      },
      {
        partition: 1,
        log_offset: '5',
        idx: 1,
        stream: 's',
        key: 'k\\u0000',
        record: null,
        record_text: '{"s":"nul \\u0000"}',
        error: 'E2 \\u0000',
        attempts: 8,
      },
      {
        partition: 2,
        log_offset: null,
        idx: 0,
        stream: 's',
        key: 'k',
        record: null,
        record_text: 'Map(1) { {} => 1 }',
        error: 'E3',
        attempts: 1,
      },
    ])
    // The state sink has the same table.
    const st = uniqueTable('dlq_state')
    const s2 = await stateSink(st)
    await s2.deadLetter([
      { partition: 0, offset: null, index: 0, record: ['state', 'k', 1], error: 'E', attempts: 2 },
    ])
    expect(await count(`${st}_dlq`)).toBe(1)
  })
})

describe('errors', () => {
  it('classifies SQLSTATEs and socket errors', () => {
    const e = (code: string): Error => Object.assign(new Error(code), { code })
    for (const c of [
      '57P01',
      '57P02',
      '57P03',
      '08006',
      '08001',
      '53300',
      '40001',
      '40P01',
      '57014',
      'ECONNREFUSED',
      'ECONNRESET',
    ]) {
      expect(classifyPostgresError(e(c)), c).toBe('unavailable')
    }
    for (const c of ['22P05', '22021', '23505', '23502', '54000'])
      expect(classifyPostgresError(e(c)), c).toBe('rejected')
    for (const c of ['42P01', '42703', '42501', '3F000', '28P01'])
      expect(classifyPostgresError(e(c)), c).toBe('schema')
    expect(classifyPostgresError(new Error('Connection terminated unexpectedly'))).toBe('unavailable')
    const u = toPostgresSinkError(e('57P01'), 'write')
    expect([u.code, u.retryable]).toEqual([ErrorCodes.SINK_UNAVAILABLE, true])
    const r = toPostgresSinkError(e('23505'), 'write')
    expect([r.code, r.retryable]).toEqual([ErrorCodes.SINK_REJECTED, false])
  })

  it('fails open with retryable SINK_UNAVAILABLE when nothing listens', async () => {
    const port = await freePort()
    const sink = new PostgresStateSink(
      { url: `postgres://shoal@127.0.0.1:${port}/postgres`, table: 't' },
      fast,
    )
    onTestFinished(() => sink.close())
    const err = await failure(sink.open())
    expect([err.code, err.retryable]).toEqual([ErrorCodes.SINK_UNAVAILABLE, true])
    expect(err.message).toContain('ECONNREFUSED')
  })

  it('fails with retryable SINK_UNAVAILABLE, not a hang, when a server accepts and never answers', async () => {
    const sockets: Socket[] = []
    const silent = createServer((s) => sockets.push(s)) // accepts connections, never says a word
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r))
    onTestFinished(() => {
      for (const s of sockets) s.destroy()
      silent.close()
    })
    const { port } = silent.address() as AddressInfo
    const sink = new PostgresStateSink(
      { url: `postgres://shoal@127.0.0.1:${port}/postgres`, table: 't' },
      { connectTimeoutMs: 500 },
    )
    onTestFinished(() => sink.close())
    const t0 = Date.now()
    const err = await failure(sink.open())
    expect([err.code, err.retryable]).toEqual([ErrorCodes.SINK_UNAVAILABLE, true])
    expect(Date.now() - t0).toBeLessThan(3000)
  })

  it('times out a write stuck behind another writer of the partition (statement_timeout): SINK_UNAVAILABLE', async () => {
    const table = uniqueTable('locked')
    const sink = await stateSink(table, { ...fast, statementTimeoutMs: 500 })
    const holder = new pg.Client(server.url)
    await holder.connect()
    onTestFinished(() => holder.end())
    await holder.query('begin')
    await holder.query('select pg_advisory_xact_lock(hashtext($1), 0)', [`shoal-state:${table}`])
    const t0 = Date.now()
    const err = await failure(sink.writeState([sb(0, 1, [['a', 1]])]))
    expect([err.code, err.retryable, err.data?.sqlstate]).toEqual([
      ErrorCodes.SINK_UNAVAILABLE,
      true,
      '57014',
    ])
    expect(Date.now() - t0).toBeLessThan(3000)
    // Other partitions are not blocked; the partition is writable once the other writer is done.
    await sink.writeState([sb(1, 1, [['b', 1]])])
    await holder.query('commit')
    await sink.writeState([sb(0, 1, [['a', 1]])])
    expect(Object.keys(await rowsOf(table))).toEqual(['a', 'b'])
  })

  it('refuses a database that does not exist with SINK_SCHEMA', async () => {
    const sink = new PostgresStateSink({ url: server.url.replace(/\/postgres$/, '/nope'), table: 't' }, fast)
    onTestFinished(() => sink.close())
    const err = await failure(sink.open())
    expect(err.code).toBe(ErrorCodes.SINK_SCHEMA)
    expect(err.data?.sqlstate).toBe('3D000')
  })

  it('throws CLOSED after close', async () => {
    const sink = await stateSink()
    await sink.close()
    await sink.close()
    await expect(sink.writeState([sb(0, 1, [['a', 1]])])).rejects.toMatchObject({ code: ErrorCodes.CLOSED })
  })
})

describe('outage', () => {
  it('a write fails with retryable SINK_UNAVAILABLE while the server is down and succeeds after restart', async () => {
    // Its own server: this one is killed.
    const pg = await startPostgres()
    onTestFinished(() => pg.dispose())
    const errors: ShoalError[] = []
    const table = 'outage'
    const sink = new PostgresStateSink(
      { url: pg.url, table },
      { ...fast, onConnectionError: (e) => errors.push(e) },
    )
    onTestFinished(() => sink.close())
    await sink.open()
    const batches = (version: number, n: number): StateBatch[] =>
      Array.from({ length: 8 }, (_, p) =>
        sb(
          p,
          version,
          Array.from(
            { length: n / 8 },
            (_, i) => [`k${i * 8 + p}`, { v: version, i: i * 8 + p }] as [string, unknown],
          ),
        ),
      )
    await sink.writeState(batches(1, 1000))

    // Stopped (immediate shutdown, like a crash) while a big write is in flight.
    const big = batches(2, 200_000)
    const inFlight = sink.writeState(big).then(
      () => undefined,
      (e: unknown) => e,
    )
    await new Promise((r) => setTimeout(r, 300))
    await pg.kill()
    const midWrite = await inFlight
    // On a fast machine the write may have committed before the kill; then it is simply done.
    if (midWrite !== undefined) {
      expect(midWrite).toBeInstanceOf(ShoalError)
      expect([(midWrite as ShoalError).code, (midWrite as ShoalError).retryable]).toEqual([
        ErrorCodes.SINK_UNAVAILABLE,
        true,
      ])
    }
    // While it is down, every attempt fails quickly and retryably.
    for (let i = 0; i < 3; i++) {
      const t0 = Date.now()
      const err = await failure(sink.writeState(big))
      expect([err.code, err.retryable]).toEqual([ErrorCodes.SINK_UNAVAILABLE, true])
      expect(Date.now() - t0).toBeLessThan(3000)
      await new Promise((r) => setTimeout(r, 500))
    }
    await pg.restart()
    // The pool may hold connections the restart ended: the retry goes through anyway (at most one
    // more failure while pg notices, as the runner would retry).
    let done = false
    for (let attempt = 0; attempt < 3 && !done; attempt++) {
      try {
        await sink.writeState(big)
        done = true
      } catch (err) {
        expect((err as ShoalError).code).toBe(ErrorCodes.SINK_UNAVAILABLE)
      }
    }
    expect(done).toBe(true)
    const rows = await pg.query<{ n: string; v: string; s: string }>(
      `select count(*) as n, min(version) as v, sum((state->>'i')::bigint) as s from ${table}`,
    )
    expect(rows[0]).toEqual({ n: '200000', v: '2', s: String((199_999 * 200_000) / 2) })
  }, 60_000)
})
