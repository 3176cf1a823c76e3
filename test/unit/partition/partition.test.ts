import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { ErrorCodes, InvalidOptionError } from '../../../src/errors.ts'
import {
  DEFAULT_PARTITIONS,
  MAX_PARTITIONS,
  PARTITION_HASH_SEED,
  createPartitioner,
  hashKey,
  murmur3Hash32,
  partitionForKey,
  partitionOfHash,
  validatePartitions,
} from '../../../src/protocol/partition.ts'

// Time-boxed property runs: a run cut short by the limit passes with the runs it completed.
const fcOptions = { numRuns: 500, plugins: [fc.interruptAfterTimeLimit(3000)] }

const enc = new TextEncoder()

/** Strings of arbitrary Unicode scalar values (no lone surrogates), BMP and astral alike. */
const arbCodePoints = (maxLength = 40): fc.Arbitrary<string> =>
  fc
    .array(
      fc.oneof(
        fc.integer({ min: 0, max: 0x7ff }),
        fc.integer({ min: 0x800, max: 0xd7ff }),
        fc.integer({ min: 0xe000, max: 0x10ffff }),
      ),
      { maxLength },
    )
    .map((cps) => String.fromCodePoint(...cps))
const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, 'hex'))

/**
 * A deliberately naive MurmurHash3_x86_32 used as an oracle for arbitrary bytes: Buffer reads
 * and 64-bit-safe BigInt multiplication instead of Math.imul, so it shares no arithmetic
 * tricks with the implementation under test.
 */
function referenceMurmur3(data: Uint8Array, seed: number): number {
  const M = 0xffffffffn
  const mul = (a: bigint, b: bigint): bigint => (a * b) & M
  const rotl = (x: bigint, r: bigint): bigint => ((x << r) | (x >> (32n - r))) & M
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  const nblocks = Math.floor(buf.length / 4)
  let h = BigInt(seed)
  for (let i = 0; i < nblocks; i++) {
    let k = BigInt(buf.readUInt32LE(i * 4))
    k = mul(rotl(mul(k, 0xcc9e2d51n), 15n), 0x1b873593n)
    h = rotl(h ^ k, 13n)
    h = (mul(h, 5n) + 0xe6546b64n) & M
  }
  let k = 0n
  const tail = nblocks * 4
  const rest = buf.length - tail
  if (rest >= 3) k ^= BigInt(buf[tail + 2]!) << 16n
  if (rest >= 2) k ^= BigInt(buf[tail + 1]!) << 8n
  if (rest >= 1) {
    k ^= BigInt(buf[tail]!)
    h ^= mul(rotl(mul(k, 0xcc9e2d51n), 15n), 0x1b873593n)
  }
  h ^= BigInt(buf.length)
  h ^= h >> 16n
  h = mul(h, 0x85ebca6bn)
  h ^= h >> 13n
  h = mul(h, 0xc2b2ae35n)
  h ^= h >> 16n
  return Number(h)
}

