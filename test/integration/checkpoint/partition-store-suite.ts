/**
 * The PartitionStore contract, run against every backend (memory, file, Redis standalone and
 * cluster). The fixture differs only in how a "node" is opened, how a second live node sharing the
 * data (a zombie and its successor) is made, and how a crash/restart is simulated.
 *
 * Exactly-once is checked against a pure reference model: batches of counter updates applied to
 * a Map, each accepted batch once. A simulated worker (SimWorker) appends before acking, applies,
 * checkpoints its dirty keys, and restores (claim, load, replay with the dedup table); after any
 * crash the restored state must equal the model.
 */
import { randomBytes } from 'node:crypto'
import { describe, expect, it, onTestFinished } from 'vitest'
import { ErrorCodes, ShoalError } from '../../../src/errors.ts'
import type { StateBackend } from '../../../src/state/backend.ts'
import {
  readCheckpoint,
  replayAll,
  type PackedChanges,
  type PartitionStore,
  type PartitionStoreOptions,
} from '../../../src/state/checkpoint/partition-store.ts'

export interface StoreNode {
  backend: StateBackend
  store: PartitionStore
}

export interface StoreFixture {
  name: string
  /** A node (backend + store) on a fresh key prefix. */
  open(prefix: string, options?: PartitionStoreOptions): Promise<StoreNode>
  /** Another live node over the same data (a second worker while the first still runs). */
  peer(node: StoreNode, prefix: string, options?: PartitionStoreOptions): Promise<StoreNode>
  /**
   * A crash and restart: the node is abandoned without a clean shutdown where the backend allows
   * it (its process-local data is gone); returns a new node over the durable data.
   */
  restart(node: StoreNode, prefix: string, options?: PartitionStoreOptions): Promise<StoreNode>
}

let seq = 0
export function uniquePrefix(tag = 'cp'): string {
  return `${tag}${++seq}-${randomBytes(3).toString('hex')}`
}

export async function expectCode(p: Promise<unknown>, code: string): Promise<ShoalError> {
  const err: unknown = await p.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(err, `expected a rejection with ${code}`).toBeInstanceOf(ShoalError)
  expect((err as ShoalError).code).toBe(code)
  return err as ShoalError
}

const buf = (s: string): Buffer => Buffer.from(s, 'utf8')

/** A deterministic PRNG (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

// --- the reference model and the simulated worker --------------------------------------------------

/** An op: add `by` to the counter at `key`, or delete it (by === null). */
export type Op = [key: string, by: number | null]

export function encodeOps(ops: Op[]): Buffer {
  return Buffer.from(JSON.stringify(ops), 'utf8')
}

export function decodeOps(payload: Buffer): Op[] {
  return JSON.parse(payload.toString('utf8')) as Op[]
}

export function applyOps(state: Map<string, number>, ops: Op[]): string[] {
  const touched: string[] = []
  for (const [key, by] of ops) {
    if (by === null) state.delete(key)
    else state.set(key, (state.get(key) ?? 0) + by)
    touched.push(key)
  }
  return touched
}

export class SimWorker {
  state = new Map<string, number>()
  dedup: Record<string, number> = {}
  lastOffset = 0
  #dirty = new Set<string>()
  #deleted = new Set<string>()
  #cp = 0

  constructor(
    readonly store: PartitionStore,
    readonly partition: number,
    readonly epoch: number,
  ) {}

  /** Claim, load the checkpoint, replay the log after it. */
  async restore(): Promise<{ replayed: number }> {
    await this.store.claim(this.partition, this.epoch)
    const { checkpoint, state } = await readCheckpoint(this.store, this.partition)
    this.state = new Map([...state].map(([k, v]) => [k, Number(v.toString('latin1'))]))
    this.dedup = { ...checkpoint.dedup }
    this.lastOffset = checkpoint.logOffset
    let replayed = 0
    for await (const e of this.store.replay(this.partition, checkpoint.logOffset, {
      dedup: checkpoint.dedup,
    })) {
      this.#apply(e.producerId, e.sequence, decodeOps(e.payload))
      this.lastOffset = e.offset
      replayed++
    }
    return { replayed }
  }

