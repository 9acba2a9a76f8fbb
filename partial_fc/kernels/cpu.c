/* Fused CPU passes of the head's step: each reads and writes its rows once, where the eager
 * torch path makes one pass over memory per operation (see partial_fc/kernels/__init__.py).
 *
 * Plain C11 over raw pointers: row-major fp32 (or bf16 bit patterns), int64 row indices. No
 * floating-point contraction is left to the compiler (-ffp-contract=off); every fused
 * multiply-add is an explicit fmaf, so the results do not depend on the compiler's choices.
 * Work is split over rows (or columns) into at most `threads` POSIX threads.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 64

typedef void (*range_fn)(const void *ctx, int64_t lo, int64_t hi);

struct job {
    range_fn fn;
    const void *ctx;
    int64_t lo, hi;
};

static void *run_job(void *arg) {
    struct job *j = (struct job *)arg;
    j->fn(j->ctx, j->lo, j->hi);
    return NULL;
}

/* fn over [0, n) in `threads` contiguous parts of at least `grain` items; `align` rounds the
 * cut points (columns: whole vectors). A thread that cannot start runs in the caller. */
static void parallel(range_fn fn, const void *ctx, int64_t n, int threads, int64_t grain, int64_t align) {
    int64_t t = threads < 1 ? 1 : (threads > MAX_THREADS ? MAX_THREADS : threads);
    if (t > n / grain) t = n / grain;
    if (t <= 1) {
        fn(ctx, 0, n);
        return;
    }
    struct job jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS];
    for (int64_t k = 0; k < t; k++) {
        int64_t lo = n * k / t, hi = n * (k + 1) / t;
        if (k) lo = lo / align * align;
        if (k + 1 < t) hi = hi / align * align;
        jobs[k] = (struct job){fn, ctx, lo, hi};
    }
    for (int64_t k = 1; k < t; k++) started[k] = pthread_create(&ids[k], NULL, run_job, &jobs[k]) == 0;
    run_job(&jobs[0]);
    for (int64_t k = 1; k < t; k++) {
        if (started[k]) pthread_join(ids[k], NULL);
        else run_job(&jobs[k]);
    }
}

/* sum_j a[j] b[j] in 16 lanes (a GCC/Clang vector type: vectorised on any target), then the tail */
typedef float lanes16 __attribute__((vector_size(64)));

