/**
 * Bundle directories of job files (src/processing/job-bundle.ts) left by a node that was
 * killed are removed by the next bundle of the same host; a running node's are kept.
 */
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { bundleDirPrefix, sweepBundleDirs } from '../../../src/processing/job-bundle.ts'

const dirs: string[] = []
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true })
})

/** The pid of a process that has exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'])
  return Number(String(r.stdout))
}

describe('bundle directory sweep', () => {
  it("removes this host's directories of processes that are gone, and nothing else", () => {
    const tmp = mkdtempSync(join(tmpdir(), 'shoal-sweep-'))
    dirs.push(tmp)
    const prefix = bundleDirPrefix()
    const gone = join(tmp, `${prefix}${deadPid()}-abc123`)
    const mine = join(tmp, `${prefix}${process.pid}-abc123`)
    const parent = join(tmp, `${prefix}${process.ppid}-abc123`)
    const otherHost = join(tmp, `shoal-job-some-other-host-${deadPid()}-abc123`)
    const legacy = join(tmp, 'shoal-job-abc123')
    for (const d of [gone, mine, parent, otherHost, legacy]) mkdirSync(join(d, 'inner'), { recursive: true })
    sweepBundleDirs(tmp)
    expect(existsSync(gone)).toBe(false)
    for (const d of [mine, parent, otherHost, legacy]) expect(existsSync(d), d).toBe(true)
  })

  it('a missing temporary directory is not an error', () => {
    expect(() => sweepBundleDirs(join(tmpdir(), 'shoal-sweep-missing-dir'))).not.toThrow()
  })
})
