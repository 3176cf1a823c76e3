/**
 * The Sink suite against the Postgres sinks (mode=state and mode=events) on a real PostgreSQL
 * server (test/helpers/postgres.ts), each test on its own table.
 */
import { afterAll, beforeAll, describe } from 'vitest'
import { PostgresEventsSink, PostgresStateSink } from '../../src/connectors/postgres/index.ts'
import type { Sink } from '../../src/connectors/sink.ts'
import { startPostgres, type PostgresServer } from '../helpers/postgres.ts'
import {
  sinkConformance,
  type SinkReadDeadLetter,
  type SinkReadEvent,
  type SinkUnderTest,
} from './sink-suite.ts'

let server: PostgresServer
beforeAll(async () => {
  server = await startPostgres()
}, 30_000)
afterAll(async () => {
  await server?.dispose()
})

let tables = 0
const fast = { connectTimeoutMs: 3000, statementTimeoutMs: 10_000 }

interface DlqRow {
  partition: number
  log_offset: string | null
  idx: number
  stream: string
  key: string
  record: unknown
  record_text: string | null
  error: string
  attempts: number
}

interface EventRow {
  partition: number
  log_offset: string | null
  idx: number
  stream: string
  key: string
  event: unknown
}

const offsetOf = (o: string | null): number | null => (o === null ? null : Number(o))

function factory(mode: 'state' | 'events') {
  return (): Promise<SinkUnderTest> => {
    const table = `conf_${mode}_${++tables}`
    const target = { url: server.url, table }
    const sink: Sink =
      mode === 'state' ? new PostgresStateSink(target, fast) : new PostgresEventsSink(target, fast)
    const exists = async (t: string): Promise<boolean> =>
      (await server.query<{ r: string | null }>('select to_regclass($1)::text as r', [t]))[0]?.r != null
    return Promise.resolve({
      sink,
      read: async () => {
        const events: SinkReadEvent[] = []
        const state = new Map<string, { state: unknown; version: number }>()
        if (mode === 'events' && (await exists(table))) {
          // A fresh table without updates or deletes: physical order is insertion order.
          const rows = await server.query<EventRow>(`select * from ${table} order by ctid`)
          for (const r of rows) {
            events.push({
              partition: r.partition,
              offset: offsetOf(r.log_offset),
              index: r.idx,
              stream: r.stream,
              key: r.key,
              event: r.event,
            })
          }
        }
        if (mode === 'state' && (await exists(table))) {
          const rows = await server.query<{ key: string; state: unknown; version: string }>(
            `select key, state, version from ${table} order by key`,
          )
          for (const r of rows) state.set(r.key, { state: r.state, version: Number(r.version) })
        }
        return { events, state }
      },
      readDeadLetters: async () => {
        const rows = await server.query<DlqRow>(`select * from ${table}_dlq order by id`)
        return rows.map((r): SinkReadDeadLetter => ({
          partition: r.partition,
          offset: offsetOf(r.log_offset),
          index: r.idx,
          stream: r.stream,
          key: r.key,
          event: r.record_text === null ? r.record : r.record_text,
          error: r.error,
          attempts: r.attempts,
        }))
      },
      cleanup: async () => {
        for (const suffix of ['', '_dlq', '_tombstones', '_partitions']) {
          await server.query(`drop table if exists ${table}${suffix}`)
        }
      },
    })
  }
}

describe('postgres sinks', () => {
  sinkConformance('postgres mode=state', factory('state'), { effectivelyOnce: true })
  sinkConformance('postgres mode=events', factory('events'), { effectivelyOnce: true })
})
