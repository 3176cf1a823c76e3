/** redis-parser (ioredis's RESP parser) ships no types; what bench/micro/stream-reply-parse.ts uses. */
declare module 'redis-parser' {
  interface RedisParserOptions {
    returnReply: (reply: unknown) => void
    returnError: (err: Error) => void
    returnBuffers?: boolean
  }
  export default class RedisParser {
    constructor(options: RedisParserOptions)
    execute(data: Buffer): void
  }
}
