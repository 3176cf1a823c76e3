/**
 * A job file as one ES module, for processing threads that load it without loader hooks
 * (docs/decisions.md, "Job files"). Built code only: the thread that checks a job before a node
 * starts (engine.ts checkJob) bundles it with esbuild, and the processing threads import the
 * bundle. Why: loader hooks cost every worker a hooks thread and a TypeScript compiler in each
 * processing thread (on Node 20 a hooks thread with tsx; on Node 22+ tsx's in-thread hooks with
 * esbuild's synchronous worker): ~40 MiB of an idle worker's RSS, measured (docs/benchmarks.md,
 * "Worker memory"), and each thread compiled the job again.
 *
 * What is bundled is the job's own code: the file and the local files it imports (TypeScript or
 * JavaScript, ESM or CommonJS, tsconfig honoured as tsx does). Packages stay outside, imported
 * by Node at the path esbuild resolves for them (with Node's `import`/`require` conditions), so
 * they load as they would without a bundle (their own format, native add-ons). `shoal` is the
 * running package's job entry (job-entry.ts), as the hooks resolve it. In each bundled file
 * `import.meta.url`, `import.meta.filename` and `import.meta.dirname` are the original file's,
 * and `require` works relative to the job file. Stack traces map to the original sources
 * (inline source map; the processing threads enable source maps).
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { isBuiltin } from 'node:module'
import { hostname, tmpdir } from 'node:os'
import { basename, dirname, extname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import type { Loader, Message, Plugin } from 'esbuild'

/** Thrown when esbuild cannot bundle the job: its messages, each with file:line:column. */
export class JobBundleError extends Error {
  constructor(messages: readonly Message[]) {
    super(messages.map(describeMessage).join('; '))
    this.name = 'JobBundleError'
  }
}

function describeMessage(m: Message): string {
  const at = m.location === null ? '' : `${m.location.file}:${m.location.line}:${m.location.column + 1}: `
  return `${at}${m.text}`
}

const LOADERS: Record<string, Loader> = {
  '.ts': 'ts',
  '.mts': 'ts',
  '.cts': 'ts',
  '.tsx': 'tsx',
  '.js': 'js',
  '.mjs': 'js',
  '.cjs': 'js',
  '.jsx': 'jsx',
}

const IMPORT_META = /\bimport\.meta\.(url|filename|dirname)\b/g

function jobPlugin(entry: string): Plugin {
  return {
    name: 'shoal-job',
    setup(build) {
      build.onResolve({ filter: /^shoal$/ }, () => ({ path: entry, external: true }))
      // Packages (bare specifiers) and built-ins stay outside the bundle.
      build.onResolve({ filter: /^[^./]/ }, async (args) => {
        if (args.pluginData === 'shoal-job') return undefined
        if (isBuiltin(args.path)) return { path: args.path, external: true }
        const r = await build.resolve(args.path, {
          kind: args.kind,
          resolveDir: args.resolveDir,
          importer: args.importer,
          pluginData: 'shoal-job',
        })
        if (r.errors.length > 0) return { errors: r.errors }
        return { path: r.path, external: true }
      })
      // The job's own files: import.meta as in the original file.
      build.onLoad({ filter: /\.[cm]?[jt]sx?$/ }, (args) => {
        if (args.path.includes('/node_modules/')) return undefined
        const loader = LOADERS[extname(args.path)]
        if (loader === undefined) return undefined
        const text = readFileSync(args.path, 'utf8')
        const contents = text.replace(IMPORT_META, (_, what: string) =>
          JSON.stringify(
            what === 'url'
              ? pathToFileURL(args.path).href
              : what === 'filename'
                ? args.path
                : dirname(args.path),
          ),
        )
        return { contents, loader, resolveDir: dirname(args.path) }
      })
    },
  }
}

/**
 * Bundle `file` (an absolute path) into a new temporary directory; returns the bundle's file
 * URL. `entry`: the URL `shoal` resolves to. Rejects with a JobBundleError when the job's code
 * does not compile or an import does not resolve.
 */
export async function bundleJob(file: string, entry: string): Promise<string> {
  const esbuild = await import('esbuild')
  let output: string
  try {
    const result = await esbuild.build({
      entryPoints: [file],
      bundle: true,
      write: false,
      format: 'esm',
      platform: 'node',
      target: `node${process.versions.node}`,
      sourcemap: 'inline',
      logLevel: 'silent',
      absWorkingDir: dirname(file),
      plugins: [jobPlugin(fileURLToPath(entry))],
    })
    output = result.outputFiles[0]!.text
    // CommonJS code of the job that requires a package goes through esbuild's __require, which
    // needs a `require`: one that resolves from the job's directory. Only then (an ES module of
    // the job may declare its own), and on the first line (the source map's lines stay).
    if (output.includes('__require')) {
      output = `import { createRequire as __shoalCreateRequire } from 'node:module'; const require = __shoalCreateRequire(${JSON.stringify(file)}); ${output}`
    }
  } catch (e) {
    const errors = (e as { errors?: Message[] }).errors
    if (Array.isArray(errors) && errors.length > 0) throw new JobBundleError(errors)
    throw e
  } finally {
    // The esbuild service (a child process) is not needed again in this thread.
    await esbuild.stop()
  }
  sweepBundleDirs()
  const dir = mkdtempSync(join(tmpdir(), `${bundleDirPrefix()}${process.pid}-`))
  const out = join(dir, `${basename(file, extname(file))}.mjs`)
  writeFileSync(out, output)
  return pathToFileURL(out).href
}

/**
 * Bundle directories are `shoal-job-<host>-<pid>-<random>` in the temporary directory. A node
 * removes its own when it exits; one killed (SIGKILL, OOM) cannot, so each new bundle first
 * removes those of this host whose process is gone. The host name keeps containers that share
 * a temporary directory but not a process namespace from judging each other's processes.
 */
export function bundleDirPrefix(): string {
  return `shoal-job-${hostname().replace(/[^A-Za-z0-9.]/g, '_')}-`
}

/** Remove the bundle directories of this host's processes that no longer run (best effort). */
export function sweepBundleDirs(dir = tmpdir()): void {
  const prefix = bundleDirPrefix()
  let names: string[]
  try {
    names = readdirSync(dir)
  } catch {
    return
  }
  for (const name of names) {
    if (!name.startsWith(prefix)) continue
    const pid = Number(name.slice(prefix.length).split('-', 1)[0])
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid || alive(pid)) continue
    try {
      rmSync(join(dir, name), { recursive: true, force: true })
    } catch {
      // Another node sweeping at the same time, or not ours to remove: leave it.
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    // EPERM: it runs, as another user.
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}
