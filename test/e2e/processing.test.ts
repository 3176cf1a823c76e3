/**
 * Exact results through real processes: `shoal send` 200k NDJSON events over 5k keys to a
 * coordinator and three workers, then `shoal state dump` and `shoal state get` must report
 * every key's exact count and sum. Over TCP and gRPC.
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterEach, describe, expect, it } from 'vitest'
import type { ClusterStatus } from '../../src/coordinator/coordinator.ts'
import { killAll, startShoal, type ShoalProcess } from '../helpers/processes.ts'
import { waitFor } from '../helpers/wait-for.ts'

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))
afterEach(killAll)

function shoal(args: string[], input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    child.on('error', reject)
    child.on('exit', (code) => resolve({ code: code ?? -1, stdout, stderr }))
    child.stdin.end(input ?? '')
  })
}

for (const transport of ['tcp', 'grpc'] as const) {
  describe(`processing through real processes over ${transport}`, { timeout: 120_000 }, () => {
    async function cluster(): Promise<ShoalProcess> {
      const c = await startShoal([
        'coordinator',
        '--transport',
        transport,
        '--listen',
        '127.0.0.1:0',
        '--http',
        '127.0.0.1:0',
      ])
      const args = [
        'worker',
        '--transport',
        transport,
        '--coordinator',
        c.info.address,
        '--listen',
        '127.0.0.1:0',
        '--http',
        '127.0.0.1:0',
        '--threads',
        '1',
      ]
      await Promise.all([startShoal(args), startShoal(args), startShoal(args)])
      await waitFor(
        async () => {
          const s = (await c.http<ClusterStatus>('/status')).body
          return (
            s.coordinator.ready &&
            s.members.length === 3 &&
            s.members.every((m) => m.partitions > 0 && m.readyPartitions === m.partitions)
          )
        },
        'cluster ready',
        30_000,
      )
      return c
    }

    it('200k events over 5k keys: exact count and sum for every key; malformed lines reported', async () => {
      const c = await cluster()
      const expected = new Map<string, { count: number; sum: number }>()
      const lines: string[] = []
      for (let i = 0; i < 200_000; i++) {
        const key = `user-${(i * 7919) % 5000}`
        const value = (i % 17) - 5
        lines.push(JSON.stringify({ key, value, i }))
        const e = expected.get(key) ?? { count: 0, sum: 0 }
        e.count++
        e.sum += value
        expected.set(key, e)
      }
      const file = join(mkdtempSync(join(tmpdir(), 'shoal-send-')), 'events.ndjson')
      writeFileSync(file, lines.join('\n') + '\n')
      const sent = await shoal(['send', '--coordinator', c.info.address, '--transport', transport, file])
      expect(sent.code, sent.stderr).toBe(0)
      expect(sent.stderr).toMatch(/200000 of 200000 events acknowledged/)

      const dump = await shoal(['state', 'dump', '--coordinator', c.info.address, '--transport', transport])
      expect(dump.code, dump.stderr).toBe(0)
      const got = new Map<string, unknown>()
      for (const line of dump.stdout.trim().split('\n')) {
        const { key, state } = JSON.parse(line) as { key: string; state: unknown }
        expect(got.has(key), `key ${key} dumped twice`).toBe(false)
        got.set(key, state)
      }
      expect(got.size).toBe(5000)
      for (const [k, e] of expected) expect(got.get(k), k).toEqual(e)

      const one = await shoal([
        'state',
        'get',
        'user-42',
        '--coordinator',
        c.info.address,
        '--transport',
        transport,
      ])
      expect(JSON.parse(one.stdout)).toEqual(expected.get('user-42'))
      const http = await c.http<{ state: unknown }>('/state/user-42')
      expect(http.body.state).toEqual(expected.get('user-42'))

      // Malformed lines are reported with their numbers, the valid ones still delivered, exit 1.
      const bad = await shoal(
        ['send', '--coordinator', c.info.address, '--transport', transport, '-'],
        '{"key":"mal-a","value":1}\n{"key":"b"\n[1,2]\n{"value":3}\n{"key":"mal-a","value":2}\n',
      )
      expect(bad.code).toBe(1)
      expect(bad.stderr).toMatch(/line 2: not valid JSON/)
      expect(bad.stderr).toMatch(/line 3: expected a JSON object/)
      expect(bad.stderr).toMatch(/line 4: field "key"/)
      const a = await shoal([
        'state',
        'get',
        'mal-a',
        '--coordinator',
        c.info.address,
        '--transport',
        transport,
      ])
      expect(JSON.parse(a.stdout)).toEqual({ count: 2, sum: 3 })
    })
  })
}
