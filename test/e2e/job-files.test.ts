/**
 * Job files from the built `shoal` binary, as an installed CLI runs them: the project is
 * compiled (tsc, into .tmp/ so it does not race anyone's dist/), and `node dist/src/cli/main.js
 * up --job ./job.<ext> --demo` runs from a directory outside the repository with no
 * node_modules, where the job imports `defineJob` from 'shoal'. `.ts`, `.mts`, `.js` and `.mjs`
 * give the demo's exact states; a job that cannot load is SHOAL_ERR_JOB_INVALID naming the file
 * and the cause, with a non-zero exit and no node started (`shoal up` and `shoal worker`).
 */
import { execFile, spawn } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { freePort, killAll, startShoal } from '../helpers/processes.ts'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const BUILD = join(ROOT, '.tmp', `e2e-job-files-${process.pid}`)
const MAIN = join(BUILD, 'src', 'cli', 'main.js')

let work: string

beforeAll(async () => {
  mkdirSync(join(ROOT, '.tmp'), { recursive: true })
  // tsconfig.build.json's emit into a private outDir (node_modules still resolve from the
  // repository). --noCheck: typecheck is its own CI step; this only needs the JavaScript.
  await promisify(execFile)(
    process.execPath,
    [
      join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'),
      '-p',
      join(ROOT, 'tsconfig.build.json'),
      '--outDir',
      BUILD,
      '--noCheck',
      '--declaration',
      'false',
      '--sourceMap',
      'false',
    ],
    { cwd: ROOT },
  )
  work = mkdtempSync(join(tmpdir(), 'shoal-job-files-'))
}, 240_000)

afterAll(() => {
  rmSync(BUILD, { recursive: true, force: true })
  if (work !== undefined) rmSync(work, { recursive: true, force: true })
})

interface Run {
  code: number | null
  stdout: string
  stderr: string
}

/** Run the built CLI in `cwd` to its exit. */
function shoal(args: string[], cwd: string, env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], {
      cwd,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), 150_000)
    child.on('error', reject)
    child.on('exit', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

/** A fresh directory outside the repository with these files. */
function dir(files: Record<string, string>): string {
  const d = mkdtempSync(join(work, 'job-'))
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(dirname(join(d, name)), { recursive: true })
    writeFileSync(join(d, name), text)
  }
  return d
}

const TS_JOB = `import { defineJob, type JobContext } from 'shoal'
import { weight } from './weight.ts'

interface Totals {
  n: number
  sum: number
}

export default defineJob({
  name: 'totals',
  init: (): Totals => ({ n: 0, sum: 0 }),
  process(state: Totals, event: { value: number }, ctx: JobContext): Totals {
    if (ctx.key === '') throw new Error('no key')
    state.n++
    state.sum += event.value * weight()
    return state
  },
})
`
// A local module of the job that imports 'shoal' too.
const TS_HELPER = `import { ErrorCodes } from 'shoal'
export const weight = (): number => (ErrorCodes.JOB_INVALID === 'SHOAL_ERR_JOB_INVALID' ? 1 : 0)
`
const JS_JOB = `import { defineJob } from 'shoal'

export default defineJob({
  name: 'totals',
  init: () => ({ n: 0, sum: 0 }),
  process(state, event) {
    state.n++
    state.sum += event.value
    return state
  },
})
`

