/**
 * Pre-encoded Redis commands for bulk writes (checkpoint staging).
 *
 * ioredis encodes a command argument by argument, which for a checkpoint of a million keys
 * costs more client CPU than the server spends executing it. {@link encodeCommand} writes the
 * RESP bytes of one command (`*N $len arg ...`) into a single buffer in one pass, and
 * {@link PreEncodedCommand} hands that buffer to ioredis as the command's wire form
 * (`Command#toWritable` is public API). The command still carries its key as an argument, so
 * ioredis routes it on a cluster and applies timeouts, replies and errors as usual.
 */
import { Command } from 'ioredis'

export class PreEncodedCommand extends Command {
  readonly #bytes: Buffer

  /** `keyArgs`: the command's leading arguments up to and including its key (for cluster routing). */
  constructor(name: string, keyArgs: string[], bytes: Buffer) {
    super(name, keyArgs)
    this.#bytes = bytes
  }

  override toWritable(): Buffer {
    return this.#bytes
  }
}

const CRLF = 0x0d0a

function headerLength(n: number): number {
  // '$' + digits + CRLF (also '*' + digits + CRLF)
  return 3 + (n < 10 ? 1 : n < 100 ? 2 : n < 1000 ? 3 : n < 10_000 ? 4 : n < 100_000 ? 5 : String(n).length)
}

/** The RESP encoding of the command `head... items...` (strings as UTF-8, bytes as is). */
export function encodeCommand(head: readonly string[], items: readonly (string | Uint8Array)[]): Buffer {
  const count = head.length + items.length
  const lengths = new Array<number>(items.length)
  let size = headerLength(count)
  const headBytes = head.map((h) => Buffer.from(h, 'utf8'))
  for (const h of headBytes) size += headerLength(h.length) + h.length + 2
  for (let i = 0; i < items.length; i++) {
    const item = items[i] as string | Uint8Array
    const n = typeof item === 'string' ? Buffer.byteLength(item, 'utf8') : item.byteLength
    lengths[i] = n
    size += headerLength(n) + n + 2
  }
  const buf = Buffer.allocUnsafe(size)
  let o = buf.write(`*${count}\r\n`, 0, 'latin1')
  for (const h of headBytes) {
    o += buf.write(`$${h.length}\r\n`, o, 'latin1')
    o += h.copy(buf, o)
    o = buf.writeUInt16BE(CRLF, o)
  }
  for (let i = 0; i < items.length; i++) {
    const item = items[i] as string | Uint8Array
    const n = lengths[i] as number
    o += buf.write(`$${n}\r\n`, o, 'latin1')
    if (typeof item === 'string') o += buf.write(item, o, n, 'utf8')
    else {
      buf.set(item, o)
      o += n
    }
    o = buf.writeUInt16BE(CRLF, o)
  }
  return o === size ? buf : buf.subarray(0, o)
}

/** Write `$<n>\r\n` (or `*<n>\r\n`) at `o`; returns the new offset. */
function writeHeader(buf: Buffer, o: number, marker: number, n: number): number {
  buf[o++] = marker
  if (n < 10) buf[o++] = 48 + n
  else if (n < 100) {
    buf[o++] = 48 + ((n / 10) | 0)
    buf[o++] = 48 + (n % 10)
  } else {
    const digits = String(n)
    for (let i = 0; i < digits.length; i++) buf[o++] = digits.charCodeAt(i)
  }
  buf[o++] = 13
  buf[o++] = 10
  return o
}

/** Write a string argument of `n` UTF-8 bytes (`n === s.length` means ASCII). */
function writeString(buf: Buffer, o: number, s: string, n: number): number {
  o = writeHeader(buf, o, 36, n)
  if (n === s.length && n <= 64) {
    for (let i = 0; i < n; i++) buf[o + i] = s.charCodeAt(i)
  } else {
    buf.write(s, o, n, 'utf8')
  }
  o += n
  buf[o++] = 13
  buf[o++] = 10
  return o
}

function writeBytes(buf: Buffer, o: number, b: Uint8Array): number {
  const n = b.byteLength
  o = writeHeader(buf, o, 36, n)
  if (n <= 32) for (let i = 0; i < n; i++) buf[o + i] = b[i] as number
  else buf.set(b, o)
  o += n
  buf[o++] = 13
  buf[o++] = 10
  return o
}

/**
 * A reusable encoder of `NAME key field value field value ...` (HSET) and `NAME key member ...`
 * (SADD) commands: add arguments with {@link BulkEncoder.pair} / {@link BulkEncoder.member}
 * (which measure them), then {@link BulkEncoder.finish} writes the whole command into one exact-size
 * buffer. No per-argument allocations.
 */
export class BulkEncoder {
  readonly #name: string
  readonly #key: string
  #keys: string[] = []
  #keyLengths: number[] = []
  #values: Uint8Array[] = []
  #size = 0
  #args = 0

  constructor(name: string, key: string) {
    this.#name = name
    this.#key = key
  }

  /** Arguments added so far (fields, values and members). */
  get args(): number {
    return this.#args
  }

  /** Payload bytes added so far. */
  get bytes(): number {
    return this.#size
  }

  pair(field: string, value: Uint8Array): void {
    const n = Buffer.byteLength(field, 'utf8')
    this.#keys.push(field)
    this.#keyLengths.push(n)
    this.#values.push(value)
    this.#size += n + value.byteLength + 32
    this.#args += 2
  }

  member(member: string): void {
    const n = Buffer.byteLength(member, 'utf8')
    this.#keys.push(member)
    this.#keyLengths.push(n)
    this.#size += n + 16
    this.#args += 1
  }

  /** The encoded command; the encoder is empty again afterwards. */
  finish(): Buffer {
    const keyBytes = Buffer.byteLength(this.#key, 'utf8')
    const buf = Buffer.allocUnsafe(this.#size + this.#name.length + keyBytes + 48)
    let o = writeHeader(buf, 0, 42, this.#args + 2)
    o = writeString(buf, o, this.#name, this.#name.length)
    o = writeString(buf, o, this.#key, keyBytes)
    const keys = this.#keys
    const lengths = this.#keyLengths
    const values = this.#values
    const pairs = values.length > 0
    for (let i = 0; i < keys.length; i++) {
      o = writeString(buf, o, keys[i] as string, lengths[i] as number)
      if (pairs) o = writeBytes(buf, o, values[i] as Uint8Array)
    }
    this.#keys = []
    this.#keyLengths = []
    this.#values = []
    this.#size = 0
    this.#args = 0
    return buf.subarray(0, o)
  }
}
