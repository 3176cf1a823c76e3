import { describe, expect, it } from 'vitest'
import * as index from '../../src/index.ts'
import * as entry from '../../src/job-entry.ts'
import { ErrorCodes, ShoalError } from '../../src/errors.ts'

// What `import ... from 'shoal'` gives job code in a processing thread (job-hooks.ts).
describe('job entry', () => {
  it('exports every runtime name of the index, so any job that links against the index links', () => {
    expect(Object.keys(entry).sort()).toEqual(Object.keys(index).sort())
  })

  it('gives jobs the real job API, errors and protocol helpers', () => {
    expect(entry.defineJob).toBe(index.defineJob)
    expect(entry.windows).toBe(index.windows)
    expect(entry.ShoalError).toBe(index.ShoalError)
    expect(entry.partitionForKey('k', 256)).toBe(index.partitionForKey('k', 256))
  })

  it('makes node, client and connector exports throw a JOB_INVALID error naming them when used', () => {
    const used = [
      () => new (entry.ShoalClient as unknown as new () => unknown)(),
      () => (entry.createTransport as unknown as () => unknown)(),
      () => (entry.Coordinator as unknown as { start: unknown }).start,
    ]
    const names = ['ShoalClient', 'createTransport', 'Coordinator.start']
    used.forEach((use, i) => {
      let caught: unknown
      try {
        use()
      } catch (e) {
        caught = e
      }
      expect(caught).toBeInstanceOf(ShoalError)
      expect((caught as ShoalError).code).toBe(ErrorCodes.JOB_INVALID)
      expect((caught as ShoalError).message).toContain(`${names[i]} is not available to job code`)
    })
    // Inspection (a log line, a stack) still works.
    expect(String((entry.ShoalClient as { name: string }).name)).toBe('ShoalClient')
  })
})
