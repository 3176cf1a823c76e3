/**
 * The chaos suite's cluster: a redis-server with AOF (test/helpers/redis.ts), two `shoal
 * coordinator` replicas sharing `--state redis://` on fixed ports, three workers following
 * them (`--coordinator a,b`), all real processes. The runner supervises them as compose or
 * Kubernetes would: a node that exits without being told to (a deposed leader exits 3) is
 * started again, and every such exit is recorded.
 *
 * With network namespaces (root and a working `ip netns`), each worker runs on a "host" of its
 * own (test/topology/netns.ts: one namespace per worker on a bridge in a switch namespace) and
 * the runner's own namespace gets one veth into that bridge (10.79.0.1), where Redis is
 * reached; the two coordinator replicas get hosts of their own the same way. A partition takes
 * the node's eth0 down. Without namespaces
 * everything is on 127.0.0.1 and partitions are not available (the runner says why).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { cpSync, createWriteStream, type WriteStream } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { NodeListening } from '../src/cli/up.ts'
import { onListening } from '../src/cli/up.ts'
import type { ClusterStatus } from '../src/coordinator/coordinator.ts'
import { freePort, startRedis, type RedisServer } from '../test/helpers/redis.ts'
import { Topology } from '../test/topology/netns.ts'

const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url))

export const HEARTBEAT_MS = 200
export const PARTITIONS = 32
export const CHECKPOINT_MS = 500
export const WORKERS = 3
export const STREAM = 'chaos-events'
export const COORDINATORS = ['coord-a', 'coord-b'] as const
export const GROUP = 'shoal'
const REDIS_PASSWORD = 'chaos'

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

// ---- network namespaces --------------------------------------------------------------------------

const NS_PREFIX = 'shchaos'
const SUBNET = '10.79.0'
/** The runner's end of the veth into the switch namespace (in the runner's own namespace). */
const HOST_IF = 'shchaos0'
const HOST_IP = `${SUBNET}.1`

export interface Netns {
  topo: Topology
  /** Where workers reach Redis and the coordinators. */
  hostIp: string
}

function ipCmd(args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] })
}

/** Remove whatever an earlier (crashed) run left: namespaces with the prefix and the host veth. */
export function cleanNetns(topo: Topology): void {
  try {
    ipCmd(['link', 'del', HOST_IF])
  } catch {
    // not there
  }
  topo.down()
}

/**
 * Namespaces for the workers, or the reason they cannot be used. Probes by doing: a switch
 * namespace with its bridge, and a veth from this namespace into it.
 */
export function setUpNetns(enabled: boolean): Netns | { skipped: string } {
  if (!enabled) return { skipped: 'disabled with --no-partitions' }
  if (process.platform !== 'linux')
    return { skipped: `network namespaces need Linux (this is ${process.platform})` }
  if (process.getuid?.() !== 0) return { skipped: `network namespaces need root (uid ${process.getuid?.()})` }
  const topo = new Topology({ prefix: NS_PREFIX, subnet: SUBNET })
  try {
    cleanNetns(topo)
    topo.up()
    ipCmd(['link', 'add', HOST_IF, 'type', 'veth', 'peer', 'name', 'p-runner', 'netns', topo.switchNs])
    ipCmd(['-n', topo.switchNs, 'link', 'set', 'p-runner', 'master', 'br0'])
    ipCmd(['-n', topo.switchNs, 'link', 'set', 'p-runner', 'up'])
    ipCmd(['addr', 'add', `${HOST_IP}/24`, 'dev', HOST_IF])
    ipCmd(['link', 'set', HOST_IF, 'up'])
    // Addresses .10 and up go to the hosts (Topology numbers them in order); the coordinator
    // replicas get hosts too, so the leader can be cut off.
    for (let i = 0; i < WORKERS; i++) topo.addHost(`w${i}`)
    for (const c of COORDINATORS) topo.addHost(c)
    return { topo, hostIp: HOST_IP }
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string }
    try {
      cleanNetns(topo)
    } catch {
      // best effort
    }
    return { skipped: `ip netns failed: ${(e.stderr?.toString() ?? e.message).trim()}` }
  }
}

// ---- nodes -----------------------------------------------------------------------------------------

export interface ExitRecord {
  node: string
  code: number | null
  signal: NodeJS.Signals | null
  /** Wall time since the run started (ms). */
  atMs: number
  restarted: boolean
}

type Role = 'coordinator' | 'worker'

