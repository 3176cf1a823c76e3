/**
 * Throw-away PKI for TLS tests, made with the openssl CLI: a CA, a server certificate for
 * 127.0.0.1/localhost, a client certificate, and an unrelated CA whose certificates nobody trusts.
 */
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface TestPki {
  ca: string
  serverCert: string
  serverKey: string
  clientCert: string
  clientKey: string
  rogueCa: string
  rogueClientCert: string
  rogueClientKey: string
}

let cached: TestPki | undefined

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync('openssl', args, { cwd, stdio: 'pipe' })
  } catch (err) {
    throw new Error(`openssl ${args.join(' ')} failed (is openssl installed?): ${String(err)}`)
  }
}

export function testPki(): TestPki {
  if (cached !== undefined) return cached
  const dir = mkdtempSync(join(tmpdir(), 'shoal-pki-'))
  const ca = (name: string): void =>
    openssl(
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-keyout',
        `${name}.key`,
        '-out',
        `${name}.crt`,
        '-days',
        '2',
        '-subj',
        `/CN=${name}`,
      ],
      dir,
    )
  const leaf = (name: string, caName: string, ext: string): void => {
    openssl(
      [
        'req',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-keyout',
        `${name}.key`,
        '-out',
        `${name}.csr`,
        '-subj',
        `/CN=${name}`,
      ],
      dir,
    )
    writeFileSync(join(dir, `${name}.ext`), ext)
    openssl(
      [
        'x509',
        '-req',
        '-in',
        `${name}.csr`,
        '-CA',
        `${caName}.crt`,
        '-CAkey',
        `${caName}.key`,
        '-CAcreateserial',
        '-out',
        `${name}.crt`,
        '-days',
        '2',
        '-extfile',
        `${name}.ext`,
      ],
      dir,
    )
  }
  ca('ca')
  ca('rogue-ca')
  leaf('server', 'ca', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n')
  leaf('client', 'ca', 'extendedKeyUsage=clientAuth\n')
  leaf('rogue-client', 'rogue-ca', 'extendedKeyUsage=clientAuth\n')
  const r = (f: string): string => readFileSync(join(dir, f), 'utf8')
  cached = {
    ca: r('ca.crt'),
    serverCert: r('server.crt'),
    serverKey: r('server.key'),
    clientCert: r('client.crt'),
    clientKey: r('client.key'),
    rogueCa: r('rogue-ca.crt'),
    rogueClientCert: r('rogue-client.crt'),
    rogueClientKey: r('rogue-client.key'),
  }
  return cached
}
