/**
 * `shoal up`: a local cluster on loopback: one coordinator and N workers as child processes
 * (the same CLI, so what runs here is what runs in a container). Prints the endpoints, and on
 * Ctrl-C or SIGTERM drains the workers, stops the coordinator and exits.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import type { Readable } from 'node:stream'

export interface UpOptions {
  workers: number
  transport: string
  /** Extra flags passed to every node (e.g. --token, --state). */
  nodeArgs: string[]
  /** Extra flags for the workers only (e.g. --source, --sink). */
  workerArgs?: string[]
  coordinatorListen: string
  coordinatorHttp: string
  job: string | undefined
  threads: number | undefined
  log: (line: string) => void
}

export interface NodeListening {
  shoal: 'listening'
  role: string
  nodeId: string
  address: string
  http: string
}

export interface RunningCluster {
  coordinator: NodeListening
  workers: NodeListening[]
  /** Drain workers, then stop the coordinator. */
  stop(): Promise<void>
  /** Resolves when any node exits on its own (a crash), with its description. */
  crashed: Promise<string>
}

/**
 * Watch a node's stdout for the line it prints once it listens ({"shoal":"listening",...});
 * every other line is ignored. Also used by tests and benchmarks that spawn nodes.
 */
export function onListening(stdout: Readable, callback: (info: NodeListening) => void): void {
  let buf = ''
  stdout.setEncoding('utf8').on('data', (d: string) => {
    buf += d
    let i: number
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i)
      buf = buf.slice(i + 1)
      if (!line.startsWith('{')) continue
      try {
        const j = JSON.parse(line) as Partial<NodeListening>
        if (j.shoal === 'listening') callback(j as NodeListening)
      } catch {
        // other output
      }
    }
  })
}

/**
 * V8 flags of every node process:
 * - `--max-semi-space-size=4`: the main thread's semi-spaces, as the processing threads'
 *   (engine.ts, DEFAULT_YOUNG_GENERATION_MB): 4 MiB instead of V8's 16-32 MiB. A V8 heap is
 *   sized when its isolate starts, so this can only be a flag of the node process; the image
 *   sets it in NODE_OPTIONS (docs/deploy.md).
 * - `--no-memory-reducer`: V8's memory reducer shrinks an idle heap, and a worker's next burst
 *   then grows it again and re-marks its state: windowed jobs on workers idle for a few seconds
 *   between bursts ran at 57-63% of count instead of 73-79% (docs/benchmarks.md, "The memory
 *   reducer"). A worker's peak memory is what it must be given anyway. Not allowed in
 *   NODE_OPTIONS: the image passes it to node, and a worker sets it for its threads at start.
 */
export const MAIN_THREAD_FLAGS = ['--max-semi-space-size=4', '--no-memory-reducer']

/**
 * The main thread's semi-spaces (MiB) in a worker that reads a source (--source or
 * SHOAL_SOURCE). Its main thread decodes every entry it reads and keeps them (ids, records,
 * replies in parse) until their owners acknowledge them, tens of milliseconds: with 4 MiB
 * semi-spaces most of a scavenge survived, was copied and promoted, and GC was a fifth of the
 * thread. The Redis Stream source on 2 cores (docs/benchmarks.md, "Connectors"): 4 MiB 176-180k
 * entries/s (153-156k per CPU-second), 16 MiB 184-191k (164-174k), 32 MiB 206-213k (197-211k),
 * 64 MiB 206k (203k); a reading worker's peak RSS 255 -> 307 MiB at 32. Those workers only.
 */
export const SOURCE_WORKER_SEMI_SPACE_MB = 32

/** A node started with `args` (and `env`, which it inherits) is a worker that reads a source. */
export function readsSource(args: readonly string[], env: NodeJS.ProcessEnv): boolean {
  if (args[0] !== 'worker') return false
  if (args.some((a) => a === '--source' || a.startsWith('--source='))) return true
  return (env.SHOAL_SOURCE ?? '') !== ''
}

/**
 * This process's Node flags, plus each of MAIN_THREAD_FLAGS the user did not set otherwise
 * (SOURCE_WORKER_SEMI_SPACE_MB semi-spaces for a worker that reads a source).
 */
