/**
 * A pure, incremental parser for length-prefixed frames: a 4-byte big-endian payload length,
 * then the payload. It checks the declared length against maxFrameBytes before it buffers a
 * single byte of the payload, accepts input split at any byte and many frames per chunk, and
 * after the first error refuses all further input (the connection must be closed; a parser
 * never resynchronizes on a corrupt stream).
 *
 * No checksum: TCP's checksum covers transport corruption, TLS's AEAD covers tampering, and a
 * corrupt payload still fails envelope validation. A CRC would cost a full pass over every
 * batch on both sides for no guarantee those do not already give (docs/decisions.md).
 */
import { ErrorCodes, FrameTooLargeError, InvalidOptionError, ProtocolError } from '../errors.ts'
import { FRAME_HEADER_BYTES } from './codec.ts'

export type FrameHandler = (payload: Buffer) => void

export class FrameParser {
  readonly #maxFrameBytes: number
  readonly #onFrame: FrameHandler
  /** Bytes of a header split across chunks (at most 3 are ever held). */
  #header = Buffer.alloc(FRAME_HEADER_BYTES)
  #headerFill = 0
  /** The payload being assembled across chunks, sized exactly to the declared length. */
  #body: Buffer | null = null
  #bodyFill = 0
  #failed: ProtocolError | null = null

  constructor(maxFrameBytes: number, onFrame: FrameHandler) {
    if (!Number.isSafeInteger(maxFrameBytes) || maxFrameBytes < 1 || maxFrameBytes > 0xffffffff) {
      throw new InvalidOptionError(`maxFrameBytes must be an integer in [1, 2^32-1] (got ${maxFrameBytes})`)
    }
    this.#maxFrameBytes = maxFrameBytes
    this.#onFrame = onFrame
  }

  /** Bytes held for an incomplete frame. Never more than maxFrameBytes + 4. */
  get bufferedBytes(): number {
    return this.#headerFill + (this.#body === null ? 0 : this.#bodyFill)
  }

  get failed(): ProtocolError | null {
    return this.#failed
  }

  /**
   * Feed a chunk. Complete frames are delivered synchronously to onFrame, in order; a payload
   * that lies wholly inside the chunk is delivered as a view of it (no copy). Throws a
   * ProtocolError on a bad header; the parser then stays failed.
   */
  push(chunk: Buffer): void {
    if (this.#failed !== null) throw this.#failed
    let pos = 0
    const end = chunk.length
    while (pos < end) {
      if (this.#body !== null) {
        const need = this.#body.length - this.#bodyFill
        const take = need < end - pos ? need : end - pos
        chunk.copy(this.#body, this.#bodyFill, pos, pos + take)
        this.#bodyFill += take
        pos += take
        if (this.#bodyFill === this.#body.length) {
          const body = this.#body
          this.#body = null
          this.#bodyFill = 0
          this.#onFrame(body)
        }
        continue
      }
      let len: number
      if (this.#headerFill === 0 && end - pos >= FRAME_HEADER_BYTES) {
        len = chunk.readUInt32BE(pos)
        pos += FRAME_HEADER_BYTES
      } else {
        while (this.#headerFill < FRAME_HEADER_BYTES && pos < end)
          this.#header[this.#headerFill++] = chunk[pos++]!
        if (this.#headerFill < FRAME_HEADER_BYTES) return
        this.#headerFill = 0
        len = this.#header.readUInt32BE(0)
      }
      this.#checkLength(len)
      if (end - pos >= len) {
        const payload = chunk.subarray(pos, pos + len)
        pos += len
        this.#onFrame(payload)
      } else {
        // Safe: len <= maxFrameBytes was checked above, so this allocation is bounded.
        this.#body = Buffer.allocUnsafe(len)
        this.#bodyFill = 0
      }
    }
  }

  /** Call when the stream ends. Throws MALFORMED_FRAME if it ended inside a frame. */
  end(): void {
    if (this.#failed !== null) return
    if (this.bufferedBytes > 0 || this.#body !== null) {
      this.#fail(
        new ProtocolError(
          ErrorCodes.MALFORMED_FRAME,
          `stream ended inside a frame (${this.bufferedBytes} bytes buffered)`,
        ),
      )
    }
  }

  #checkLength(len: number): void {
    if (len === 0) this.#fail(new ProtocolError(ErrorCodes.MALFORMED_FRAME, 'frame with zero-length payload'))
    if (len > this.#maxFrameBytes) this.#fail(new FrameTooLargeError(len, this.#maxFrameBytes))
  }

  #fail(err: ProtocolError): never {
    this.#failed = err
    this.#body = null
    this.#headerFill = 0
    throw err
  }
}