/**
 * One supervised node slot (coord-a, w1, ...): its current process, restarted on the same
 * ports / namespace. `address` is what the current process advertises (a worker's data
 * address identifies the process in the coordinator's status).
 */
export class Node {
  readonly name: string
  readonly role: Role
  readonly ns: string | null
  readonly #args: () => string[]
  readonly #log: WriteStream
  readonly #onExit: (n: Node, rec: { code: number | null; signal: NodeJS.Signals | null }) => void
  child: ChildProcess | null = null
  exited: Promise<void> = Promise.resolve()
  /** The current process's listening line (a coordinator: once it leads). */
  info: NodeListening | null = null
  /** The process is up (listening, or a coordinator standing by). */
  running = false
  /** Set before the runner kills it on purpose: no restart by the supervisor. */
  expectExit = false
  starts = 0

  constructor(o: {
    name: string
    role: Role
    ns: string | null
    args: () => string[]
    logDir: string
    onExit: (n: Node, rec: { code: number | null; signal: NodeJS.Signals | null }) => void
  }) {
    this.name = o.name
    this.role = o.role
    this.ns = o.ns
    this.#args = o.args
    this.#log = createWriteStream(join(o.logDir, `${o.name}.log`), { flags: 'a' })
    this.#onExit = o.onExit
  }

  get pid(): number | undefined {
    return this.child?.pid
  }

