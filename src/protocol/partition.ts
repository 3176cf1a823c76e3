/**
 * Key -> key group (partition). This mapping is a **contract**: every process that routes or
 * owns events (clients, coordinator, workers, SDKs in other languages) must compute exactly the
 * same partition for the same key, forever, on every platform and Node version. Changing any
 * step below re-shuffles every key of every deployed cluster; don't.
 *
 * The algorithm, in full (see also docs/partitioning.md):
 *
 * 1. Bytes. A `Uint8Array` key (a Buffer too) is used as is. A `string` key is encoded as
 *    UTF-8 exactly like WHATWG `TextEncoder` and `Buffer.from(key, 'utf8')`: a surrogate pair
 *    becomes one 4-byte sequence and a lone surrogate becomes U+FFFD (EF BF BD). The encoding is
 *    done on the fly, without allocating, so `'a'` and `new Uint8Array([0x61])` hash alike.
 * 2. Hash. MurmurHash3_x86_32 (Austin Appleby, SMHasher) of those bytes with seed 0
 *    ({@link PARTITION_HASH_SEED}), read as an unsigned 32-bit integer `h`. Blocks are read
 *    little-endian, as in the reference implementation on a little-endian machine (and as in
 *    Python `mmh3.hash(key, 0, signed=False)`, Guava `murmur3_32_fixed()`, Go `spaolacci/murmur3`).
 * 3. Reduction. `partition = floor(h * partitions / 2^32)` (multiply-shift, Lemire's "fastrange"),
 *    computed exactly in a double because `h * partitions < 2^48`. It uses the high bits of the
 *    hash, not `h % partitions`. Each partition receives `floor(2^32 / partitions)` or
 *    `ceil(2^32 / partitions)` hash values, so the relative bias is at most
 *    `partitions / 2^32` (1.5e-5 at the 65536 maximum, exactly 0 for powers of two).
 *
 * `partitions` is the number of key groups, fixed when a cluster is created: an integer in
 * [1, {@link MAX_PARTITIONS}], {@link DEFAULT_PARTITIONS} by default.
 */
import { InvalidOptionError } from '../errors.ts'

/** Number of key groups of a cluster unless configured otherwise (`--partitions`). */
export const DEFAULT_PARTITIONS = 256
/** Upper bound of the key-group space; keeps `hash * partitions` exact in a double. */
export const MAX_PARTITIONS = 65536
/** MurmurHash3 seed used for partitioning. Part of the contract: never change it. */
export const PARTITION_HASH_SEED = 0

/** A routing key: a string (hashed as UTF-8) or raw bytes. */
export type PartitionKey = string | Uint8Array

const C1 = 0xcc9e2d51
const C2 = 0x1b873593
const TWO_POW_32 = 4294967296

/** Format a received value for an error message. */
function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'bigint') return `${value}n`
  if (value instanceof Uint8Array) return `Uint8Array(${value.length})`
  if (typeof value === 'object' && value !== null) return Array.isArray(value) ? 'an array' : 'an object'
  return String(value)
}

/**
 * Validate a partition count and return it. Throws InvalidOptionError naming `name` and the
 * received value, e.g. `partitions must be an integer in [1, 65536] (got 0)`.
 */
export function validatePartitions(partitions: unknown, name = 'partitions'): number {
  if (
    typeof partitions !== 'number' ||
    !Number.isInteger(partitions) ||
    partitions < 1 ||
    partitions > MAX_PARTITIONS
  ) {
    throw new InvalidOptionError(
      `${name} must be an integer in [1, ${MAX_PARTITIONS}] (got ${show(partitions)})`,
      {
        data: { option: name },
      },
    )
  }
  return partitions
}

/** The per-block scramble of MurmurHash3_x86_32: k * c1, rotl 15, * c2. */
function scramble(k: number): number {
  k = Math.imul(k, C1)
  k = (k << 15) | (k >>> 17)
  return Math.imul(k, C2)
}

/** Mix one full 4-byte block `k` into the state `h`. */
function mixBlock(h: number, k: number): number {
  h ^= scramble(k)
  h = (h << 13) | (h >>> 19)
  return (Math.imul(h, 5) + 0xe6546b64) | 0
}

/** Length mix and fmix32 finalizer; returns an unsigned 32-bit integer. */
function finish(h: number, byteLength: number): number {
  h ^= byteLength
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

function hashBytes(data: Uint8Array, seed: number): number {
  return hashByteRange(data, 0, data.length, seed)
}

/** MurmurHash3_x86_32 of data[start..end). */
function hashByteRange(data: Uint8Array, start: number, end: number, seed: number): number {
  const len = end - start
  const blocksEnd = end - (len % 4)
  let h = seed | 0
  let i = start
  for (; i < blocksEnd; i += 4) {
    h = mixBlock(h, data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24))
  }
  // Tail: the remaining 0-3 bytes, little-endian, scrambled but not rotated into h.
  const rest = len % 4
  if (rest !== 0) {
    let k = data[i]!
    if (rest > 1) k |= data[i + 1]! << 8
    if (rest > 2) k |= data[i + 2]! << 16
    h ^= scramble(k)
  }
  return finish(h, len)
}

/**
 * The partitioning hash of the key whose bytes are data[start..end) (the UTF-8 of a string key):
 * hashKey(data.subarray(start, end)) without the view. For readers that find keys in their input.
 */