static inline float dot_f32(const float *a, const float *b, int64_t d) {
    lanes16 acc = {0}, va, vb;
    int64_t j = 0;
    for (; j + 16 <= d; j += 16) {
        memcpy(&va, a + j, sizeof va);
        memcpy(&vb, b + j, sizeof vb);
        acc += va * vb;
    }
    float sum = 0.0f;
    for (; j < d; j++) sum += a[j] * b[j];
    for (int l = 0; l < 16; l++) sum += acc[l];
    return sum;
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* exp(x) for x in fp32, within 2 ulp over [-87.3, 88.3]: 2^k e^r with |r| <= ln2 / 2, e^r
 * from a degree-7 polynomial (Cephes' expf coefficients). Below -87.3 it returns e^-87.3
 * (1.2e-38) instead of a subnormal: the softmax adds it to a sum of at least 1. */
static inline float max_f32(float a, float b) { return a > b ? a : b; }  /* maxps; fmaxf does not vectorise */

static inline float exp_f32(float x) {
    x = x > -87.33654475f ? x : -87.33654475f;
    x = x < 88.37626266f ? x : 88.37626266f;
    /* k = round(x / ln 2) by the 1.5 2^23 trick: an add and a subtract, both exact roundings */
    float k = (x * 1.44269504089f + 12582912.0f) - 12582912.0f;
    float r = fmaf(k, -0.693359375f, x);
    r = fmaf(k, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r + 1.0f);
    int32_t e = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &e, sizeof scale);
    return p * scale;
}

/* ---- row-sparse SGD with momentum and coupled weight decay, fp32 rows and state ---- */

struct sgd {
    float *w, *m;
    const float *g;
    const int64_t *idx;
    int64_t d;
    float neg_lr, mu, wd;
    int nesterov;
};

/* The eager update's arithmetic, element for element: d = g + wd w (torch.add(g, w, alpha=wd)),
 * m = d + mu m, u = m or d + mu m (Nesterov), w = w - lr u (index_add_ with alpha = -lr). */
static void sgd_range(const void *ctx, int64_t lo, int64_t hi) {
    const struct sgd *s = (const struct sgd *)ctx;
    const int64_t d = s->d;
    const float neg_lr = s->neg_lr, mu = s->mu, wd = s->wd;
    for (int64_t i = lo; i < hi; i++) {
        int64_t r = s->idx ? s->idx[i] : i;
        float *restrict w = s->w + r * d;
        const float *restrict g = s->g + i * d;
        if (s->m) {
            float *restrict m = s->m + r * d;
            if (s->nesterov) {
                for (int64_t j = 0; j < d; j++) {
                    float dj = wd != 0.0f ? fmaf(w[j], wd, g[j]) : g[j];
                    float mj = fmaf(m[j], mu, dj);
                    m[j] = mj;
                    w[j] = fmaf(fmaf(mj, mu, dj), neg_lr, w[j]);
                }
            } else if (wd != 0.0f) {
                for (int64_t j = 0; j < d; j++) {
                    float mj = fmaf(m[j], mu, fmaf(w[j], wd, g[j]));
                    m[j] = mj;
                    w[j] = fmaf(mj, neg_lr, w[j]);
                }
            } else {
                for (int64_t j = 0; j < d; j++) {
                    float mj = fmaf(m[j], mu, g[j]);
                    m[j] = mj;
                    w[j] = fmaf(mj, neg_lr, w[j]);
                }
            }
        } else if (wd != 0.0f) {
            for (int64_t j = 0; j < d; j++) w[j] = fmaf(fmaf(w[j], wd, g[j]), neg_lr, w[j]);
        } else {
            for (int64_t j = 0; j < d; j++) w[j] = fmaf(g[j], neg_lr, w[j]);
        }
    }
}

/* w[idx[i]] (and m[idx[i]]) updated with gradient row g[i], i < n; idx NULL: rows 0..n-1.
 * m NULL: no momentum. Rows of idx must be distinct (threads write them concurrently). */
void pfc_sgd_f32(float *w, float *m, const float *g, const int64_t *idx, int64_t n, int64_t d, float neg_lr,
                 float mu, float wd, int nesterov, int threads) {
    struct sgd s = {w, m, g, idx, d, neg_lr, mu, wd, nesterov};
    parallel(sgd_range, &s, n, threads, 256, 1);
}

/* ---- gather of class rows with their inverse norms ---- */

struct gather {
    const void *src;
    const int64_t *idx;
    int64_t d;
    float *out, *inv_norm;
    int bf16;
};

static void gather_range(const void *ctx, int64_t lo, int64_t hi) {
    const struct gather *s = (const struct gather *)ctx;
    const int64_t d = s->d;
    for (int64_t i = lo; i < hi; i++) {
        int64_t r = s->idx ? s->idx[i] : i;
        float *restrict out = s->out ? s->out + i * d : NULL;
        if (s->bf16) {
            const uint16_t *restrict src = (const uint16_t *)s->src + r * d;
            float *restrict dst = out;  /* out is required for bf16 rows */
            for (int64_t j = 0; j < d; j++) dst[j] = bf16_to_f32(src[j]);
            out = dst;
        } else if (out) {
            memcpy(out, (const float *)s->src + r * d, (size_t)d * sizeof(float));
        }
        if (!s->inv_norm) continue;
        const float *restrict row = out ? out : (const float *)s->src + r * d;
        s->inv_norm[i] = 1.0f / fmaxf(sqrtf(dot_f32(row, row, d)), 1e-12f);
    }
}

/* out[i] = src[idx[i]] widened to fp32 (src fp32, or bf16 when bf16 != 0) and inv_norm[i] =
 * 1 / max(|out[i]|, 1e-12); out NULL (fp32 only): the norms of the source rows alone;
 * inv_norm NULL: the gather alone; idx NULL: rows 0..n-1. */
void pfc_gather_rows(const void *src, const int64_t *idx, int64_t n, int64_t d, int bf16, float *out,
                     float *inv_norm, int threads) {
    struct gather s = {src, idx, d, out, inv_norm, bf16};
    parallel(gather_range, &s, n, threads, 256, 1);
}

/* ---- the logit tile: (c, B), one row per class, one column per sample ---- */

struct tile {
    float *z;
    const float *row_scale, *col;
    float *col_out;
    int64_t c, b;
    const float *shift;  /* scale_tile: exp(z - shift) first (NULL: z as it is) */
    float *out;          /* scale_tile: where the result goes (z itself, or a block kept in cache) */
    int flag;            /* scale_colmax: max into col_out as it is; exp_shift: store the exponentials */
};

static void scale_max_range(const void *ctx, int64_t lo, int64_t hi) {
    const struct tile *s = (const struct tile *)ctx;
    float *restrict mx = s->col_out;
    if (!s->flag) for (int64_t j = lo; j < hi; j++) mx[j] = -INFINITY;
    for (int64_t i = 0; i < s->c; i++) {
        float *restrict z = s->z + i * s->b;
        if (s->row_scale) {
            const float r = s->row_scale[i];
            for (int64_t j = lo; j < hi; j++) {
                float v = z[j] * r;
                z[j] = v;
                mx[j] = max_f32(mx[j], v);
            }
        } else {
            for (int64_t j = lo; j < hi; j++) mx[j] = max_f32(mx[j], z[j]);
        }
    }
}

/* z[i, j] *= row_scale[i] (row_scale NULL: unchanged); colmax[j] = max_i z[i, j], or (accumulate
 * != 0) max(colmax[j], max_i z[i, j]): a tile's max taken block by block while each is in cache. */
void pfc_scale_colmax(float *z, const float *row_scale, int64_t c, int64_t b, float *colmax, int accumulate,
                      int threads) {
    struct tile s = {z, row_scale, NULL, colmax, c, b, NULL, NULL, accumulate};
    parallel(scale_max_range, &s, b, threads, 64, 16);
}

#define SUM_BLOCK 128

static void exp_range(const void *ctx, int64_t lo, int64_t hi) {
    const struct tile *s = (const struct tile *)ctx;
    const float *restrict shift = s->col;
    float *restrict sum = s->col_out;
    float part[4096];
    for (int64_t j0 = lo; j0 < hi; j0 += 4096) {
        int64_t j1 = hi - j0 > 4096 ? j0 + 4096 : hi;
        if (sum) for (int64_t j = j0; j < j1; j++) sum[j] = 0.0f;
        for (int64_t i0 = 0; i0 < s->c; i0 += SUM_BLOCK) {
            int64_t i1 = s->c - i0 > SUM_BLOCK ? i0 + SUM_BLOCK : s->c;
            for (int64_t j = j0; j < j1; j++) part[j - j0] = 0.0f;
            for (int64_t i = i0; i < i1; i++) {
                float *restrict z = s->z + i * s->b;
                for (int64_t j = j0; j < j1; j++) {
                    float e = exp_f32(z[j] - shift[j]);
                    if (s->flag) z[j] = e;
                    part[j - j0] += e;
                }
            }
            /* two levels: each partial sums at most SUM_BLOCK terms before it joins the total */
            if (sum) for (int64_t j = j0; j < j1; j++) sum[j] += part[j - j0];
        }
    }
}

/* z[i, j] = exp(z[i, j] - shift[j]) (store == 0: z is only read); colsum[j] = sum_i of those
 * exponentials (colsum NULL: not summed), the same bits whether they are stored or not. */
void pfc_exp_shift(float *z, const float *shift, int64_t c, int64_t b, float *colsum, int store, int threads) {
    struct tile s = {z, NULL, shift, colsum, c, b, NULL, NULL, store};
    parallel(exp_range, &s, b, threads, 64, 16);
}

static void scale_range(const void *ctx, int64_t lo, int64_t hi) {
    const struct tile *s = (const struct tile *)ctx;
    const float *restrict col = s->col;
    const float *restrict shift = s->shift;
    for (int64_t i = lo; i < hi; i++) {
        const float *z = s->z + i * s->b;
        float *out = s->out + i * s->b;  /* z itself, or a disjoint buffer */
        const float r = s->row_scale ? s->row_scale[i] : 1.0f;
        if (shift) {
            for (int64_t j = 0; j < s->b; j++) out[j] = exp_f32(z[j] - shift[j]) * col[j] * r;
        } else {
            for (int64_t j = 0; j < s->b; j++) out[j] = z[j] * col[j] * r;
        }
    }
}

/* out[i, j] = e[i, j] col_scale[j] row_scale[i] (row_scale NULL: 1), e = z, or exp(z - shift[j])
 * (shift not NULL: exp_shift's exponential, bit for bit); out = z: in place. */
void pfc_scale_tile(float *z, const float *row_scale, const float *col_scale, int64_t c, int64_t b,
                    const float *shift, float *out, int threads) {
    struct tile s = {z, row_scale, col_scale, NULL, c, b, shift, out ? out : z, 0};
    parallel(scale_range, &s, c, threads, 256, 1);
}

/* ---- the gradient through w / |w| ---- */

struct project {
    float *g;
    const float *w, *inv_norm;
    int64_t d;
};

static void project_range(const void *ctx, int64_t lo, int64_t hi) {
    const struct project *s = (const struct project *)ctx;
    const int64_t d = s->d;
    for (int64_t i = lo; i < hi; i++) {
        float *restrict g = s->g + i * d;
        const float *restrict w = s->w + i * d;
        const float neg_coef = -(dot_f32(w, g, d) * s->inv_norm[i] * s->inv_norm[i]);
        for (int64_t j = 0; j < d; j++) g[j] = fmaf(w[j], neg_coef, g[j]);
    }
}

/* g[i] -= (w[i] . g[i]) / |w[i]|^2 w[i], with inv_norm[i] = 1 / |w[i]|: the component of the
 * gradient along w removed, as the derivative of x . w / |w| in w does. */
void pfc_project_rows(float *g, const float *w, const float *inv_norm, int64_t n, int64_t d, int threads) {
    struct project s = {g, w, inv_norm, d};
    parallel(project_range, &s, n, threads, 256, 1);
}

/* ---- row-sparse SGD on compact storage: bf16 weights, bf16 or int8 momentum ---- */

#define COMPACT_MAX_D 8192
#define MIX 0x9E3779B1u

enum { M_NONE = 0, M_F32 = 1, M_BF16 = 2, M_INT8 = 3 };

struct compact {
    void *w, *m;
    float *m_scale;
    const void *g;
    const int64_t *idx;
    const int32_t *keys, *salt;
    int64_t d;
    float neg_lr, mu, wd, int8_scale;
    int w_bf16, g_bf16, m_kind, nesterov, streams, lane_w, lane_m;
};

/* The 32 noise bits of (row key, column salt): (K ^ S) M mod 2^32 (optim/stochastic_round.py). */
static inline uint32_t noise_bits(uint32_t key, uint32_t salt) { return (key ^ salt) * MIX; }

/* fp32 -> bf16 bits rounded up with probability (dropped bits) / 2^16: add the noise's top 16
 * bits (as a signed shift, then 2^15) to the pattern and keep the high half. */
static inline uint16_t round_bf16(float x, uint32_t noise) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    bits += (uint32_t)(((int32_t)noise) >> 16) + 0x8000u;
    return (uint16_t)(bits >> 16);
}