export function nodeFlagsForNodes(
  execArgv: readonly string[],
  nodeOptions = '',
  node: { readsSource?: boolean } = {},
): string[] {
  const given = [...execArgv, nodeOptions]
  const has = (name: string): boolean => given.some((f) => f.includes(name))
  const flags = [...execArgv]
  if (!has('--max-semi-space-size')) {
    flags.push(`--max-semi-space-size=${node.readsSource === true ? SOURCE_WORKER_SEMI_SPACE_MB : 4}`)
  }
  if (!has('memory-reducer')) flags.push('--no-memory-reducer')
  return flags
}

/**
 * Environment of every node process: glibc's malloc serves blocks from 32 KiB up with their own
 * mappings (returned to the system when freed) instead of from its arenas, where the column
 * buffers of the time runtime (store.ts, doubling per partition) and the socket reads left
 * fragments that RSS kept: 1M open windows per worker 298-309 -> 280-286 MiB, 1M keys (count)
 * 235 -> 226 MiB, end to end throughput no lower (docs/benchmarks.md, "Worker memory"). glibc
 * reads it at process start, so it is set for the nodes `shoal up` starts and in the image; a
 * value the user set wins. Other C libraries ignore it.
 */
export const NODE_ENV_DEFAULTS: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: '32768' }

/** `env` plus each of NODE_ENV_DEFAULTS it does not set. */
export function nodeEnvForNodes(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out = { ...env }
  for (const [k, v] of Object.entries(NODE_ENV_DEFAULTS)) if (out[k] === undefined) out[k] = v
  return out
}

/**
 * The Node flags of a node started with `args` (its command line after the entry): `execArgv`
 * plus MAIN_THREAD_FLAGS as nodeFlagsForNodes gives them, for a worker that reads a source
 * those of one.
 */
export function nodeFlagsForNode(
  args: readonly string[],
  execArgv: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): string[] {
  return nodeFlagsForNodes(execArgv, env.NODE_OPTIONS, { readsSource: readsSource(args, env) })
}

function spawnNode(args: string[]): { child: ChildProcess; listening: Promise<NodeListening> } {
  // Re-run this CLI with the same Node flags (tsx in development, plain node when built).
  const flags = nodeFlagsForNode(args, process.execArgv)
  const child = spawn(process.execPath, [...flags, process.argv[1]!, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: nodeEnvForNodes(process.env),
  })
  const listening = new Promise<NodeListening>((resolve, reject) => {
    onListening(child.stdout, resolve)
    child.once('exit', (code, signal) =>
      reject(new Error(`shoal ${args[0]} exited (${code ?? signal}) before it listened`)),
    )
  })
  return { child, listening }
}

export async function startLocalCluster(o: UpOptions): Promise<RunningCluster> {
  const children: ChildProcess[] = []
  let stopping = false
  const common = ['--transport', o.transport, ...o.nodeArgs]
  const coord = spawnNode([
    'coordinator',
    '--listen',
    o.coordinatorListen,
    '--http',
    o.coordinatorHttp,
    ...common,
  ])
  children.push(coord.child)
  const coordinator = await coord.listening
  const workerArgs = [
    'worker',
    '--coordinator',
    coordinator.address,
    '--listen',
    '127.0.0.1:0',
    '--http',
    '127.0.0.1:0',
    ...(o.job !== undefined ? ['--job', o.job] : []),
    ...(o.threads !== undefined ? ['--threads', String(o.threads)] : []),
    ...(o.workerArgs ?? []),
    ...common,
  ]
  const ws = Array.from({ length: o.workers }, () => spawnNode(workerArgs))
  children.push(...ws.map((w) => w.child))
  const workers = await Promise.all(ws.map((w) => w.listening))
  const crashed = new Promise<string>((resolve) => {
    for (const c of children) {
      c.once('exit', (code, signal) => {
        if (!stopping) resolve(`pid ${c.pid} exited (${code ?? signal})`)
      })
    }
  })
  return {
    coordinator,
    workers,
    crashed,
    async stop() {
      stopping = true
      const workerChildren = children.slice(1)
      await Promise.all(
        workerChildren.map(async (c) => {
          if (c.exitCode !== null || c.signalCode !== null) return
          c.kill('SIGTERM')
          await once(c, 'exit')
        }),
      )
      const cc = children[0]!
      if (cc.exitCode === null && cc.signalCode === null) {
        cc.kill('SIGTERM')
        await once(cc, 'exit')
      }
    },
  }
}
