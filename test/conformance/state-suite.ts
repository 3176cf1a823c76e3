/**
 * The StateBackend conformance suite. Memory, file and Redis (standalone and cluster) run all of
 * it; the only difference between runs is the fixture. Each test opens its own backend with its
 * own key prefix and closes it when the test ends.
 */
import { randomBytes } from 'node:crypto'
import { describe, expect, it, onTestFinished } from 'vitest'
import { ErrorCodes, ShoalError } from '../../src/errors.ts'
import {
  FencedError,
  partitionKey,
  partitionKeyPrefix,
  scanAll,
  updateValue,
  type StateBackend,
} from '../../src/state/backend.ts'

export interface StateFixture {
  name: string
  /** Open a backend over the shared store with this key prefix. */
  open(prefix: string): Promise<StateBackend>
  /** Whether two backends may have the same prefix open at once (not the file backend: one process, one owner). */
  concurrentOpen: boolean
}

const buf = (s: string): Buffer => Buffer.from(s, 'utf8')
const text = (b: Buffer | undefined): string | undefined => b?.toString('utf8')
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))
const sleepUntil = (t: number): Promise<void> => sleep(Math.max(0, t - Date.now()))

let seq = 0
export function uniquePrefix(tag = 't'): string {
  return `${tag}${++seq}-${randomBytes(3).toString('hex')}`
}

async function expectCode(p: Promise<unknown>, code: string): Promise<ShoalError> {
  const err: unknown = await p.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(err, `expected a rejection with ${code}`).toBeInstanceOf(ShoalError)
  expect((err as ShoalError).code).toBe(code)
  return err as ShoalError
}

