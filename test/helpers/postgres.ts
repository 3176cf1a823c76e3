/**
 * Real PostgreSQL servers for tests and benchmarks (Debian postgresql 15; see
 * /work/shared/recipes/postgres.md). `initdb` runs once per process into a template directory;
 * each server gets a copy of it (about 0.4 s to a ready server), its own free loopback port and
 * its own unix-socket directory. As root, the server runs as the `postgres` OS user (initdb and
 * postgres refuse to run as root).
 *
 * If the server binaries are missing the harness throws (tests fail, never skip):
 * "PostgreSQL server binaries not found (apt-get install postgresql)".
 *
 * Every server (and the template) has a watchdog: a small `sh` child reading a pipe from this
 * process. When this process ends, however it ends (even SIGKILL), the pipe closes and the
 * watchdog stops the server with SIGQUIT and deletes its directory, so a killed test runner
 * leaves nothing behind.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import {
  chownSync,
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
} from 'node:fs'
import { createServer, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'

export interface PostgresServer {
  readonly host: '127.0.0.1'
  readonly port: number
  /** postgres://shoal@127.0.0.1:PORT/postgres (trust authentication: no password). */
  readonly url: string
  /** The server's directory: data/, the unix socket, postgres.log. */
  readonly dir: string
  readonly running: boolean
  /** Fast shutdown (SIGINT: sessions rolled back, clean checkpoint). The data directory stays. */
  stop(): Promise<void>
  /** Immediate shutdown (SIGQUIT), like a crash of the server. The data directory stays. */
  kill(): Promise<void>
  /** Start it again on the same port and data directory (stops it first if running). */
  restart(): Promise<void>
  /** Run one statement on a fresh connection and return its rows. */
  query<R extends object = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<R[]>
  /** Stop (immediately) and delete the directory. */
  dispose(): Promise<void>
  /** The last lines of the server log, for failure messages. */
  logTail(lines?: number): string
}

interface Runas {
  uid?: number
  gid?: number
}

let binDir: string | undefined
function pgBin(): string {
  if (binDir !== undefined) return binDir
  const candidates: string[] = []
  try {
    candidates.push(execFileSync('pg_config', ['--bindir'], { encoding: 'utf8', stdio: 'pipe' }).trim())
  } catch {
    // pg_config comes with libpq-dev or postgresql-common; fall back to the Debian layout.
  }
  try {
    const versions = readdirSync('/usr/lib/postgresql')
      .filter((v) => /^\d+$/.test(v))
      .sort((a, b) => Number(b) - Number(a))
    candidates.push(...versions.map((v) => `/usr/lib/postgresql/${v}/bin`))
  } catch {
    // no /usr/lib/postgresql
  }
  const found = candidates.find((d) => existsSync(join(d, 'initdb')) && existsSync(join(d, 'postgres')))
  if (found === undefined) {
    throw new Error('PostgreSQL server binaries not found (apt-get install postgresql)')
  }
  binDir = found
  return found
}

/** As root: the uid and gid of the `postgres` OS user, which runs initdb and the server. */
function runas(): Runas {
  if (process.getuid?.() !== 0) return {}
  const id = (flag: string): number => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }))
  try {
    return { uid: id('-u'), gid: id('-g') }
  } catch {
    throw new Error('running as root, but there is no `postgres` OS user to run the server as')
  }
}

function ownedTempDir(prefix: string, as: Runas): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  if (as.uid !== undefined) chownSync(dir, as.uid, as.gid ?? as.uid)
  return dir
}

/**
 * A watchdog for `dir` (and the server `pid`, when given): when this process ends, stdin of the
 * watchdog sees EOF, and it SIGQUITs the server, waits for it, and removes the directory. Writing
 * `pid N` to it switches the pid (after a restart); ending it with `done` disarms it.
 */
class Watchdog {
  readonly #child: ChildProcess
  constructor(dir: string) {
    const script = [
      'pid=""',
      'while IFS= read -r line; do',
      '  case "$line" in',
      '    done) exit 0 ;;',
      '    pid\\ *) pid="${line#pid }" ;;',
      '  esac',
      'done',
      'if [ -n "$pid" ]; then',
      '  kill -QUIT "$pid" 2>/dev/null',
      '  i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done',
      'fi',
      'rm -rf "$1"',
    ].join('\n')
    this.#child = spawn('sh', ['-c', script, 'watchdog', dir], {
      stdio: ['pipe', 'ignore', 'ignore'],
      detached: true, // its own process group: a Ctrl-C to the runner does not kill it before the server
    })
    this.#child.unref()
    ;(this.#child.stdin as Socket | null)?.unref()
  }
  watch(pid: number | undefined): void {
    this.#child.stdin?.write(`pid ${pid ?? ''}\n`)
  }
  /** Process ends now: the watchdog does the cleanup (the normal path for a forgotten server). */
  disarm(): void {
    this.#child.stdin?.end('done\n')
  }
}

