/**
 * The Sink conformance suite (src/connectors/sink.ts), run against every sink.
 *
 * Usage, in a `*.test.ts` file:
 *
 * ```ts
 * sinkConformance('postgres events', async () => ({ sink, read, readDeadLetters, cleanup }), {
 *   effectivelyOnce: true,
 * })
 * ```
 *
 * The factory is called once per test and returns a fresh, NOT yet opened sink on an empty
 * target (its own table, stream or file), plus:
 * - `read()`: what the target holds now. `events`: emitted records in the target's order, each
 *   with its identity (`offset` null when the record had none); `state`: one entry per stored key.
 *   A sink that does not take events (or state) returns an empty list (or map).
 * - `readDeadLetters()`: the dead letters stored, in order.
 * - `cleanup()`: drop the target (called after close, even when a test failed).
 *
 * Which groups run follows `sink.accepts`; `effectivelyOnce` says whether the sink stores each
 * record with an identity once however often its batch is written (false: at least once).
 */
import { describe, expect, it, onTestFinished } from 'vitest'
import type { EmittedBatch, EmittedRecord, Sink, StateBatch } from '../../src/connectors/sink.ts'

export interface SinkReadEvent {
  partition: number
  offset: number | null
  index: number
  stream: string
  key: string
  event: unknown
}

export interface SinkReadDeadLetter extends SinkReadEvent {
  error: string
  attempts: number
}

export interface SinkUnderTest {
  sink: Sink
  read(): Promise<{ events: SinkReadEvent[]; state: Map<string, { state: unknown; version: number }> }>
  readDeadLetters(): Promise<SinkReadDeadLetter[]>
  cleanup(): Promise<void>
}

export interface SinkCapabilities {
  /** Records with an identity are stored once across replays. */
  effectivelyOnce: boolean
}

const rec = (key: string, n: number, stream = 'out'): EmittedRecord => [stream, key, { n, key }]

function batch(
  partition: number,
  offset: number | null,
  records: EmittedRecord[],
  firstIndex = 0,
): EmittedBatch {
  return { partition, offset, firstIndex, records }
}

function stateBatch(
  partition: number,
  version: number,
  upserts: [string, unknown][],
  deletes: string[] = [],
  full = false,
): StateBatch {
  return { partition, version, upserts, deletes, full }
}

/** The identity and payload of read events, for comparisons. */
const ids = (events: SinkReadEvent[]): string[] =>
  events.map((e) => `${e.partition}:${e.offset}:${e.index}:${JSON.stringify(e.event)}`)