export function stateConformance(fixture: StateFixture): void {
  async function open(prefix = uniquePrefix()): Promise<StateBackend> {
    const b = await fixture.open(prefix)
    onTestFinished(() => b.close())
    return b
  }

  describe(`StateBackend conformance: ${fixture.name}`, () => {
    describe('get / put / delete', () => {
      it('round-trips bytes, including every byte value and the empty value', async () => {
        const s = await open()
        expect(await s.get('missing')).toBeUndefined()
        const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i))
        await s.put('bin', all)
        await s.put('empty', new Uint8Array(0))
        const got = await s.get('bin')
        expect(Buffer.isBuffer(got)).toBe(true)
        expect(got?.equals(all)).toBe(true)
        expect((await s.get('empty'))?.length).toBe(0)
        await s.put('bin', buf('v2'))
        expect(text(await s.get('bin'))).toBe('v2')
      })

      it('copies what it stores: later changes to the caller buffer do not leak in', async () => {
        const s = await open()
        const backing = new Uint8Array([9, 1, 2, 3, 9])
        const view = backing.subarray(1, 4)
        await s.put('k', view)
        view[0] = 77
        expect([...(await s.get('k'))!]).toEqual([1, 2, 3])
        const read = (await s.get('k'))!
        read[0] = 55
        expect([...(await s.get('k'))!]).toEqual([1, 2, 3])
      })

      it('handles unicode keys and partition keys', async () => {
        const s = await open()
        const keys = [
          'ключ',
          'emoji-😀',
          'with space',
          'a:b:c',
          partitionKey(0, 'x'),
          partitionKey(255, 'ключ'),
        ]
        for (const k of keys) await s.put(k, buf(k))
        for (const k of keys) expect(text(await s.get(k))).toBe(k)
      })

      it('delete reports whether the key existed', async () => {
        const s = await open()
        await s.put('k', buf('v'))
        expect(await s.delete('k')).toBe(true)
        expect(await s.delete('k')).toBe(false)
        expect(await s.get('k')).toBeUndefined()
      })

      it('rejects bad keys and values with clear codes', async () => {
        const s = await open()
        await expectCode(s.get(''), ErrorCodes.STATE_BAD_KEY)
        await expectCode(s.put('{p01}:x', buf('v')), ErrorCodes.STATE_BAD_KEY)
        await expectCode(s.put('{p70000}:x', buf('v')), ErrorCodes.STATE_BAD_KEY)
        expect(() => partitionKey(-1, 'x')).toThrow(/partition must be an integer/)
        await expectCode(s.put('k', 'text' as unknown as Uint8Array), ErrorCodes.INVALID_OPTION)
      })
    })

    describe('TTL', () => {
      it('expires keys after a sub-second TTL, in get, getMany and scan', async () => {
        const s = await open()
        const t0 = Date.now()
        await s.put('short', buf('v'), { ttlMs: 200 })
        await s.put('long', buf('v'), { ttlMs: 60_000 })
        await s.put('forever', buf('v'))
        const early = text(await s.get('short'))
        if (Date.now() - t0 < 150) expect(early).toBe('v') // (unless the machine stalled)
        await sleepUntil(t0 + 320)
        expect(await s.get('short')).toBeUndefined()
        expect((await s.getMany(['short', 'long'])).map(text)).toEqual([undefined, 'v'])
        expect(await scanAll(s, '')).toEqual(['forever', 'long'])
      })

      it('a put without TTL clears an earlier TTL', async () => {
        const s = await open()
        await s.put('k', buf('a'), { ttlMs: 100 })
        await s.put('k', buf('b'))
        await sleep(200)
        expect(text(await s.get('k'))).toBe('b')
      })

      it('validates ttlMs', async () => {
        const s = await open()
        for (const ttlMs of [0, -5, 1.5, Number.NaN]) {
          await expectCode(s.put('k', buf('v'), { ttlMs }), ErrorCodes.INVALID_OPTION)
        }
        expect(await s.get('k')).toBeUndefined()
      })
    })

    describe('compare-and-set', () => {
      it('sets only when absent (expected null) or equal, and deletes with next null', async () => {
        const s = await open()
        expect(await s.compareAndSet('k', null, buf('a'))).toBe(true)
        expect(await s.compareAndSet('k', null, buf('b'))).toBe(false)
        expect(await s.compareAndSet('k', buf('x'), buf('b'))).toBe(false)
        expect(text(await s.get('k'))).toBe('a')
        expect(await s.compareAndSet('k', buf('a'), buf('b'))).toBe(true)
        expect(text(await s.get('k'))).toBe('b')
        expect(await s.compareAndSet('k', buf('b'), null)).toBe(true)
        expect(await s.get('k')).toBeUndefined()
        expect(await s.compareAndSet('k', buf('b'), buf('c'))).toBe(false)
        expect(await s.get('k')).toBeUndefined()
      })

      it('compares bytes exactly and honours a TTL', async () => {
        const s = await open()
        await s.put('k', Buffer.from([0, 1, 2]))
        expect(await s.compareAndSet('k', Buffer.from([0, 1]), buf('x'))).toBe(false)
        expect(await s.compareAndSet('k', new Uint8Array([0, 1, 2]), buf('x'), { ttlMs: 100 })).toBe(true)
        await sleep(200)
        expect(await s.get('k')).toBeUndefined()
      })

      it('serializes concurrent read-modify-write (updateValue)', async () => {
        const s = await open()
        const n = 20
        await Promise.all(
          Array.from({ length: n }, () =>
            updateValue(s, 'doc', (cur) => buf(String(Number(text(cur) ?? '0') + 1)), { maxAttempts: 200 }),
          ),
        )
        expect(text(await s.get('doc'))).toBe(String(n))
      })
    })

    describe('counters', () => {
      it('incrBy starts at 0, returns the new value and reads back as ASCII digits', async () => {
        const s = await open()
        expect(await s.incrBy('c')).toBe(1)
        expect(await s.incrBy('c', 41)).toBe(42)
        expect(await s.incrBy('c', -50)).toBe(-8)
        expect(text(await s.get('c'))).toBe('-8')
        await s.put('c2', buf('100'))
        expect(await s.incrBy('c2', 5)).toBe(105)
      })

      it('incrBy is atomic under concurrency', async () => {
        const s = await open()
        const results = await Promise.all(Array.from({ length: 100 }, () => s.incrBy(partitionKey(3, 'n'))))
        expect(new Set(results).size).toBe(100)
        expect(Math.max(...results)).toBe(100)
      })

      it('incrBy keeps an existing TTL', async () => {
        const s = await open()
        const t0 = Date.now()
        await s.put('c', buf('1'), { ttlMs: 200 })
        const n = await s.incrBy('c')
        if (Date.now() - t0 < 150) expect(n).toBe(2)
        await sleepUntil(t0 + 320)
        expect(await s.get('c')).toBeUndefined()
      })

      it('incrBy on a non-integer value fails with STATE_WRONG_TYPE and changes nothing', async () => {
        const s = await open()
        await s.put('x', buf('abc'))
        await expectCode(s.incrBy('x'), ErrorCodes.STATE_WRONG_TYPE)
        await s.put('y', buf('1.5'))
        await expectCode(s.incrBy('y'), ErrorCodes.STATE_WRONG_TYPE)
        expect(text(await s.get('x'))).toBe('abc')
        await expectCode(s.incrBy('z', 0.5), ErrorCodes.INVALID_OPTION)
      })

      it('hIncrBy keeps integer fields of a hash; hGetAll reads them', async () => {
        const s = await open()
        const k = partitionKey(7, 'user-1')
        expect(await s.hGetAll(k)).toEqual({})
        expect(await s.hIncrBy(k, 'count')).toBe(1)
        expect(await s.hIncrBy(k, 'count')).toBe(2)
        expect(await s.hIncrBy(k, 'sum', 40)).toBe(40)
        expect(await s.hIncrBy(k, 'sum', -2)).toBe(38)
        expect({ ...(await s.hGetAll(k)) }).toEqual({ count: 2, sum: 38 })
        const parallel = await Promise.all(Array.from({ length: 50 }, () => s.hIncrBy(k, 'p', 2)))
        expect(Math.max(...parallel)).toBe(100)
      })

      it('mixing bytes and hash operations fails with STATE_WRONG_TYPE; put and delete replace', async () => {
        const s = await open()
        await s.hIncrBy('h', 'f')
        await expectCode(s.get('h'), ErrorCodes.STATE_WRONG_TYPE)
        await expectCode(s.getMany(['nope', 'h']), ErrorCodes.STATE_WRONG_TYPE)
        await expectCode(s.incrBy('h'), ErrorCodes.STATE_WRONG_TYPE)
        await expectCode(s.compareAndSet('h', null, buf('x')), ErrorCodes.STATE_WRONG_TYPE)
        await s.put('b', buf('v'))
        await expectCode(s.hIncrBy('b', 'f'), ErrorCodes.STATE_WRONG_TYPE)
        await expectCode(s.hGetAll('b'), ErrorCodes.STATE_WRONG_TYPE)
        await s.put('h', buf('now bytes'))
        expect(text(await s.get('h'))).toBe('now bytes')
        await s.hIncrBy('h2', 'f')
        expect(await s.delete('h2')).toBe(true)
        expect(await s.hGetAll('h2')).toEqual({})
      })
    })

    describe('scan', () => {
      async function seed(s: StateBackend): Promise<string[]> {
        const keys = [
          'user:1',
          'user:2',
          'user:10',
          'order:1',
          'a*b',
          'a*c',
          'ab',
          'x[1]',
          'x1',
          partitionKey(3, 'user:1'),
          partitionKey(3, 'user:2'),
          partitionKey(30, 'user:1'),
          partitionKey(4, 'z'),
        ]
        for (const k of keys) await s.put(k, buf(k))
        await s.hIncrBy('hash:1', 'f')
        await s.fencedWrite(3, 1, {})
        return [...keys, 'hash:1'].sort()
      }

      it('lists every key for the empty prefix, without internal records', async () => {
        const s = await open()
        const all = await seed(s)
        expect(await scanAll(s, '')).toEqual(all)
      })

      it('filters by prefix, treating glob characters literally', async () => {
        const s = await open()
        await seed(s)
        expect(await scanAll(s, 'user:')).toEqual(['user:1', 'user:10', 'user:2'])
        expect(await scanAll(s, 'user:1')).toEqual(['user:1', 'user:10'])
        expect(await scanAll(s, 'a*')).toEqual(['a*b', 'a*c'])
        expect(await scanAll(s, 'x[')).toEqual(['x[1]'])
        expect(await scanAll(s, 'nothing')).toEqual([])
      })

      it('scopes to one partition with partitionKeyPrefix, and to partition prefixes', async () => {
        const s = await open()
        await seed(s)
        expect(await scanAll(s, partitionKeyPrefix(3))).toEqual([
          partitionKey(3, 'user:1'),
          partitionKey(3, 'user:2'),
        ])
        expect(await scanAll(s, partitionKey(3, 'user:1'))).toEqual([partitionKey(3, 'user:1')])
        expect(await scanAll(s, '{p3')).toEqual(
          [partitionKey(3, 'user:1'), partitionKey(3, 'user:2'), partitionKey(30, 'user:1')].sort(),
        )
        expect(await scanAll(s, '{')).toHaveLength(4)
      })

      it('yields batches, each key once, across a larger key space', async () => {
        const s = await open()
        const n = 600
        for (let i = 0; i < n; i += 100) {
          await Promise.all(
            Array.from({ length: 100 }, (_, j) => s.put(partitionKey((i + j) % 16, `k${i + j}`), buf('v'))),
          )
        }
        const batches: string[][] = []
        for await (const batch of s.scan('', { count: 50 })) batches.push(batch)
        const keys = batches.flat()
        expect(batches.length).toBeGreaterThan(1)
        expect(batches.every((b) => b.length > 0)).toBe(true)
        expect(keys).toHaveLength(n)
        expect(new Set(keys).size).toBe(n)
      })

      it('keeps prefixes apart', async () => {
        const a = await open()
        const b = await open()
        await a.put('shared-name', buf('a'))
        await a.put(partitionKey(1, 'k'), buf('a'))
        await b.put('shared-name', buf('b'))
        expect(text(await a.get('shared-name'))).toBe('a')
        expect(text(await b.get('shared-name'))).toBe('b')
        expect(await scanAll(b, '')).toEqual(['shared-name'])
        expect(await b.get(partitionKey(1, 'k'))).toBeUndefined()
      })
    })

    describe('batches', () => {
      it('getMany reads keys of many partitions in order', async () => {
        const s = await open()
        const keys = Array.from({ length: 300 }, (_, i) =>
          i % 3 === 0 ? `g${i}` : partitionKey(i % 17, `k${i}`),
        )
        await Promise.all(keys.map((k, i) => (i % 5 === 0 ? Promise.resolve() : s.put(k, buf(k)))))
        const values = await s.getMany(keys)
        expect(values.map(text)).toEqual(keys.map((k, i) => (i % 5 === 0 ? undefined : k)))
        expect(await s.getMany([])).toEqual([])
      })

      it('writeBatch applies puts and deletes of one partition together', async () => {
        const s = await open()
        const k = (n: string): string => partitionKey(9, n)
        await s.put(k('old'), buf('x'))
        const t0 = Date.now()
        await s.writeBatch(9, {
          puts: [
            { key: k('a'), value: buf('1') },
            { key: k('b'), value: buf('2'), ttlMs: 200 },
          ],
          deletes: [k('old'), k('never-existed')],
        })
        const values = (await s.getMany([k('a'), k('b'), k('old')])).map(text)
        if (Date.now() - t0 < 150) expect(values).toEqual(['1', '2', undefined])
        await sleepUntil(t0 + 320)
        expect(await s.get(k('b'))).toBeUndefined()
        await s.writeBatch(9, {})
        expect(await scanAll(s, partitionKeyPrefix(9))).toEqual([k('a')])
      })

      it('writeBatch rejects keys of other partitions, global keys and duplicates, writing nothing', async () => {
        const s = await open()
        const bad = [
          {
            puts: [
              { key: partitionKey(1, 'a'), value: buf('1') },
              { key: partitionKey(2, 'b'), value: buf('2') },
            ],
          },
          { puts: [{ key: partitionKey(1, 'a'), value: buf('1') }], deletes: ['global'] },
          { puts: [{ key: partitionKey(1, 'a'), value: buf('1') }], deletes: [partitionKey(1, 'a')] },
        ]
        for (const batch of bad) await expectCode(s.writeBatch(1, batch), ErrorCodes.STATE_BAD_KEY)
        expect(await s.get(partitionKey(1, 'a'))).toBeUndefined()
        await expectCode(s.writeBatch(-1, {}), ErrorCodes.STATE_BAD_KEY)
      })
    })

    describe('fencing', () => {
      it('records the epoch and rejects older epochs with FENCED, writing nothing', async () => {
        const s = await open()
        const k = partitionKey(5, 'v')
        expect(await s.getEpoch(5)).toBeUndefined()
        await s.fencedWrite(5, 1, { puts: [{ key: k, value: buf('e1') }] })
        expect(await s.getEpoch(5)).toBe(1)
        await s.fencedWrite(5, 1, { puts: [{ key: k, value: buf('e1b') }] })
        await s.fencedWrite(5, 3, { puts: [{ key: k, value: buf('e3') }] })
        const err = await expectCode(
          s.fencedWrite(5, 2, { puts: [{ key: k, value: buf('e2') }], deletes: [partitionKey(5, 'other')] }),
          ErrorCodes.FENCED,
        )
        expect(err).toBeInstanceOf(FencedError)
        expect(err.retryable).toBe(false)
        expect(err.data).toMatchObject({ partition: 5, epoch: 2, storedEpoch: 3 })
        expect(text(await s.get(k))).toBe('e3')
        expect(await s.getEpoch(5)).toBe(3)
        expect(await s.getEpoch(6)).toBeUndefined()
      })

      it('fences each partition separately; an empty batch claims the epoch', async () => {
        const s = await open()
        await s.fencedWrite(1, 10, {})
        expect(await s.getEpoch(1)).toBe(10)
        await s.fencedWrite(2, 1, { puts: [{ key: partitionKey(2, 'a'), value: buf('x') }] })
        await expectCode(s.fencedWrite(1, 9, {}), ErrorCodes.FENCED)
        await expectCode(s.fencedWrite(1, -1, {}), ErrorCodes.INVALID_OPTION)
        await expectCode(
          s.fencedWrite(1, 11, { puts: [{ key: partitionKey(2, 'a'), value: buf('y') }] }),
          ErrorCodes.STATE_BAD_KEY,
        )
        expect(await s.getEpoch(1)).toBe(10)
      })

      it('is atomic under racing owners: the highest epoch wins and nothing older lands after it', async () => {
        const s = await open()
        const k = partitionKey(8, 'owner')
        const epochs = Array.from({ length: 30 }, (_, i) => i + 1).sort(() => Math.random() - 0.5)
        const results = await Promise.allSettled(
          epochs.map((e) =>
            s.fencedWrite(8, e, {
              puts: [
                { key: k, value: buf(String(e)) },
                { key: partitionKey(8, `w${e}`), value: buf('1') },
              ],
            }),
          ),
        )
        for (const r of results) {
          if (r.status === 'rejected') expect((r.reason as ShoalError).code).toBe(ErrorCodes.FENCED)
        }
        expect(await s.getEpoch(8)).toBe(30)
        expect(text(await s.get(k))).toBe('30')
        // Every write that succeeded wrote both of its keys; no fenced write left a trace.
        const written = await scanAll(s, partitionKey(8, 'w'))
        const ok = epochs
          .filter((_, i) => results[i]!.status === 'fulfilled')
          .map((e) => partitionKey(8, `w${e}`))
        expect(written).toEqual(ok.sort())
      })

      it('a second backend on the same store sees the epoch (fencing is in the store)', async () => {
        const prefix = uniquePrefix('fence')
        const a = await open(prefix)
        await a.fencedWrite(4, 7, { puts: [{ key: partitionKey(4, 'k'), value: buf('new owner') }] })
        if (!fixture.concurrentOpen) return
        // The old owner comes back with an older epoch, through its own backend.
        const b = await open(prefix)
        await expectCode(b.fencedWrite(4, 6, { deletes: [partitionKey(4, 'k')] }), ErrorCodes.FENCED)
        expect(text(await b.get(partitionKey(4, 'k')))).toBe('new owner')
      })
    })

    describe('lifecycle', () => {
      it('is healthy while open; after close, health is false and operations reject with CLOSED', async () => {
        const s = await open()
        expect(await s.health()).toBe(true)
        await s.close()
        await s.close()
        expect(await s.health()).toBe(false)
        await expectCode(s.get('k'), ErrorCodes.CLOSED)
        await expectCode(s.put('k', buf('v')), ErrorCodes.CLOSED)
        await expectCode(scanAll(s, ''), ErrorCodes.CLOSED)
      })
    })
  })
}