  #apply(producerId: string, sequence: number, ops: Op[]): void {
    for (const key of applyOps(this.state, ops)) {
      if (this.state.has(key)) {
        this.#dirty.add(key)
        this.#deleted.delete(key)
      } else {
        this.#dirty.delete(key)
        this.#deleted.add(key)
      }
    }
    this.dedup[producerId] = sequence
  }

  /** Accept a batch: duplicates are acked without applying; others are logged, then applied. */
  async accept(producerId: string, sequence: number, ops: Op[]): Promise<'applied' | 'duplicate'> {
    const last = this.dedup[producerId]
    if (last !== undefined && sequence <= last) return 'duplicate'
    const offset = await this.store.appendBatch(this.partition, this.epoch, {
      producerId,
      sequence,
      payload: encodeOps(ops),
      count: ops.length,
    })
    expect(offset).toBeGreaterThan(this.lastOffset)
    this.lastOffset = offset
    this.#apply(producerId, sequence, ops)
    return 'applied'
  }

  async checkpoint(full = false): Promise<string> {
    const id = `cp-${this.epoch}-${++this.#cp}`
    const keys = full ? [...this.state.keys()] : [...this.#dirty]
    await this.store.writeCheckpoint(this.partition, this.epoch, {
      checkpointId: id,
      changed: keys.map((k) => [k, Buffer.from(String(this.state.get(k)), 'latin1')]),
      deleted: full ? [] : [...this.#deleted],
      logOffset: this.lastOffset,
      dedup: this.dedup,
      full,
    })
    this.#dirty.clear()
    this.#deleted.clear()
    return id
  }
}

function sorted(m: Map<string, number>): [string, number][] {
  return [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
}

// --- the suite ----------------------------------------------------------------------------------------

export function partitionStoreSuite(fixture: StoreFixture): void {
  async function open(prefix = uniquePrefix(), options?: PartitionStoreOptions): Promise<StoreNode> {
    const node = await fixture.open(prefix, options)
    onTestFinished(() => node.store.close())
    return node
  }
  async function peer(node: StoreNode, prefix: string, options?: PartitionStoreOptions): Promise<StoreNode> {
    const n = await fixture.peer(node, prefix, options)
    onTestFinished(() => n.store.close())
    return n
  }
  async function restart(
    node: StoreNode,
    prefix: string,
    options?: PartitionStoreOptions,
  ): Promise<StoreNode> {
    const n = await fixture.restart(node, prefix, options)
    onTestFinished(() => n.store.close())
    return n
  }

  describe(`PartitionStore: ${fixture.name}`, () => {
    describe('replay log', () => {
      it('replays appended batches in call order, bytes intact, with monotonic offsets', async () => {
        const { store } = await open()
        await store.claim(3, 1)
        const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i))
        // Concurrent (pipelined) appends: offsets follow the order of the calls.
        const offsets = await Promise.all(
          Array.from({ length: 200 }, (_, i) =>
            store.appendBatch(3, 1, {
              producerId: i % 2 === 0 ? 'a' : 'b',
              sequence: i,
              payload: i === 7 ? all : i === 8 ? new Uint8Array(0) : buf(`batch ${i}`),
              count: i,
            }),
          ),
        )
        for (let i = 1; i < offsets.length; i++) expect(offsets[i]).toBe(offsets[i - 1]! + 1)
        const entries = await replayAll(store, 3, 0)
        expect(entries.map((e) => e.offset)).toEqual(offsets)
        expect(entries.map((e) => e.sequence)).toEqual(offsets.map((_, i) => i))
        expect(entries[7]!.payload.equals(all)).toBe(true)
        expect(entries[8]!.payload.length).toBe(0)
        expect(entries[9]).toMatchObject({ producerId: 'b', sequence: 9, count: 9, epoch: 1 })
        expect(entries[9]!.payload.toString()).toBe('batch 9')
        // From an offset: only the entries after it.
        const tail = await replayAll(store, 3, offsets[150]!)
        expect(tail.map((e) => e.sequence)).toEqual(Array.from({ length: 49 }, (_, i) => 151 + i))
        // Bounded, paged.
        const mid = await replayAll(store, 3, offsets[10]!, { toOffset: offsets[20]!, pageSize: 3 })
        expect(mid.map((e) => e.sequence)).toEqual([11, 12, 13, 14, 15, 16, 17, 18, 19, 20])
        // Another partition has its own log.
        expect(await replayAll(store, 4, 0)).toEqual([])
        expect(await store.logInfo(3)).toEqual({
          length: 200,
          firstOffset: offsets[0],
          lastOffset: offsets[199],
        })
        expect(await store.logInfo(4)).toEqual({ length: 0, firstOffset: undefined, lastOffset: 0 })
      })

      it('copies the payload: later changes to the caller buffer do not leak in', async () => {
        const { store } = await open()
        const payload = Buffer.from('abc')
        await store.appendBatch(0, 1, { producerId: 'p', sequence: 1, payload, count: 1 })
        payload[0] = 0x7a
        const [e] = await replayAll(store, 0, 0)
        expect(e!.payload.toString()).toBe('abc')
      })

      it('replay with a dedup table yields each (producer, sequence) once, after the table', async () => {
        const { store } = await open()
        const add = (producerId: string, sequence: number): Promise<number> =>
          store.appendBatch(1, 1, {
            producerId,
            sequence,
            payload: buf(`${producerId}${sequence}`),
            count: 1,
          })
        await add('a', 1)
        await add('b', 1)
        await add('a', 2)
        await add('a', 2) // a sender retry whose first append was not acked
        await add('b', 2)
        await add('a', 3)
        const got = await replayAll(store, 1, 0, { dedup: { a: 1 } })
        expect(got.map((e) => e.payload.toString())).toEqual(['b1', 'a2', 'b2', 'a3'])
      })

      it('raises the stored epoch on append and validates its arguments', async () => {
        const { store, backend } = await open()
        await store.appendBatch(2, 5, { producerId: 'p', sequence: 0, payload: buf('x'), count: 0 })
        expect(await backend.getEpoch(2)).toBe(5)
        const bad = { producerId: 'p', sequence: 1, payload: buf('x'), count: 1 }
        await expectCode(store.appendBatch(2, 5, { ...bad, producerId: '' }), ErrorCodes.INVALID_OPTION)
        await expectCode(store.appendBatch(2, 5, { ...bad, sequence: -1 }), ErrorCodes.INVALID_OPTION)
        await expectCode(store.appendBatch(2, 5, { ...bad, sequence: 1.5 }), ErrorCodes.INVALID_OPTION)
        await expectCode(
          store.appendBatch(2, 5, { ...bad, payload: 'x' as unknown as Uint8Array }),
          ErrorCodes.INVALID_OPTION,
        )
        await expectCode(store.appendBatch(2, -1, bad), ErrorCodes.INVALID_OPTION)
        await expectCode(store.appendBatch(70000, 5, bad), ErrorCodes.STATE_BAD_KEY)
        expect((await replayAll(store, 2, 0)).length).toBe(1)
      })
    })

    describe('checkpoints', () => {
      it('an empty partition loads as no checkpoint', async () => {
        const { store } = await open()
        const { checkpoint, state } = await readCheckpoint(store, 9)
        expect(checkpoint).toMatchObject({
          partition: 9,
          checkpointId: undefined,
          logOffset: 0,
          dedup: {},
          epoch: undefined,
        })
        expect(state.size).toBe(0)
      })

      it('takes changes packed as the processing threads send them ({ keys, data, ends })', async () => {
        const { store } = await open()
        await store.claim(6, 1)
        const pack = (pairs: [string, string][]): PackedChanges => {
          const data = Buffer.from(pairs.map(([, v]) => v).join(''), 'latin1')
          let at = 0
          const ends = Uint32Array.from(pairs, ([, v]) => (at += v.length))
          return { keys: pairs.map(([k]) => k), data, ends }
        }
        const r1 = await store.writeCheckpoint(6, 1, {
          checkpointId: 'p1',
          changed: pack([
            ['a', 'one'],
            ['b', ''],
            ['c', 'three'],
            ['a', 'uno'], // listed twice: the last value wins
          ]),
          logOffset: 0,
          dedup: {},
          full: false,
        })
        expect(r1).toMatchObject({ changed: 3, deleted: 0 })
        await store.writeCheckpoint(6, 1, {
          checkpointId: 'p2',
          changed: pack([['d', 'four']]),
          deleted: ['c'],
          logOffset: 3,
          dedup: { x: 1 },
          full: false,
        })
        const { checkpoint, state } = await readCheckpoint(store, 6)
        expect(checkpoint).toMatchObject({ checkpointId: 'p2', logOffset: 3, dedup: { x: 1 } })
        expect(Object.fromEntries([...state].map(([k, v]) => [k, v.toString('latin1')]))).toEqual({
          a: 'uno',
          b: '',
          d: 'four',
        })
        // Packed changes are checked like pairs: ends within the data, no key both changed and deleted.
        await expectCode(
          store.writeCheckpoint(6, 1, {
            checkpointId: 'p3',
            changed: { keys: ['a', 'b'], data: Buffer.from('xy'), ends: Uint32Array.of(2, 1) },
            logOffset: 3,
            dedup: {},
            full: false,
          }),
          ErrorCodes.INVALID_OPTION,
        )
        await expectCode(
          store.writeCheckpoint(6, 1, {
            checkpointId: 'p4',
            changed: pack([['d', 'x']]),
            deleted: ['d'],
            logOffset: 3,
            dedup: {},
            full: false,
          }),
          ErrorCodes.STATE_BAD_KEY,
        )
        expect((await readCheckpoint(store, 6)).checkpoint.checkpointId).toBe('p2')
      })

      it('round-trips state, offset, dedup table, id and epoch; incremental updates and deletes', async () => {
        const { store } = await open()
        await store.claim(5, 2)
        const r1 = await store.writeCheckpoint(5, 2, {
          checkpointId: 'c1',
          changed: [
            ['k1', buf('v1')],
            ['k2', buf('v2')],
            ['k3', Buffer.from([0, 255, 13, 10])],
            ['', buf('empty key')],
            ['ünï', new Uint8Array(0)],
          ],
          logOffset: 0,
          dedup: { a: 3, 'producer-b': 9 },
          full: false,
        })
        expect(r1).toMatchObject({ changed: 5, deleted: 0 })
        let { checkpoint, state } = await readCheckpoint(store, 5)
        expect(checkpoint).toMatchObject({
          checkpointId: 'c1',
          logOffset: 0,
          dedup: { a: 3, 'producer-b': 9 },
          epoch: 2,
        })
        expect(checkpoint.committedAt).toBeGreaterThan(0)
        expect(state.get('k3')).toEqual(Buffer.from([0, 255, 13, 10]))
        expect(state.get('')?.toString()).toBe('empty key')
        expect(state.get('ünï')?.length).toBe(0)
        expect(state.size).toBe(5)

        await store.writeCheckpoint(5, 2, {
          checkpointId: 'c2',
          changed: [
            ['k2', buf('v2b')],
            ['k4', buf('v4')],
            ['k4', buf('v4b')], // listed twice: the last value wins
          ],
          deleted: ['k1', 'never-existed'],
          logOffset: 7,
          dedup: { a: 4 },
          full: false,
        })
        ;({ checkpoint, state } = await readCheckpoint(store, 5))
        expect(checkpoint).toMatchObject({ checkpointId: 'c2', logOffset: 7, dedup: { a: 4 } })
        expect(Object.fromEntries([...state].map(([k, v]) => [k, v.toString('latin1')]))).toEqual({
          k2: 'v2b',
          k3: Buffer.from([0, 255, 13, 10]).toString('latin1'),
          k4: 'v4b',
          '': 'empty key',
          ünï: '',
        })
        // Settled (Redis folds the delta into the base): the same state.
        await store.settle(5, 2)
        expect((await readCheckpoint(store, 5)).state.size).toBe(5)

        // A full checkpoint replaces everything.
        await store.writeCheckpoint(5, 2, {
          checkpointId: 'c3',
          changed: [['only', buf('one')]],
          deleted: ['k2'],
          logOffset: 9,
          dedup: {},
          full: true,
        })
        ;({ checkpoint, state } = await readCheckpoint(store, 5))
        expect([...state.keys()]).toEqual(['only'])
        expect(checkpoint).toMatchObject({ checkpointId: 'c3', logOffset: 9, dedup: {} })

        // A metadata-only checkpoint, and an empty full one.
        await store.writeCheckpoint(5, 2, {
          checkpointId: 'c4',
          changed: [],
          logOffset: 9,
          dedup: { z: 1 },
          full: false,
        })
        expect((await readCheckpoint(store, 5)).state.size).toBe(1)
        await store.writeCheckpoint(5, 2, {
          checkpointId: 'c5',
          changed: [],
          logOffset: 10,
          dedup: {},
          full: true,
        })
        ;({ checkpoint, state } = await readCheckpoint(store, 5))
        expect(state.size).toBe(0)
        expect(checkpoint.checkpointId).toBe('c5')
      })

      it('large values, long and non-ASCII keys, chunks split by size', async () => {
        const { store } = await open()
        const big = (i: number): Buffer => Buffer.alloc(300_000 + i, i)
        const changed: [string, Buffer][] = [
          ...Array.from({ length: 8 }, (_, i): [string, Buffer] => [`big-${i}`, big(i)]),
          ['k'.repeat(500), buf('long key')],
          ['clé-日本語-🐟'.repeat(10), buf('unicode key')],
          ['short-ü', Buffer.alloc(40, 1)],
        ]
        expect(
          (
            await store.writeCheckpoint(3, 1, {
              checkpointId: 'c',
              changed,
              logOffset: 0,
              dedup: {},
              full: true,
            })
          ).changed,
        ).toBe(11)
        const { state } = await readCheckpoint(store, 3)
        expect(state.size).toBe(11)
        for (const [k, v] of changed) expect(state.get(k)?.equals(v), k.slice(0, 20)).toBe(true)
      })

      it('copies values: later changes to the caller buffers do not leak in', async () => {
        const { store } = await open()
        const v = Buffer.from('value')
        await store.writeCheckpoint(0, 1, {
          checkpointId: 'c',
          changed: [['k', v]],
          logOffset: 0,
          dedup: {},
          full: false,
        })
        v[0] = 0x56
        expect((await readCheckpoint(store, 0)).state.get('k')?.toString()).toBe('value')
      })

      it('validates checkpoints and refuses an offset behind the committed one', async () => {
        const { store } = await open()
        const cp = { checkpointId: 'c', changed: [], logOffset: 5, dedup: {}, full: false }
        await store.writeCheckpoint(1, 1, cp)
        await expectCode(store.writeCheckpoint(1, 1, { ...cp, logOffset: 4 }), ErrorCodes.INVALID_OPTION)
        await expectCode(store.writeCheckpoint(1, 1, { ...cp, checkpointId: '' }), ErrorCodes.INVALID_OPTION)
        await expectCode(store.writeCheckpoint(1, 1, { ...cp, logOffset: -1 }), ErrorCodes.INVALID_OPTION)
        await expectCode(store.writeCheckpoint(1, 1, { ...cp, dedup: { a: -1 } }), ErrorCodes.INVALID_OPTION)
        await expectCode(
          store.writeCheckpoint(1, 1, { ...cp, changed: [['k', 'v' as unknown as Uint8Array]] }),
          ErrorCodes.INVALID_OPTION,
        )
        await expectCode(
          store.writeCheckpoint(1, 1, { ...cp, changed: [['k', buf('v')]], deleted: ['k'] }),
          ErrorCodes.STATE_BAD_KEY,
        )
        const { checkpoint, state } = await readCheckpoint(store, 1)
        expect(checkpoint.logOffset).toBe(5)
        expect(state.size).toBe(0)
      })

      it('checkpoint + replay of the log after it == the model state', async () => {
        const prefix = uniquePrefix()
        const node = await open(prefix)
        const model = new Map<string, number>()
        const w = new SimWorker(node.store, 7, 1)
        await w.restore()
        const random = rng(42)
        for (let i = 1; i <= 60; i++) {
          const ops: Op[] = Array.from({ length: 1 + Math.floor(random() * 4) }, () => [
            `key-${Math.floor(random() * 20)}`,
            random() < 0.1 ? null : 1 + Math.floor(random() * 9),
          ])
          expect(await w.accept(`p${i % 3}`, i, ops)).toBe('applied')
          applyOps(model, ops)
          if (i % 17 === 0) await w.checkpoint(i === 34)
        }
        expect(sorted(w.state)).toEqual(sorted(model))
        const successor = await restart(node, prefix)
        const w2 = new SimWorker(successor.store, 7, 2)
        const { replayed } = await w2.restore()
        expect(replayed).toBe(60 - 51)
        expect(sorted(w2.state)).toEqual(sorted(model))
        expect(w2.dedup).toEqual(w.dedup)
      })
    })

    describe('fencing', () => {
      it('after a claim by a newer epoch, stale appends and checkpoints are refused and change nothing', async () => {
        const prefix = uniquePrefix()
        const old = await open(prefix)
        await old.store.claim(4, 1)
        await old.store.appendBatch(4, 1, { producerId: 'p', sequence: 1, payload: buf('one'), count: 1 })
        await old.store.writeCheckpoint(4, 1, {
          checkpointId: 'old-1',
          changed: [['k', buf('1')]],
          logOffset: 1,
          dedup: { p: 1 },
          full: false,
        })
        const next = await peer(old, prefix)
        await next.store.claim(4, 2)
        expect(await next.backend.getEpoch(4)).toBe(2)

        const fenced = await expectCode(
          old.store.appendBatch(4, 1, { producerId: 'p', sequence: 2, payload: buf('zombie'), count: 1 }),
          ErrorCodes.FENCED,
        )
        expect(fenced.data).toMatchObject({ partition: 4, epoch: 1, storedEpoch: 2 })
        await expectCode(
          old.store.writeCheckpoint(4, 1, {
            checkpointId: 'old-2',
            changed: [['k', buf('zombie')]],
            deleted: [],
            logOffset: 2,
            dedup: { p: 2 },
            full: false,
          }),
          ErrorCodes.FENCED,
        )
        await expectCode(
          old.store.writeCheckpoint(4, 1, {
            checkpointId: 'old-3',
            changed: [],
            logOffset: 2,
            dedup: {},
            full: true,
          }),
          ErrorCodes.FENCED,
        )
        await expectCode(old.store.claim(4, 1), ErrorCodes.FENCED)
        await expectCode(old.store.settle(4, 1), ErrorCodes.FENCED)

        const { checkpoint, state } = await readCheckpoint(next.store, 4)
        expect(checkpoint).toMatchObject({ checkpointId: 'old-1', logOffset: 1, epoch: 1 })
        expect(state.get('k')?.toString()).toBe('1')
        expect((await replayAll(next.store, 4, 0)).map((e) => e.payload.toString())).toEqual(['one'])
        // The new owner works; equal epochs pass; other partitions are unaffected.
        await next.store.appendBatch(4, 2, { producerId: 'p', sequence: 2, payload: buf('two'), count: 1 })
        await next.store.writeCheckpoint(4, 2, {
          checkpointId: 'new-1',
          changed: [],
          logOffset: 2,
          dedup: {},
          full: false,
        })
        await next.store.claim(4, 2)
        await old.store.appendBatch(5, 1, { producerId: 'p', sequence: 1, payload: buf('x'), count: 1 })
        expect((await readCheckpoint(old.store, 4)).checkpoint.checkpointId).toBe('new-1')
      })

      it("a claim under a deposed coordinator's leadership epoch is refused once a newer leader's claim is recorded", async () => {
        const prefix = uniquePrefix()
        const a = await open(prefix)
        const b = await peer(a, prefix)
        // Leader 1 assigned partition 6 to a; leader 2 took over and confirmed a as its owner.
        await a.store.claim(6, 3, 1)
        await a.store.claim(6, 3, 2)
        // The deposed leader 1's late assignment to b, even at a higher partition epoch: refused.
        const refused = await expectCode(b.store.claim(6, 4, 1), ErrorCodes.FENCED)
        expect(refused.data).toMatchObject({ partition: 6, leader: 1, storedLeader: 2 })
        expect(await a.backend.getEpoch(6)).toBe(3)
        await a.store.appendBatch(6, 3, { producerId: 'p', sequence: 1, payload: buf('a'), count: 1 })
        // Leader 2 (or a newer one) moving it to b works, and fences a as usual.
        await b.store.claim(6, 4, 2)
        await expectCode(
          a.store.appendBatch(6, 3, { producerId: 'p', sequence: 2, payload: buf('zombie'), count: 1 }),
          ErrorCodes.FENCED,
        )
        await b.store.claim(6, 5, 3)
        await expectCode(b.store.claim(6, 6, 2), ErrorCodes.FENCED)
        // Without a leader (no HA) the leadership record is not consulted.
        await b.store.claim(6, 6)
        expect(await b.backend.getEpoch(6)).toBe(6)
      })

      it('a checkpoint racing a claim either commits before it or is fenced', async () => {
        const prefix = uniquePrefix()
        const old = await open(prefix)
        const next = await peer(old, prefix)
        await old.store.claim(6, 1)
        const changed: [string, Buffer][] = Array.from({ length: 5000 }, (_, i) => [`k${i}`, buf(`v${i}`)])
        const write = old.store
          .writeCheckpoint(6, 1, { checkpointId: 'racing', changed, logOffset: 0, dedup: {}, full: false })
          .then(
            () => 'committed',
            (e: unknown) => (e instanceof ShoalError ? e.code : String(e)),
          )
        await next.store.claim(6, 2)
        const outcome = await write
        expect(['committed', ErrorCodes.FENCED]).toContain(outcome)
        const { checkpoint, state } = await readCheckpoint(next.store, 6)
        if (outcome === 'committed') {
          expect(checkpoint.checkpointId).toBe('racing')
          expect(state.size).toBe(5000)
        } else {
          expect(checkpoint.checkpointId).toBeUndefined()
          expect(state.size).toBe(0)
        }
        // Whatever happened, the old owner is fenced from now on.
        await expectCode(
          old.store.writeCheckpoint(6, 1, {
            checkpointId: 'late',
            changed: [],
            logOffset: 0,
            dedup: {},
            full: false,
          }),
          ErrorCodes.FENCED,
        )
      })
    })

    describe('crash safety', () => {
      it('a crash after staging a checkpoint but before its commit: restore == exactly-once', async () => {
        const prefix = uniquePrefix()
        let crash = false
        const hooks = {
          beforeCommit: (): void => {
            if (crash) throw new Error('simulated crash before commit')
          },
        }
        const node = await open(prefix, { hooks })
        const model = new Map<string, number>()
        const w = new SimWorker(node.store, 2, 1)
        await w.restore()
        const batch = async (i: number): Promise<void> => {
          const ops: Op[] = [
            [`k${i % 7}`, i],
            [`k${(i * 3) % 11}`, 1],
          ]
          if (i % 5 === 0) ops.push([`k${i % 4}`, null])
          await w.accept('producer', i, ops)
          applyOps(model, ops)
        }
        for (let i = 1; i <= 20; i++) await batch(i)
        await w.checkpoint()
        for (let i = 21; i <= 40; i++) await batch(i)
        crash = true
        await expect(w.checkpoint()).rejects.toThrow('simulated crash before commit')

        // The staged keys hold values as of batch 40, but the committed offset is still 20: a
        // store that let them through would apply batches 21..40 twice on replay.
        const successor = await restart(node, prefix)
        const w2 = new SimWorker(successor.store, 2, 2)
        expect((await w2.restore()).replayed).toBe(20)
        expect(sorted(w2.state)).toEqual(sorted(model))
        expect((await readCheckpoint(successor.store, 2)).checkpoint.logOffset).toBe(20)

        // The sender retries its last batch (its ack was lost): deduplicated, not applied again.
        expect(await w2.accept('producer', 40, [['k1', 1000]])).toBe('duplicate')
        for (let i = 41; i <= 50; i++) {
          const ops: Op[] = [[`k${i % 7}`, i]]
          await w2.accept('producer', i, ops)
          applyOps(model, ops)
        }
        await w2.checkpoint()
        const third = await restart(successor, prefix)
        const w3 = new SimWorker(third.store, 2, 3)
        expect((await w3.restore()).replayed).toBe(0)
        expect(sorted(w3.state)).toEqual(sorted(model))
      })

      it('a crash right after a commit (before background work): restore == exactly-once', async () => {
        const prefix = uniquePrefix()
        let crash = false
        const hooks = {
          afterCommit: (): void => {
            if (crash) throw new Error('simulated crash after commit')
          },
        }
        const node = await open(prefix, { hooks })
        const model = new Map<string, number>()
        const w = new SimWorker(node.store, 8, 1)
        await w.restore()
        for (let i = 1; i <= 30; i++) {
          const ops: Op[] = [[`k${i % 13}`, i]]
          if (i % 6 === 0) ops.push([`k${(i + 1) % 13}`, null])
          await w.accept('p', i, ops)
          applyOps(model, ops)
          if (i === 10) await w.checkpoint(true)
        }
        crash = true
        await expect(w.checkpoint()).rejects.toThrow('simulated crash after commit')
        const successor = await restart(node, prefix)
        const w2 = new SimWorker(successor.store, 8, 2)
        expect((await w2.restore()).replayed).toBe(0)
        expect(sorted(w2.state)).toEqual(sorted(model))
        // The successor's next checkpoints finish what the crash left (Redis: the delta fold).
        await w2.accept('p', 31, [['k1', 1]])
        applyOps(model, [['k1', 1]])
        await w2.checkpoint()
        await successor.store.settle(8, 2)
        const w3 = new SimWorker((await restart(successor, prefix)).store, 8, 3)
        await w3.restore()
        expect(sorted(w3.state)).toEqual(sorted(model))
      })

      it('random batches, checkpoints, trims, duplicates and crashes: restore == model', async () => {
        for (const seed of [1, 2, 3]) {
          const random = rng(seed)
          const prefix = uniquePrefix(`rnd${seed}-`)
          let crashPoint: 'before' | 'after' | undefined
          const hooks = {
            beforeCommit: (): void => {
              if (crashPoint === 'before') throw new Error('crash before commit')
            },
            afterCommit: (): void => {
              if (crashPoint === 'after') throw new Error('crash after commit')
            },
          }
          let node = await open(prefix, { hooks })
          let epoch = 1
          let w = new SimWorker(node.store, 11, epoch)
          await w.restore()
          const model = new Map<string, number>()
          const sequences: Record<string, number> = { a: 0, b: 0, c: 0 }
          for (let step = 0; step < 80; step++) {
            const r = random()
            if (r < 0.6) {
              const producer = ['a', 'b', 'c'][Math.floor(random() * 3)]!
              const s = ++sequences[producer]!
              const ops: Op[] = Array.from({ length: 1 + Math.floor(random() * 3) }, () => [
                `k${Math.floor(random() * 15)}`,
                random() < 0.15 ? null : Math.floor(random() * 100) - 50,
              ])
              expect(await w.accept(producer, s, ops)).toBe('applied')
              applyOps(model, ops)
              if (random() < 0.2) expect(await w.accept(producer, s, ops)).toBe('duplicate')
            } else if (r < 0.8) {
              await w.checkpoint(random() < 0.2)
              if (random() < 0.5) await node.store.trim(11, w.lastOffset)
            } else {
              crashPoint = random() < 0.5 ? 'before' : 'after'
              await expect(w.checkpoint()).rejects.toThrow('crash')
              crashPoint = undefined
              node = await restart(node, prefix, { hooks })
              w = new SimWorker(node.store, 11, ++epoch)
              await w.restore()
              expect(sorted(w.state), `seed ${seed} step ${step}`).toEqual(sorted(model))
            }
          }
          node = await restart(node, prefix, { hooks })
          w = new SimWorker(node.store, 11, ++epoch)
          await w.restore()
          expect(sorted(w.state), `seed ${seed} at the end`).toEqual(sorted(model))
        }
      })
    })

    describe('trim', () => {
      it('drops entries up to the committed checkpoint, never beyond; offsets are never reused', async () => {
        const prefix = uniquePrefix()
        const node = await open(prefix)
        const { store } = node
        expect(await store.trim(0, 100)).toEqual({ trimmedTo: 0, removed: 0 })
        for (let i = 1; i <= 10; i++) {
          expect(
            await store.appendBatch(0, 1, { producerId: 'p', sequence: i, payload: buf(`b${i}`), count: 1 }),
          ).toBe(i)
        }
        expect(await store.trim(0, 5)).toEqual({ trimmedTo: 0, removed: 0 })
        await store.writeCheckpoint(0, 1, {
          checkpointId: 'c',
          changed: [],
          logOffset: 6,
          dedup: { p: 6 },
          full: false,
        })
        expect(await store.trim(0, 100)).toEqual({ trimmedTo: 6, removed: 6 })
        expect((await replayAll(store, 0, 0)).map((e) => e.offset)).toEqual([7, 8, 9, 10])
        expect(await store.logInfo(0)).toEqual({ length: 4, firstOffset: 7, lastOffset: 10 })
        expect(await store.trim(0, 3)).toEqual({ trimmedTo: 3, removed: 0 })
        await store.writeCheckpoint(0, 1, {
          checkpointId: 'd',
          changed: [],
          logOffset: 10,
          dedup: {},
          full: false,
        })
        expect(await store.trim(0, 10)).toEqual({ trimmedTo: 10, removed: 4 })
        expect(await store.logInfo(0)).toEqual({ length: 0, firstOffset: undefined, lastOffset: 10 })
        expect(
          await store.appendBatch(0, 1, { producerId: 'p', sequence: 11, payload: buf('b11'), count: 1 }),
        ).toBe(11)
        await store.writeCheckpoint(0, 1, {
          checkpointId: 'e',
          changed: [],
          logOffset: 11,
          dedup: {},
          full: false,
        })
        await store.trim(0, 11)
        // After a restart too.
        const successor = await restart(node, prefix)
        expect(await successor.store.logInfo(0)).toEqual({
          length: 0,
          firstOffset: undefined,
          lastOffset: 11,
        })
        expect(
          await successor.store.appendBatch(0, 2, {
            producerId: 'p',
            sequence: 12,
            payload: buf('b12'),
            count: 1,
          }),
        ).toBe(12)
        expect((await replayAll(successor.store, 0, 0)).map((e) => e.offset)).toEqual([12])
      })
    })

    describe('size', () => {
      it('checkpoints and restores 100k keys (full, then 1% dirty with deletes)', async () => {
        const prefix = uniquePrefix()
        const node = await open(prefix)
        const value = (i: number, gen: number): Buffer => {
          const b = Buffer.alloc(16)
          b.writeUInt32BE(i, 0)
          b.writeUInt32BE(gen, 4)
          return b
        }
        const keys = Array.from({ length: 100_000 }, (_, i) => `user-${String(i).padStart(6, '0')}`)
        const r = await node.store.writeCheckpoint(12, 1, {
          checkpointId: 'big-1',
          changed: keys.map((k, i) => [k, value(i, 1)]),
          logOffset: 0,
          dedup: {},
          full: true,
        })
        expect(r.changed).toBe(100_000)
        const dirty = keys.filter((_, i) => i % 100 === 0)
        const gone = keys.filter((_, i) => i % 1000 === 1)
        await node.store.writeCheckpoint(12, 1, {
          checkpointId: 'big-2',
          changed: dirty.map((k) => [k, value(Number(k.slice(5)), 2)]),
          deleted: gone,
          logOffset: 0,
          dedup: { p: 1 },
          full: false,
        })
        const successor = await restart(node, prefix)
        const check = async (store: PartitionStore): Promise<void> => {
          const { checkpoint, state } = await readCheckpoint(store, 12)
          expect(checkpoint.checkpointId).toBe('big-2')
          expect(state.size).toBe(100_000 - gone.length)
          for (let i = 0; i < 100_000; i += 37) {
            const v = state.get(keys[i]!)
            if (i % 1000 === 1) expect(v).toBeUndefined()
            else expect(v).toEqual(value(i, i % 100 === 0 ? 2 : 1))
          }
        }
        await check(successor.store)
        await successor.store.settle(12, 1)
        await check(successor.store)
      })
    })

    describe('lifecycle', () => {
      it('close waits for work, then refuses calls with CLOSED', async () => {
        const { store } = await open()
        await store.appendBatch(0, 1, { producerId: 'p', sequence: 1, payload: buf('x'), count: 1 })
        await store.close()
        await store.close()
        await expectCode(
          store.appendBatch(0, 1, { producerId: 'p', sequence: 2, payload: buf('x'), count: 1 }),
          ErrorCodes.CLOSED,
        )
        await expectCode(store.loadCheckpoint(0), ErrorCodes.CLOSED)
        await expectCode(
          store.writeCheckpoint(0, 1, {
            checkpointId: 'c',
            changed: [],
            logOffset: 0,
            dedup: {},
            full: false,
          }),
          ErrorCodes.CLOSED,
        )
      })
    })
  })
}
