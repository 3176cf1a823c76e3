/**
 * The Source conformance suite (src/connectors/source.ts), run against every source.
 *
 * Usage, in a `*.test.ts` file:
 *
 * ```ts
 * sourceConformance('redis stream', async () => ({ create, append, readDeadLetters, cleanup }))
 * ```
 *
 * The factory is called once per test and returns, for a fresh empty stream (or topic):
 * - `create(consumer)`: a new, NOT yet opened reader of it with that consumer name (two
 *   readers with one name model a restart of that reader);
 * - `append(events)`: add events (objects with a string `key`) to the stream, in order;
 * - `appendUndecodable()`: add one entry the source cannot turn into an event (no key, bad data);
 * - `readDeadLetters()`: the source's dead letters, in order, with each one's reason;
 * - `takeoverMs`: how long a survivor may take to notice a dead reader's pending records;
 * - `cleanup()`: drop the stream (after every reader is closed, even when a test failed).
 */
import { describe, expect, it, onTestFinished } from 'vitest'
import { ErrorCodes } from '../../src/errors.ts'
import type { Source, SourceRecord } from '../../src/connectors/source.ts'

export interface SourceUnderTest {
  create(consumer: string): Source
  append(events: readonly { key: string; n: number }[]): Promise<void>
  appendUndecodable(): Promise<void>
  readDeadLetters(): Promise<{ reason: string }[]>
  takeoverMs: number
  cleanup(): Promise<void>
}

interface Ev {
  key: string
  n: number
}

function events(from: number, count: number): Ev[] {
  return Array.from({ length: count }, (_, i) => ({ key: `k${(from + i) % 7}`, n: from + i }))
}

const ns = (records: readonly SourceRecord[]): number[] => records.map((r) => (r.event as Ev).n)

