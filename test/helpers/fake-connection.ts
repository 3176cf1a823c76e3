/**
 * A Connection for data-plane tests: the test feeds it envelopes (what a client sends) and it
 * records the acks the worker sends back, whether one per message or bundled.
 */
import { PROTOCOL_VERSION, type Envelope, type EventAckBody } from '../../src/protocol/messages.ts'
import type { Connection } from '../../src/transport/transport.ts'

export interface FakeConnection {
  conn: Connection
  push: (env: Envelope) => void
  acks: EventAckBody[]
  /** Ends the connection's stream of envelopes (register it with the test's cleanup). */
  close: () => void
}

export function fakeConnection(): FakeConnection {
  const inbox: Envelope[] = []
  const acks: EventAckBody[] = []
  let wake: (() => void) | null = null
  let closed = false
  const conn = {
    id: 'fake',
    peer: { nodeId: 'client', role: 'client', version: PROTOCOL_VERSION },
    send(m: { kind: string; body: { op?: string; acks?: EventAckBody[] } }): boolean {
      if (m.kind === 'event' && m.body.op === 'ack') acks.push(m.body as EventAckBody)
      if (m.kind === 'event' && m.body.op === 'acks') acks.push(...m.body.acks!)
      return true
    },
    async *[Symbol.asyncIterator](): AsyncIterator<Envelope> {
      for (;;) {
        while (inbox.length > 0) yield inbox.shift()!
        if (closed) return
        await new Promise<void>((r) => (wake = r))
      }
    },
  }
  return {
    conn: conn as unknown as Connection,
    acks,
    push: (env) => {
      inbox.push(env)
      wake?.()
    },
    close: () => {
      closed = true
      wake?.()
    },
  }
}
