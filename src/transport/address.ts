import net from 'node:net'
import { InvalidOptionError } from '../errors.ts'

/** Parse "host:port", "[v6]:port" or ":port" (host defaults to 127.0.0.1). */
export function parseHostPort(address: string, defaultHost = '127.0.0.1'): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(address.trim())
  const port = m === null ? NaN : Number(m[3])
  if (m === null || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new InvalidOptionError(
      `address must be HOST:PORT with a port in [0, 65535] (got ${JSON.stringify(address)})`,
    )
  }
  const host = m[1] ?? m[2] ?? ''
  return { host: host === '' ? defaultHost : host, port }
}

export function formatHostPort(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`
}
