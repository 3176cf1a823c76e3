/**
 * Real redis-server processes for tests (Debian package redis-server 7.x), on free loopback
 * ports, each in its own temp directory: plain, AOF, requirepass/ACL, mutual TLS (with the PKI of
 * certs.ts), a 3-master cluster, and a sentinel watching a server. If redis-server is missing the
 * harness throws (tests fail, never skip): "redis-server not found: apt-get install -y redis-server".
 *
 * Start one server per test file (beforeAll) and give each test its own key prefix. Every
 * server is killed when the test process exits, even if a test forgot to stop it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { connect, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { testPki } from './certs.ts'

export interface RedisServerOptions {
  /** appendonly yes, appendfsync always: data survives stop()/restart() (even SIGKILL). */
  aof?: boolean
  /** requirepass: the `default` user's password. */
  password?: string
  /** ACL file lines, e.g. ['user default off', 'user worker on >pw ~shoal:* +@all']. */
  aclLines?: string[]
  /** TLS only (no plaintext port), client certificates required (mutual TLS). */
  tls?: boolean
  /** Internal: cluster-enabled yes. */
  cluster?: boolean
  /** Internal: fixed port (default: a free one). */
  port?: number
}

export interface RedisTlsClient {
  ca: string
  cert: string
  key: string
}

export interface RedisServer {
  host: string
  port: number
  /** redis://127.0.0.1:PORT (rediss:// for TLS; with `:password@` for requirepass). */
  url: string
  /** The URL with the given ACL credentials. */
  urlFor(username: string | undefined, password: string): string
  dir: string
  /** Client-side PEMs when started with tls. */
  tls: RedisTlsClient | undefined
  readonly running: boolean
  /** Stop the server (SIGTERM by default; SIGKILL simulates a crash). The directory stays. */
  stop(signal?: NodeJS.Signals): Promise<void>
  /** Start it again on the same port and directory (AOF data is replayed). Stops it first if running. */
  restart(): Promise<void>
  /** Send a signal to the server process (SIGSTOP/SIGCONT: unreachable without closing sockets). */
  signal(sig: NodeJS.Signals): void
  /** Run redis-cli against this server; returns stdout. */
  cli(...args: string[]): string
  /** Stop and delete the directory. */
  dispose(): Promise<void>
}

const children = new Set<ChildProcess>()
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL')
})

let checked = false
function requireRedisServer(): void {
  if (checked) return
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' })
  if (r.error !== undefined || r.status !== 0) {
    throw new Error('redis-server not found: apt-get install -y redis-server')
  }
  checked = true
}

/** A free loopback port whose cluster-bus port (port + 10000) is free too. */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = createServer()
      s.once('error', reject)
      s.listen(0, '127.0.0.1', () => {
        const a = s.address()
        s.close(() => resolve(typeof a === 'object' && a !== null ? a.port : 0))
      })
    })
    if (port === 0 || port + 10000 > 65535) continue
    const busFree = await new Promise<boolean>((resolve) => {
      const s = createServer()
      s.once('error', () => resolve(false))
      s.listen(port + 10000, '127.0.0.1', () => s.close(() => resolve(true)))
    })
    if (busFree) return port
  }
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

function logTail(file: string): string {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-15).join('\n')
  } catch {
    return '(no log)'
  }
}

interface Proc {
  child: ChildProcess
  exited: Promise<void>
}