// A job with packages of its own (an ES module one, and a CommonJS one required by a local
// CommonJS helper) and a file read relative to import.meta.url: what the bundle of a job file
// (job-bundle.ts) leaves to Node and rewrites.
const PACKAGES_JOB = {
  'job.ts': `import { defineJob } from 'shoal'
import { readFileSync } from 'node:fs'
import { factor } from 'weights'
import helper from './helper.cjs'
const cfg = JSON.parse(readFileSync(new URL('./cfg.json', import.meta.url), 'utf8')) as { mult: number }
export default defineJob({
  name: 'totals',
  init: () => ({ n: 0, sum: 0 }),
  process(state: { n: number; sum: number }, event: { value: number }) {
    state.n++
    state.sum += event.value * factor * cfg.mult * helper.one()
    return state
  },
})
`,
  'helper.cjs': "const { one } = require('weights-cjs')\nmodule.exports = { one: () => one }\n",
  'cfg.json': '{ "mult": 1 }\n',
  'node_modules/weights/package.json': '{ "name": "weights", "type": "module", "exports": "./index.js" }\n',
  'node_modules/weights/index.js': 'export const factor = 1\n',
  'node_modules/weights-cjs/package.json': '{ "name": "weights-cjs", "main": "index.js" }\n',
  'node_modules/weights-cjs/index.js': 'exports.one = 1\n',
}

const JOBS: Record<string, Record<string, string>> = {
  '.ts': { 'job.ts': TS_JOB, 'weight.ts': TS_HELPER },
  '.ts (packages, import.meta.url, CommonJS)': PACKAGES_JOB,
  '.mts': { 'job.mts': TS_JOB.replace('./weight.ts', './weight.mts'), 'weight.mts': TS_HELPER },
  '.js': { 'job.js': JS_JOB },
  '.mjs': { 'job.mjs': JS_JOB },
}

