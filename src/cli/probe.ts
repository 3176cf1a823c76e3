/**
 * `shoal probe`: a health probe for compose healthchecks, scripts and humans, with
 * grpc_health_probe's exit codes.
 *
 *   shoal probe grpc HOST:PORT [--service NAME] [--timeout MS]   grpc.health.v1.Health/Check
 *   shoal probe http URL [--timeout MS] [--ca FILE | --insecure]  GET, e.g. http://127.0.0.1:8080/readyz
 *
 * An https: URL verifies the server certificate against the system CAs, or `--ca FILE` (e.g.
 * the node's SHOAL_TLS_CA); `--insecure` skips verification, for a container probing its own
 * port on 127.0.0.1 with a certificate made out to its service name. /healthz and /readyz
 * never need the cluster token.
 *
 * Exit codes (contract):
 *   0  SERVING (http: 2xx)
 *   1  bad arguments
 *   2  connection failure or timeout
 *   3  other RPC error, e.g. NOT_FOUND for an unknown service (http: any status but 2xx and 503)
 *   4  not SERVING (http: 503)
 *
 * Prints exactly one line: `status: ...` on stdout when the peer answered with a status, or
 * `error: ...` on stderr. Runnable on its own: `node --import tsx src/cli/probe.ts grpc 127.0.0.1:7001`.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { readFileSync, realpathSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { ErrorCodes, ShoalError } from '../errors.ts'

export const PROBE_EXIT = Object.freeze({
  SERVING: 0,
  BAD_ARGUMENTS: 1,
  CONNECTION_FAILURE: 2,
  RPC_ERROR: 3,
  NOT_SERVING: 4,
})
export type ProbeExitCode = (typeof PROBE_EXIT)[keyof typeof PROBE_EXIT]

/** @default 1000 (grpc_health_probe's connect and RPC timeouts are 1 s each) */
export const DEFAULT_PROBE_TIMEOUT_MS = 1000

export const PROBE_USAGE = [
  'usage: shoal probe grpc HOST:PORT [--service NAME] [--timeout MS]',
  '       shoal probe http URL [--timeout MS] [--ca FILE | --insecure]',
  'exit: 0 serving, 1 bad arguments, 2 connection failure/timeout, 3 other error, 4 not serving',
].join('\n')

/** Where the probe writes its line; injectable for in-process use. */
export interface ProbeIo {
  out(line: string): void
  err(line: string): void
}

const processIo: ProbeIo = {
  out: (line) => process.stdout.write(line + '\n'),
  err: (line) => process.stderr.write(line + '\n'),
}

type ParsedProbe =
  | { mode: 'help' }
  | { mode: 'grpc'; address: string; service: string; timeoutMs: number }
  | { mode: 'http'; url: URL; timeoutMs: number; ca: Buffer | undefined; insecure: boolean }

class UsageError extends Error {}

function parseProbeArgs(argv: string[]): ParsedProbe {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        service: { type: 'string', short: 's' },
        timeout: { type: 'string', short: 't' },
        ca: { type: 'string' },
        insecure: { type: 'boolean', short: 'k' },
        help: { type: 'boolean', short: 'h' },
      },
    })
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  const { values, positionals } = parsed
  if (values.help === true) return { mode: 'help' }
  const [mode, target, ...rest] = positionals
  if (mode === undefined) throw new UsageError('missing probe kind (grpc or http)')
  if (mode !== 'grpc' && mode !== 'http') throw new UsageError(`unknown probe kind ${JSON.stringify(mode)}`)
  if (target === undefined) throw new UsageError(`missing ${mode === 'grpc' ? 'HOST:PORT' : 'URL'}`)
  if (rest.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(rest[0])}`)

  let timeoutMs = DEFAULT_PROBE_TIMEOUT_MS
  if (values.timeout !== undefined) {
    timeoutMs = Number(values.timeout)
    if (!/^\d+$/.test(values.timeout) || !Number.isSafeInteger(timeoutMs) || timeoutMs <= 0) {
      throw new UsageError(
        `--timeout must be a positive integer of ms (got ${JSON.stringify(values.timeout)})`,
      )
    }
  }

  if (mode === 'grpc') {
    if (values.ca !== undefined || values.insecure === true) {
      throw new UsageError('--ca and --insecure apply to http probes only')
    }
    if (!isHostPort(target)) throw new UsageError(`address must be HOST:PORT (got ${JSON.stringify(target)})`)
    return { mode, address: target, service: values.service ?? '', timeoutMs }
  }
  if (values.service !== undefined) throw new UsageError('--service applies to grpc probes only')
  let url: URL
  try {
    url = new URL(target)
  } catch {
    throw new UsageError(`invalid URL ${JSON.stringify(target)}`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new UsageError(`URL must be http: or https: (got ${url.protocol})`)
  }
  if ((values.ca !== undefined || values.insecure === true) && url.protocol !== 'https:') {
    throw new UsageError('--ca and --insecure apply to https: URLs only')
  }
  if (values.ca !== undefined && values.insecure === true) {
    throw new UsageError('--ca and --insecure exclude each other')
  }
  let ca: Buffer | undefined
  if (values.ca !== undefined) {
    try {
      ca = readFileSync(values.ca)
    } catch (err) {
      throw new UsageError(
        `cannot read --ca ${values.ca}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
      )
    }
  }
  return { mode, url, timeoutMs, ca, insecure: values.insecure === true }
}

