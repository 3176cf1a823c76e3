/**
 * Real Shoal nodes as child processes for end-to-end tests. Each node prints one JSON line on
 * stdout once it listens ({"shoal":"listening", ...}); logs go to stderr and are kept so a
 * failing test can show them.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { onTestFailed } from 'vitest'
import { onListening } from '../../src/cli/up.ts'
import type { ClusterStatus } from '../../src/coordinator/coordinator.ts'
import { waitFor } from './wait-for.ts'

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))

export interface NodeInfo {
  shoal: 'listening'
  role: string
  nodeId: string
  address: string
  http: string
}

export interface ShoalProcess {
  child: ChildProcess
  info: NodeInfo
  logs: string[]
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  signal(sig: NodeJS.Signals): void
  /** GET a JSON endpoint of the node's HTTP server. */
  http<T = unknown>(path: string): Promise<{ status: number; body: T }>
  /** Resolves when the node prints {"shoal":"listening"} (a standby coordinator: once it leads). */
  listening: Promise<NodeInfo>
}

const live = new Set<ShoalProcess>()

/**
 * Start `shoal <args>` and wait until it listens (`until: 'standby'`: until a coordinator
 * replica reports it waits as a standby; `listening` resolves later, if it comes to lead).
 */
export async function startShoal(
  args: string[],
  env: Record<string, string> = {},
  timeoutMs = 20_000,
  until: 'listening' | 'standby' = 'listening',
  /** How node runs the CLI: the sources through tsx, or a built main.js. */
  entry: readonly string[] = ['--import', 'tsx', MAIN],
): Promise<ShoalProcess> {
  const child = spawn(process.execPath, [...entry, ...args], {
    env: { ...process.env, SHOAL_LOG_LEVEL: 'debug', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const logs: string[] = []
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    logs.push(d)
    if (logs.length > 2000) logs.splice(0, 1000)
  })
  const exited = once(child, 'exit').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }))
  let listened: (info: NodeInfo) => void = () => {}
  const listening = new Promise<NodeInfo>((resolve) => (listened = resolve))
  const info = await new Promise<NodeInfo>((resolve, reject) => {
    const timer = setTimeout(() => {
      // Not left running: killAll() only knows the processes that started.
      child.kill('SIGKILL')
      reject(
        new Error(
          `shoal ${args.join(' ')} did not ${until === 'standby' ? 'stand by' : 'listen'} within ${timeoutMs} ms\n${logs.join('')}`,
        ),
      )
    }, timeoutMs)
    onListening(child.stdout, (j) => {
      listened(j)
      if (until !== 'listening') return
      clearTimeout(timer)
      resolve(j)
    })
    if (until === 'standby') {
      onStandby(child.stdout, (j) => {
        clearTimeout(timer)
        resolve(j)
      })
    }
    void exited.then(({ code, signal }) => {
      clearTimeout(timer)
      reject(
        new Error(`shoal ${args.join(' ')} exited (${code ?? signal}) before listening\n${logs.join('')}`),
      )
    })
  })
  const p: ShoalProcess = {
    child,
    info,
    listening,
    logs,
    exited,
    signal: (sig) => {
      child.kill(sig)
    },
    http: async <T>(path: string) => {
      const res = await fetch(`http://${info.http}${path}`, { signal: AbortSignal.timeout(3000) })
      const text = await res.text()
      let body: unknown = text
      try {
        body = JSON.parse(text)
      } catch {
        // text
      }
      return { status: res.status, body: body as T }
    },
  }
  live.add(p)
  void exited.then(() => live.delete(p))
  onTestFailed(() => {
    console.error(`--- logs of shoal ${args.join(' ')} (${info.nodeId}) ---\n${logs.join('').slice(-20_000)}`)
  })
  return p
}

/** A standby coordinator's line: {"shoal":"standby","http":...} (no transport address yet). */
function onStandby(stdout: NodeJS.ReadableStream, callback: (info: NodeInfo) => void): void {
  let buf = ''
  stdout.on('data', (d: string) => {
    buf += d
    let i: number
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i)
      buf = buf.slice(i + 1)
      if (!line.includes('"standby"')) continue
      try {
        const j = JSON.parse(line) as { shoal?: string; role?: string; nodeId?: string; http?: string }
        if (j.shoal === 'standby') {
          callback({
            shoal: 'listening',
            role: j.role ?? 'coordinator',
            nodeId: j.nodeId ?? '',
            address: '',
            http: j.http ?? '',
          })
        }
      } catch {
        // other output
      }
    }
  })
}

/** Kill every node still running (afterEach). SIGCONT first so stopped ones can die. */
export async function killAll(): Promise<void> {
  await Promise.all(
    [...live].map(async (p) => {
      p.child.kill('SIGCONT')
      p.child.kill('SIGKILL')
      await p.exited
    }),
  )
}

/** A free TCP port on loopback (for a node that must come back on the same port). */
export async function freePort(): Promise<number> {
  const srv = createServer()
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r))
  const port = (srv.address() as { port: number }).port
  await new Promise<void>((r) => srv.close(() => r()))
  return port
}

/**
 * Wait until `n` workers are alive and every partition is owned by one of them and ready;
 * resolves with that status. `read` fetches the coordinator's /status (with a token if needed).
 */
export async function waitSettled(
  read: () => Promise<ClusterStatus>,
  n: number,
  timeoutMs = 30_000,
): Promise<ClusterStatus> {
  let last: ClusterStatus | undefined
  await waitFor(
    async () => {
      last = await read()
      const alive = last.members.filter((m) => m.state === 'alive')
      return (
        last.coordinator.ready &&
        alive.length === n &&
        last.assignment.owners.every((o) => o !== null && alive.some((m) => m.id === o)) &&
        alive.every((m) => m.readyPartitions === m.partitions)
      )
    },
    `${n} workers serve every partition, all ready`,
    timeoutMs,
  )
  return last!
}

/** The node's /status as JSON. */
export async function statusOf(p: ShoalProcess): Promise<ClusterStatus> {
  return (await p.http<ClusterStatus>('/status')).body
}
