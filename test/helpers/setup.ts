// Fail the run on unhandled rejections: a rejection nobody awaited is a bug, not noise.
process.on('unhandledRejection', (reason) => {
  throw reason instanceof Error ? reason : new Error(String(reason))
})
