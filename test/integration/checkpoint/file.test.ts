/**
 * The PartitionStore contract on the file backend, plus its on-disk behaviour: layout, a torn
 * last log record after a crash, corruption, leftover temp files. A "restart" closes the backend
 * (the directory lock allows one open per process) and opens it again from disk.
 */
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import { Packr } from 'msgpackr'
import { afterAll, describe, expect, it, onTestFinished } from 'vitest'
import { ErrorCodes } from '../../../src/errors.ts'
import { encodeName } from '../../../src/state/file/file-backend.ts'
import { createStateBackend } from '../../../src/state/index.ts'
import {
  openPartitionStore,
  readCheckpoint,
  replayAll,
  type PartitionStoreOptions,
} from '../../../src/state/checkpoint/partition-store.ts'
import { expectCode, partitionStoreSuite, uniquePrefix, type StoreNode } from './partition-store-suite.ts'

const root = mkdtempSync(join(tmpdir(), 'shoal-cp-file-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))

async function open(prefix: string, options?: PartitionStoreOptions): Promise<StoreNode> {
  const backend = await createStateBackend(`file:${root}`, { prefix })
  onTestFinished(() => backend.close())
  return { backend, store: await openPartitionStore(backend, options) }
}

async function restart(node: StoreNode, prefix: string, options?: PartitionStoreOptions): Promise<StoreNode> {
  await node.store.close()
  await node.backend.close()
  return open(prefix, options)
}

partitionStoreSuite({
  name: 'file',
  open,
  // One process owns a state directory: a second worker is a second store over the same backend.
  peer: async (node, _prefix, options) => ({
    backend: node.backend,
    store: await openPartitionStore(node.backend, options),
  }),
  restart,
})

describe('file PartitionStore on disk', () => {
  const dirOf = (prefix: string): string => join(root, encodeName(prefix), 'checkpoint')
  const append = (node: StoreNode, p: number, i: number): Promise<number> =>
    node.store.appendBatch(p, 1, {
      producerId: 'p',
      sequence: i,
      payload: Buffer.from(`batch ${i}`),
      count: 1,
    })

  it('keeps one log and one checkpoint file per partition', async () => {
    const prefix = uniquePrefix()
    const node = await open(prefix)
    await append(node, 3, 1)
    await node.store.writeCheckpoint(3, 1, {
      checkpointId: 'c',
      changed: [['k', Buffer.from('v')]],
      logOffset: 1,
      dedup: { p: 1 },
      full: false,
    })
    expect(readdirSync(dirOf(prefix)).sort()).toEqual(['p3.cp', 'p3.log'])
    expect(
      readFileSync(join(dirOf(prefix), 'p3.log'))
        .subarray(0, 4)
        .toString(),
    ).toBe('SHLG')
    expect(
      readFileSync(join(dirOf(prefix), 'p3.cp'))
        .subarray(0, 4)
        .toString(),
    ).toBe('SHCP')
  })

  it('drops a torn last record (crash mid-append) and appends after the valid data', async () => {
    const prefix = uniquePrefix()
    let node = await open(prefix)
    for (let i = 1; i <= 3; i++) await append(node, 0, i)
    await node.store.close()
    await node.backend.close()
    const log = join(dirOf(prefix), 'p0.log')
    appendFileSync(log, Buffer.from([0, 0, 0, 40, 1, 2, 3, 4, 5])) // a record header and a few bytes
    node = await open(prefix)
    expect((await replayAll(node.store, 0, 0)).map((e) => e.offset)).toEqual([1, 2, 3])
    expect(await append(node, 0, 4)).toBe(4)
    node = await restart(node, prefix)
    expect((await replayAll(node.store, 0, 0)).map((e) => e.payload.toString())).toEqual([
      'batch 1',
      'batch 2',
      'batch 3',
      'batch 4',
    ])
  })

  it('refuses a log corrupted before its end, and a corrupt checkpoint', async () => {
    const prefix = uniquePrefix()
    let node = await open(prefix)
    for (let i = 1; i <= 3; i++) await append(node, 1, i)
    await node.store.writeCheckpoint(1, 1, {
      checkpointId: 'c',
      changed: [],
      logOffset: 0,
      dedup: {},
      full: false,
    })
    await node.store.close()
    await node.backend.close()
    const log = join(dirOf(prefix), 'p1.log')
    const bytes = readFileSync(log)
    bytes[13 + 8 + 2] = (bytes[13 + 8 + 2] ?? 0) ^ 0xff // inside the first record's payload
    writeFileSync(log, bytes)
    node = await open(prefix)
    await expectCode(replayAll(node.store, 1, 0), ErrorCodes.STATE_BACKEND)
    const cp = join(dirOf(prefix), 'p2.cp')
    writeFileSync(cp, Buffer.from('SHCP\u0001garbage'))
    await expectCode(node.store.loadCheckpoint(2), ErrorCodes.STATE_BACKEND)
  })

  it('a crash between staging and commit leaves the old checkpoint; stray temp files are removed', async () => {
    const prefix = uniquePrefix()
    let node = await open(prefix, {
      hooks: {
        beforeCommit: (_p, id) => {
          if (id === 'second') throw new Error('crash')
        },
      },
    })
    await node.store.writeCheckpoint(0, 1, {
      checkpointId: 'first',
      changed: [['a', Buffer.from('1')]],
      logOffset: 0,
      dedup: {},
      full: false,
    })
    await expect(
      node.store.writeCheckpoint(0, 1, {
        checkpointId: 'second',
        changed: [['a', Buffer.from('2')]],
        logOffset: 0,
        dedup: {},
        full: false,
      }),
    ).rejects.toThrow('crash')
    writeFileSync(join(dirOf(prefix), 'p0.cp.999.0.tmp'), 'left by a crash')
    node = await restart(node, prefix)
    const { checkpoint, state } = await readCheckpoint(node.store, 0)
    expect(checkpoint.checkpointId).toBe('first')
    expect(state.get('a')?.toString()).toBe('1')
    expect(existsSync(join(dirOf(prefix), 'p0.cp.999.0.tmp'))).toBe(false)
  })

  /** A checkpoint file as written: SHCP, version, crc32 of the payload, msgpack payload. */
  function cpFile(version: number, payload: unknown): Buffer {
    const body = new Packr({ useRecords: false, moreTypes: false }).pack(payload)
    const header = Buffer.alloc(9)
    header.write('SHCP', 0, 'latin1')
    header.writeUInt8(version, 4)
    header.writeUInt32BE(crc32(body), 5)
    return Buffer.concat([header, body])
  }

  it('reads checkpoint files of format 1 ([key, value] pairs) and writes format 2', async () => {
    const prefix = uniquePrefix()
    let node = await open(prefix)
    await node.store.close()
    await node.backend.close()
    const meta = ['old', 7, { p: 3 }, 1, 1_700_000_000_000]
    const pairs = [
      ['a', Buffer.from('1')],
      ['b', Buffer.from('')],
      ['c', Buffer.from('333')],
    ]
    mkdirSync(dirOf(prefix), { recursive: true })
    writeFileSync(join(dirOf(prefix), 'p4.cp'), cpFile(1, [1, 4, meta, pairs]))
    node = await open(prefix)
    const before = await readCheckpoint(node.store, 4)
    expect(before.checkpoint.checkpointId).toBe('old')
    expect(before.checkpoint.logOffset).toBe(7)
    expect(before.checkpoint.dedup).toEqual({ p: 3 })
    expect([...before.state].map(([k, v]) => [k, v.toString()])).toEqual([
      ['a', '1'],
      ['b', ''],
      ['c', '333'],
    ])
    await node.store.writeCheckpoint(4, 1, {
      checkpointId: 'new',
      changed: [['b', Buffer.from('22')]],
      deleted: ['c'],
      logOffset: 8,
      dedup: { p: 4 },
      full: false,
    })
    expect(readFileSync(join(dirOf(prefix), 'p4.cp')).readUInt8(4)).toBe(2)
    node = await restart(node, prefix)
    const after = await readCheckpoint(node.store, 4)
    expect(after.checkpoint.checkpointId).toBe('new')
    expect(Object.fromEntries([...after.state].map(([k, v]) => [k, v.toString()]))).toEqual({
      a: '1',
      b: '22',
    })
  })

  it('refuses a format-2 checkpoint whose value ends do not fit its values', async () => {
    const prefix = uniquePrefix()
    const node = await open(prefix)
    const meta = ['c', 0, {}, 1, 0]
    const ends = (xs: number[]): Buffer => Buffer.from(new Uint32Array(xs).buffer)
    const bad: [number, unknown][] = [
      [5, [2, 5, meta, ['a', 'b'], Buffer.from('xyz'), ends([2, 1])]], // decreasing
      [6, [2, 6, meta, ['a', 'b'], Buffer.from('xyz'), ends([1, 9])]], // past the values
      [7, [2, 7, meta, ['a', 'b'], Buffer.from('xyz'), ends([1])]], // one end short
      [8, [2, 8, meta, ['a', 1], Buffer.from('xyz'), ends([1, 3])]], // a key that is not a string
      [9, [2, 9, meta, ['a'], Buffer.from('xyz'), ends([1])]], // bytes after the last value
    ]
    mkdirSync(dirOf(prefix), { recursive: true })
    for (const [p, payload] of bad) {
      writeFileSync(join(dirOf(prefix), `p${p}.cp`), cpFile(2, payload))
      await expectCode(node.store.loadCheckpoint(p), ErrorCodes.STATE_BACKEND)
    }
    // and the same layout with fitting ends is read
    writeFileSync(
      join(dirOf(prefix), 'p10.cp'),
      cpFile(2, [2, 10, meta, ['a', 'b'], Buffer.from('xyz'), ends([1, 3])]),
    )
    const { state } = await readCheckpoint(node.store, 10)
    expect(Object.fromEntries([...state].map(([k, v]) => [k, v.toString()]))).toEqual({ a: 'x', b: 'yz' })
  })
})
