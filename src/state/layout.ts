/**
 * The partition count a durable state was written with. A key's partition is a hash of the key
 * modulo the count, so a cluster started over existing state with another `--partitions` would
 * look every key up in another partition's state: counts restarting from zero, old values
 * resurfacing, silently. The coordinator records the count with the state the first time and
 * refuses to start with another one (SHOAL_ERR_CONFIG_MISMATCH), before any partition moves.
 *
 * - file: `<dir>/layout.json` ({"partitions": N}), created with O_EXCL. A state directory from
 *   before this record existed is still checked for a partition directory at or above N (it was
 *   written with more partitions).
 * - redis: the key `layout` under the store's prefix, set only if absent (two coordinators
 *   starting at once agree on one value).
 */
import { existsSync } from 'node:fs'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ErrorCodes, ShoalError } from '../errors.ts'
import type { StateBackend } from './backend.ts'

export const LAYOUT_FILE = 'layout.json'
export const LAYOUT_KEY = 'layout'

function mismatch(where: string, stored: number | string, partitions: number): ShoalError {
  return new ShoalError(
    ErrorCodes.CONFIG_MISMATCH,
    `the state at ${where} was written with ${stored} partitions, not ${partitions}: every key would be ` +
      `looked up in another partition's state. Start with --partitions ${stored}, or with a new state`,
  )
}

function parseLayout(text: string, where: string): number {
  let v: unknown
  try {
    v = JSON.parse(text)
  } catch {
    v = undefined
  }
  const p = (v as { partitions?: unknown } | undefined)?.partitions
  if (typeof p !== 'number' || !Number.isSafeInteger(p) || p < 1) {
    throw new ShoalError(
      ErrorCodes.STATE_BACKEND,
      `${where}: not a Shoal state layout record: ${text.slice(0, 100)}`,
    )
  }
  return p
}

/** file: state in `dir` (partition directories `<prefix>-p<N>`). */
export async function checkFileLayout(dir: string, partitions: number, prefix = 'shoal'): Promise<void> {
  const path = join(dir, LAYOUT_FILE)
  if (!existsSync(path) && existsSync(join(dir, `${prefix}-p${partitions}`))) {
    throw mismatch(dir, `more than ${partitions}`, partitions)
  }
  const record = `${JSON.stringify({ partitions })}\n`
  try {
    // A state directory that does not exist yet is created, as the stores create theirs.
    await mkdir(dir, { recursive: true })
    await writeFile(path, record, { flag: 'wx' })
    return
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new ShoalError(ErrorCodes.STATE_BACKEND, `cannot write ${path}: ${(err as Error).message}`, {
        cause: err,
      })
    }
  }
  const stored = parseLayout(await readFile(path, 'utf8'), path)
  if (stored !== partitions) throw mismatch(dir, stored, partitions)
}

/** redis:// (or any StateBackend): the `layout` key, set if absent. */
export async function checkBackendLayout(
  backend: StateBackend,
  partitions: number,
  where: string,
): Promise<void> {
  const record = Buffer.from(JSON.stringify({ partitions }))
  if (await backend.compareAndSet(LAYOUT_KEY, null, record)) return
  const current = await backend.get(LAYOUT_KEY)
  // Deleted in between: set it again.
  if (current === undefined) return checkBackendLayout(backend, partitions, where)
  const stored = parseLayout(current.toString('utf8'), `${where} key ${LAYOUT_KEY}`)
  if (stored !== partitions) throw mismatch(where, stored, partitions)
}
