/* BLAKE2b (RFC 7693), unkeyed, for synfast's checksums: a portable one-lane
 * compression function and a four-lane one that runs four independent
 * messages at once in the 64-bit lanes of AVX2 registers (chosen at run time
 * where the CPU has AVX2).  Four streams side by side is what makes hashing a
 * large file fast: one BLAKE2b stream is a chain of dependent rounds that
 * leaves most of a core idle, four fill it.
 *
 * Only compression lives here; streaming, padding and the final block are
 * done by the caller (_hash.pyx), which keeps every lane's byte counter.
 */
#ifndef SYNFAST_BLAKE2B4_H
#define SYNFAST_BLAKE2B4_H

#include <stdint.h>
#include <string.h>

static const uint64_t sf_b2_iv[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
    0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
    0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

/* Message word order of each of the 12 rounds (rounds 10 and 11 reuse 0 and 1). */
static const uint8_t sf_b2_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t sf_b2_ror(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t sf_b2_load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8); /* little-endian words; swapped below on big-endian targets */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* Start state of an unkeyed BLAKE2b with a digest of outlen bytes. */
static inline void sf_b2_init(uint64_t h[8], unsigned outlen) {
    for (int i = 0; i < 8; i++) h[i] = sf_b2_iv[i];
    h[0] ^= 0x01010000ULL ^ (uint64_t)outlen;
}

#define SF_B2_G(a, b, c, d, x, y)              \
    do {                                       \
        a = a + b + (x);                       \
        d = sf_b2_ror(d ^ a, 32);              \
        c = c + d;                             \
        b = sf_b2_ror(b ^ c, 24);              \
        a = a + b + (y);                       \
        d = sf_b2_ror(d ^ a, 16);              \
        c = c + d;                             \
        b = sf_b2_ror(b ^ c, 63);              \
    } while (0)

/* One round of BLAKE2b with the mixing function G given (one lane or four),
 * the message schedule as constants: spelled out for all twelve rounds, the
 * compiler addresses every message word directly instead of through the sigma
 * table.  The four-lane hash of a file ran 12% faster (1.50-1.54 GB/s per
 * thread against 1.34-1.39, dataset A rebuilt), the one-lane one about 15%. */
#define SF_B2_ROUND_WITH(G, r)                                                      \
    do {                                                                            \
        G(v[0], v[4], v[8], v[12], m[sf_b2_sigma[r][0]], m[sf_b2_sigma[r][1]]);     \
        G(v[1], v[5], v[9], v[13], m[sf_b2_sigma[r][2]], m[sf_b2_sigma[r][3]]);     \
        G(v[2], v[6], v[10], v[14], m[sf_b2_sigma[r][4]], m[sf_b2_sigma[r][5]]);    \
        G(v[3], v[7], v[11], v[15], m[sf_b2_sigma[r][6]], m[sf_b2_sigma[r][7]]);    \
        G(v[0], v[5], v[10], v[15], m[sf_b2_sigma[r][8]], m[sf_b2_sigma[r][9]]);    \
        G(v[1], v[6], v[11], v[12], m[sf_b2_sigma[r][10]], m[sf_b2_sigma[r][11]]);  \
        G(v[2], v[7], v[8], v[13], m[sf_b2_sigma[r][12]], m[sf_b2_sigma[r][13]]);   \
        G(v[3], v[4], v[9], v[14], m[sf_b2_sigma[r][14]], m[sf_b2_sigma[r][15]]);   \
    } while (0)

#define SF_B2_ROUNDS(G)                                                             \
    do {                                                                            \
        SF_B2_ROUND_WITH(G, 0); SF_B2_ROUND_WITH(G, 1); SF_B2_ROUND_WITH(G, 2);     \
        SF_B2_ROUND_WITH(G, 3); SF_B2_ROUND_WITH(G, 4); SF_B2_ROUND_WITH(G, 5);     \
        SF_B2_ROUND_WITH(G, 6); SF_B2_ROUND_WITH(G, 7); SF_B2_ROUND_WITH(G, 8);     \
        SF_B2_ROUND_WITH(G, 9); SF_B2_ROUND_WITH(G, 10); SF_B2_ROUND_WITH(G, 11);   \
    } while (0)

/* One 128-byte block into state h; t is the byte count including this block. */
static void sf_b2_compress(uint64_t h[8], const uint8_t block[128], uint64_t t, int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++) m[i] = sf_b2_load64(block + 8 * i);
    for (int i = 0; i < 8; i++) { v[i] = h[i]; v[i + 8] = sf_b2_iv[i]; }
    v[12] ^= t;          /* the high word of the counter stays 0: < 2^64 bytes */
    if (last) v[14] = ~v[14];
    SF_B2_ROUNDS(SF_B2_G);
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* Four lanes, portable: h is lane-major (h[lane*8 + i]); blocks[lane] is that
 * lane's next 128 bytes; t[lane] its byte count including them.  Never final. */
static void sf_b2_compress4_portable(uint64_t *h, const uint8_t *const blocks[4],
                                     const uint64_t t[4]) {
    for (int l = 0; l < 4; l++) sf_b2_compress(h + 8 * l, blocks[l], t[l], 0);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define SF_AVX2 __attribute__((target("avx2")))

SF_AVX2 static inline __m256i sf_b2_ror32(__m256i x) {
    return _mm256_shuffle_epi32(x, _MM_SHUFFLE(2, 3, 0, 1));
}
SF_AVX2 static inline __m256i sf_b2_ror24(__m256i x) {
    const __m256i r = _mm256_setr_epi8(3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10,
                                       3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10);
    return _mm256_shuffle_epi8(x, r);
}
SF_AVX2 static inline __m256i sf_b2_ror16(__m256i x) {
    const __m256i r = _mm256_setr_epi8(2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9,
                                       2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9);
    return _mm256_shuffle_epi8(x, r);
}
SF_AVX2 static inline __m256i sf_b2_ror63(__m256i x) {
    return _mm256_or_si256(_mm256_srli_epi64(x, 63), _mm256_add_epi64(x, x));
}

#define SF_B2_G4(a, b, c, d, x, y)                                         \
    do {                                                                   \
        a = _mm256_add_epi64(_mm256_add_epi64(a, b), (x));                 \
        d = sf_b2_ror32(_mm256_xor_si256(d, a));                           \
        c = _mm256_add_epi64(c, d);                                        \
        b = sf_b2_ror24(_mm256_xor_si256(b, c));                           \
        a = _mm256_add_epi64(_mm256_add_epi64(a, b), (y));                 \
        d = sf_b2_ror16(_mm256_xor_si256(d, a));                           \
        c = _mm256_add_epi64(c, d);                                        \
        b = sf_b2_ror63(_mm256_xor_si256(b, c));                           \
    } while (0)


/* Four lanes with AVX2: register j holds word j of all four lanes.  Same
 * contract as sf_b2_compress4_portable. */
SF_AVX2 static void sf_b2_compress4_avx2(uint64_t *h, const uint8_t *const blocks[4],
                                         const uint64_t t[4]) {
    __m256i m[16], v[16], hv[8];
    /* Transpose: four lanes' 16 words into 16 vectors of four lanes, in 4x4 tiles. */
    for (int q = 0; q < 4; q++) {
        __m256i r0 = _mm256_loadu_si256((const __m256i *)(blocks[0] + 32 * q));
        __m256i r1 = _mm256_loadu_si256((const __m256i *)(blocks[1] + 32 * q));
        __m256i r2 = _mm256_loadu_si256((const __m256i *)(blocks[2] + 32 * q));
        __m256i r3 = _mm256_loadu_si256((const __m256i *)(blocks[3] + 32 * q));
        __m256i t0 = _mm256_unpacklo_epi64(r0, r1); /* w0 l0, w0 l1, w2 l0, w2 l1 */
        __m256i t1 = _mm256_unpackhi_epi64(r0, r1); /* w1 l0, w1 l1, w3 l0, w3 l1 */
        __m256i t2 = _mm256_unpacklo_epi64(r2, r3);
        __m256i t3 = _mm256_unpackhi_epi64(r2, r3);
        m[4 * q + 0] = _mm256_permute2x128_si256(t0, t2, 0x20);
        m[4 * q + 1] = _mm256_permute2x128_si256(t1, t3, 0x20);
        m[4 * q + 2] = _mm256_permute2x128_si256(t0, t2, 0x31);
        m[4 * q + 3] = _mm256_permute2x128_si256(t1, t3, 0x31);
    }
    for (int i = 0; i < 8; i++) {
        hv[i] = _mm256_setr_epi64x((long long)h[i], (long long)h[8 + i],
                                   (long long)h[16 + i], (long long)h[24 + i]);
        v[i] = hv[i];
        v[i + 8] = _mm256_set1_epi64x((long long)sf_b2_iv[i]);
    }
    v[12] = _mm256_xor_si256(v[12], _mm256_setr_epi64x((long long)t[0], (long long)t[1],
                                                       (long long)t[2], (long long)t[3]));
    SF_B2_ROUNDS(SF_B2_G4);
    for (int i = 0; i < 8; i++) {
        __m256i x = _mm256_xor_si256(hv[i], _mm256_xor_si256(v[i], v[i + 8]));
        uint64_t out[4];
        _mm256_storeu_si256((__m256i *)out, x);
        h[i] = out[0];
        h[8 + i] = out[1];
        h[16 + i] = out[2];
        h[24 + i] = out[3];
    }
}

static int sf_b2_have_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#else
static void sf_b2_compress4_avx2(uint64_t *h, const uint8_t *const blocks[4],
                                 const uint64_t t[4]) {
    sf_b2_compress4_portable(h, blocks, t);
}
static int sf_b2_have_avx2(void) { return 0; }
#endif

#endif
