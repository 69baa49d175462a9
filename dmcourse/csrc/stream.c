/* Weight-streaming kernels for CPU decode (fp32, row-major). Built at first use by dmcourse/stream.py (an opt-in exhibit).

   linear_stream: y (n, out) = x (n, in) @ w (out, in)^T for a few rows n, as in MoE decode, where each
   expert sees a handful of tokens. The time is the time to read w once, so the kernel reads each
   16-float vector of w once and multiplies it into every row of x (blocks of up to 4 rows) while it
   sits in a register; from 5 rows of x on it takes two rows of w at a time, so that each load of x
   serves both. x is read again for every row of w, so it must stay in the L1 cache: when all of x is
   larger than 32 KiB (a down projection, 2816 floats a row, from 3 rows on) the columns are taken in
   blocks that fit, every row of w for one block, then the next block. Each thread streams one
   contiguous range of rows of w, prefetching ahead. Fastest for n <= 8; correct for any n.

   read_sum: sum of n floats, to measure how fast this CPU reads memory with a loop of the same kind. */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef float v16 __attribute__((vector_size(64)));   /* 16 floats: one AVX-512 register, two AVX2 ones */
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
static inline v16 load16(const float* p) { v16 v; memcpy(&v, p, sizeof v); return v; }
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

/* y[b * ldy] += sum_{h < len} w[h] * x[b * ldx + h] for the NB rows b of x (len % 16 == 0); two sets
   of running sums (even and odd vectors of w) so that the additions do not wait on each other */
#define ROW(NB)                                                                                         \
static void row_##NB(const float* restrict w, int64_t ldw, const float* restrict x, int64_t ldx,        \
                     int64_t len, float* restrict y, int64_t ldy) {                                     \
    v16 acc0[NB], acc1[NB];                                                                             \
    for (int b = 0; b < NB; b++) acc0[b] = acc1[b] = (v16){0};                                          \
    int64_t h = 0;                                                                                      \
    for (; h + 32 <= len; h += 32) {                                                                    \
        __builtin_prefetch(w + ldw + h, 0, 0); __builtin_prefetch(w + ldw + h + 16, 0, 0);  /* next row */ \
        v16 w0 = load16(w + h), w1 = load16(w + h + 16); KEEP(w0); KEEP(w1);                            \
        _Pragma("GCC unroll 4") for (int b = 0; b < NB; b++) {                                          \
            acc0[b] += w0 * load16(x + b * ldx + h); acc1[b] += w1 * load16(x + b * ldx + h + 16); }    \
    }                                                                                                   \
    if (h < len) { v16 w0 = load16(w + h);                                                              \
        for (int b = 0; b < NB; b++) acc0[b] += w0 * load16(x + b * ldx + h); }                         \
    for (int b = 0; b < NB; b++) y[b * ldy] += hsum(acc0[b] + acc1[b]);                                 \
}
ROW(1) ROW(2) ROW(3) ROW(4)
typedef void (*row_fn)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t);
static const row_fn ROWS[5] = {0, row_1, row_2, row_3, row_4};


/* two rows of w (w and w + ldw) against NB rows of x: each x vector is loaded once for both rows
   (fewer loads per FMA, which pays once the arithmetic per byte of w is high: 5 and more rows) */
#define PAIR(NB)                                                                                        \
static void pair_##NB(const float* restrict w, int64_t ldw, const float* restrict x, int64_t ldx,       \
                      int64_t len, float* restrict y, int64_t ldy) {                                    \
    v16 a0[NB], a1[NB];                                                                                 \
    for (int b = 0; b < NB; b++) a0[b] = a1[b] = (v16){0};                                              \
    const float* w1p = w + ldw;                                                                         \
    for (int64_t h = 0; h < len; h += 16) {                                                             \
        __builtin_prefetch(w + 2 * ldw + h, 0, 0); __builtin_prefetch(w1p + 2 * ldw + h, 0, 0);         \
        v16 w0 = load16(w + h), w1 = load16(w1p + h); KEEP(w0); KEEP(w1);                               \
        _Pragma("GCC unroll 4") for (int b = 0; b < NB; b++) {                                          \
            v16 xv = load16(x + b * ldx + h); KEEP(xv); a0[b] += w0 * xv; a1[b] += w1 * xv; }           \
    }                                                                                                   \
    for (int b = 0; b < NB; b++) { y[b * ldy] += hsum(a0[b]); y[b * ldy + 1] += hsum(a1[b]); }          \
}
PAIR(1) PAIR(2) PAIR(3) PAIR(4)
static const row_fn PAIRS[5] = {0, pair_1, pair_2, pair_3, pair_4};

/* OpenMP threads available to the kernels: 0 where it was built without OpenMP (one thread) */
int openmp_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 0;
#endif
}

void linear_stream(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t out, int threads) {
    if (n <= 0 || in <= 0 || out <= 0) return;   /* the Python side rejects empty operands; never divide by 0 */
    if (threads < 1) threads = 1;
    memset(y, 0, sizeof(float) * n * out);
    int64_t widest = (8192 / n) / 16 * 16;              /* columns of x that fit in 32 KiB */
    if (widest < 16) widest = 16;
    int64_t blocks = (in + widest - 1) / widest;
    int64_t width = ((in + blocks - 1) / blocks + 15) / 16 * 16;
    #pragma omp parallel num_threads(threads)
    {
        int64_t tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num(); nt = omp_get_num_threads();
#endif
        int64_t per = (out + nt - 1) / nt, first = tid * per, last = first + per < out ? first + per : out;
        for (int64_t c = 0; c < in; c += width) {
            int64_t len = in - c < width ? in - c : width;
            for (int64_t g = first; g < last; ) {
                int two = n >= 5 && last - g >= 2;   /* pairs: measured faster from 5 rows of x on */
                for (int64_t b = 0; b < n; b += 4) {
                    int nb = n - b < 4 ? (int)(n - b) : 4;
                    (two ? PAIRS : ROWS)[nb](w + g * in + c, in, x + b * in + c, in, len, y + b * out + g, out);
                }
                g += two ? 2 : 1;
            }
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