describe('murmur3Hash32: published MurmurHash3_x86_32 vectors', () => {
  // Ian Boyd's vectors (stackoverflow.com/a/31929528), also asserted by Python mmh3's test suite,
  // plus the classic string vectors quoted by Wikipedia and most ports.
  const published: [key: string | Uint8Array, seed: number, expected: number][] = [
    [hex(''), 0, 0x00000000],
    [hex(''), 1, 0x514e28b7],
    [hex(''), 0xffffffff, 0x81f16f39],
    [hex('21436587'), 0, 0xf55b516b],
    [hex('21436587'), 0x5082edee, 0x2362f9de],
    [hex('214365'), 0, 0x7e4a8634],
    [hex('2143'), 0, 0xa0f7b07a],
    [hex('21'), 0, 0x72661cf4],
    [hex('ffffffff'), 0, 0x76293b50],
    [hex('00000000'), 0, 0x2362f9de],
    [hex('000000'), 0, 0x85f0b427],
    [hex('0000'), 0, 0x30f4c306],
    [hex('00'), 0, 0x514e28b7],
    ['aaaa', 0x9747b28c, 0x5a97808a],
    ['aaa', 0x9747b28c, 0x283e0130],
    ['aa', 0x9747b28c, 0x5d211726],
    ['a', 0x9747b28c, 0x7fa09ea6],
    ['abcd', 0x9747b28c, 0xf0478627],
    ['abc', 0x9747b28c, 0xc84a62dd],
    ['ab', 0x9747b28c, 0x74875592],
    ['Hello, world!', 0x9747b28c, 0x24884cba],
    ['ππππππππ', 0x9747b28c, 0xd58063c1],
    ['a'.repeat(256), 0x9747b28c, 0x37405bdc],
    ['abc', 0, 0xb3dd93fa],
    ['abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq', 0, 0xee925b90],
    ['The quick brown fox jumps over the lazy dog', 0x9747b28c, 0x2fa826cd],
    ['The quick brown fox jumps over the lazy dog', 0, 0x2e4ff723],
    ['Hello, world!', 0, 0xc0363e43],
    ['foo', 0, 4138058784],
  ]
  it.each(published)('%j with seed %i', (key, seed, expected) => {
    expect(murmur3Hash32(key, seed)).toBe(expected)
    const bytes = typeof key === 'string' ? enc.encode(key) : key
    expect(murmur3Hash32(bytes, seed)).toBe(expected)
    expect(referenceMurmur3(bytes, seed)).toBe(expected)
  })

  it("matches SMHasher's verification value 0xB0F57EE3 (every tail length, 256 seeds)", () => {
    // Hash {}, {0}, {0,1}, ... {0..254} with seed 256 - i, then hash the 1024 bytes of
    // little-endian results with seed 0; the first 4 bytes, little-endian, are the check value.
    const key = new Uint8Array(256)
    const hashes = Buffer.alloc(1024)
    for (let i = 0; i < 256; i++) {
      key[i] = i
      hashes.writeUInt32LE(murmur3Hash32(key.subarray(0, i), 256 - i), i * 4)
    }
    expect(murmur3Hash32(hashes, 0)).toBe(0xb0f57ee3)
  })
})

describe('hashKey and partitionForKey: the pinned Shoal contract', () => {
  // hash = MurmurHash3_x86_32(utf8(key), seed 0); partition = floor(hash * 256 / 2^32).
  // Hash values computed by the SMHasher reference C implementation (MurmurHash3_x86_32, gcc,
  // x86-64) over the UTF-8 bytes produced by Python's encoder; never edit them to make a test pass.
  const pinned: [key: string, hash: number, partition256: number][] = [
    ['', 0x00000000, 0],
    ['a', 0x3c2569b2, 60],
    ['abc', 0xb3dd93fa, 179],
    ['user-1', 0xf8a28763, 248],
    ['user-2', 0xde9747cb, 222],
    ['user-42', 0xb972dad0, 185],
    ['order:1234567', 0xc0d69075, 192],
    ['sensor/eu-west/17', 0x0f5aefa1, 15],
    ['Hello, world!', 0xc0363e43, 192],
    ['The quick brown fox jumps over the lazy dog', 0x2e4ff723, 46],
    ['ключ', 0x9a592042, 154],
    ['键', 0x984b54b2, 152],
    ['café', 0x241c0f08, 36],
    ['🐟', 0x62a389da, 98],
    ['a🐟b', 0x248314cc, 36],
    ['\ufffd', 0xb69ca6c1, 182],
  ]
  it.each(pinned)('%j', (key, hash, partition) => {
    expect(PARTITION_HASH_SEED).toBe(0)
    expect(hashKey(key)).toBe(hash)
    expect(hashKey(Buffer.from(key, 'utf8'))).toBe(hash)
    expect(partitionForKey(key)).toBe(partition)
    expect(partitionForKey(key, DEFAULT_PARTITIONS)).toBe(partition)
    expect(partitionOfHash(hash, 256)).toBe(partition)
  })

  it('defaults to 256 partitions', () => {
    expect(DEFAULT_PARTITIONS).toBe(256)
    expect(MAX_PARTITIONS).toBe(65536)
  })

  it('encodes a lone surrogate as U+FFFD, like TextEncoder and Buffer', () => {
    expect(hashKey('\ud800')).toBe(hashKey('\ufffd'))
    expect(hashKey('x\udc00y')).toBe(hashKey('x\ufffdy'))
    // A high surrogate followed by a non-surrogate, and one at the very end.
    expect(hashKey('\ud83dA')).toBe(hashKey(enc.encode('\ud83dA')))
    expect(hashKey('A\ud83d')).toBe(hashKey(Buffer.from('A\ud83d', 'utf8')))
  })

  it('hashes a string exactly like its UTF-8 bytes (any UTF-16, lone surrogates included)', () => {
    const anyUtf16 = fc
      .array(fc.oneof(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0xd7f0, max: 0xe010 })), {
        maxLength: 40,
      })
      .map((units) => String.fromCharCode(...units))
    const anyCodePoints = arbCodePoints()
    fc.assert(
      fc.property(fc.oneof(anyUtf16, anyCodePoints), (s) => {
        const bytes = enc.encode(s)
        expect(hashKey(s)).toBe(hashKey(bytes))
        expect(hashKey(s)).toBe(referenceMurmur3(bytes, 0))
        expect(hashKey(Buffer.from(s, 'utf8'))).toBe(hashKey(bytes))
      }),
      fcOptions,
    )
  })

  it('agrees with the reference on arbitrary bytes and seeds', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 64 }),
        fc.integer({ min: 0, max: 0xffffffff }),
        (bytes, seed) => {
          expect(murmur3Hash32(bytes, seed)).toBe(referenceMurmur3(bytes, seed))
        },
      ),
      fcOptions,
    )
  })

  it('hashes a subarray view by its own bytes only', () => {
    const big = enc.encode('xxuser-42yy')
    expect(hashKey(big.subarray(2, 9))).toBe(hashKey('user-42'))
  })

  it('returns unsigned 32-bit integers', () => {
    fc.assert(
      fc.property(arbCodePoints(), (s) => {
        const h = hashKey(s)
        expect(Number.isInteger(h)).toBe(true)
        expect(h).toBeGreaterThanOrEqual(0)
        expect(h).toBeLessThan(2 ** 32)
      }),
      fcOptions,
    )
  })
})

