export * from './errors.ts'
export * from './protocol/messages.ts'
export { encodeFrame, encodeEnvelope, decodeEnvelope } from './protocol/codec.ts'
export { FrameParser } from './protocol/framing.ts'
