/**
 * Network namespaces as separate hosts (../../../shared/recipes/netns.md, verified as root):
 * every host gets its own namespace with `eth0` on one bridge, and the bridge lives in a
 * "switch" namespace of its own, so the machine's own network gets no interface, address or
 * route. Names resolve through a per-namespace /etc/hosts: `ip netns exec NS` bind-mounts
 * /etc/netns/NS/hosts over /etc/hosts for the command it runs.
 *
 * Teardown is synchronous on purpose: it runs from `finally`, from signal handlers and from
 * the start of the next run (namespaces left by a crashed run carry the same prefix).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, openSync, closeSync, rmSync, writeFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'

export interface Host {
  /** Host name, and the namespace is `<prefix>-<name>`. */
  readonly name: string
  readonly ns: string
  readonly ip: string
  /** Extra names resolving to this host (compose: the service name, shared by every replica). */
  readonly aliases: readonly string[]
  /** When set, this host's /etc/hosts resolves only these names (a machine outside the network). */
  readonly resolvesOnly?: readonly string[]
}

export interface ExecResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

const NETNS_ETC = '/etc/netns'

function ip(args: string[], input?: string): string {
  return execFileSync('ip', args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] })
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

export class Topology {
  readonly prefix: string
  readonly #subnet: string
  readonly #hosts = new Map<string, Host>()
  #nextOctet = 10

  /** `subnet` is the first three octets of a /24 that exists only inside the namespaces. */
  constructor(options: { prefix: string; subnet: string }) {
    this.prefix = options.prefix
    this.#subnet = options.subnet
  }

  get switchNs(): string {
    return `${this.prefix}-sw`
  }

  hosts(): Host[] {
    return [...this.#hosts.values()]
  }

  host(name: string): Host {
    const h = this.#hosts.get(name)
    if (h === undefined) throw new Error(`no host ${name} in the topology`)
    return h
  }

  /** Namespaces with this prefix, from this run or a crashed one. */
  namespaces(): string[] {
    return ip(['netns', 'list'])
      .split('\n')
      .map((l) => l.split(' ')[0] ?? '')
      .filter((n) => n.startsWith(`${this.prefix}-`))
  }

  /** The switch namespace with its bridge. */
  up(): void {
    ip(['netns', 'add', this.switchNs])
    ip(['-n', this.switchNs, 'link', 'add', 'br0', 'type', 'bridge'])
    ip(['-n', this.switchNs, 'link', 'set', 'br0', 'up'])
  }

  /** A new host on the bridge: namespace, veth pair (eth0 inside, p-<name> on the bridge), address. */
  addHost(name: string, aliases: string[] = [], resolvesOnly?: string[]): Host {
    if (this.#hosts.has(name)) throw new Error(`host ${name} exists`)
    if (`p-${name}`.length > 15) throw new Error(`host name ${name} too long for an interface name`)
    const h: Host = {
      name,
      ns: `${this.prefix}-${name}`,
      ip: `${this.#subnet}.${this.#nextOctet++}`,
      aliases,
      ...(resolvesOnly === undefined ? {} : { resolvesOnly }),
    }
    ip(['netns', 'add', h.ns])
    ip([
      'link',
      'add',
      `v-${name}`,
      'netns',
      h.ns,
      'type',
      'veth',
      'peer',
      'name',
      `p-${name}`,
      'netns',
      this.switchNs,
    ])
    ip(['-n', h.ns, 'link', 'set', `v-${name}`, 'name', 'eth0'])
    ip(['-n', h.ns, 'addr', 'add', `${h.ip}/24`, 'dev', 'eth0'])
    ip(['-n', h.ns, 'link', 'set', 'lo', 'up'])
    ip(['-n', h.ns, 'link', 'set', 'eth0', 'up'])
    ip(['-n', this.switchNs, 'link', 'set', `p-${name}`, 'master', 'br0'])
    ip(['-n', this.switchNs, 'link', 'set', `p-${name}`, 'up'])
    mkdirSync(join(NETNS_ETC, h.ns), { recursive: true })
    this.#hosts.set(name, h)
    this.writeHosts()
    return h
  }

  /** Stop whatever still runs on the host, delete its namespace and its /etc/netns entry. */
  removeHost(name: string): void {
    const h = this.host(name)
    this.#deleteNs(h.ns)
    this.#hosts.delete(name)
    this.writeHosts()
  }

  /**
   * Rewrite every host's /etc/hosts: each host's name, then each alias once per host carrying
   * it (so a service name resolves to all its replicas, like compose DNS). Written in place:
   * the bind mount of a running process follows the file's inode, so it sees the change.
   */
  writeHosts(): void {
    const lines = ['127.0.0.1 localhost', '::1 localhost']
    for (const h of this.#hosts.values()) lines.push(`${h.ip} ${h.name}`)
    for (const h of this.#hosts.values()) for (const a of h.aliases) lines.push(`${h.ip} ${a}`)
    const text = lines.join('\n') + '\n'
    for (const h of this.#hosts.values()) {
      const only = h.resolvesOnly
      const mine =
        only === undefined
          ? text
          : lines.filter((l) => l.endsWith(' localhost') || only.includes(l.split(' ')[1]!)).join('\n') + '\n'
      writeFileSync(join(NETNS_ETC, h.ns, 'hosts'), mine)
    }
  }

  /**
   * Start a long-running process on a host, stdout and stderr to `logFile`. With `hostname`,
   * the process gets its own UTS namespace with that host name (as a container does).
   * `ip netns exec`, `unshare` and `sh -c 'exec'` all exec, so the child's pid is the process.
   */
  spawn(
    host: string,
    argv: string[],
    o: { env: Record<string, string>; cwd: string; logFile: string; hostname?: string },
  ): ChildProcess {
    const h = this.host(host)
    const cmd =
      o.hostname === undefined
        ? argv
        : ['unshare', '--uts', '--', 'sh', '-c', 'hostname "$0" && exec "$@"', o.hostname, ...argv]
    const fd = openSync(o.logFile, 'a')
    try {
      return spawn('ip', ['netns', 'exec', h.ns, ...cmd], {
        cwd: o.cwd,
        env: o.env,
        stdio: ['ignore', fd, fd],
      })
    } finally {
      closeSync(fd)
    }
  }

  /** Run a command on a host to completion (killed after `timeoutMs`). */
  exec(
    host: string,
    argv: string[],
    o: { env: Record<string, string>; cwd: string; input?: string; timeoutMs?: number },
  ): Promise<ExecResult> {
    const h = this.host(host)
    return new Promise((resolve, reject) => {
      const child = spawn('ip', ['netns', 'exec', h.ns, ...argv], {
        cwd: o.cwd,
        env: o.env,
        stdio: [o.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      })
      let stdout = ''
      let stderr = ''
      child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d))
      child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d))
      const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 30_000)
      child.on('error', (e) => {
        clearTimeout(timer)
        reject(e)
      })
      child.on('close', (code, signal) => {
        clearTimeout(timer)
        resolve({ code, signal, stdout, stderr })
      })
      if (o.input !== undefined && child.stdin !== null) {
        child.stdin.on('error', () => {}) // the command may exit before reading everything
        child.stdin.end(o.input)
      }
    })
  }