describe('partitionOfHash: multiply-shift reduction', () => {
  it('always lands in [0, partitions)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.integer({ min: 1, max: MAX_PARTITIONS }),
        (hash, partitions) => {
          const p = partitionOfHash(hash, partitions)
          expect(Number.isInteger(p)).toBe(true)
          expect(p).toBeGreaterThanOrEqual(0)
          expect(p).toBeLessThan(partitions)
        },
      ),
      fcOptions,
    )
  })

  it('is exact: partition p holds the hashes in [ceil(p * 2^32 / P), ceil((p + 1) * 2^32 / P))', () => {
    const lowest = (p: number, partitions: number): number =>
      Number(((BigInt(p) << 32n) + BigInt(partitions) - 1n) / BigInt(partitions))
    fc.assert(
      fc.property(fc.integer({ min: 1, max: MAX_PARTITIONS }), fc.nat(), (partitions, seed) => {
        const p = seed % partitions
        const lo = lowest(p, partitions)
        const hi = lowest(p + 1, partitions) - 1
        expect(partitionOfHash(lo, partitions)).toBe(p)
        expect(partitionOfHash(hi, partitions)).toBe(p)
        if (lo > 0) expect(partitionOfHash(lo - 1, partitions)).toBe(p - 1)
        if (hi < 0xffffffff) expect(partitionOfHash(hi + 1, partitions)).toBe(p + 1)
        // Every bucket covers floor or ceil of 2^32 / P hash values.
        const size = hi - lo + 1
        expect(Math.abs(size - 2 ** 32 / partitions)).toBeLessThan(1)
      }),
      fcOptions,
    )
  })

  it('uses the high bits: for a power of two it is hash >>> (32 - log2 P)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 16 }), (hash, bits) => {
        const partitions = 2 ** bits
        const expected = bits === 0 ? 0 : hash >>> (32 - bits)
        expect(partitionOfHash(hash, partitions)).toBe(expected)
      }),
      fcOptions,
    )
  })

  it('maps the extremes to the first and last partition', () => {
    for (const partitions of [1, 2, 3, 7, 256, 1000, MAX_PARTITIONS]) {
      expect(partitionOfHash(0, partitions)).toBe(0)
      expect(partitionOfHash(0xffffffff, partitions)).toBe(partitions - 1)
    }
  })
})

