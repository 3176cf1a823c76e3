/**
 * State in a directory: the memory engine, written through to disk before each write resolves.
 *
 * Layout under `DIR/<prefix>/` (names are escaped, see {@link encodeName}):
 *
 * ```
 * LOCK                     pid of the process that has the directory open
 * partitions/p<N>.state    snapshot of partition N: all its keys and its fencing epoch
 * globals/<key>.state      one file per global key (counters, leases, small records)
 * ```
 *
 * Every file is replaced atomically: write `<file>.<pid>.<seq>.tmp`, fsync it, rename it over
 * the file, fsync the directory. A crash leaves either the old or the new file, never a torn
 * one; leftover `.tmp` files are deleted on open. Each file carries a CRC-32, and a file that
 * fails it stops the open (never silently dropped).
 *
 * Guarantees: a write resolves only after the file holding it is durable, so it survives a
 * process crash or restart. A partition's batch and fenced write (epoch included) are one
 * rename, so they are atomic on disk too. Concurrent writes to the same file are group-committed:
 * one rewrite covers every write made before it started.
 *
 * Limits: one process per directory (the LOCK file; a stale lock of a dead pid is taken over);
 * the whole state is held in memory and loaded on open; a write to a partition key rewrites
 * that partition's whole snapshot (O(partition size)), so this suits development, tests and
 * small single-node deployments; use Redis for large or shared state. A write that rejects with
 * STATE_UNAVAILABLE (disk full, directory gone) is visible to reads in this process but may
 * not be on disk; health() is false until a later rewrite succeeds.
 */
import { createHash } from 'node:crypto'
import { mkdir, open, readFile, readdir, rename, unlink, access, constants } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import { Packr } from 'msgpackr'
import { ErrorCodes } from '../../errors.ts'
import { deferred, type Deferred } from '../../util/deferred.ts'
import { StateError, StateUnavailableError, parseKey, validatePrefix } from '../backend.ts'
import { MemoryStore, StoreBackend, type Bucket, type Entry } from '../memory/memory-backend.ts'

export interface FileBackendOptions {
  /** The state directory; created if missing. */
  dir: string
  /** Key prefix (cluster/job); each prefix gets its own subdirectory. @default 'shoal' */
  prefix?: string
  /** fsync files and directories on every write. Turn off only for throw-away state. @default true */
  fsync?: boolean
}

const MAGIC = Buffer.from('SHST', 'latin1')
const FORMAT_VERSION = 1
const HEADER_BYTES = MAGIC.length + 1 + 4
const packr = new Packr({ useRecords: false, moreTypes: false })

/** Directories held open by this process (the LOCK file cannot tell our own opens apart). */
const openDirs = new Set<string>()

/**
 * A file-name-safe, case-insensitive-safe spelling of a key: `[a-z0-9_-]` as is, every other
 * UTF-8 byte as `%XX`; names longer than 200 characters become `~<sha256>` (the key itself is
 * stored inside the file, so the name never has to be decoded).
 */