  /** Take the host's eth0 down or up (inside its namespace: the host loses its link). */
  setLink(host: string, up: boolean): void {
    ip(['-n', this.host(host).ns, 'link', 'set', 'eth0', up ? 'up' : 'down'])
  }

  /** Delete every namespace with the prefix (this run's or a crashed run's). Synchronous. */
  down(): void {
    // Hosts first, the switch last: a host's veth peer goes with its namespace.
    const all = this.namespaces().sort((a, b) => Number(a === this.switchNs) - Number(b === this.switchNs))
    this.#stopProcesses(all)
    for (const ns of all) this.#deleteNs(ns)
    this.#hosts.clear()
    if (existsSync(NETNS_ETC) && readdirSync(NETNS_ETC).length === 0) rmSync(NETNS_ETC, { recursive: true })
  }

  /** Whatever still runs in these namespaces: TERM, up to 1 s grace, then KILL (by pid). */
  #stopProcesses(namespaces: string[]): void {
    const pids = (): number[] =>
      namespaces.flatMap((ns) => {
        try {
          return ip(['netns', 'pids', ns])
            .split('\n')
            .filter(Boolean)
            .map(Number)
            .filter((p) => p !== process.pid)
        } catch {
          return []
        }
      })
    const signal = (list: number[], sig: NodeJS.Signals): void => {
      for (const p of list) {
        try {
          process.kill(p, sig)
        } catch {
          // gone meanwhile
        }
      }
    }
    const left = pids()
    signal(left, 'SIGTERM')
    for (let i = 0; i < 10 && left.some(alive); i++) sleepSync(100)
    signal(pids(), 'SIGKILL')
  }

  #deleteNs(ns: string): void {
    this.#stopProcesses([ns])
    try {
      ip(['netns', 'del', ns])
    } catch {
      // already gone
    }
    rmSync(join(NETNS_ETC, ns), { recursive: true, force: true })
  }
}
