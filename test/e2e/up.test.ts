/**
 * `shoal up` as a user runs it (`npm start` is `shoal up --demo`): a coordinator and three
 * workers as child processes with the embedded durable state, the demo's exact results, and a
 * clean shutdown on SIGINT (children gone, the temporary state directory removed).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { afterEach, describe, expect, it } from 'vitest'
import { freePort } from '../helpers/processes.ts'
import { waitFor } from '../helpers/wait-for.ts'

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))
const children: ChildProcess[] = []
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL')
})

function up(args: string[], env: Record<string, string> = {}) {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, 'up', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  children.push(child)
  const out = { stdout: '', stderr: '' }
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out.stdout += d))
  child.stderr.setEncoding('utf8').on('data', (d: string) => (out.stderr += d))
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  return { child, out, exited }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe('shoal up', { timeout: 90_000 }, () => {
  it('--demo: sends events through a 3-worker cluster, prints exact state, exits 0', async () => {
    const port = await freePort()
    const http = await freePort()
    const { out, exited } = up(['--demo', '--listen', `127.0.0.1:${port}`, '--http', `127.0.0.1:${http}`], {
      SHOAL_DEMO_EVENTS: '50000',
    })
    expect(await exited, out.stderr).toBe(0)
    expect(out.stderr).toMatch(/state file:\S+ \(removed on exit/)
    expect(out.stderr).toMatch(/demo: 50,000 events acknowledged in [\d.]+ s/)
    // 50 000 events over 10 000 keys: event i goes to user-(i % 10000) with value i % 10, so
    // user-k gets 5 events of value k % 10.
    const states = [...out.stderr.matchAll(/demo: state of user-(\d+): (\{.*\})/g)]
    expect(states.length).toBeGreaterThan(0)
    for (const [, k, json] of states)
      expect(JSON.parse(json!)).toEqual({ count: 5, sum: 5 * (Number(k) % 10) })
  })

  it('runs until SIGINT, then stops every node and removes its state directory', async () => {
    const port = await freePort()
    const http = await freePort()
    const { child, out, exited } = up(['--listen', `127.0.0.1:${port}`, '--http', `127.0.0.1:${http}`])
    await waitFor(() => out.stdout.includes('"shoal":"up"'), 'cluster up', 60_000)
    const dir = /state file:(\S+)/.exec(out.stderr)?.[1]
    expect(dir).toBeDefined()
    expect(existsSync(dir!)).toBe(true)
    const pids = (await fetch(`http://127.0.0.1:${http}/status`).then((r) => r.json())) as {
      members: unknown[]
    }
    expect(pids.members).toHaveLength(3)
    child.kill('SIGINT')
    expect(await exited).toBe(0)
    expect(existsSync(dir!)).toBe(false)
    // Nothing listens any more.
    await expect(fetch(`http://127.0.0.1:${http}/status`)).rejects.toThrow()
    expect(pidAlive(child.pid!)).toBe(false)
  })
})