  /** Start a process and wait until it listens (a coordinator: listens or stands by). */
  async start(timeoutMs = 30_000): Promise<void> {
    const args = this.#args()
    const argv = [process.execPath, '--import', 'tsx', MAIN, ...args]
    const [cmd, ...rest] = this.ns === null ? argv : ['ip', 'netns', 'exec', this.ns, ...argv]
    const child = spawn(cmd!, rest, {
      env: { ...process.env, SHOAL_LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    this.starts++
    this.child = child
    this.info = null
    this.running = false
    this.expectExit = false
    this.#log.write(`\n==== ${new Date().toISOString()} start #${this.starts}: ${rest.join(' ')}\n`)
    child.stderr.on('data', (d: Buffer) => this.#log.write(d))
    let ready: () => void = () => {}
    let failed: (e: Error) => void = () => {}
    const up = new Promise<void>((resolve, reject) => {
      ready = resolve
      failed = reject
    })
    onListening(child.stdout, (info) => {
      if (this.child !== child) return
      this.info = info
      this.running = true
      ready()
    })
    child.stdout.on('data', (d: string) => {
      if (this.child === child && d.includes('"shoal":"standby"')) {
        this.running = true
        ready()
      }
    })
    this.exited = new Promise<void>((resolve) => {
      child.once('exit', (code, signal) => {
        this.#log.write(`==== ${new Date().toISOString()} exit code ${code} signal ${signal}\n`)
        if (this.child === child) {
          this.running = false
          this.info = null
        }
        failed(new Error(`${this.name} exited (${code ?? signal}) before it was up; see its log`))
        resolve()
        if (this.child === child && !this.expectExit) this.#onExit(this, { code, signal })
      })
    })
    const timer = setTimeout(
      () => failed(new Error(`${this.name} not up within ${timeoutMs} ms; see its log`)),
      timeoutMs,
    )
    try {
      await up
    } finally {
      clearTimeout(timer)
    }
  }

  signal(sig: NodeJS.Signals): void {
    this.child?.kill(sig)
  }

  /** SIGKILL on purpose (not restarted by the supervisor); resolves once it is gone. */
  async kill(): Promise<void> {
    if (this.child === null || this.child.exitCode !== null || this.child.signalCode !== null) return
    this.expectExit = true
    this.child.kill('SIGCONT')
    this.child.kill('SIGKILL')
    await this.exited
  }

  close(): void {
    this.#log.end()
  }
}

export interface Cluster {
  redis: RedisServer
  /** For the runner (loopback). */
  redisUrl: string
  /** For the nodes. */
  nodeRedisUrl: string
  coordinators: Node[]
  workers: Node[]
  /** Coordinator transport addresses as the client dials them ("a,b"). */
  coordinatorList: string
  coordinatorAddress(c: Node): string
  coordinatorHttp(c: Node): string
  netns: Netns | null
  exits: ExitRecord[]
  /** Reconfigure a restarted Redis for the namespaces (bind address). */
  afterRedisStart(): void
  /** Kill every node and Redis; `keepRedisIn`: copy Redis's directory (AOF) there first. */
  stop(keepRedisIn?: string): Promise<void>
}

export async function startCluster(o: {
  logDir: string
  netns: Netns | null
  source: boolean
  t0: number
  say: (line: string) => void
}): Promise<Cluster> {
  const { netns } = o
  const redis = await startRedis({ aof: true, password: REDIS_PASSWORD })
  const bindHost = netns === null ? '127.0.0.1' : netns.hostIp
  const afterRedisStart = (): void => {
    if (netns !== null) redis.cli('CONFIG', 'SET', 'bind', `127.0.0.1 ${netns.hostIp}`)
  }
  afterRedisStart()
  const redisUrl = `redis://:${REDIS_PASSWORD}@127.0.0.1:${redis.port}`
  const nodeRedisUrl = `redis://:${REDIS_PASSWORD}@${bindHost}:${redis.port}`
  const ports = await Promise.all([freePort(), freePort(), freePort(), freePort()])
  const coordPorts = [
    { port: ports[0], http: ports[1] },
    { port: ports[2], http: ports[3] },
  ]
  const exits: ExitRecord[] = []
  let stopping = false
  const onExit = (n: Node, rec: { code: number | null; signal: NodeJS.Signals | null }): void => {
    const record: ExitRecord = { node: n.name, ...rec, atMs: performance.now() - o.t0, restarted: false }
    exits.push(record)
    if (stopping) return
    o.say(`  supervisor: ${n.name} exited on its own (code ${rec.code}, signal ${rec.signal}); restarting it`)
    // As a restart policy would: start it again (a deposed coordinator comes back as a standby).
    void (async () => {
      for (let attempt = 1; attempt <= 5 && !stopping; attempt++) {
        await sleep(200)
        try {
          await n.start()
          record.restarted = true
          return
        } catch (err) {
          o.say(`  supervisor: ${n.name} restart ${attempt} failed: ${(err as Error).message.split('\n')[0]}`)
        }
      }
    })()
  }
  // With namespaces each replica has a host of its own (reached over the bridge, the runner's
  // probes and clients too); without, everything is on loopback.
  const coordHost = (i: number): { ip: string; ns: string | null } => {
    const h = netns?.topo.host(COORDINATORS[i]!)
    return h === undefined ? { ip: '127.0.0.1', ns: null } : { ip: h.ip, ns: h.ns }
  }
  const coordinatorList = coordPorts.map((p, i) => `${coordHost(i).ip}:${p.port}`).join(',')
  const coordinators = coordPorts.map(
    (p, i) =>
      new Node({
        name: COORDINATORS[i]!,
        role: 'coordinator',
        ns: coordHost(i).ns,
        logDir: o.logDir,
        onExit,
        args: () => [
          'coordinator',
          '--node-id',
          COORDINATORS[i]!,
          '--listen',
          `${coordHost(i).ip}:${p.port}`,
          '--http',
          `${coordHost(i).ip}:${p.http}`,
          '--partitions',
          String(PARTITIONS),
          '--heartbeat-interval',
          String(HEARTBEAT_MS),
          '--checkpoint-interval',
          String(CHECKPOINT_MS),
          '--state',
          nodeRedisUrl,
        ],
      }),
  )
  const sourceUrl = `${nodeRedisUrl}?stream=${STREAM}&group=${GROUP}`
  const workers = Array.from({ length: WORKERS }, (_, i) => {
    const host = netns?.topo.host(`w${i}`)
    const ip = host?.ip ?? '127.0.0.1'
    return new Node({
      name: `w${i}`,
      role: 'worker',
      ns: host?.ns ?? null,
      logDir: o.logDir,
      onExit,
      args: () => [
        'worker',
        '--coordinator',
        coordinatorList,
        '--listen',
        `${ip}:0`,
        '--http',
        `${ip}:0`,
        '--threads',
        '1',
        '--heartbeat-interval',
        String(HEARTBEAT_MS),
        '--state',
        nodeRedisUrl,
        ...(o.source ? ['--source', sourceUrl] : []),
      ],
    })
  })
  const cluster: Cluster = {
    redis,
    redisUrl,
    nodeRedisUrl,
    coordinators,
    workers,
    coordinatorList,
    coordinatorAddress: (c) =>
      `${coordHost(coordinators.indexOf(c)).ip}:${coordPorts[coordinators.indexOf(c)]!.port}`,
    coordinatorHttp: (c) =>
      `${coordHost(coordinators.indexOf(c)).ip}:${coordPorts[coordinators.indexOf(c)]!.http}`,
    netns,
    exits,
    afterRedisStart,
    async stop(keepRedisIn?: string) {
      stopping = true
      const all = [...workers, ...coordinators]
      for (const n of all) {
        n.expectExit = true
        n.signal('SIGCONT')
        n.signal('SIGKILL')
      }
      await Promise.all(all.map((n) => n.exited))
      for (const n of all) n.close()
      if (keepRedisIn !== undefined) {
        await redis.stop()
        cpSync(redis.dir, keepRedisIn, { recursive: true })
      }
      await redis.dispose()
    },
  }
  try {
    // One replica leads, then the other stands by (as coordinator-ha.test.ts starts them).
    await coordinators[0]!.start()
    await coordinators[1]!.start()
    await Promise.all(workers.map((w) => w.start()))
  } catch (err) {
    await cluster.stop()
    throw err
  }
  return cluster
}

// ---- is the cluster settled? ----------------------------------------------------------------------

async function getJson(url: string, timeoutMs: number): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) })
  const text = await res.text()
  let body: unknown = text
  try {
    body = JSON.parse(text)
  } catch {
    // text
  }
  return { status: res.status, body }
}