async function launch(args: string[], port: number, logFile: string, what: string): Promise<Proc> {
  requireRedisServer()
  const child = spawn('redis-server', args, { stdio: 'ignore' })
  children.add(child)
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      children.delete(child)
      resolve()
    }),
  )
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve))
  const deadline = Date.now() + 10_000
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${what} exited (${child.exitCode ?? child.signalCode}) on start:\n${logTail(logFile)}`)
    }
    const ok = await Promise.race([portOpen(port), spawnError.then((e) => e)])
    if (ok instanceof Error) throw new Error(`cannot start ${what}: ${ok.message}`)
    if (ok) return { child, exited }
    if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`${what} did not open port ${port} within 10 s:\n${logTail(logFile)}`)
    }
    await new Promise((r) => setTimeout(r, 10))
  }
}

async function halt(proc: Proc | undefined, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (proc === undefined) return
  if (proc.child.exitCode === null && proc.child.signalCode === null) proc.child.kill(signal)
  await proc.exited
}

/** Start a redis-server on a free loopback port. */
export async function startRedis(options: RedisServerOptions = {}): Promise<RedisServer> {
  requireRedisServer()
  const dir = mkdtempSync(join(tmpdir(), 'shoal-redis-'))
  const port = options.port ?? (await freePort())
  const logFile = join(dir, 'redis.log')
  const args = ['--bind', '127.0.0.1', '--dir', dir, '--save', '', '--daemonize', 'no', '--logfile', logFile]
  args.push('--appendonly', options.aof === true ? 'yes' : 'no')
  if (options.aof === true) args.push('--appendfsync', 'always')
  if (options.password !== undefined) args.push('--requirepass', options.password)
  if (options.aclLines !== undefined) {
    writeFileSync(join(dir, 'users.acl'), options.aclLines.join('\n') + '\n')
    args.push('--aclfile', join(dir, 'users.acl'))
  }
  if (options.cluster === true) {
    args.push('--cluster-enabled', 'yes', '--cluster-config-file', join(dir, 'nodes.conf'))
    args.push('--cluster-node-timeout', '2000')
  }
  let tls: RedisTlsClient | undefined
  if (options.tls === true) {
    const pki = testPki()
    const f = (name: string, pem: string): string => {
      writeFileSync(join(dir, name), pem)
      return join(dir, name)
    }
    args.push('--port', '0', '--tls-port', String(port))
    args.push(
      '--tls-cert-file',
      f('server.crt', pki.serverCert),
      '--tls-key-file',
      f('server.key', pki.serverKey),
    )
    args.push('--tls-ca-cert-file', f('ca.crt', pki.ca), '--tls-auth-clients', 'yes')
    tls = { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey }
  } else {
    args.push('--port', String(port))
  }
  const what = `redis-server on 127.0.0.1:${port}`
  let proc: Proc | undefined = await launch(args, port, logFile, what)
  const scheme = options.tls === true ? 'rediss' : 'redis'
  const auth = options.password === undefined ? '' : `:${encodeURIComponent(options.password)}@`
  const server: RedisServer = {
    host: '127.0.0.1',
    port,
    url: `${scheme}://${auth}127.0.0.1:${port}`,
    urlFor: (username, password) =>
      `${scheme}://${username === undefined ? '' : encodeURIComponent(username)}:${encodeURIComponent(password)}@127.0.0.1:${port}`,
    dir,
    tls,
    get running() {
      return proc !== undefined && proc.child.exitCode === null && proc.child.signalCode === null
    },
    async stop(signal = 'SIGTERM') {
      await halt(proc, signal)
      proc = undefined
    },
    async restart() {
      await halt(proc)
      proc = await launch(args, port, logFile, what)
    },
    signal(sig) {
      proc?.child.kill(sig)
    },
    cli(...cliArgs) {
      const base = ['-h', '127.0.0.1', '-p', String(port)]
      if (tls !== undefined) {
        base.push('--tls', '--cacert', join(dir, 'ca.crt'))
        writeFileSync(join(dir, 'client.crt'), tls.cert)
        writeFileSync(join(dir, 'client.key'), tls.key)
        base.push('--cert', join(dir, 'client.crt'), '--key', join(dir, 'client.key'))
      }
      const env = {
        ...process.env,
        ...(options.password === undefined ? {} : { REDISCLI_AUTH: options.password }),
      }
      const r = spawnSync('redis-cli', [...base, ...cliArgs], { encoding: 'utf8', env })
      if (r.error !== undefined) throw new Error(`redis-cli: ${r.error.message}`)
      return r.stdout
    },
    async dispose() {
      await halt(proc)
      proc = undefined
      rmSync(dir, { recursive: true, force: true })
    },
  }
  return server
}

export interface RedisCluster {
  /** redis+cluster://127.0.0.1:A,127.0.0.1:B,127.0.0.1:C */
  url: string
  nodes: RedisServer[]
  stop(): Promise<void>
  restart(): Promise<void>
  dispose(): Promise<void>
}

async function waitClusterOk(nodes: RedisServer[]): Promise<void> {
  const deadline = Date.now() + 15_000
  while (!nodes.every((n) => n.cli('cluster', 'info').includes('cluster_state:ok'))) {
    if (Date.now() > deadline) throw new Error('redis cluster did not reach cluster_state:ok within 15 s')
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** A cluster of `masters` masters without replicas, slots assigned directly (about 2 s). */
export async function startRedisCluster(masters = 3): Promise<RedisCluster> {
  const nodes = await Promise.all(Array.from({ length: masters }, () => startRedis({ cluster: true })))
  const per = Math.floor(16384 / masters)
  nodes.forEach((n, i) => {
    const last = i === masters - 1 ? 16383 : (i + 1) * per - 1
    n.cli('cluster', 'addslotsrange', String(i * per), String(last))
  })
  const first = nodes[0]!
  for (const n of nodes.slice(1)) first.cli('cluster', 'meet', '127.0.0.1', String(n.port))
  await waitClusterOk(nodes)
  return {
    url: `redis+cluster://${nodes.map((n) => `127.0.0.1:${n.port}`).join(',')}`,
    nodes,
    async stop() {
      await Promise.all(nodes.map((n) => n.stop()))
    },
    async restart() {
      // nodes.conf in each directory keeps the slot map and the peers.
      await Promise.all(nodes.map((n) => n.restart()))
      await waitClusterOk(nodes)
    },
    async dispose() {
      await Promise.all(nodes.map((n) => n.dispose()))
    },
  }
}

export interface RedisSentinel {
  /** redis+sentinel://127.0.0.1:PORT/<masterName> */
  url: string
  port: number
  masterName: string
  dispose(): Promise<void>
}

/** A sentinel (redis-server --sentinel) monitoring `master` under `masterName`. */
export async function startRedisSentinel(
  master: RedisServer,
  masterName = 'shoal-master',
): Promise<RedisSentinel> {
  requireRedisServer()
  const dir = mkdtempSync(join(tmpdir(), 'shoal-sentinel-'))
  const port = await freePort()
  const conf = join(dir, 'sentinel.conf')
  const logFile = join(dir, 'sentinel.log')
  writeFileSync(
    conf,
    [
      `port ${port}`,
      'bind 127.0.0.1',
      `dir ${dir}`,
      `logfile ${logFile}`,
      `sentinel monitor ${masterName} 127.0.0.1 ${master.port} 1`,
      `sentinel down-after-milliseconds ${masterName} 2000`,
      '',
    ].join('\n'),
  )
  const proc = await launch([conf, '--sentinel'], port, logFile, `redis sentinel on 127.0.0.1:${port}`)
  return {
    url: `redis+sentinel://127.0.0.1:${port}/${masterName}`,
    port,
    masterName,
    async dispose() {
      await halt(proc)
      if (existsSync(dir)) rmSync(dir, { recursive: true, force: true })
    },
  }
}