let template: Promise<string> | undefined
/** initdb once per process; servers copy the result. */
function templateDir(as: Runas): Promise<string> {
  template ??= (async () => {
    const dir = ownedTempDir('shoal-pg-template-', as)
    new Watchdog(dir) // removes the template when this process ends
    await run(join(pgBin(), 'initdb'), initdbArgs(join(dir, 'data')), as, dir)
    return join(dir, 'data')
  })()
  return template
}

function initdbArgs(data: string): string[] {
  return ['-D', data, '-A', 'trust', '-U', 'shoal', '-E', 'UTF8', '--locale=C', '--no-sync']
}

function run(cmd: string, args: string[], as: Runas, cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...as, cwd, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    child.once('error', reject)
    child.once('exit', (code, signal) =>
      code === 0
        ? resolve()
        : reject(new Error(`${cmd} ${args.join(' ')} failed (${code ?? signal}): ${stderr}`)),
    )
  })
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const a = s.address()
      s.close(() => (typeof a === 'object' && a !== null ? resolve(a.port) : reject(new Error('no port'))))
    })
  })
}

export interface StartPostgresOptions {
  /** Extra `-c name=value` server settings. */
  settings?: Record<string, string | number>
}

/** Start a PostgreSQL server on a free loopback port (ready to accept connections). */
export async function startPostgres(options: StartPostgresOptions = {}): Promise<PostgresServer> {
  const bin = pgBin()
  const as = runas()
  const tpl = await templateDir(as)
  const dir = ownedTempDir('shoal-pg-', as)
  const watchdog = new Watchdog(dir)
  const data = join(dir, 'data')
  await run('cp', ['-a', tpl, data], as, dir)
  const port = await freePort()
  const logFile = join(dir, 'postgres.log')
  const settings: Record<string, string | number> = {
    listen_addresses: '127.0.0.1',
    fsync: 'off',
    synchronous_commit: 'off',
    full_page_writes: 'off',
    max_connections: 100,
    ...options.settings,
  }
  const args = ['-D', data, '-p', String(port), '-k', dir]
  for (const [k, v] of Object.entries(settings)) args.push('-c', `${k}=${v}`)
  const url = `postgres://shoal@127.0.0.1:${port}/postgres`

  let proc: { child: ChildProcess; exited: Promise<void> } | undefined
  const logTail = (lines = 20): string => {
    try {
      return readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
    } catch {
      return '(no log)'
    }
  }
  const launch = async (): Promise<void> => {
    const log = openSync(logFile, 'a')
    const child = spawn(join(bin, 'postgres'), args, { ...as, cwd: dir, stdio: ['ignore', log, log] })
    closeSync(log)
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
    const failed = new Promise<Error>((resolve) => child.once('error', resolve))
    proc = { child, exited }
    watchdog.watch(child.pid)
    const deadline = Date.now() + 20_000
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`postgres on port ${port} exited on start:\n${logTail()}`)
      }
      const ok = await Promise.race([ready(url), failed])
      if (ok instanceof Error) throw new Error(`cannot start postgres: ${ok.message}`)
      if (ok) return
      if (Date.now() > deadline) {
        child.kill('SIGQUIT')
        throw new Error(`postgres on port ${port} not ready within 20 s:\n${logTail()}`)
      }
      await new Promise((r) => setTimeout(r, 50))
    }
  }
  const halt = async (signal: NodeJS.Signals): Promise<void> => {
    const p = proc
    proc = undefined
    if (p === undefined) return
    if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill(signal)
    await p.exited
    watchdog.watch(undefined)
  }

  await launch()
  return {
    host: '127.0.0.1',
    port,
    url,
    dir,
    get running() {
      return proc !== undefined && proc.child.exitCode === null && proc.child.signalCode === null
    },
    // SIGINT (fast), not SIGTERM (smart): smart waits for every client to disconnect.
    stop: () => halt('SIGINT'),
    kill: () => halt('SIGQUIT'),
    async restart() {
      await halt('SIGINT')
      await launch()
    },
    async query<R extends object>(sql: string, params?: unknown[]): Promise<R[]> {
      const client = new pg.Client({ connectionString: url })
      await client.connect()
      try {
        return (await client.query<R>(sql, params)).rows
      } finally {
        await client.end()
      }
    },
    async dispose() {
      await halt('SIGQUIT')
      rmSync(dir, { recursive: true, force: true })
      watchdog.disarm()
    },
    logTail,
  }
}

/** One connection attempt: true when the server answers a query. */
async function ready(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 })
  client.on('error', () => {})
  try {
    await client.connect()
    await client.query('select 1')
    return true
  } catch {
    return false
  } finally {
    await client.end().catch(() => {})
  }
}