export interface Observation {
  /** The replica whose /readyz answers 200 (exactly one), else null. */
  leader: Node | null
  status: ClusterStatus | null
  /** null: serving (see observe); else why not. */
  why: string | null
  /** null: serving, and everything is back (see observe); else why not. */
  fullWhy: string | null
}

/**
 * Serving (the cluster has recovered): exactly one replica ready, its status ready and out of
 * recovery, the three current worker processes alive (by data address, so a replaced or
 * rejoined process counts only once it is back), every partition owned by one of them and
 * ready. Everything back (before the next fault): also the other replica up (standing by), and
 * each worker owning at least its share (the rebalance after a rejoin is done).
 */
export async function observe(cluster: Cluster): Promise<Observation> {
  const ready = await Promise.all(
    cluster.coordinators.map((c) =>
      getJson(`http://${cluster.coordinatorHttp(c)}/readyz`, 500).then(
        (r) => r.status === 200,
        () => false,
      ),
    ),
  )
  const leaders = cluster.coordinators.filter((_, i) => ready[i])
  if (leaders.length !== 1) {
    const why = `${leaders.length} coordinator replicas ready`
    return { leader: null, status: null, why, fullWhy: why }
  }
  const leader = leaders[0]!
  let status: ClusterStatus
  try {
    status = (await getJson(`http://${cluster.coordinatorHttp(leader)}/status`, 1000)).body as ClusterStatus
  } catch (err) {
    const why = `status of ${leader.name}: ${(err as Error).message}`
    return { leader, status: null, why, fullWhy: why }
  }
  const why = servingWhy(cluster, leader, status)
  return { leader, status, why, fullWhy: why ?? fullWhy(cluster, leader, status) }
}

function servingWhy(cluster: Cluster, leader: Node, s: ClusterStatus): string | null {
  if (!s.coordinator?.ready) return `${leader.name} not ready`
  if (s.coordinator.recovering) return `${leader.name} recovering`
  const want = new Set<string>()
  for (const w of cluster.workers) {
    if (!w.running || w.info === null) return `${w.name} not up`
    want.add(w.info.address)
  }
  const alive = s.members.filter((m) => m.state === 'alive')
  const have = new Set(alive.map((m) => m.dataAddress))
  for (const a of want) if (!have.has(a)) return `worker at ${a} not alive at ${leader.name}`
  if (alive.length !== want.size) return `${alive.length} members alive, expected ${want.size}`
  const ids = new Set(alive.map((m) => m.id))
  const unowned = s.assignment.owners.filter((o) => o === null || !ids.has(o)).length
  if (unowned > 0) return `${unowned} partitions unassigned or owned by a member not alive`
  for (const m of alive) {
    if (m.readyPartitions !== m.partitions) return `${m.id} ready ${m.readyPartitions}/${m.partitions}`
  }
  return null
}

function fullWhy(cluster: Cluster, leader: Node, s: ClusterStatus): string | null {
  const other = cluster.coordinators.find((c) => c !== leader)!
  if (!other.running) return `${other.name} not up`
  const alive = s.members.filter((m) => m.state === 'alive')
  const share = Math.floor(s.coordinator.partitions / alive.length)
  for (const m of alive)
    if (m.partitions < share) return `${m.id} owns ${m.partitions} < ${share} (rebalancing)`
  return null
}
