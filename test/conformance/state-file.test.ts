import { spawnSync } from 'node:child_process'
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, describe, expect, it, onTestFinished } from 'vitest'
import { ErrorCodes, ShoalError } from '../../src/errors.ts'
import type { FileBackend } from '../../src/state/file/file-backend.ts'
import { encodeName } from '../../src/state/file/file-backend.ts'
import { createStateBackend, partitionKey, scanAll, type StateBackend } from '../../src/state/index.ts'
import { stateConformance, uniquePrefix } from './state-suite.ts'

const root = mkdtempSync(join(tmpdir(), 'shoal-file-state-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))

stateConformance({
  name: 'file',
  open: (prefix) => createStateBackend(`file:${root}`, { prefix }),
  concurrentOpen: false,
})

const buf = (s: string): Buffer => Buffer.from(s)

async function openAt(dir: string, prefix = 'shoal'): Promise<StateBackend> {
  const b = await createStateBackend(`file:${dir}`, { prefix })
  onTestFinished(() => b.close())
  return b
}

async function code(p: Promise<unknown>): Promise<string | undefined> {
  const err: unknown = await p.then(
    () => undefined,
    (e: unknown) => e,
  )
  return err instanceof ShoalError ? err.code : undefined
}

function freshDir(): string {
  return mkdtempSync(join(root, 'case-'))
}

describe('file backend', () => {
  it('keeps everything across close and reopen: values, counters, hashes, epochs, TTLs', async () => {
    const dir = freshDir()
    const a = await createStateBackend(`file:${dir}`)
    await a.put('global', buf('g'))
    await a.put('short', buf('s'), { ttlMs: 100 })
    await a.put('long', buf('l'), { ttlMs: 60_000 })
    await a.incrBy('counter', 5)
    await a.hIncrBy(partitionKey(2, 'h'), 'count', 3)
    await a.fencedWrite(2, 4, { puts: [{ key: partitionKey(2, 'k'), value: buf('v') }] })
    await a.writeBatch(3, { puts: [{ key: partitionKey(3, 'x'), value: buf('y') }] })
    await a.close()
    await new Promise((r) => setTimeout(r, 150))

    const b = await openAt(dir)
    expect(await scanAll(b, '')).toEqual(
      ['counter', 'global', 'long', partitionKey(2, 'h'), partitionKey(2, 'k'), partitionKey(3, 'x')].sort(),
    )
    expect((await b.get('counter'))?.toString()).toBe('5')
    expect({ ...(await b.hGetAll(partitionKey(2, 'h'))) }).toEqual({ count: 3 })
    expect(await b.getEpoch(2)).toBe(4)
    expect(await code(b.fencedWrite(2, 3, {}))).toBe(ErrorCodes.FENCED)
  })

  it('keeps acknowledged writes when the process is killed (SIGKILL) and takes over its stale lock', () => {
    const dir = freshDir()
    const entry = resolve('src/state/index.ts')
    const script = join(dir, 'writer.mts')
    writeFileSync(
      script,
      `import { createStateBackend, partitionKey } from ${JSON.stringify(entry)}
const s = await createStateBackend(${JSON.stringify(`file:${dir}`)})
for (let i = 0; i < 20; i++) await s.fencedWrite(1, 2, { puts: [{ key: partitionKey(1, 'k' + i), value: Buffer.from(String(i)) }] })
await s.incrBy('acked', 20)
process.kill(process.pid, 'SIGKILL')
`,
    )
    const r = spawnSync(process.execPath, ['--import', 'tsx', script], { encoding: 'utf8', timeout: 15_000 })
    expect(r.signal, r.stderr).toBe('SIGKILL')
    expect(existsSync(join(dir, 'shoal', 'LOCK'))).toBe(true)
    return (async () => {
      const b = await openAt(dir)
      expect((await b.get('acked'))?.toString()).toBe('20')
      expect(await scanAll(b, '{p1}:')).toHaveLength(20)
      expect(await b.getEpoch(1)).toBe(2)
    })()
  })

  it('lays files out as documented and removes a global key file with its key', async () => {
    const dir = freshDir()
    const s = await openAt(dir, 'job-1')
    await s.put(partitionKey(3, 'a'), buf('1'))
    await s.put('Lease:A/b', buf('1'))
    const ns = join(dir, encodeName('job-1'))
    expect(readdirSync(join(ns, 'partitions'))).toEqual(['p3.state'])
    expect(readdirSync(join(ns, 'globals'))).toEqual(['%4Cease%3A%41%2Fb.state'])
    expect(readFileSync(join(ns, 'LOCK'), 'utf8')).toContain(`"pid":${process.pid}`)
    await s.delete('Lease:A/b')
    expect(readdirSync(join(ns, 'globals'))).toEqual([])
    const long = 'x'.repeat(300)
    await s.put(long, buf('v'))
    expect(readdirSync(join(ns, 'globals'))[0]).toMatch(/^~[0-9a-f]{64}\.state$/)
  })

  it('allows one open backend per directory and prefix; a live foreign lock refuses, a dead one is taken over', async () => {
    const dir = freshDir()
    const a = await createStateBackend(`file:${dir}`)
    expect(await code(createStateBackend(`file:${dir}`))).toBe(ErrorCodes.STATE_BACKEND)
    const other = await openAt(dir, 'other-prefix')
    expect(await other.health()).toBe(true)
    await a.close()

    const lock = join(dir, 'shoal', 'LOCK')
    writeFileSync(lock, JSON.stringify({ pid: process.ppid }))
    const err = await createStateBackend(`file:${dir}`).catch((e: unknown) => e)
    expect((err as ShoalError).code).toBe(ErrorCodes.STATE_BACKEND)
    expect((err as ShoalError).message).toMatch(new RegExp(`in use by pid ${process.ppid}`))

    const dead = spawnSync(process.execPath, ['-e', 'process.exit(0)']).pid
    writeFileSync(lock, JSON.stringify({ pid: dead }))
    const b = await openAt(dir)
    expect(await b.health()).toBe(true)
  })

  it('refuses to open a corrupt file, and deletes leftover temp files', async () => {
    const dir = freshDir()
    const a = await createStateBackend(`file:${dir}`)
    await a.put(partitionKey(0, 'k'), buf('value'))
    await a.close()
    const file = join(dir, 'shoal', 'partitions', 'p0.state')
    const tmp = `${file}.12345.0.tmp`
    writeFileSync(tmp, 'half-written')
    const bytes = readFileSync(file)
    bytes[bytes.length - 2]! ^= 0xff
    writeFileSync(file, bytes)
    const err = await createStateBackend(`file:${dir}`).catch((e: unknown) => e)
    expect((err as ShoalError).code).toBe(ErrorCodes.STATE_BACKEND)
    expect((err as ShoalError).message).toMatch(/corrupt state file .*checksum/)
    bytes[bytes.length - 2]! ^= 0xff
    writeFileSync(file, bytes)
    const b = await openAt(dir)
    expect((await b.get(partitionKey(0, 'k')))?.toString()).toBe('value')
    expect(existsSync(tmp)).toBe(false)
  })

  it('fails writes with retryable STATE_UNAVAILABLE while the disk fails, health false, then recovers', async () => {
    const dir = freshDir()
    const s = (await openAt(dir)) as FileBackend
    await s.put(partitionKey(1, 'before'), buf('1'))
    const partitions = join(s.path, 'partitions')
    renameSync(partitions, `${partitions}.away`)
    writeFileSync(partitions, 'not a directory')
    const err = await s.put(partitionKey(1, 'during'), buf('2')).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ShoalError)
    expect((err as ShoalError).code).toBe(ErrorCodes.STATE_UNAVAILABLE)
    expect((err as ShoalError).retryable).toBe(true)
    expect(await s.health()).toBe(false)
    rmSync(partitions)
    renameSync(`${partitions}.away`, partitions)
    expect(await s.health()).toBe(true)
    await s.close()
    const again = await openAt(dir)
    expect(await scanAll(again, '{p1}:')).toEqual([partitionKey(1, 'before'), partitionKey(1, 'during')])
  })

  it('group-commits concurrent writes to one partition', async () => {
    const dir = freshDir()
    const s = await openAt(dir, uniquePrefix())
    await Promise.all(Array.from({ length: 200 }, (_, i) => s.put(partitionKey(5, `k${i}`), buf(String(i)))))
    await Promise.all(Array.from({ length: 200 }, () => s.incrBy(partitionKey(5, 'n'))))
    expect((await s.get(partitionKey(5, 'n')))?.toString()).toBe('200')
    expect(await scanAll(s, '{p5}:')).toHaveLength(201)
  })

  it('rejects a file: URL without a directory, and a directory it cannot create', async () => {
    expect(await code(createStateBackend('file:'))).toBe(ErrorCodes.INVALID_OPTION)
    const f = join(freshDir(), 'a-file')
    writeFileSync(f, 'x')
    expect(await code(createStateBackend(`file:${f}/sub`))).toBe(ErrorCodes.STATE_BACKEND)
    mkdirSync(join(root, 'ok'), { recursive: true })
  })
})
