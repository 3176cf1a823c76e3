// A stand-in for the POST /events thread (src/ingest/ingest-thread.ts), for IngestThreads'
// tests: it answers each request with what it received, and exits with code 3 (a crash) on
// a body that reads "crash".
import { parentPort, workerData } from 'node:worker_threads'

parentPort.on('message', (m) => {
  if (m.type === 'close') process.exit(0)
  if (m.type !== 'request') return
  const text = Buffer.from(m.body.buffer, m.body.byteOffset, m.body.byteLength).toString()
  if (text === 'crash') process.exit(3)
  parentPort.postMessage({ type: 'log', obj: { id: m.id }, msg: 'echo' })
  parentPort.postMessage({
    type: 'response',
    id: m.id,
    response: {
      status: 200,
      body: {
        text,
        producerId: workerData.producerId,
        keyField: m.keyField,
        ready: m.ready,
        partitions: m.routing.partitions,
      },
    },
  })
})