static inline float round_even(float y) { return (y + 12582912.0f) - 12582912.0f; } /* |y| < 2^22 */

/* The eager compact update (optim/row_sparse.py, optim/quantized.py) element for element:
 * the same fp32 operations in the same order and the same noise, so the stored bits agree. */
static void compact_range(const void *ctx, int64_t lo, int64_t hi) {
    const struct compact *s = (const struct compact *)ctx;
    const int64_t d = s->d;
    float wf[COMPACT_MAX_D], df[COMPACT_MAX_D], mf[COMPACT_MAX_D];
    const int need_w = s->w_bf16 || s->wd != 0.0f;
    for (int64_t i = lo; i < hi; i++) {
        const int64_t r = s->idx ? s->idx[i] : i;
        const uint32_t *keys = (const uint32_t *)s->keys + i * s->streams;
        const uint32_t *salt = (const uint32_t *)s->salt;
        for (int64_t j = 0; j < d; j++)
            df[j] = s->g_bf16 ? bf16_to_f32(((const uint16_t *)s->g)[i * d + j]) : ((const float *)s->g)[i * d + j];
        if (need_w) {
            if (s->w_bf16) {
                const uint16_t *w = (const uint16_t *)s->w + r * d;
                for (int64_t j = 0; j < d; j++) wf[j] = bf16_to_f32(w[j]);
            } else {
                memcpy(wf, (const float *)s->w + r * d, (size_t)d * sizeof(float));
            }
        }
        if (s->wd != 0.0f)
            for (int64_t j = 0; j < d; j++) df[j] = fmaf(wf[j], s->wd, df[j]);
        const float *u = df;
        if (s->m_kind != M_NONE) {
            if (s->m_kind == M_F32) {
                float *m = (float *)s->m + r * d;
                for (int64_t j = 0; j < d; j++) mf[j] = fmaf(m[j], s->mu, df[j]);
                memcpy(m, mf, (size_t)d * sizeof(float));
            } else if (s->m_kind == M_BF16) {
                uint16_t *m = (uint16_t *)s->m + r * d;
                const uint32_t key = keys[s->lane_m];
                for (int64_t j = 0; j < d; j++) {
                    mf[j] = fmaf(bf16_to_f32(m[j]), s->mu, df[j]);
                    m[j] = round_bf16(mf[j], noise_bits(key, salt[j]));
                }
            } else {
                int8_t *q = (int8_t *)s->m + r * d;
                const float old_scale = s->m_scale[r];
                /* max |v| (the eager max(amax, -amin), exactly) as the largest magnitude bit
                 * pattern: non-negative floats order as their bits, and an integer max vectorises */
                uint32_t top = 0;
                for (int64_t j = 0; j < d; j++) {
                    float v = fmaf((float)q[j] * old_scale, s->mu, df[j]);
                    mf[j] = v;
                    uint32_t bits;
                    memcpy(&bits, &v, sizeof bits);
                    bits &= 0x7fffffffu;
                    top = bits > top ? bits : top;
                }
                float absmax;
                memcpy(&absmax, &top, sizeof absmax);
                const float scale = (absmax > 1e-30f ? absmax : 1e-30f) * s->int8_scale;
                const uint32_t key = keys[s->lane_m];
                for (int64_t j = 0; j < d; j++) {
                    float y = (float)(int32_t)noise_bits(key, salt[j]) * 0x1p-32f;
                    q[j] = (int8_t)round_even(y + mf[j] / scale);
                }
                s->m_scale[r] = scale;
            }
            if (s->nesterov) {
                for (int64_t j = 0; j < d; j++) df[j] = fmaf(mf[j], s->mu, df[j]);
            } else {
                u = mf;
            }
        }
        if (s->w_bf16) {
            uint16_t *w = (uint16_t *)s->w + r * d;
            const uint32_t key = keys[s->lane_w];
            for (int64_t j = 0; j < d; j++) w[j] = round_bf16(fmaf(u[j], s->neg_lr, wf[j]), noise_bits(key, salt[j]));
        } else {
            float *w = (float *)s->w + r * d;
            if (need_w) {
                for (int64_t j = 0; j < d; j++) w[j] = fmaf(u[j], s->neg_lr, wf[j]);
            } else {
                for (int64_t j = 0; j < d; j++) w[j] = fmaf(u[j], s->neg_lr, w[j]);
            }
        }
    }
}