describe('distribution', () => {
  // Fixed inputs, so these are deterministic; the bounds are loose (about 6 standard deviations
  // of the chi-square statistic) because they guard against gross mistakes, not subtle bias.
  function chiSquare(keys: readonly (string | Uint8Array)[], partitions: number) {
    const counts = new Array<number>(partitions).fill(0)
    const partitionOf = createPartitioner(partitions)
    for (const k of keys) counts[partitionOf(k)]! += 1
    const expected = keys.length / partitions
    let chi = 0
    for (const c of counts) chi += (c - expected) ** 2 / expected
    const df = partitions - 1
    return {
      chi,
      bound: df + 6 * Math.sqrt(2 * df),
      min: Math.min(...counts),
      max: Math.max(...counts),
      expected,
    }
  }
  const N = 100_000
  const stringKeys = Array.from({ length: N }, (_, i) => `key-${i}`)
  const userKeys = Array.from({ length: N }, (_, i) => `user:${i * 7919}`)
  const byteKeys = Array.from({ length: N }, (_, i) => {
    const b = new Uint8Array(8)
    new DataView(b.buffer).setUint32(4, i, true)
    return b
  })

  it.each([
    ['key-<i>', stringKeys],
    ['user:<i*7919>', userKeys],
    ['8-byte little-endian counters', byteKeys],
  ] as const)('%s over 256, 7 and 1000 partitions is roughly uniform', (_name, keys) => {
    for (const partitions of [256, 7, 1000]) {
      const r = chiSquare(keys, partitions)
      expect(r.chi).toBeLessThan(r.bound)
      expect(r.min).toBeGreaterThan(r.expected * 0.6)
      expect(r.max).toBeLessThan(r.expected * 1.4)
    }
  })
})

describe('validation', () => {
  it.each([0, -1, 1.5, 65537, Number.NaN, Number.POSITIVE_INFINITY, '256', null])(
    'rejects partitions = %s',
    (bad) => {
      expect(() => validatePartitions(bad)).toThrow(InvalidOptionError)
      expect(() => partitionForKey('k', bad as number)).toThrow(InvalidOptionError)
      expect(() => createPartitioner(bad as number)).toThrow(InvalidOptionError)
    },
  )

  it('names the option and the received value', () => {
    expect(() => validatePartitions(undefined)).toThrow(
      'partitions must be an integer in [1, 65536] (got undefined)',
    )
    expect(() => partitionForKey('k', 0)).toThrow('partitions must be an integer in [1, 65536] (got 0)')
    expect(() => validatePartitions('8', 'options.partitions')).toThrow(
      'options.partitions must be an integer in [1, 65536] (got "8")',
    )
    try {
      validatePartitions(0)
      expect.unreachable()
    } catch (err) {
      expect(err).toBeInstanceOf(InvalidOptionError)
      expect((err as InvalidOptionError).code).toBe(ErrorCodes.INVALID_OPTION)
    }
  })

  it('accepts the bounds', () => {
    expect(validatePartitions(1)).toBe(1)
    expect(validatePartitions(MAX_PARTITIONS)).toBe(MAX_PARTITIONS)
    expect(partitionForKey('anything', 1)).toBe(0)
  })

  it('rejects keys that are neither strings nor bytes, and bad seeds', () => {
    expect(() => hashKey(42 as unknown as string)).toThrow('key must be a string or a Uint8Array (got 42)')
    expect(() => partitionForKey(null as unknown as string)).toThrow(InvalidOptionError)
    expect(() => murmur3Hash32('k', -1)).toThrow('seed must be an integer in [0, 2^32) (got -1)')
    expect(() => murmur3Hash32('k', 2 ** 32)).toThrow(InvalidOptionError)
  })

  it('createPartitioner agrees with partitionForKey', () => {
    fc.assert(
      fc.property(arbCodePoints(), fc.integer({ min: 1, max: MAX_PARTITIONS }), (key, partitions) => {
        expect(createPartitioner(partitions)(key)).toBe(partitionForKey(key, partitions))
      }),
      fcOptions,
    )
  })
})
