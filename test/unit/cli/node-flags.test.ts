import { describe, expect, it } from 'vitest'
import {
  MAIN_THREAD_FLAGS,
  SOURCE_WORKER_SEMI_SPACE_MB,
  nodeEnvForNodes,
  nodeFlagsForNode,
  nodeFlagsForNodes,
  readsSource,
} from '../../../src/cli/up.ts'

describe('Node flags of the nodes `shoal up` starts', () => {
  it('adds the 4 MiB semi-space flag and turns the memory reducer off, after the flags this process runs with', () => {
    expect(MAIN_THREAD_FLAGS).toEqual(['--max-semi-space-size=4', '--no-memory-reducer'])
    expect(nodeFlagsForNodes([])).toEqual(['--max-semi-space-size=4', '--no-memory-reducer'])
    expect(nodeFlagsForNodes(['--import', 'tsx'])).toEqual([
      '--import',
      'tsx',
      '--max-semi-space-size=4',
      '--no-memory-reducer',
    ])
  })

  it('keeps a semi-space size or memory-reducer setting the user chose, on the command line or in NODE_OPTIONS', () => {
    expect(nodeFlagsForNodes(['--max-semi-space-size=16'])).toEqual([
      '--max-semi-space-size=16',
      '--no-memory-reducer',
    ])
    expect(nodeFlagsForNodes(['--import', 'tsx'], '--max-semi-space-size=32')).toEqual([
      '--import',
      'tsx',
      '--no-memory-reducer',
    ])
    expect(nodeFlagsForNodes(['--memory-reducer'])).toEqual(['--memory-reducer', '--max-semi-space-size=4'])
    expect(nodeFlagsForNodes([], '--enable-source-maps')).toEqual([
      '--max-semi-space-size=4',
      '--no-memory-reducer',
    ])
  })

  it('gives a worker that reads a source larger semi-spaces, unless the user chose a size', () => {
    expect(SOURCE_WORKER_SEMI_SPACE_MB).toBe(32)
    expect(nodeFlagsForNodes([], '', { readsSource: true })).toEqual([
      '--max-semi-space-size=32',
      '--no-memory-reducer',
    ])
    expect(nodeFlagsForNodes([], '--max-semi-space-size=8', { readsSource: true })).toEqual([
      '--no-memory-reducer',
    ])
    const url = 'redis://r:6379?stream=s&group=g'
    expect(readsSource(['worker', '--coordinator', 'c:1', '--source', url], {})).toBe(true)
    expect(readsSource(['worker', `--source=${url}`], {})).toBe(true)
    expect(readsSource(['worker', '--coordinator', 'c:1'], { SHOAL_SOURCE: url })).toBe(true)
    expect(readsSource(['worker', '--coordinator', 'c:1'], { SHOAL_SOURCE: '' })).toBe(false)
    expect(readsSource(['worker', '--sink', 'file:/x'], {})).toBe(false)
    expect(nodeFlagsForNode(['worker', '--source', url], ['--import', 'tsx'], {})).toEqual([
      '--import',
      'tsx',
      '--max-semi-space-size=32',
      '--no-memory-reducer',
    ])
    // The coordinator reads no source, whatever the environment says.
    expect(readsSource(['coordinator', '--listen', ':0'], { SHOAL_SOURCE: url })).toBe(false)
  })

  it('gives every node the malloc threshold unless the environment sets it', () => {
    expect(nodeEnvForNodes({ PATH: '/bin' })).toEqual({ PATH: '/bin', MALLOC_MMAP_THRESHOLD_: '32768' })
    expect(nodeEnvForNodes({ MALLOC_MMAP_THRESHOLD_: '1048576' })).toEqual({
      MALLOC_MMAP_THRESHOLD_: '1048576',
    })
    const env = { A: '1' }
    nodeEnvForNodes(env)
    expect(env).toEqual({ A: '1' }) // not modified in place
  })
})
