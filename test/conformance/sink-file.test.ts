/** The Sink suite against NdjsonFileSink (events only, at least once), plus file-specific checks. */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { NdjsonFileSink } from '../../src/connectors/file/sink.ts'
import { ErrorCodes, ShoalError } from '../../src/errors.ts'
import { sinkConformance, type SinkReadDeadLetter, type SinkReadEvent } from './sink-suite.ts'

const root = mkdtempSync(join(tmpdir(), 'shoal-file-sink-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))
let n = 0

function lines(path: string): Record<string, unknown>[] {
  if (!existsSync(path)) return []
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>)
}

sinkConformance(
  'ndjson file',
  () => {
    const path = join(root, `sink-${++n}`, 'out.ndjson')
    const sink = new NdjsonFileSink({ kind: 'file', path })
    return Promise.resolve({
      sink,
      read: () => Promise.resolve({ events: lines(path) as unknown as SinkReadEvent[], state: new Map() }),
      readDeadLetters: () => Promise.resolve(lines(`${path}.dlq`) as unknown as SinkReadDeadLetter[]),
      cleanup: () => Promise.resolve(),
    })
  },
  { effectivelyOnce: false },
)

describe('NdjsonFileSink', () => {
  it('writes the original line format plus the identity', async () => {
    const path = join(root, 'format.ndjson')
    const sink = new NdjsonFileSink(path)
    await sink.open()
    await sink.writeEvents([
      { partition: 2, offset: 17, firstIndex: 4, records: [['clicks', 'u1', { a: 1 }]] },
    ])
    await sink.close()
    expect(readFileSync(path, 'utf8')).toBe(
      '{"stream":"clicks","key":"u1","partition":2,"event":{"a":1},"offset":17,"index":4}\n',
    )
    expect(sink.name).toBe(`file:${path}`)
    expect(sink.accepts).toEqual({ events: true, state: false })
  })

  it('writes each line as JSON.stringify writes the record object (odd events and keys too)', async () => {
    const path = join(root, 'exact.ndjson')
    const sink = new NdjsonFileSink(path)
    await sink.open()
    const records: [string, string, unknown][] = [
      ['s', 'k', undefined],
      ['s"q', 'k\n\u2028é', () => 1],
      ['s', '', null],
      ['s', 'k', { d: new Date(0), n: [1.5, -0, NaN, 1e21], u: undefined, s: 'x"y' }],
      ['s', 'k', 'text'],
    ]
    await sink.writeEvents([{ partition: 0, offset: null, firstIndex: 0, records }])
    await sink.close()
    const expected = records
      .map(([stream, key, event], index) =>
        JSON.stringify({ stream, key, partition: 0, event, offset: null, index }),
      )
      .join('\n')
    expect(readFileSync(path, 'utf8')).toBe(`${expected}\n`)
  })

  it('rejects a record that is not JSON (SINK_REJECTED) and writes nothing of its chunk', async () => {
    const path = join(root, 'bigint.ndjson')
    const sink = new NdjsonFileSink(path)
    await sink.open()
    const err = await sink
      .writeEvents([
        {
          partition: 0,
          offset: 1,
          firstIndex: 0,
          records: [
            ['s', 'k', 1],
            ['s', 'k', 10n],
          ],
        },
      ])
      .catch((e: unknown) => e)
    await sink.close()
    expect(err).toBeInstanceOf(ShoalError)
    expect((err as ShoalError).code).toBe(ErrorCodes.SINK_REJECTED)
    expect(readFileSync(path, 'utf8')).toBe('')
  })

  it('fails open with SINK_SCHEMA when the path is a directory', async () => {
    const path = join(root, 'a-directory')
    mkdirSync(path)
    const err = await new NdjsonFileSink(path).open().catch((e: unknown) => e)
    expect((err as ShoalError).code).toBe(ErrorCodes.SINK_SCHEMA)
  })

  it('surfaces a failing device (ENOSPC) as retryable SINK_UNAVAILABLE', async () => {
    // /dev/full accepts the open and fails every write with ENOSPC.
    if (!existsSync('/dev/full')) throw new Error('/dev/full is missing')
    const sink = new NdjsonFileSink('/dev/full')
    await sink.open()
    const err = await sink
      .writeEvents([{ partition: 0, offset: 1, firstIndex: 0, records: [['s', 'k', 1]] }])
      .catch((e: unknown) => e)
    await sink.close()
    expect(err).toBeInstanceOf(ShoalError)
    expect((err as ShoalError).code).toBe(ErrorCodes.SINK_UNAVAILABLE)
    expect((err as ShoalError).retryable).toBe(true)
    expect((err as ShoalError).data).toMatchObject({ errno: 'ENOSPC' })
  })
})
