/**
 * The POST /events thread (see ingest-threads.ts): an EventIngest with its own ShoalClient,
 * answering the bodies the coordinator's main thread hands over.
 */
import { parentPort, workerData } from 'node:worker_threads'
import { ShoalClient } from '../client/client.ts'
import type { RoutingFields } from '../protocol/control.ts'
import { createTransport } from '../transport/index.ts'
import type { TlsOptions } from '../transport/transport.ts'
import { EventIngest } from './http-ingest.ts'
import type { FromIngestThread, IngestThreadData, ToIngestThread } from './ingest-threads.ts'

const port = parentPort!
const data = workerData as IngestThreadData

/** Buffers arrive as Uint8Arrays (structured clone): Buffers again for tls. */
function revive(tls: TlsOptions | undefined): TlsOptions | undefined {
  if (tls === undefined) return undefined
  const buf = (v: string | Buffer | undefined): string | Buffer | undefined =>
    v === undefined || typeof v === 'string' ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength)
  return { ...tls, cert: buf(tls.cert), key: buf(tls.key), ca: buf(tls.ca) }
}

const post = (m: FromIngestThread): void => port.postMessage(m)

/** Errors as plain data for the main thread's logger. */
function plain(obj: object): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(obj)) {
    out[k] =
      v instanceof Error ? { message: v.message, code: (v as { code?: unknown }).code, stack: v.stack } : v
  }
  return out
}

let routing: RoutingFields | null = null
let ready = true
const ingest = new EventIngest({
  connect: (o) =>
    ShoalClient.connect({
      coordinator: data.coordinator,
      transport: createTransport(data.transport, {
        ...data.transportOptions,
        tls: revive(data.transportOptions.tls),
      }),
      ...o,
    }),
  routing: () => routing!,
  ready: () => ready,
  producerId: data.producerId,
  timeoutMs: data.timeoutMs,
  logger: { warn: (obj, msg) => post({ type: 'log', obj: plain(obj), msg }) },
})

const aborts = new Map<number, AbortController>()

async function answer(id: number, handle: () => ReturnType<EventIngest['handle']>): Promise<void> {
  try {
    post({ type: 'response', id, response: await handle() })
  } catch (err) {
    post({ type: 'failed', id, message: err instanceof Error ? err.message : String(err) })
  } finally {
    aborts.delete(id)
  }
}

port.on('message', (m: ToIngestThread) => {
  switch (m.type) {
    case 'request': {
      routing = m.routing
      ready = m.ready
      const ac = new AbortController()
      aborts.set(m.id, ac)
      const body = Buffer.from(m.body.buffer, m.body.byteOffset, m.body.byteLength)
      void answer(m.id, () => ingest.handle(body, m.keyField, ac.signal))
      return
    }
    case 'abort':
      aborts.get(m.id)?.abort()
      return
    case 'close':
      // In a worker thread, process.exit ends the thread (its client's sockets closed first).
      void ingest.close().finally(() => process.exit(0))
  }
})
