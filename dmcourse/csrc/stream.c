/* Weight-streaming kernels for CPU decode (fp32, row-major). Built at first use by dmcourse/stream.py.

   linear_stream: y (n, out) = x (n, in) @ w (out, in)^T for a few rows n, as in MoE decode, where each
   expert sees a handful of tokens. The time is the time to read w once, so the kernel reads each w
   vector once and multiplies it into every x row while it sits in a register: for 1 to 8 rows of x,
   one row of w at a time (blocks of up to 4 rows of x, the row of w staying in the L1 cache between
   blocks); for more, tiles of 4 rows of w x 4 rows of x (16 running sums; loads: 4 + 4 per 16 fused
   multiply-adds). The threads split the rows of w, so each streams one contiguous range of memory.

   read_sum: sum of n floats, to measure how fast this CPU reads memory with a kernel of the same kind. */
#include <stdint.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));   /* 16 floats: one AVX-512 register, two AVX2 ones */
static inline v16 load16(const float* p) { v16 v; memcpy(&v, p, sizeof v); return v; }
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
static inline float hsum(v16 v) {   /* 16 -> 8 -> 4 lanes with vector adds, then 4 scalar adds */
    v8 a, b; v4 c, d;
    memcpy(&a, &v, 32); memcpy(&b, (const char*)&v + 32, 32); a += b;
    memcpy(&c, &a, 16); memcpy(&d, (const char*)&a + 16, 16); c += d;
    return (c[0] + c[2]) + (c[1] + c[3]);
}
/* the empty asm keeps a loaded vector in its register (otherwise GCC reloads it for each use) */
#if defined(__AVX512F__)
#define KEEP(v) __asm__("" : "+v"(v))
#else
#define KEEP(v) ((void)0)
#endif

/* y[b * ldy + i] = sum_h x[b * ldx + h] * w[i * ldw + h] for i < FB, b < NB, h < len (len % 16 == 0) */
#define TILE(FB, NB)                                                                                    \
static void tile_##FB##_##NB(const float* restrict w, int64_t ldw, const float* restrict x, int64_t ldx, \
                             int64_t len, float* restrict y, int64_t ldy) {                             \
    v16 acc[FB][NB];                                                                                    \
    for (int i = 0; i < FB; i++) for (int b = 0; b < NB; b++) acc[i][b] = (v16){0};                     \
    for (int64_t h = 0; h < len; h += 16) {                                                             \
        v16 xv[NB];                                                                                     \
        _Pragma("GCC unroll 4") for (int b = 0; b < NB; b++) { xv[b] = load16(x + b * ldx + h); KEEP(xv[b]); } \
        _Pragma("GCC unroll 4") for (int i = 0; i < FB; i++) {                                          \
            __builtin_prefetch(w + i * ldw + h + 1024, 0, 0);                                           \
            v16 wv = load16(w + i * ldw + h); KEEP(wv);                                                 \
            _Pragma("GCC unroll 4") for (int b = 0; b < NB; b++) acc[i][b] += wv * xv[b];               \
        }                                                                                               \
    }                                                                                                   \
    for (int i = 0; i < FB; i++) for (int b = 0; b < NB; b++) y[b * ldy + i] = hsum(acc[i][b]);         \
}
/* the same for one row of w (FB = 1), two sets of running sums (even and odd vectors of w) so the
   additions into a sum do not wait on each other */
#define ROW(NB)                                                                                         \
static void row_##NB(const float* restrict w, int64_t ldw, const float* restrict x, int64_t ldx,        \
                     int64_t len, float* restrict y, int64_t ldy) {                                     \
    (void)ldw;                                                                                          \
    v16 acc0[NB], acc1[NB];                                                                             \
    for (int b = 0; b < NB; b++) acc0[b] = acc1[b] = (v16){0};                                          \
    int64_t h = 0;                                                                                      \
    for (; h + 32 <= len; h += 32) {                                                                    \
        __builtin_prefetch(w + h + 1024, 0, 0); __builtin_prefetch(w + h + 1040, 0, 0); /* 4 KiB ahead */ \
        v16 w0 = load16(w + h), w1 = load16(w + h + 16); KEEP(w0); KEEP(w1);                            \
        _Pragma("GCC unroll 4") for (int b = 0; b < NB; b++) {                                          \
            acc0[b] += w0 * load16(x + b * ldx + h); acc1[b] += w1 * load16(x + b * ldx + h + 16); }    \
    }                                                                                                   \
    if (h < len) { v16 w0 = load16(w + h);                                                              \
        for (int b = 0; b < NB; b++) acc0[b] += w0 * load16(x + b * ldx + h); }                         \
    for (int b = 0; b < NB; b++) y[b * ldy] = hsum(acc0[b] + acc1[b]);                                  \
}
TILE(4, 1) TILE(4, 2) TILE(4, 3) TILE(4, 4)
ROW(1) ROW(2) ROW(3) ROW(4)
typedef void (*tile_fn)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t);
static const tile_fn TILE4[5] = {0, tile_4_1, tile_4_2, tile_4_3, tile_4_4};
static const tile_fn TILE1[5] = {0, row_1, row_2, row_3, row_4};

void linear_stream(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t out, int threads) {
    /* one row of w at a time while all of x fits in the L1 cache next to it (32 KiB: up to 8 rows of
       1024 floats); otherwise x comes from L2 for every row of w, and tiles of 4 rows of w share each
       load of x (a down projection: 2816 floats a row, from 3 rows of x on) */
    int tile4 = n * in * (int64_t)sizeof(float) > 32 * 1024;
    int64_t tiles = (out + 3) / 4;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < tiles; t++) {
        int64_t f = 4 * t;
        int full = tile4 && out - f >= 4;
        int64_t end = f + 4 < out ? f + 4 : out;
        for (int64_t g = f; g < end; g += full ? 4 : 1)
            for (int64_t b = 0; b < n; b += 4) {
                int nb = n - b < 4 ? (int)(n - b) : 4;
                (full ? TILE4 : TILE1)[nb](w + g * in, in, x + b * in, in, in, y + b * out + g, out);
            }
    }
}

double read_sum(const float* p, int64_t n, int threads) {
    double total = 0;
    #pragma omp parallel for num_threads(threads) reduction(+:total) schedule(static)
    for (int64_t c = 0; c < n; c += 4096) {
        int64_t end = c + 4096 < n ? c + 4096 : n, i = c;
        v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (; i + 64 <= end; i += 64) {
            __builtin_prefetch(p + i + 1024, 0, 0);
            a0 += load16(p + i); a1 += load16(p + i + 16); a2 += load16(p + i + 32); a3 += load16(p + i + 48);
        }
        float s = hsum(a0 + a1 + a2 + a3);
        for (; i < end; i++) s += p[i];
        total += s;
    }
    return total;
}