export function hashKeyBytes(data: Uint8Array, start: number, end: number): number {
  return hashByteRange(data, start, end, PARTITION_HASH_SEED)
}

/**
 * MurmurHash3_x86_32 of the UTF-8 encoding of `s`, encoding on the fly. `pending` collects up to
 * three bytes of the current block (little-endian, `filled` bits so far); each UTF-8 sequence is
 * first packed into `seq` (first byte lowest) with `count` bytes and then fed byte by byte.
 */
function hashString(s: string, seed: number): number {
  const n = s.length
  let h = seed | 0
  let pending = 0
  let filled = 0
  let byteLength = 0
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i)
    if (c < 0x80) {
      // ASCII fast path: one byte.
      pending |= c << filled
      filled += 8
      if (filled === 32) {
        h = mixBlock(h, pending)
        pending = 0
        filled = 0
      }
      byteLength += 1
      continue
    }
    let seq: number
    let count: number
    if (c < 0x800) {
      seq = 0xc0 | (c >>> 6) | ((0x80 | (c & 0x3f)) << 8)
      count = 2
    } else if (c < 0xd800 || c > 0xdfff) {
      seq = 0xe0 | (c >>> 12) | ((0x80 | ((c >>> 6) & 0x3f)) << 8) | ((0x80 | (c & 0x3f)) << 16)
      count = 3
    } else {
      const d = c <= 0xdbff && i + 1 < n ? s.charCodeAt(i + 1) : 0
      if (d >= 0xdc00 && d <= 0xdfff) {
        // A surrogate pair: one code point in [U+10000, U+10FFFF], four bytes.
        const cp = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00)
        seq =
          0xf0 |
          (cp >>> 18) |
          ((0x80 | ((cp >>> 12) & 0x3f)) << 8) |
          ((0x80 | ((cp >>> 6) & 0x3f)) << 16) |
          ((0x80 | (cp & 0x3f)) << 24)
        count = 4
        i++
      } else {
        // A lone surrogate encodes as U+FFFD, like TextEncoder and Buffer.
        seq = 0xef | (0xbf << 8) | (0xbd << 16)
        count = 3
      }
    }
    byteLength += count
    for (; count > 0; count--) {
      pending |= (seq & 0xff) << filled
      seq >>>= 8
      filled += 8
      if (filled === 32) {
        h = mixBlock(h, pending)
        pending = 0
        filled = 0
      }
    }
  }
  if (filled !== 0) h ^= scramble(pending)
  return finish(h, byteLength)
}

/**
 * MurmurHash3_x86_32 (SMHasher reference) of `key` as an unsigned 32-bit integer. A string is
 * hashed as its UTF-8 bytes (lone surrogates as U+FFFD) without allocating. `seed` is an
 * unsigned 32-bit integer; partitioning always uses {@link PARTITION_HASH_SEED}.
 */
export function murmur3Hash32(key: PartitionKey, seed: number = PARTITION_HASH_SEED): number {
  if (!Number.isInteger(seed) || seed < 0 || seed >= TWO_POW_32) {
    throw new InvalidOptionError(`seed must be an integer in [0, 2^32) (got ${show(seed)})`, {
      data: { option: 'seed' },
    })
  }
  return hashKeyWithSeed(key, seed)
}

function hashKeyWithSeed(key: PartitionKey, seed: number): number {
  if (typeof key === 'string') return hashString(key, seed)
  if (key instanceof Uint8Array) return hashBytes(key, seed)
  throw new InvalidOptionError(`key must be a string or a Uint8Array (got ${show(key)})`, {
    data: { option: 'key' },
  })
}

/** The partitioning hash of a key: MurmurHash3_x86_32 with seed 0, unsigned. */
export function hashKey(key: PartitionKey): number {
  return hashKeyWithSeed(key, PARTITION_HASH_SEED)
}

/**
 * Reduce an unsigned 32-bit hash to a partition in [0, partitions): `floor(hash * partitions / 2^32)`.
 * Monotonic in `hash`; partition `p` holds the hashes in `[ceil(p * 2^32 / partitions),
 * ceil((p + 1) * 2^32 / partitions))`. The caller guarantees a valid `hash` and `partitions`
 * (see {@link validatePartitions}); this runs on the hot path and does not check.
 */
export function partitionOfHash(hash: number, partitions: number): number {
  return Math.floor((hash * partitions) / TWO_POW_32)
}

/**
 * The key group (partition) of `key` in a cluster with `partitions` key groups:
 * `floor(murmur3_x86_32(utf8(key), 0) * partitions / 2^32)`. Throws InvalidOptionError for an
 * invalid `partitions` or key. On a hot path prefer {@link createPartitioner}, which validates once.
 */
export function partitionForKey(key: PartitionKey, partitions: number = DEFAULT_PARTITIONS): number {
  validatePartitions(partitions)
  return partitionOfHash(hashKeyWithSeed(key, PARTITION_HASH_SEED), partitions)
}

/** A partitioning function with `partitions` validated once (key -> partition). */
export type Partitioner = (key: PartitionKey) => number

/** Validate `partitions` once and return a key -> partition function for the hot path. */
export function createPartitioner(partitions: number = DEFAULT_PARTITIONS): Partitioner {
  const p = validatePartitions(partitions)
  return (key) => partitionOfHash(hashKeyWithSeed(key, PARTITION_HASH_SEED), p)
}