describe('job files from the built CLI', { timeout: 180_000 }, () => {
  for (const [ext, files] of Object.entries(JOBS)) {
    it(`${ext}: shoal up --job ./job${ext.split(' ')[0]} --demo outside the repository gives exact states`, async () => {
      const cwd = dir(files)
      const r = await shoal(
        [
          'up',
          '--workers',
          '1',
          '--threads',
          '1',
          '--job',
          `./job${ext.split(' ')[0]}`,
          '--demo',
          '--listen',
          `127.0.0.1:${await freePort()}`,
          '--http',
          `127.0.0.1:${await freePort()}`,
        ],
        cwd,
        { SHOAL_DEMO_EVENTS: '20000' },
      )
      expect(r.code, r.stderr).toBe(0)
      expect(r.stderr).toMatch(/demo: 20,000 events acknowledged/)
      // 20 000 events over 10 000 keys: user-k gets 2 events of value k % 10.
      const states = [...r.stderr.matchAll(/demo: state of user-(\d+): (\{.*\})/g)]
      expect(states).toHaveLength(3)
      for (const [, k, json] of states)
        expect(JSON.parse(json!), `user-${k}`).toEqual({ n: 2, sum: 2 * (Number(k) % 10) })
    })
  }

  const HOW = 'a job module must `export default defineJob({ name, init, process })`'
  const BAD: { name: string; file: string; text?: string; cause: string }[] = [
    { name: 'a missing file', file: 'missing.ts', cause: 'no such file' },
    {
      name: 'a syntax error',
      file: 'syntax.ts',
      text: 'export default defineJob({ name: \n',
      // The bundle's error: file, line and column.
      cause: 'cannot be loaded: JobBundleError: syntax.ts:2:1: Unexpected end of file',
    },
    {
      name: 'a throw at import',
      file: 'throws.mjs',
      text: "throw new Error('no config for this job')\n",
      cause: 'cannot be loaded: Error: no config for this job',
    },
    {
      name: 'an import that does not resolve',
      file: 'imports.ts',
      text: "import './nowhere.ts'\nexport default {}\n",
      cause: 'cannot be loaded: JobBundleError: imports.ts:1:8: Could not resolve "./nowhere.ts"',
    },
    {
      name: 'no default export',
      file: 'nodefault.ts',
      text: 'export const job = 1\n',
      cause: `it has no default export; ${HOW}`,
    },
    {
      name: 'a default export without name',
      file: 'noname.js',
      text: 'export default { init: () => 0, process: (s) => s }\n',
      cause: `its default export is not a job: no name (a non-empty string); ${HOW}`,
    },
    {
      name: 'a default export without init',
      file: 'noinit.ts',
      text: "export default { name: 'x', process: (s: number) => s }\n",
      cause: 'its default export is not a job: no init (a function)',
    },
    {
      name: 'a default export without process',
      file: 'noprocess.mts',
      text: "export default { name: 'x', init: () => 0 }\n",
      cause: 'its default export is not a job: no process (a function)',
    },
    {
      name: 'a default export that is a function',
      file: 'function.ts',
      text: 'export default function process() {}\n',
      cause: 'its default export is not a job (got function)',
    },
  ]
  for (const bad of BAD) {
    it(`shoal up: ${bad.name} is SHOAL_ERR_JOB_INVALID before any node starts`, async () => {
      const cwd = dir(bad.text === undefined ? {} : { [bad.file]: bad.text })
      const r = await shoal(['up', '--workers', '1', '--job', `./${bad.file}`], cwd)
      expect(r.code, r.stderr).toBe(1)
      expect(r.stderr).toContain(`shoal up: SHOAL_ERR_JOB_INVALID: job ${join(cwd, bad.file)}: ${bad.cause}`)
      // No node was started: none printed its listening line, and there is no cluster line.
      expect(r.stdout).not.toContain('"shoal":"listening"')
      expect(r.stdout).not.toContain('"shoal":"up"')
      expect(r.stderr).not.toContain('shoal: coordinator')
    })
  }

  it('shoal worker: a bad job exits non-zero with SHOAL_ERR_JOB_INVALID before joining', async () => {
    const cwd = dir({ 'job.ts': "export default { name: 'x', init: () => 0 }\n" })
    // Nothing listens at the coordinator address: the worker must fail before it dials.
    const r = await shoal(
      ['worker', '--coordinator', `127.0.0.1:${await freePort()}`, '--job', 'job.ts'],
      cwd,
    )
    expect(r.code, r.stderr).toBe(1)
    expect(r.stderr).toContain(
      `shoal worker: SHOAL_ERR_JOB_INVALID: job ${join(cwd, 'job.ts')}: its default export is not a job: no process (a function)`,
    )
    expect(r.stdout).not.toContain('"shoal":"listening"')
  })

  it('POST /events on the built coordinator (its ingest thread): every event acked and applied', async () => {
    // The built CLI, not the sources.
    const start = async (args: string[]): Promise<{ address: string; http: string }> =>
      (await startShoal(args, {}, 20_000, 'listening', [MAIN])).info
    try {
      const coord = await start([
        'coordinator',
        '--listen',
        '127.0.0.1:0',
        '--http',
        '127.0.0.1:0',
        '--partitions',
        '8',
      ])
      await start([
        'worker',
        '--coordinator',
        coord.address,
        '--listen',
        '127.0.0.1:0',
        '--node-id',
        'w1',
        '--threads',
        '1',
      ])
      const body = Array.from({ length: 1000 }, (_, i) =>
        JSON.stringify({ key: `k${i % 10}`, value: 1 }),
      ).join('\n')
      let res: Response | undefined
      // 503 until the worker owns every partition.
      for (let i = 0; i < 100 && res?.status !== 200; i++) {
        if (i > 0) await new Promise((r) => setTimeout(r, 100))
        res = await fetch(`http://${coord.http}/events`, { method: 'POST', body })
      }
      expect(res?.status).toBe(200)
      expect(await res!.json()).toEqual({ acked: 1000 })
      const bad = await fetch(`http://${coord.http}/events`, { method: 'POST', body: '{"key":"a"}\n{"key":' })
      expect(bad.status).toBe(400)
      expect(await bad.json()).toMatchObject({ error: { lines: [{ line: 2 }], malformed: 1 } })
      const state = (await (await fetch(`http://${coord.http}/state/k3`)).json()) as { state: unknown }
      expect(state.state).toEqual({ count: 100, sum: 100 })
    } finally {
      await killAll()
    }
  })
})
