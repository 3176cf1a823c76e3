/**
 * The partition count recorded with a durable state (src/state/layout.ts): the first start
 * records it, the same count passes, another one is SHOAL_ERR_CONFIG_MISMATCH naming both; on a
 * real redis-server and in a real directory, and through `shoal coordinator` itself.
 */
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ErrorCodes } from '../../../src/errors.ts'
import { createStateBackend } from '../../../src/state/index.ts'
import { checkBackendLayout, checkFileLayout, LAYOUT_FILE } from '../../../src/state/layout.ts'
import { startRedis, type RedisServer } from '../../helpers/redis.ts'

let redis: RedisServer
beforeAll(async () => {
  redis = await startRedis()
})
afterAll(async () => {
  await redis.dispose()
})

describe('state layout: file:', () => {
  it('records the count, accepts it again, refuses another', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'shoal-layout-'))
    await checkFileLayout(dir, 64)
    expect(JSON.parse(readFileSync(join(dir, LAYOUT_FILE), 'utf8'))).toEqual({ partitions: 64 })
    await checkFileLayout(dir, 64)
    await expect(checkFileLayout(dir, 256)).rejects.toMatchObject({
      code: ErrorCodes.CONFIG_MISMATCH,
      message: expect.stringContaining('written with 64 partitions, not 256'),
    })
  })

  it('creates a state directory that does not exist yet (a new --state file:DIR)', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'shoal-layout-')), 'new', 'state')
    await checkFileLayout(dir, 16)
    expect(JSON.parse(readFileSync(join(dir, LAYOUT_FILE), 'utf8'))).toEqual({ partitions: 16 })
  })

  it('a directory from before the record, with a partition at or above the count, is refused', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'shoal-layout-'))
    mkdirSync(join(dir, 'shoal-p200'))
    mkdirSync(join(dir, 'shoal-p64'))
    await expect(checkFileLayout(dir, 64)).rejects.toMatchObject({ code: ErrorCodes.CONFIG_MISMATCH })
    await checkFileLayout(dir, 256)
    expect(JSON.parse(readFileSync(join(dir, LAYOUT_FILE), 'utf8'))).toEqual({ partitions: 256 })
  })

  it('a record that is not one is a state error, not a silent pass', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'shoal-layout-'))
    writeFileSync(join(dir, LAYOUT_FILE), 'partitions=64')
    await expect(checkFileLayout(dir, 64)).rejects.toMatchObject({ code: ErrorCodes.STATE_BACKEND })
  })
})

describe('state layout: redis://', () => {
  it('records the count once (two at once agree), accepts it again, refuses another', async () => {
    const a = await createStateBackend(redis.url, { prefix: 'layout-a' })
    const b = await createStateBackend(redis.url, { prefix: 'layout-a' })
    try {
      const both = await Promise.allSettled([
        checkBackendLayout(a, 128, 'redis'),
        checkBackendLayout(b, 32, 'redis'),
      ])
      // One of the two recorded its count; the other was refused with it.
      expect(both.filter((r) => r.status === 'fulfilled')).toHaveLength(1)
      const refused = both.find((r): r is PromiseRejectedResult => r.status === 'rejected')!
      expect(refused.reason).toMatchObject({ code: ErrorCodes.CONFIG_MISMATCH })
      const winner = both[0].status === 'fulfilled' ? 128 : 32
      await checkBackendLayout(a, winner, 'redis')
    } finally {
      await a.close()
      await b.close()
    }
  })
})

describe('shoal coordinator over a state written with another partition count', () => {
  it('exits 1 with SHOAL_ERR_CONFIG_MISMATCH before it listens', () => {
    const dir = mkdtempSync(join(tmpdir(), 'shoal-layout-'))
    writeFileSync(join(dir, LAYOUT_FILE), `${JSON.stringify({ partitions: 64 })}\n`)
    const main = new URL('../../../src/cli/main.ts', import.meta.url).pathname
    const r = spawnSync(
      process.execPath,
      [
        '--import',
        'tsx',
        main,
        'coordinator',
        '--state',
        `file:${dir}`,
        '--listen',
        '127.0.0.1:0',
        '--http',
        '127.0.0.1:0',
      ],
      { encoding: 'utf8', timeout: 30_000 },
    )
    expect(r.status).toBe(1)
    expect(r.stderr).toContain('SHOAL_ERR_CONFIG_MISMATCH')
    expect(r.stderr).toContain('written with 64 partitions, not 256')
    expect(r.stdout).not.toContain('listening')
  })
})