export function sinkConformance(
  name: string,
  factory: () => Promise<SinkUnderTest>,
  capabilities: SinkCapabilities,
): void {
  async function setup(): Promise<SinkUnderTest> {
    const t = await factory()
    onTestFinished(async () => {
      await t.sink.close().catch(() => {})
      await t.cleanup()
    })
    await t.sink.open()
    return t
  }

  describe(`Sink conformance: ${name}`, () => {
    it('has a name and says what it accepts', async () => {
      const t = await setup()
      expect(typeof t.sink.name).toBe('string')
      expect(t.sink.name.length).toBeGreaterThan(0)
      expect(t.sink.accepts.events || t.sink.accepts.state).toBe(true)
      if (t.sink.accepts.events) expect(typeof t.sink.writeEvents).toBe('function')
      if (t.sink.accepts.state) expect(typeof t.sink.writeState).toBe('function')
    })

    it('open is idempotent and close resolves', async () => {
      const t = await setup()
      await t.sink.open()
      await t.sink.open()
      if (t.sink.accepts.events) await t.sink.writeEvents!([batch(0, 1, [rec('a', 1)])])
      if (t.sink.accepts.state) await t.sink.writeState!([stateBatch(0, 1, [['a', 1]])])
      await expect(t.sink.close()).resolves.toBeUndefined()
      const { events, state } = await t.read()
      if (t.sink.accepts.events) expect(events).toHaveLength(1)
      if (t.sink.accepts.state) expect(state.get('a')).toEqual({ state: 1, version: 1 })
    })

    describe('emitted records', () => {
      it('writes records with their identity, in order per partition', async () => {
        const t = await setup()
        if (!t.sink.accepts.events) return
        await t.sink.writeEvents!([
          batch(0, 10, [rec('a', 1), rec('b', 2)]),
          batch(1, 3, [rec('c', 3, 'other')]),
          batch(0, 11, [rec('a', 4)]),
        ])
        await t.sink.writeEvents!([batch(1, 4, [rec('c', 5), rec('d', 6)]), batch(0, 12, [rec('b', 7)])])
        const { events } = await t.read()
        expect(events).toHaveLength(7)
        const p0 = events.filter((e) => e.partition === 0)
        const p1 = events.filter((e) => e.partition === 1)
        expect(p0.map((e) => [e.offset, e.index, e.key, e.event])).toEqual([
          [10, 0, 'a', { n: 1, key: 'a' }],
          [10, 1, 'b', { n: 2, key: 'b' }],
          [11, 0, 'a', { n: 4, key: 'a' }],
          [12, 0, 'b', { n: 7, key: 'b' }],
        ])
        expect(p1.map((e) => [e.offset, e.index, e.stream, e.key])).toEqual([
          [3, 0, 'other', 'c'],
          [4, 0, 'out', 'c'],
          [4, 1, 'out', 'd'],
        ])
      })

      it('keeps JSON values as they were emitted', async () => {
        const t = await setup()
        if (!t.sink.accepts.events) return
        const values: unknown[] = [
          null,
          0,
          -1.5,
          'text',
          true,
          [1, [2]],
          { nested: { deep: ['x'] } },
          'ünï €😀',
        ]
        await t.sink.writeEvents!([
          batch(
            2,
            1,
            values.map((v, i) => ['s', `k${i}`, v] as const),
          ),
        ])
        const { events } = await t.read()
        expect(events.map((e) => e.event)).toEqual(values)
        expect(events.map((e) => e.key)).toEqual(values.map((_, i) => `k${i}`))
      })

      it(
        capabilities.effectivelyOnce
          ? 'stores a replayed batch once (identity = partition, offset, index)'
          : 'stores a replayed batch at least once',
        async () => {
          const t = await setup()
          if (!t.sink.accepts.events) return
          const b = batch(0, 5, [rec('a', 1), rec('b', 2), rec('c', 3)])
          await t.sink.writeEvents!([b])
          await t.sink.writeEvents!([b])
          // A replay in one chunk together with new records.
          await t.sink.writeEvents!([b, batch(0, 6, [rec('d', 4)])])
          const { events } = await t.read()
          const unique = [...new Set(ids(events))]
          expect(unique).toEqual([
            '0:5:0:{"n":1,"key":"a"}',
            '0:5:1:{"n":2,"key":"b"}',
            '0:5:2:{"n":3,"key":"c"}',
            '0:6:0:{"n":4,"key":"d"}',
          ])
          if (capabilities.effectivelyOnce) expect(events).toHaveLength(4)
          else expect(events.length).toBeGreaterThanOrEqual(4)
        },
      )

      it('takes a batch split across writes (firstIndex), and a replay of the whole', async () => {
        const t = await setup()
        if (!t.sink.accepts.events) return
        const all = [rec('a', 0), rec('b', 1), rec('c', 2), rec('d', 3), rec('e', 4)]
        await t.sink.writeEvents!([batch(3, 7, all.slice(0, 2), 0)])
        await t.sink.writeEvents!([batch(3, 7, all.slice(2, 3), 2), batch(3, 7, all.slice(3), 3)])
        let { events } = await t.read()
        expect(events.map((e) => [e.offset, e.index, e.key])).toEqual([
          [7, 0, 'a'],
          [7, 1, 'b'],
          [7, 2, 'c'],
          [7, 3, 'd'],
          [7, 4, 'e'],
        ])
        // The worker replays the batch after a crash: the same identities again.
        await t.sink.writeEvents!([batch(3, 7, all, 0)])
        ;({ events } = await t.read())
        if (capabilities.effectivelyOnce) expect(events.map((e) => e.index)).toEqual([0, 1, 2, 3, 4])
        else expect(events.length).toBeGreaterThanOrEqual(5)
      })

      it('appends records without identity (offset null) every time', async () => {
        const t = await setup()
        if (!t.sink.accepts.events) return
        // Two different batches without a replay log: same partition and index, both kept.
        await t.sink.writeEvents!([batch(1, null, [rec('a', 1)])])
        await t.sink.writeEvents!([batch(1, null, [rec('a', 2)])])
        const { events } = await t.read()
        expect(events.map((e) => [e.offset, e.index, e.event])).toEqual([
          [null, 0, { n: 1, key: 'a' }],
          [null, 0, { n: 2, key: 'a' }],
        ])
      })

      it('stores dead letters with the record and the error', async () => {
        const t = await setup()
        await t.sink.deadLetter([
          {
            partition: 4,
            offset: 9,
            index: 2,
            record: ['out', 'k1', { big: 'x' }],
            error: 'SHOAL_ERR_SINK_REJECTED: too large',
            attempts: 8,
          },
          {
            partition: 5,
            offset: null,
            index: 0,
            record: ['s2', 'k2', [1, 2]],
            error: 'E: other',
            attempts: 3,
          },
        ])
        const letters = await t.readDeadLetters()
        expect(letters).toEqual([
          {
            partition: 4,
            offset: 9,
            index: 2,
            stream: 'out',
            key: 'k1',
            event: { big: 'x' },
            error: 'SHOAL_ERR_SINK_REJECTED: too large',
            attempts: 8,
          },
          {
            partition: 5,
            offset: null,
            index: 0,
            stream: 's2',
            key: 'k2',
            event: [1, 2],
            error: 'E: other',
            attempts: 3,
          },
        ])
        // Dead letters are not output records.
        expect((await t.read()).events).toEqual([])
      })
    })

    describe('committed state', () => {
      it('upserts keys with their version', async () => {
        const t = await setup()
        if (!t.sink.accepts.state) return
        await t.sink.writeState!([
          stateBatch(0, 1, [
            ['a', { count: 1 }],
            ['b', 'text'],
          ]),
          stateBatch(1, 4, [['c', [1, 2]]]),
        ])
        await t.sink.writeState!([stateBatch(0, 2, [['a', { count: 2 }]])])
        const { state } = await t.read()
        expect(Object.fromEntries(state)).toEqual({
          a: { state: { count: 2 }, version: 2 },
          b: { state: 'text', version: 1 },
          c: { state: [1, 2], version: 4 },
        })
      })

      it('never lets an older version overwrite a newer one', async () => {
        const t = await setup()
        if (!t.sink.accepts.state) return
        await t.sink.writeState!([stateBatch(0, 3, [['a', 3]])])
        await t.sink.writeState!([stateBatch(0, 2, [['a', 2]])])
        // The same version again (a retried write) is fine.
        await t.sink.writeState!([stateBatch(0, 3, [['a', 3]])])
        const { state } = await t.read()
        expect(state.get('a')).toEqual({ state: 3, version: 3 })
      })

      it('deletes keys, and an older upsert does not bring them back', async () => {
        const t = await setup()
        if (!t.sink.accepts.state) return
        await t.sink.writeState!([
          stateBatch(0, 1, [
            ['a', 1],
            ['b', 1],
          ]),
        ])
        await t.sink.writeState!([stateBatch(0, 2, [], ['b'])])
        let { state } = await t.read()
        expect([...state.keys()]).toEqual(['a'])
        await t.sink.writeState!([stateBatch(0, 1, [['b', 1]])])
        ;({ state } = await t.read())
        expect(state.has('b')).toBe(false)
        // Deleting a key that is not there is fine.
        await t.sink.writeState!([stateBatch(0, 3, [], ['never-written'])])
      })

      it("a full batch replaces the partition's rows and leaves other partitions alone", async () => {
        const t = await setup()
        if (!t.sink.accepts.state) return
        await t.sink.writeState!([
          stateBatch(1, 5, [
            ['a', 1],
            ['b', 1],
            ['c', 1],
          ]),
          stateBatch(2, 5, [['x', 1]]),
        ])
        await t.sink.writeState!([stateBatch(1, 6, [['a', 2]], [], true)])
        const { state } = await t.read()
        expect(Object.fromEntries(state)).toEqual({
          a: { state: 2, version: 6 },
          x: { state: 1, version: 5 },
        })
        // A full batch with no keys empties the partition.
        await t.sink.writeState!([stateBatch(1, 7, [], [], true)])
        expect([...(await t.read()).state.keys()]).toEqual(['x'])
      })
    })
  })
}