/** `host:port` or `[v6]:port`, port 1-65535. */
function isHostPort(value: string): boolean {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]/]+):(\d{1,5})$/.exec(value)
  if (m === null) return false
  const port = Number(m[2])
  return port >= 1 && port <= 65535
}

async function probeGrpc(address: string, service: string, timeoutMs: number, io: ProbeIo): Promise<number> {
  try {
    // gRPC is loaded only for a gRPC probe (it is ~12 MiB of every node's RSS otherwise).
    const { checkHealth } = await import('../transport/grpc/health.ts')
    const status = await checkHealth(address, service, timeoutMs)
    io.out(`status: ${status}`)
    return status === 'SERVING' ? PROBE_EXIT.SERVING : PROBE_EXIT.NOT_SERVING
  } catch (err) {
    io.err(`error: ${(err as Error).message}`)
    if (err instanceof ShoalError) {
      if (err.code === ErrorCodes.CONNECTION_LOST || err.code === ErrorCodes.DEADLINE_EXCEEDED) {
        return PROBE_EXIT.CONNECTION_FAILURE
      }
      if (err.code === ErrorCodes.INVALID_OPTION) return PROBE_EXIT.BAD_ARGUMENTS
    }
    return PROBE_EXIT.RPC_ERROR
  }
}

function probeHttp(
  url: URL,
  timeoutMs: number,
  tls: { ca: Buffer | undefined; insecure: boolean },
  io: ProbeIo,
): Promise<number> {
  return new Promise((resolve) => {
    let settled = false
    const finish = (code: number, line: string, toErr: boolean): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      req.destroy()
      if (toErr) io.err(line)
      else io.out(line)
      resolve(code)
    }
    const options = { method: 'GET', headers: { accept: '*/*' }, agent: false } as const
    const onResponse = (res: IncomingMessage): void => {
      const code = res.statusCode ?? 0
      res.resume()
      if (code >= 200 && code < 300) finish(PROBE_EXIT.SERVING, `status: SERVING (HTTP ${code})`, false)
      else if (code === 503) finish(PROBE_EXIT.NOT_SERVING, `status: NOT_SERVING (HTTP ${code})`, false)
      else finish(PROBE_EXIT.RPC_ERROR, `error: HTTP ${code} ${res.statusMessage ?? ''}`.trimEnd(), true)
    }
    const req =
      url.protocol === 'https:'
        ? httpsRequest(
            url,
            {
              ...options,
              ...(tls.ca === undefined ? {} : { ca: tls.ca }),
              rejectUnauthorized: !tls.insecure,
            },
            onResponse,
          )
        : httpRequest(url, options, onResponse)
    // One deadline for connect + response, like grpc_health_probe's RPC timeout.
    const timer = setTimeout(() => {
      finish(
        PROBE_EXIT.CONNECTION_FAILURE,
        `error: no response from ${url.href} within ${timeoutMs} ms`,
        true,
      )
    }, timeoutMs)
    req.on('error', (err: NodeJS.ErrnoException) => {
      finish(PROBE_EXIT.CONNECTION_FAILURE, `error: ${err.code ?? err.message} ${url.href}`, true)
    })
    req.end()
  })
}

/**
 * Run `shoal probe ...`; `argv` is everything after `probe`. Resolves with the exit code and
 * never rejects.
 */
export async function runProbe(argv: string[], io: ProbeIo = processIo): Promise<number> {
  let parsed: ParsedProbe
  try {
    parsed = parseProbeArgs(argv)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    io.err(`error: ${err.message}\n${PROBE_USAGE}`)
    return PROBE_EXIT.BAD_ARGUMENTS
  }
  switch (parsed.mode) {
    case 'help':
      io.out(PROBE_USAGE)
      return PROBE_EXIT.SERVING
    case 'grpc':
      return probeGrpc(parsed.address, parsed.service, parsed.timeoutMs, io)
    case 'http':
      return probeHttp(parsed.url, parsed.timeoutMs, { ca: parsed.ca, insecure: parsed.insecure }, io)
  }
}

function isMainModule(): boolean {
  const entry = process.argv[1]
  if (entry === undefined) return false
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url))
  } catch {
    return false
  }
}

if (isMainModule()) {
  const code = await runProbe(process.argv.slice(2))
  process.exitCode = code
}