/* SGD on rows idx of a bf16 or fp32 weight with momentum stored as m_kind (M_*; int8 with its
 * per-row scales m_scale), every narrower store rounded stochastically with row keys `keys`
 * (n x streams int32; lanes lane_w, lane_m) and column salts `salt` (d int32). Returns 0, or
 * -1 when d exceeds COMPACT_MAX_D (nothing is changed then). */
int pfc_sgd_compact(void *w, int w_bf16, void *m, int m_kind, float *m_scale, const void *g, int g_bf16,
                    const int64_t *idx, int64_t n, int64_t d, float neg_lr, float mu, float wd, int nesterov,
                    float int8_scale, const int32_t *keys, int streams, int lane_w, int lane_m, const int32_t *salt,
                    int threads) {
    if (d > COMPACT_MAX_D) return -1;
    struct compact s = {w, m, m_scale, g, idx, keys, salt, d, neg_lr, mu, wd, int8_scale,
                        w_bf16, g_bf16, m_kind, nesterov, streams, lane_w, lane_m};
    parallel(compact_range, &s, n, threads, 256, 1);
    return 0;
}

/* ---- fp32 -> bf16, rounded to nearest (ties to even), as torch's cast; NaN -> a NaN (0xffff) ---- */

struct narrow {
    const float *src;
    uint16_t *dst;
};

static void narrow_range(const void *ctx, int64_t lo, int64_t hi) {
    const struct narrow *s = (const struct narrow *)ctx;
    const float *restrict src = s->src;
    uint16_t *restrict dst = s->dst;
    for (int64_t i = lo; i < hi; i++) {
        uint32_t bits;
        memcpy(&bits, &src[i], sizeof bits);
        uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
        dst[i] = (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? 0xffffu : rounded);
    }
}

void pfc_to_bf16(const float *src, uint16_t *dst, int64_t n, int threads) {
    struct narrow s = {src, dst};
    parallel(narrow_range, &s, n, threads, 1 << 16, 64);
}
