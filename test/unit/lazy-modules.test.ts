/**
 * A node loads grpc-js and ioredis only when it uses them (src/transport/index.ts,
 * src/connectors/factory.ts, src/cli/probe.ts): each is 12-18 MiB of RSS. Checked in a fresh
 * process, where the CommonJS module cache shows what was loaded.
 */
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { createTransport } from '../../src/transport/index.ts'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** Run `body` (ESM, top-level await) in a fresh node with tsx; its stdout, parsed as JSON. */
function run(body: string): unknown {
  const script = `
    import { createRequire } from 'node:module'
    const loaded = () => {
      const keys = Object.keys(createRequire(import.meta.url).cache)
      return ['@grpc/grpc-js', 'ioredis'].filter((m) => keys.some((k) => k.includes('/node_modules/' + m + '/')))
    }
    ${body}
  `
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: ROOT,
    encoding: 'utf8',
  })
  expect(r.status, r.stderr).toBe(0)
  return JSON.parse(r.stdout) as unknown
}

describe('modules loaded on use', () => {
  it('the CLI and a TCP transport load neither grpc-js nor ioredis; a gRPC listener loads grpc-js', () => {
    expect(
      run(`
        await import('./src/cli/main.ts')
        const { createTransport } = await import('./src/transport/index.ts')
        const { createSink } = await import('./src/connectors/factory.ts')
        const before = loaded()
        const tcp = createTransport('tcp', { nodeId: 'n', role: 'worker' })
        const l1 = await tcp.listen({ port: 0 }, () => {})
        await l1.close()
        await (await createSink({ kind: 'file', path: '/dev/null' })).close?.()
        const afterTcp = loaded()
        const grpc = createTransport('grpc', { nodeId: 'n', role: 'worker' })
        const l2 = await grpc.listen({ port: 0 }, () => {})
        await l2.close()
        console.log(JSON.stringify({ before, afterTcp, afterGrpc: loaded() }))
        process.exit(0)
      `),
    ).toEqual({ before: [], afterTcp: [], afterGrpc: ['@grpc/grpc-js'] })
  })

  it('a gRPC transport with bad options is refused when it is created, not at its first use', () => {
    expect(() =>
      createTransport('grpc', { nodeId: 'n', role: 'worker', flowControlWindowBytes: 1 } as never),
    ).toThrow(/flowControlWindowBytes/)
  })
})