export function encodeName(name: string): string {
  let out = ''
  for (const byte of Buffer.from(name, 'utf8')) {
    const ok =
      (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x30 && byte <= 0x39) || byte === 0x5f || byte === 0x2d
    out += ok ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`
  }
  return out.length <= 200 ? out : `~${createHash('sha256').update(name, 'utf8').digest('hex')}`
}

type StoredEntry =
  | [key: string, kind: 0, value: Buffer, expiresAt: number]
  | [key: string, kind: 1, fields: [string, number][], expiresAt: number]
interface Snapshot {
  partition: number | null
  epoch: number | null
  entries: [string, Entry][]
}

function encodeSnapshot(s: Snapshot): Buffer {
  const entries: StoredEntry[] = s.entries.map(([key, e]) =>
    e.kind === 'bytes' ? [key, 0, e.value, e.expiresAt] : [key, 1, [...e.fields], e.expiresAt],
  )
  const payload = packr.pack([FORMAT_VERSION, s.partition, s.epoch, entries])
  const header = Buffer.alloc(HEADER_BYTES)
  MAGIC.copy(header, 0)
  header.writeUInt8(FORMAT_VERSION, MAGIC.length)
  header.writeUInt32BE(crc32(payload), MAGIC.length + 1)
  return Buffer.concat([header, payload])
}

function decodeSnapshot(bytes: Buffer, file: string): Snapshot {
  const corrupt = (why: string): StateError =>
    new StateError(ErrorCodes.STATE_BACKEND, `corrupt state file ${file}: ${why}`, { data: { file } })
  if (bytes.length < HEADER_BYTES || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw corrupt('bad magic')
  }
  const version = bytes.readUInt8(MAGIC.length)
  if (version !== FORMAT_VERSION) throw corrupt(`unsupported format version ${version}`)
  const payload = bytes.subarray(HEADER_BYTES)
  if (crc32(payload) !== bytes.readUInt32BE(MAGIC.length + 1)) throw corrupt('checksum mismatch')
  let decoded: unknown
  try {
    decoded = packr.unpack(payload)
  } catch (err) {
    throw corrupt(`undecodable payload (${String(err)})`)
  }
  if (!Array.isArray(decoded) || decoded.length !== 4 || !Array.isArray(decoded[3])) {
    throw corrupt('unexpected payload shape')
  }
  const [, partition, epoch, stored] = decoded as [number, number | null, number | null, unknown[]]
  const entries: [string, Entry][] = []
  for (const item of stored) {
    if (!Array.isArray(item) || item.length !== 4 || typeof item[0] !== 'string') {
      throw corrupt('bad entry')
    }
    const [key, kind, value, expiresAt] = item as [string, number, unknown, number]
    if (kind === 0 && value instanceof Uint8Array) {
      entries.push([key, { kind: 'bytes', value: Buffer.from(value), expiresAt }])
    } else if (kind === 1 && Array.isArray(value)) {
      entries.push([key, { kind: 'hash', fields: new Map(value as [string, number][]), expiresAt }])
    } else {
      throw corrupt(`bad entry for key ${JSON.stringify(key)}`)
    }
  }
  return { partition, epoch, entries }
}

function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === code
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return isErrno(err, 'EPERM')
  }
}

interface Writer {
  pending: Deferred<void> | undefined
  running: Promise<void> | undefined
}

export class FileBackend extends StoreBackend {
  readonly kind = 'file' as const
  /** The directory holding this prefix's files. */
  readonly path: string
  #fsync: boolean
  #touched: Bucket[] = []
  #writers = new Map<string, Writer>()
  #failed = new Map<string, Bucket>()
  #seq = 0
  #closing: Promise<void> | undefined

  private constructor(prefix: string, path: string, store: MemoryStore, fsync: boolean) {
    super(prefix, store)
    this.path = path
    this.#fsync = fsync
    store.onChange = (bucket) => this.#touched.push(bucket)
  }

  /** Open (creating if needed) the state of `prefix` in `dir`, load it and lock it. */
  static async open(options: FileBackendOptions): Promise<FileBackend> {
    if (typeof options.dir !== 'string' || options.dir === '') {
      throw new StateError(
        ErrorCodes.INVALID_OPTION,
        `file state needs a directory (got ${JSON.stringify(options.dir)})`,
      )
    }
    const prefix = validatePrefix(options.prefix ?? 'shoal')
    const path = join(options.dir, encodeName(prefix))
    try {
      await mkdir(join(path, 'partitions'), { recursive: true })
      await mkdir(join(path, 'globals'), { recursive: true })
    } catch (err) {
      throw new StateError(
        ErrorCodes.STATE_BACKEND,
        `cannot create state directory ${path}: ${String(err)}`,
        {
          cause: err,
        },
      )
    }
    await lock(path)
    try {
      const store = new MemoryStore()
      await load(path, store)
      store.startSweeper()
      return new FileBackend(prefix, path, store, options.fsync ?? true)
    } catch (err) {
      await unlock(path)
      throw err
    }
  }

  protected afterWrite(): Promise<void> {
    const touched = this.#touched
    this.#touched = []
    if (touched.length === 0) return Promise.resolve()
    if (touched.length === 1) return this.#persist(touched[0] as Bucket)
    const unique = new Map(touched.map((b) => [bucketId(b), b]))
    return Promise.all([...unique.values()].map((b) => this.#persist(b))).then(() => undefined)
  }

  /** Resolves after a rewrite of `bucket` that started after this call has completed. */
  #persist(bucket: Bucket): Promise<void> {
    const id = bucketId(bucket)
    let w = this.#writers.get(id)
    if (w === undefined) {
      w = { pending: undefined, running: undefined }
      this.#writers.set(id, w)
    }
    w.pending ??= deferred<void>()
    const done = w.pending.promise
    w.running ??= this.#drain(id, bucket, w)
    return done
  }

  async #drain(id: string, bucket: Bucket, w: Writer): Promise<void> {
    while (w.pending !== undefined) {
      const d = w.pending
      w.pending = undefined
      try {
        await this.#writeBucket(bucket)
        this.#failed.delete(id)
        d.resolve()
      } catch (err) {
        this.#failed.set(id, bucket)
        d.reject(
          new StateUnavailableError(`file state: cannot persist ${id} under ${this.path}: ${String(err)}`, {
            cause: err,
          }),
        )
      }
    }
    w.running = undefined
    this.#writers.delete(id)
  }

  #fileOf(bucket: Bucket): { dir: string; file: string } {
    if ('global' in bucket) {
      const dir = join(this.path, 'globals')
      return { dir, file: join(dir, `${encodeName(bucket.global)}.state`) }
    }
    const dir = join(this.path, 'partitions')
    return { dir, file: join(dir, `p${bucket.partition}.state`) }
  }

  async #writeBucket(bucket: Bucket): Promise<void> {
    // Snapshot synchronously: everything written before this point is in it.
    const entries = this.store.bucketEntries(bucket)
    const partition = 'partition' in bucket ? bucket.partition : null
    const epoch = partition === null ? undefined : this.store.epochs.get(partition)
    const { dir, file } = this.#fileOf(bucket)
    if (entries.length === 0 && epoch === undefined) {
      try {
        await unlink(file)
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) throw err
        return
      }
      await this.#syncDir(dir)
      return
    }
    const bytes = encodeSnapshot({ partition, epoch: epoch ?? null, entries })
    const tmp = `${file}.${process.pid}.${this.#seq++}.tmp`
    try {
      const fh = await open(tmp, 'wx')
      try {
        await fh.writeFile(bytes)
        if (this.#fsync) await fh.sync()
      } finally {
        await fh.close()
      }
      await rename(tmp, file)
    } catch (err) {
      await unlink(tmp).catch(() => {})
      throw err
    }
    await this.#syncDir(dir)
  }

  async #syncDir(dir: string): Promise<void> {
    if (!this.#fsync) return
    const fh = await open(dir, 'r')
    try {
      await fh.sync()
    } finally {
      await fh.close()
    }
  }

  /** False while closed, the directory is not writable, or a rewrite has failed and not yet succeeded. */
  async health(): Promise<boolean> {
    if (this.closed) return false
    try {
      await access(this.path, constants.W_OK)
    } catch {
      return false
    }
    if (this.#failed.size === 0) return true
    // Retry the rewrites that failed; healthy again once they land.
    await Promise.allSettled([...this.#failed.values()].map((b) => this.#persist(b)))
    return this.#failed.size === 0
  }

  close(): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close(): Promise<void> {
    this.closed = true
    this.store.stopSweeper()
    const running: Promise<void>[] = []
    for (const w of this.#writers.values()) if (w.running !== undefined) running.push(w.running)
    await Promise.allSettled(running)
    await unlock(this.path)
  }
}

function bucketId(bucket: Bucket): string {
  return 'global' in bucket ? `global ${JSON.stringify(bucket.global)}` : `partition ${bucket.partition}`
}

async function lock(path: string): Promise<void> {
  const lockFile = join(path, 'LOCK')
  const inUse = (owner: string): StateError =>
    new StateError(ErrorCodes.STATE_BACKEND, `state directory ${path} is in use by ${owner}`, {
      data: { path },
    })
  if (openDirs.has(path)) throw inUse('this process')
  const body = JSON.stringify({ pid: process.pid, host: hostname(), since: new Date().toISOString() })
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(lockFile, 'wx')
      try {
        await fh.writeFile(body)
        await fh.sync()
      } finally {
        await fh.close()
      }
      openDirs.add(path)
      return
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) {
        throw new StateError(ErrorCodes.STATE_BACKEND, `cannot lock ${lockFile}: ${String(err)}`, {
          cause: err,
        })
      }
    }
    let owner: { pid?: unknown; host?: unknown } = {}
    try {
      owner = JSON.parse(await readFile(lockFile, 'utf8')) as typeof owner
    } catch {
      // Unreadable or half-written lock: treat as stale.
    }
    const pid = typeof owner.pid === 'number' ? owner.pid : undefined
    const sameHost = owner.host === undefined || owner.host === hostname()
    if (pid !== undefined && pid !== process.pid && (!sameHost || pidAlive(pid))) {
      throw inUse(`pid ${pid}${sameHost ? '' : ` on ${String(owner.host)}`}`)
    }
    // Stale (dead pid, or an earlier run of a process that reused our pid): take it over.
    await unlink(lockFile).catch(() => {})
  }
  throw inUse('another process (lock contention)')
}

async function unlock(path: string): Promise<void> {
  openDirs.delete(path)
  await unlink(join(path, 'LOCK')).catch(() => {})
}

async function load(path: string, store: MemoryStore): Promise<void> {
  const now = Date.now()
  for (const sub of ['partitions', 'globals'] as const) {
    const dir = join(path, sub)
    for (const name of await readdir(dir)) {
      const file = join(dir, name)
      if (name.endsWith('.tmp')) {
        await unlink(file).catch(() => {})
        continue
      }
      if (!name.endsWith('.state')) continue
      const snap = decodeSnapshot(await readFile(file), file)
      const expectPartition = sub === 'partitions' ? Number(name.slice(1, -'.state'.length)) : null
      if (snap.partition !== expectPartition) {
        throw new StateError(
          ErrorCodes.STATE_BACKEND,
          `corrupt state file ${file}: holds partition ${snap.partition}`,
        )
      }
      if (snap.partition !== null && snap.epoch !== null) store.epochs.set(snap.partition, snap.epoch)
      for (const [key, entry] of snap.entries) {
        const parsed = parseKey(key)
        if ((parsed.partition ?? null) !== snap.partition) {
          throw new StateError(
            ErrorCodes.STATE_BACKEND,
            `corrupt state file ${file}: foreign key ${JSON.stringify(key)}`,
          )
        }
        if (entry.expiresAt !== 0 && entry.expiresAt <= now) continue
        store.setEntry(key, entry, false)
      }
    }
  }
}

export function openFileBackend(options: FileBackendOptions): Promise<FileBackend> {
  return FileBackend.open(options)
}
