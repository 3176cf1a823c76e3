/**
 * Micro-benchmark of what the `file:` replay log costs per round (issue 13, durable): a worker
 * owns ~85 partitions, each with its own log file, and every round of appends is one positional
 * write and one fdatasync per partition, each a libuv pool job (src/state/checkpoint/local-store.ts,
 * DiskLog). This does exactly that on FILES files in a temp directory for a few seconds and
 * prints rounds/s and the CPU time of the process per write + fdatasync.
 *
 *   node --import tsx bench/micro/fsync-rounds.ts [datasync|dsync] [files]
 *
 * `dsync` opens the files with O_DSYNC and skips the fdatasync (one pool job per append instead
 * of two). UV_THREADPOOL_SIZE changes the pool. docs/benchmarks.md, "Latency at 50% load".
 */
import { constants } from 'node:fs'
import { mkdtemp, open, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const mode = process.argv[2] === 'dsync' ? 'dsync' : 'datasync'
const files = Number(process.argv[3] ?? 85)
const dir = await mkdtemp(join(tmpdir(), 'shoal-fsync-'))
try {
  const flags = mode === 'dsync' ? constants.O_RDWR | constants.O_CREAT | constants.O_DSYNC : 'w'
  const handles = await Promise.all(
    Array.from({ length: files }, (_, i) => open(join(dir, `p${i}.log`), flags)),
  )
  const record = Buffer.alloc(300, 1)
  const sizes = new Array<number>(files).fill(0)
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  let rounds = 0
  while (performance.now() - t0 < 3000) {
    await Promise.all(
      handles.map(async (fh, i) => {
        await fh.write(record, 0, record.length, sizes[i])
        sizes[i]! += record.length
        if (mode === 'datasync') await fh.datasync()
      }),
    )
    rounds++
  }
  const seconds = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  console.log(
    `${mode}, ${files} files, UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? 4}: ` +
      `${(rounds / seconds).toFixed(0)} rounds/s (${((1000 * seconds) / rounds).toFixed(2)} ms each), ` +
      `CPU per append ${((cpu.user + cpu.system) / (rounds * files)).toFixed(1)} µs`,
  )
  await Promise.all(handles.map((fh) => fh.close()))
} finally {
  await rm(dir, { recursive: true, force: true })
}
