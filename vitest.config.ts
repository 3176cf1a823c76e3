import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 20_000,
    hookTimeout: 20_000,
    // Never retry until green: a flaky test is a bug to fix.
    retry: 0,
    reporters: process.env.CI ? ['default', 'junit'] : ['default'],
    outputFile: { junit: '.tmp/junit.xml' },
    globalSetup: [],
    setupFiles: ['test/helpers/setup.ts'],
  },
})
