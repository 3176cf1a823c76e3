/**
 * IngestThreads, the POST /events thread's main-thread side, with a stand-in thread
 * (test/helpers/echo-ingest-thread.mjs): what a request carries there, round-robin over
 * threads, a crashed thread's requests answered 503 and the thread started again under a new
 * producer id, bodies moved rather than copied when they own their memory, close(). The real
 * thread is exercised end to end by test/integration/http-ingest.test.ts (a spawned
 * coordinator) and test/e2e/job-files.test.ts (the built CLI).
 */
import { describe, expect, it } from 'vitest'
import { ErrorCodes } from '../../../src/errors.ts'
import { IngestThreads } from '../../../src/ingest/ingest-threads.ts'
import type { RoutingFields } from '../../../src/protocol/control.ts'

const THREAD = new URL('../../helpers/echo-ingest-thread.mjs', import.meta.url)

function threads(n: number, ready = true): { t: IngestThreads; logs: { level: string; msg?: string }[] } {
  const logs: { level: string; msg?: string }[] = []
  const t = new IngestThreads({
    coordinator: '127.0.0.1:1',
    transport: 'tcp',
    transportOptions: { nodeId: 'test-ingest', role: 'client' },
    routing: () => ({ epoch: 1, partitions: 16, routes: [] }) as unknown as RoutingFields,
    ready: () => ready,
    producerId: 'http-ingest:test',
    threads: n,
    threadFile: THREAD,
    logger: {
      warn: (_obj, msg) => logs.push({ level: 'warn', msg }),
      error: (_obj, msg) => logs.push({ level: 'error', msg }),
    },
  })
  return { t, logs }
}

const signal = (): AbortSignal => new AbortController().signal

describe('IngestThreads', () => {
  it('hands the body, key field, readiness and routing to a thread and relays its answer and logs', async () => {
    const { t, logs } = threads(1, false)
    try {
      const r = await t.handle(Buffer.from('{"user":"a"}'), 'user', signal())
      expect(r).toEqual({
        status: 200,
        body: {
          text: '{"user":"a"}',
          producerId: 'http-ingest:test.t0',
          keyField: 'user',
          ready: false,
          partitions: 16,
        },
      })
      expect(logs).toContainEqual({ level: 'warn', msg: 'echo' })
    } finally {
      await t.close()
    }
  })

  it('goes round-robin; a crashed thread answers 503 (retryable) and starts again with a new producer id', async () => {
    const { t, logs } = threads(2)
    try {
      const producer = async (text: string): Promise<unknown> =>
        ((await t.handle(Buffer.from(text), 'key', signal())).body as { producerId: string }).producerId
      expect(await producer('a')).toBe('http-ingest:test.t0')
      expect(await producer('b')).toBe('http-ingest:test.t1')
      const crashed = await t.handle(Buffer.from('crash'), 'key', signal())
      expect(crashed).toMatchObject({
        status: 503,
        headers: { 'retry-after': '1' },
        body: { error: { code: ErrorCodes.INTERNAL, retryable: true } },
      })
      expect(logs.some((l) => l.level === 'error')).toBe(true)
      expect(await producer('c')).toBe('http-ingest:test.t1')
      expect(await producer('d')).toBe('http-ingest:test.t2')
      expect(t.starts).toBe(3)
    } finally {
      await t.close()
    }
  })

  it('moves a body that owns its memory to the thread and copies a slice of a shared one', async () => {
    const { t } = threads(1)
    try {
      const own = Buffer.from(new ArrayBuffer(5))
      own.write('owned')
      expect((await t.handle(own, 'key', signal())).body).toMatchObject({ text: 'owned' })
      expect(own.byteLength).toBe(0) // detached: moved
      const shared = Buffer.from('xxsharedxx')
      const slice = shared.subarray(2, 8)
      expect((await t.handle(slice, 'key', signal())).body).toMatchObject({ text: 'shared' })
      expect(shared.toString()).toBe('xxsharedxx')
    } finally {
      await t.close()
    }
  })

  it('after close(), answers 503 without starting a thread', async () => {
    const { t } = threads(1)
    await t.close()
    const r = await t.handle(Buffer.from('a'), 'key', signal())
    expect(r).toMatchObject({ status: 503, body: { error: { code: ErrorCodes.CLOSED, retryable: true } } })
    expect(t.starts).toBe(0)
  })
})