export function sourceConformance(name: string, factory: () => Promise<SourceUnderTest>): void {
  describe(`Source conformance: ${name}`, () => {
    async function setup(): Promise<SourceUnderTest & { open(consumer: string): Promise<Source> }> {
      const t = await factory()
      const opened: Source[] = []
      onTestFinished(async () => {
        for (const s of opened) await s.close()
        await t.cleanup()
      })
      return {
        ...t,
        async open(consumer) {
          const s = t.create(consumer)
          opened.push(s)
          await s.open()
          return s
        },
      }
    }

    /** Read until `n` records arrived (or a read comes back empty), at most `max` per read. */
    async function readN(s: Source, n: number, max = 1000): Promise<SourceRecord[]> {
      const out: SourceRecord[] = []
      while (out.length < n) {
        const r = await s.read(max, 50)
        if (r.records.length === 0) break
        expect(r.records.length).toBeLessThanOrEqual(max)
        out.push(...r.records)
      }
      return out
    }

    it('reads events in order with their keys, at most `max` per read; an empty read after blocking', async () => {
      const t = await setup()
      const s = await t.open('a')
      expect((await s.read(10, 20)).records).toEqual([])
      await t.append(events(0, 25))
      const first = await s.read(10, 50)
      expect(first.records).toHaveLength(10)
      expect(first.redelivery).toBe(false)
      const rest = await readN(s, 15)
      const all = [...first.records, ...rest]
      expect(ns(all)).toEqual(events(0, 25).map((e) => e.n))
      expect(all.map((r) => r.key)).toEqual(events(0, 25).map((e) => e.key))
      expect((await s.read(10, 20)).records).toEqual([])
      expect(s.status()).toMatchObject({ read: 25, acked: 0, state: 'reading' })
    })

    it('a large read returns every record up to `max`, in order (a source may split it into several commands)', async () => {
      const t = await setup()
      const s = await t.open('a')
      await t.append(events(0, 25_000))
      const r = await s.read(24_000, 50)
      expect(r.records).toHaveLength(24_000)
      expect(ns(r.records)).toEqual(events(0, 24_000).map((e) => e.n))
      const rest = await s.read(24_000, 50)
      expect(ns(rest.records)).toEqual(events(24_000, 1000).map((e) => e.n))
    })

    it('gives every record an identity whose sequence increases per producer', async () => {
      const t = await setup()
      const a = await t.open('a')
      const b = await t.open('b')
      await t.append(events(0, 40))
      const got = [
        ...(await a.read(15, 50)).records,
        ...(await b.read(15, 50)).records,
        ...(await readN(a, 10)),
      ]
      expect(got).toHaveLength(40)
      const last = new Map<string, number>()
      for (const r of got) {
        expect(r.producerId.length).toBeGreaterThan(0)
        expect(Number.isSafeInteger(r.sequence)).toBe(true)
        expect(r.sequence).toBeGreaterThan(last.get(r.producerId) ?? -Infinity)
        last.set(r.producerId, r.sequence)
      }
      // Two readers at once never share a producer: each sends its own in order.
      expect(new Set(got.map((r) => r.producerId)).size).toBeGreaterThanOrEqual(2)
      expect(new Set(got.map((r) => r.ack)).size).toBe(40)
    })

    it('a reader restarted under its name re-delivers its unacknowledged records first, with the same identities', async () => {
      const t = await setup()
      const a1 = await t.open('a')
      await t.append(events(0, 20))
      const read = await readN(a1, 20)
      expect(read).toHaveLength(20)
      await a1.ack(read.slice(0, 8).map((r) => r.ack))
      expect(a1.status().acked).toBe(8)
      await a1.close() // a crash as far as the stream can tell: 12 records pending
      await t.append(events(20, 5))
      const a2 = await t.open('a')
      const again = await a2.read(100, 50)
      expect(again.redelivery).toBe(true)
      expect(ns(again.records)).toEqual(ns(read.slice(8)))
      expect(again.records.map((r) => [r.producerId, r.sequence])).toEqual(
        read.slice(8).map((r) => [r.producerId, r.sequence]),
      )
      await a2.ack(again.records.map((r) => r.ack))
      const fresh = await readN(a2, 5)
      expect(ns(fresh)).toEqual([20, 21, 22, 23, 24])
      // A new run is a new producer (its sequences may start below the old run's last one).
      expect(fresh[0]!.producerId).not.toBe(read[0]!.producerId)
      await a2.ack(fresh.map((r) => r.ack))
      await a2.close()
      const a3 = await t.open('a')
      expect((await a3.read(100, 50)).records).toEqual([])
    })

    it("a survivor re-delivers a dead reader's unacknowledged records once, with the same identities", async () => {
      const t = await setup()
      const a = await t.open('a')
      const b = await t.open('b')
      b.setLiveReaders(['a', 'b'])
      await t.append(events(0, 30))
      const ofA = await readN(a, 30)
      await a.ack(ofA.slice(0, 10).map((r) => r.ack))
      await a.close()
      // While 'a' is live nothing of it is taken over.
      expect((await b.read(100, 50)).records).toEqual([])
      b.setLiveReaders(['b'])
      const deadline = Date.now() + t.takeoverMs + 5000
      const taken: SourceRecord[] = []
      while (taken.length < 20 && Date.now() < deadline) {
        const r = await b.read(100, 50)
        if (r.records.length > 0) expect(r.redelivery).toBe(true)
        taken.push(...r.records)
      }
      expect(ns(taken)).toEqual(ns(ofA.slice(10)))
      expect(taken.map((r) => [r.producerId, r.sequence])).toEqual(
        ofA.slice(10).map((r) => [r.producerId, r.sequence]),
      )
      expect(b.status().redelivered).toBe(20)
      await b.ack(taken.map((r) => r.ack))
      // Nothing is handed out twice, and once acknowledged nothing is left for anyone.
      const later = Date.now() + Math.min(2000, t.takeoverMs + 500)
      while (Date.now() < later) expect((await b.read(100, 50)).records).toEqual([])
      const c = await t.open('c')
      c.setLiveReaders(['c'])
      expect((await c.read(100, 50)).records).toEqual([])
    })

    it("one survivor at a time re-delivers a dead reader's records, all of them in order from the oldest unacknowledged", async () => {
      // The owner keeps one high-water sequence per producer: a survivor that sent only a later
      // part of a dead reader's records could have it applied before another survivor's earlier
      // part, which would then be dropped as a duplicate.
      const t = await setup()
      const a = await t.open('a')
      await t.append(events(0, 30))
      const ofA = await readN(a, 30)
      await a.close() // 30 pending
      const b = await t.open('b')
      const c = await t.open('c')
      b.setLiveReaders(['b'])
      const deadline = Date.now() + t.takeoverMs + 5000
      let first: readonly SourceRecord[] = []
      while (first.length === 0 && Date.now() < deadline) first = (await b.read(10, 50)).records
      expect(ns(first)).toEqual(ns(ofA.slice(0, 10)))
      // b holds the claim: c, which also sees 'a' dead, takes nothing of it.
      c.setLiveReaders(['c'])
      const quiet = Date.now() + t.takeoverMs + 300
      while (Date.now() < quiet) expect((await c.read(100, 50)).records).toEqual([])
      // b stops with its 10 unacknowledged: c re-delivers all 30, from the oldest, in order.
      await b.close()
      const taken: SourceRecord[] = []
      const until = Date.now() + t.takeoverMs + 5000
      while (taken.length < 30 && Date.now() < until) taken.push(...(await c.read(100, 50)).records)
      expect(ns(taken)).toEqual(ns(ofA))
      expect(taken.map((r) => [r.producerId, r.sequence])).toEqual(ofA.map((r) => [r.producerId, r.sequence]))
      await c.ack(taken.map((r) => r.ack))
      const d = await t.open('d')
      d.setLiveReaders(['d'])
      const later = Date.now() + t.takeoverMs + 300
      while (Date.now() < later) expect((await d.read(100, 50)).records).toEqual([])
    })

    it('takes nothing over before it has been told who is alive', async () => {
      const t = await setup()
      const a = await t.open('a')
      await t.append(events(0, 5))
      expect(await readN(a, 5)).toHaveLength(5)
      await a.close()
      const b = await t.open('b')
      const until = Date.now() + t.takeoverMs + 300
      while (Date.now() < until) expect((await b.read(100, 50)).records).toEqual([])
    })

    it('dead-letters records with the reason and acknowledges them', async () => {
      const t = await setup()
      const a = await t.open('a')
      await t.append(events(0, 3))
      const got = await readN(a, 3)
      await a.deadLetter(got.slice(1, 2), 'the job refused it')
      const dl = await t.readDeadLetters()
      expect(dl).toHaveLength(1)
      expect(dl[0]!.reason).toBe('the job refused it')
      expect(a.status().deadLettered).toBe(1)
      await a.close()
      const again = await t.open('a')
      expect(ns((await again.read(100, 50)).records)).toEqual([0, 2])
    })

    it('never hands out an entry it cannot decode: it is dead-lettered with why', async () => {
      const t = await setup()
      const a = await t.open('a')
      await t.append(events(0, 2))
      await t.appendUndecodable()
      await t.append(events(2, 2))
      const got = await readN(a, 4)
      expect(ns(got)).toEqual([0, 1, 2, 3])
      const dl = await t.readDeadLetters()
      expect(dl).toHaveLength(1)
      expect(dl[0]!.reason.length).toBeGreaterThan(0)
      expect(a.status().deadLettered).toBe(1)
      await a.ack(got.map((r) => r.ack))
      await a.close()
      const again = await t.open('a')
      expect((await again.read(100, 50)).records).toEqual([])
    })

    it('a closed reader refuses to read (CLOSED)', async () => {
      const t = await setup()
      const a = await t.open('a')
      await a.close()
      await expect(a.read(10, 10)).rejects.toMatchObject({ code: ErrorCodes.CLOSED })
      expect(a.status().state).toBe('closed')
    })
  })
}
