/* Fused selective-scan forward (and backward, below) for CPU (pixelforge.kernels.native), the forward in one pass:
 * Δ = softplus(delta + delta_bias), h ← exp(Δ·A)·h + Δ·u·B, y = Σ_n C·h + D·u, out = y·silu(z).
 * Vectorised across LANES channels (one vector of the target) that share their B/C groups; the (n × LANES) state
 * stays in L1 and exp(Δ·A) is computed in-loop by a branch-free polynomial that the compiler vectorises (built with
 * -fno-trapping-math, without which GCC does not if-convert its clamps for AVX2 and leaves the loop scalar), so
 * nothing of size L·d·n is ever written to memory.
 *
 * ptrs: u, delta, A, B, C, D, z, delta_bias (float32; D, z, delta_bias may be NULL), out, last
 * prm:  b, d, L, n, gB, gC, b_var, c_var, softplus, reverse, then element strides:
 *       u (b, d, L), delta (b, d, L), z (b, d, L), A (d, n), B and C (b, g, n, L) when *_var, else (d, n, -, -),
 *       D (d), delta_bias (d)
 * out (b, d, L) and last (b, d, n) are written C-contiguous. Work items (batch, block of up to LANES channels inside
 * one group of B and of C) are split over `threads` POSIX threads. Built by pixelforge/kernels/native/__init__.py
 * with the system C compiler; no Python or torch headers. The backward (pf_selective_scan_bwd) follows the forward.
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

/* Channels per work item, one per float lane of the target's vectors: 16 with AVX-512, else 8 (one AVX2 vector,
 * two NEON or SSE vectors); -DPF_LANES=N overrides. */
#ifndef PF_LANES
#if defined(__AVX512F__)
#define PF_LANES 16
#else
#define PF_LANES 8
#endif
#endif
#define LANES PF_LANES
#define MAX_STATE 256
#define MAX_THREADS 64

enum { P_B, P_D, P_L, P_N, P_GB, P_GC, P_BVAR, P_CVAR, P_SOFTPLUS, P_REVERSE,
       S_U = 10, S_DELTA = 13, S_Z = 16, S_A = 19, S_B = 21, S_C = 25, S_D = 29, S_BIAS = 30 };

/* exp(x): 2^k · p(r), r = x - k·ln2 (Cody-Waite split), degree-6 minimax polynomial (Cephes expf coefficients),
 * relative error ~2e-7; x is clamped to [-87.3, 88.7] (results below 2^-126 come out as ~1e-38, not 0). */
static inline float exp_poly(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    const float shifter = 12582912.0f; /* 1.5·2^23: adding and subtracting it rounds to an integer */
    float k = (x * 1.44269504088896341f + shifter) - shifter;
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* softplus with torch's threshold 20: x for x > 20, else max(x, 0) + log1p(e^-|x|), the log1p from
 * 2·atanh(s), s = y / (2 + y) ∈ [0, 1/3], as an odd series to s^13 (relative error ~1e-7). */
static inline float softplus(float x) {
    const float ax = x < 0.0f ? -x : x;
    const float y = exp_poly(-ax);
    const float s = y / (2.0f + y), s2 = s * s;
    float q = 1.0f / 13.0f;
    q = q * s2 + 1.0f / 11.0f;
    q = q * s2 + 1.0f / 9.0f;
    q = q * s2 + 1.0f / 7.0f;
    q = q * s2 + 1.0f / 5.0f;
    q = q * s2 + 1.0f / 3.0f;
    q = q * s2 + 1.0f;
    const float sp = (x > 0.0f ? x : 0.0f) + 2.0f * s * q;
    return x > 20.0f ? x : sp;
}

/* One position for all lanes: h ← exp(Δ·A)·h + Δu·B, returns Σ_k C·h per lane in acc. B/C are per-group scalars
 * (b_var/c_var = 1) or per-lane rows; the flags are constants at each call site, so each variant is compiled
 * separately. */
static inline __attribute__((always_inline)) void step(int64_t n, const float *restrict w, const float *restrict v,
                                                       float (*restrict Ak)[LANES], float (*restrict h)[LANES],
                                                       float *restrict acc, const float *bt, int64_t bs,
                                                       const float *ct, int64_t cs, float (*restrict bf)[LANES],
                                                       float (*restrict cf)[LANES], const int b_var,
                                                       const int c_var) {
    float sum[LANES] = {0};
    for (int64_t k = 0; k < n; ++k) {
        const float bk = b_var ? bt[k * bs] : 0.0f, ck = c_var ? ct[k * cs] : 0.0f;
#pragma omp simd
        for (int64_t l = 0; l < LANES; ++l) {
            const float a = exp_poly(w[l] * Ak[k][l]);
            const float hb = a * h[k][l] + v[l] * (b_var ? bk : bf[k][l]);
            h[k][l] = hb;
            sum[l] += hb * (c_var ? ck : cf[k][l]);
        }
    }
    for (int64_t l = 0; l < LANES; ++l) acc[l] = sum[l];
}

typedef struct {
    const float *const *ptr;
    const int64_t *p;
    int64_t item0, item1;
} job_t;

/* Positions per time chunk: the chunk's Δ, Δ·u and y for all lanes (3 × 16 KiB at 16 lanes) stay in L1/L2. */
#define CHUNK 256

/* One work item: batch bi, channels [c0, c0 + nl) inside one group of B and of C. Time is walked in chunks: a
 * prologue computes Δ and Δ·u per channel along time (contiguous reads, vectorised over positions), the scan runs
 * across the lanes, and an epilogue adds D·u and the gate per channel along time. */
static void scan_block(const float *const *ptr, const int64_t *p, int64_t bi, int64_t c0, int64_t nl) {
    const float *u = ptr[0], *delta = ptr[1], *A = ptr[2], *B = ptr[3], *C = ptr[4], *D = ptr[5], *z = ptr[6],
                *bias = ptr[7];
    float *out = (float *)ptr[8], *last = (float *)ptr[9];
    const int64_t d = p[P_D], L = p[P_L], n = p[P_N], reverse = p[P_REVERSE], softplus_on = p[P_SOFTPLUS];
    const int b_var = (int)p[P_BVAR], c_var = (int)p[P_CVAR];
    static __thread float h[MAX_STATE][LANES], Ak[MAX_STATE][LANES], Bf[MAX_STATE][LANES], Cf[MAX_STATE][LANES];
    static __thread float wb[CHUNK][LANES], vb[CHUNK][LANES], yb[LANES][CHUNK];
    float acc[LANES];
    memset(h, 0, sizeof(float) * LANES * n);
    memset(wb, 0, sizeof wb);
    memset(vb, 0, sizeof vb);
    for (int64_t l = 0; l < LANES; ++l) {
        const int64_t c = c0 + (l < nl ? l : 0);
        for (int64_t k = 0; k < n; ++k) {
            Ak[k][l] = l < nl ? A[c * p[S_A] + k * p[S_A + 1]] : 0.0f;
            Bf[k][l] = b_var ? 0.0f : B[c * p[S_B] + k * p[S_B + 1]];
            Cf[k][l] = c_var ? 0.0f : C[c * p[S_C] + k * p[S_C + 1]];
        }
    }
    const float *Bg = b_var ? B + bi * p[S_B] + (c0 / (d / p[P_GB])) * p[S_B + 1] : NULL;
    const float *Cg = c_var ? C + bi * p[S_C] + (c0 / (d / p[P_GC])) * p[S_C + 1] : NULL;
    const int64_t bs = p[S_B + 2], cs = p[S_C + 2];
    for (int64_t done = 0; done < L; done += CHUNK) {
        /* positions [t0, t0 + T) of this chunk, in memory order; the scan walks them in scan order */
        const int64_t T = L - done < CHUNK ? L - done : CHUNK;
        const int64_t t0 = reverse ? L - done - T : done;
        for (int64_t l = 0; l < nl; ++l) {
            const int64_t c = c0 + l;
            const float *dr = delta + bi * p[S_DELTA] + c * p[S_DELTA + 1] + t0 * p[S_DELTA + 2];
            const float *ur = u + bi * p[S_U] + c * p[S_U + 1] + t0 * p[S_U + 2];
            const int64_t sd = p[S_DELTA + 2], su = p[S_U + 2];
            const float bl = bias ? bias[c * p[S_BIAS]] : 0.0f;
#pragma omp simd
            for (int64_t i = 0; i < T; ++i) {
                const float x = dr[i * sd] + bl;
                const float w = softplus_on ? softplus(x) : x;
                wb[i][l] = w;
                vb[i][l] = w * ur[i * su];
            }
        }
        for (int64_t s = 0; s < T; ++s) {
            const int64_t i = reverse ? T - 1 - s : s, t = t0 + i;
            const float *Bt = b_var ? Bg + t * p[S_B + 3] : NULL, *Ct = c_var ? Cg + t * p[S_C + 3] : NULL;
            if (b_var && c_var) step(n, wb[i], vb[i], Ak, h, acc, Bt, bs, Ct, cs, Bf, Cf, 1, 1);
            else if (b_var) step(n, wb[i], vb[i], Ak, h, acc, Bt, bs, Ct, cs, Bf, Cf, 1, 0);
            else if (c_var) step(n, wb[i], vb[i], Ak, h, acc, Bt, bs, Ct, cs, Bf, Cf, 0, 1);
            else step(n, wb[i], vb[i], Ak, h, acc, Bt, bs, Ct, cs, Bf, Cf, 0, 0);
            for (int64_t l = 0; l < LANES; ++l) yb[l][i] = acc[l];
        }
        for (int64_t l = 0; l < nl; ++l) {
            const int64_t c = c0 + l;
            const float *ur = u + bi * p[S_U] + c * p[S_U + 1] + t0 * p[S_U + 2];
            const float *zr = z ? z + bi * p[S_Z] + c * p[S_Z + 1] + t0 * p[S_Z + 2] : NULL;
            const int64_t su = p[S_U + 2], sz = p[S_Z + 2];
            const float Dc = D ? D[c * p[S_D]] : 0.0f;
            float *orow = out + (bi * d + c) * L + t0;
            const float *yr = yb[l];
            if (zr) {
#pragma omp simd
                for (int64_t i = 0; i < T; ++i) {
                    const float zz = zr[i * sz];
                    orow[i] = (yr[i] + Dc * ur[i * su]) * (zz / (1.0f + exp_poly(-zz)));
                }
            } else {
#pragma omp simd
                for (int64_t i = 0; i < T; ++i) orow[i] = yr[i] + Dc * ur[i * su];
            }
        }
    }
    for (int64_t l = 0; l < nl; ++l)
        for (int64_t k = 0; k < n; ++k) last[((bi * d) + c0 + l) * n + k] = h[k][l];
}

static int64_t gcd64(int64_t a, int64_t b) { while (b) { int64_t t = a % b; a = b; b = t; } return a; }

/* Channels per region that lies inside one group of B and of C: d / lcm(gB, gC). */
static int64_t region_size(const int64_t *p) {
    const int64_t g = p[P_GB] / gcd64(p[P_GB], p[P_GC]) * p[P_GC];
    return p[P_D] / g;
}

/* Work items are numbered batch-major: (bi, region, block of LANES channels within the region). */
static void *scan_items(void *arg) {
    const job_t *j = (const job_t *)arg;
    const int64_t per = region_size(j->p), regions = j->p[P_D] / per, blocks = (per + LANES - 1) / LANES;
    for (int64_t it = j->item0; it < j->item1; ++it) {
        const int64_t bi = it / (regions * blocks), rem = it % (regions * blocks);
        const int64_t c0 = (rem / blocks) * per + (rem % blocks) * LANES;
        const int64_t left = per - (rem % blocks) * LANES;
        scan_block(j->ptr, j->p, bi, c0, left < LANES ? left : LANES);
    }
    return NULL;
}

/* 0 when the sizes are supported: 1 <= n <= MAX_STATE, B's and C's group counts (and their lcm) divide d. */
static int unsupported(const int64_t *prm) {
    const int64_t d = prm[P_D], n = prm[P_N], gB = prm[P_GB], gC = prm[P_GC];
    if (n < 1 || n > MAX_STATE || gB < 1 || gC < 1 || d % gB || d % gC) return 1;
    return d % (gB / gcd64(gB, gC) * gC) != 0;
}

/* Runs work items [0, items) through fn, split evenly over up to `threads` POSIX threads (this one included; a
 * thread that cannot start has its items run here). Returns 0 when every fn returned NULL, else 1. */
static int run_items(void *(*fn)(void *), const float *const *ptr, const int64_t *prm, int64_t items,
                     int64_t threads) {
    if (threads > items) threads = items;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    job_t jobs[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int64_t i = 0; i < threads; ++i) {
        job_t jb = {ptr, prm, items * i / threads, items * (i + 1) / threads};
        jobs[i] = jb;
    }
    for (int64_t i = 1; i < threads; ++i) started[i] = pthread_create(&tid[i], NULL, fn, &jobs[i]) == 0;
    int failed = fn(&jobs[0]) != NULL;
    for (int64_t i = 1; i < threads; ++i) {
        void *res = NULL;
        if (started[i]) pthread_join(tid[i], &res);
        else res = fn(&jobs[i]);
        failed |= res != NULL;
    }
    return failed;
}

/* Work items per batch row: groups (lcm of B's and C's) × blocks of LANES channels per group. */
int64_t pf_selective_scan_items(const int64_t *prm) {
    const int64_t per = region_size(prm);
    return (prm[P_D] / per) * ((per + LANES - 1) / LANES);
}

/* Returns 0 on success, 1 on unsupported sizes (n > MAX_STATE, groups not dividing d). */
int pf_selective_scan_fwd(const float *const *ptr, const int64_t *prm, int64_t threads) {
    if (unsupported(prm)) return 1;
    run_items(scan_items, ptr, prm, prm[P_B] * pf_selective_scan_items(prm), threads);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Backward (time-variant B and C only). For one work item, with g = ∂loss/∂out and G_t = ∂loss/∂h_t carried from
 * the later positions (G = grad_last at the last scanned one), walking the positions in reverse scan order:
 *   y' = Σ_n C·h + D·u;  dy = g·silu(z);  dz = g·y'·σ(z)(1 + z(1 − σ(z)));  dD += dy·u;  du = dy·D
 *   dh = G + dy·C;  dC += Σ_lanes dy·h;  dB += Σ_lanes dh·Δ·u
 *   dΔ += Σ_n dh·(h_prev·a·A + B·u);  dA += dh·h_prev·a·Δ;  du += Σ_n dh·B·Δ;  G ← a·dh   (a = exp(Δ·A))
 *   dδ = dΔ·σ(δ + bias) with softplus (1 past its threshold), d bias += dδ.
 * The states are not stored by the forward: a first pass keeps the state at the start of every BCHUNK positions,
 * then each chunk (last first) is recomputed with its states and decays kept in a small buffer and walked back.
 * Per-item partial sums (dA, dD, d bias per batch; dB, dC per channel block) are written to their own slots and
 * summed by the caller, so threads never write the same memory.
 *
 * ptrs: u, delta, A, B, C, D, z, delta_bias, gout (b, d, L contiguous), glast (b, d, n contiguous or NULL),
 *       du, ddelta, dz (b, d, L), dA (b, d, n), dD (b, d), dbias (b, d), dB, dC (b, items per batch, n, L)
 * prm:  as the forward's; b_var and c_var must be 1.
 * --------------------------------------------------------------------------------------------------------------- */
#include <stdlib.h>

#define BCHUNK 64

typedef struct {
    float *ckpt, *hs, *as;                   /* (chunks, n, LANES), (BCHUNK, n, LANES) twice */
    float *w, *x, *v, *uu, *zz, *gg, *du, *dw, *dz, *y; /* (BCHUNK, LANES) each */
} bwd_ws_t;

static void scan_block_bwd(const float *const *ptr, const int64_t *p, int64_t bi, int64_t c0, int64_t nl,
                           int64_t item_in_batch, int64_t items_per_batch, bwd_ws_t *ws) {
    const float *u = ptr[0], *delta = ptr[1], *A = ptr[2], *B = ptr[3], *C = ptr[4], *D = ptr[5], *z = ptr[6],
                *bias = ptr[7], *gout = ptr[8], *glast = ptr[9];
    float *du_o = (float *)ptr[10], *dd_o = (float *)ptr[11], *dz_o = (float *)ptr[12], *dA_o = (float *)ptr[13],
          *dD_o = (float *)ptr[14], *db_o = (float *)ptr[15], *dB_o = (float *)ptr[16], *dC_o = (float *)ptr[17];
    const int64_t d = p[P_D], L = p[P_L], n = p[P_N], reverse = p[P_REVERSE], softplus_on = p[P_SOFTPLUS];
    const int64_t nch = (L + BCHUNK - 1) / BCHUNK;
    float Ak[MAX_STATE][LANES], G[MAX_STATE][LANES], dAacc[MAX_STATE][LANES], h[MAX_STATE][LANES];
    float Dl[LANES] = {0}, dDacc[LANES] = {0}, dbacc[LANES] = {0};
    for (int64_t l = 0; l < LANES; ++l) {
        const int64_t c = c0 + (l < nl ? l : 0);
        Dl[l] = (D && l < nl) ? D[c * p[S_D]] : 0.0f;
        for (int64_t k = 0; k < n; ++k) {
            Ak[k][l] = l < nl ? A[c * p[S_A] + k * p[S_A + 1]] : 0.0f;
            G[k][l] = (glast && l < nl) ? glast[((bi * d) + c) * n + k] : 0.0f;
            dAacc[k][l] = 0.0f;
            h[k][l] = 0.0f;
        }
    }
    const float *Bg = B + bi * p[S_B] + (c0 / (d / p[P_GB])) * p[S_B + 1];
    const float *Cg = C + bi * p[S_C] + (c0 / (d / p[P_GC])) * p[S_C + 1];
    const int64_t bs = p[S_B + 2], cs = p[S_C + 2], bt = p[S_B + 3], ct = p[S_C + 3];
    float *dBrow = dB_o + (bi * items_per_batch + item_in_batch) * n * L;
    float *dCrow = dC_o + (bi * items_per_batch + item_in_batch) * n * L;
    const size_t row = sizeof(float) * BCHUNK * LANES;
    memset(ws->w, 0, row); memset(ws->x, 0, row); memset(ws->v, 0, row); memset(ws->uu, 0, row);
    memset(ws->zz, 0, row); memset(ws->gg, 0, row);

    /* loads Δ, δ + bias, Δ·u, u, z and g of chunk j into the lane-major buffers; returns its first position */
#define LOAD_CHUNK(j, T, t0, with_grad)                                                                     \
    do {                                                                                                    \
        const int64_t done_ = (j) * BCHUNK;                                                                 \
        T = L - done_ < BCHUNK ? L - done_ : BCHUNK;                                                        \
        t0 = reverse ? L - done_ - T : done_;                                                               \
        for (int64_t l = 0; l < nl; ++l) {                                                                  \
            const int64_t c = c0 + l;                                                                       \
            const float *dr = delta + bi * p[S_DELTA] + c * p[S_DELTA + 1] + t0 * p[S_DELTA + 2];           \
            const float *ur = u + bi * p[S_U] + c * p[S_U + 1] + t0 * p[S_U + 2];                           \
            const int64_t sd = p[S_DELTA + 2], su = p[S_U + 2];                                             \
            const float bl = bias ? bias[c * p[S_BIAS]] : 0.0f;                                             \
            for (int64_t i = 0; i < T; ++i) {                                                               \
                const float xx = dr[i * sd] + bl;                                                           \
                const float ww = softplus_on ? softplus(xx) : xx;                                           \
                ws->x[i * LANES + l] = xx;                                                                  \
                ws->w[i * LANES + l] = ww;                                                                  \
                ws->uu[i * LANES + l] = ur[i * su];                                                         \
                ws->v[i * LANES + l] = ww * ur[i * su];                                                     \
            }                                                                                               \
            if (with_grad) {                                                                                \
                const float *gr = gout + (bi * d + c) * L + t0;                                             \
                const float *zr = z ? z + bi * p[S_Z] + c * p[S_Z + 1] + t0 * p[S_Z + 2] : NULL;            \
                for (int64_t i = 0; i < T; ++i) {                                                           \
                    ws->gg[i * LANES + l] = gr[i];                                                          \
                    ws->zz[i * LANES + l] = zr ? zr[i * p[S_Z + 2]] : 0.0f;                                 \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
    } while (0)

    /* pass 1: the state at the start of every chunk */
    for (int64_t j = 0; j < nch; ++j) {
        int64_t T, t0;
        LOAD_CHUNK(j, T, t0, 0);
        memcpy(ws->ckpt + j * n * LANES, h, sizeof(float) * n * LANES);
        for (int64_t s = 0; s < T; ++s) {
            const int64_t i = reverse ? T - 1 - s : s, t = t0 + i;
            const float *wi = ws->w + i * LANES, *vi = ws->v + i * LANES;
            for (int64_t k = 0; k < n; ++k) {
                const float bk = Bg[k * bs + t * bt];
#pragma omp simd
                for (int64_t l = 0; l < LANES; ++l) h[k][l] = exp_poly(wi[l] * Ak[k][l]) * h[k][l] + vi[l] * bk;
            }
        }
    }
    /* pass 2: chunks last to first, each recomputed then walked back */
    for (int64_t j = nch - 1; j >= 0; --j) {
        int64_t T, t0;
        LOAD_CHUNK(j, T, t0, 1);
        const float *h0 = ws->ckpt + j * n * LANES;
        for (int64_t s = 0; s < T; ++s) {
            const int64_t i = reverse ? T - 1 - s : s, t = t0 + i;
            const float *wi = ws->w + i * LANES, *vi = ws->v + i * LANES;
            const float *hp = s ? ws->hs + (s - 1) * n * LANES : h0;
            float *hn = ws->hs + s * n * LANES, *an = ws->as + s * n * LANES;
            float acc[LANES] = {0};
            for (int64_t k = 0; k < n; ++k) {
                const float bk = Bg[k * bs + t * bt], ck = Cg[k * cs + t * ct];
#pragma omp simd
                for (int64_t l = 0; l < LANES; ++l) {
                    const float a = exp_poly(wi[l] * Ak[k][l]);
                    const float hv = a * hp[k * LANES + l] + vi[l] * bk;
                    an[k * LANES + l] = a;
                    hn[k * LANES + l] = hv;
                    acc[l] += hv * ck;
                }
            }
            for (int64_t l = 0; l < LANES; ++l) ws->y[i * LANES + l] = acc[l];
        }
        for (int64_t s = T - 1; s >= 0; --s) {
            const int64_t i = reverse ? T - 1 - s : s, t = t0 + i;
            const float *wi = ws->w + i * LANES, *ui = ws->uu + i * LANES, *zi = ws->zz + i * LANES,
                        *gi = ws->gg + i * LANES, *yi = ws->y + i * LANES;
            const float *hp = s ? ws->hs + (s - 1) * n * LANES : h0;
            const float *hc = ws->hs + s * n * LANES, *ac = ws->as + s * n * LANES;
            float dy[LANES], dwl[LANES], dul[LANES];
#pragma omp simd
            for (int64_t l = 0; l < LANES; ++l) {
                const float yf = yi[l] + Dl[l] * ui[l];
                float g = gi[l], dzv = 0.0f;
                if (z) {
                    const float zz = zi[l], sg = 1.0f / (1.0f + exp_poly(-zz));
                    dzv = g * yf * sg * (1.0f + zz * (1.0f - sg));
                    g = g * zz * sg;
                }
                dy[l] = g;
                ws->dz[i * LANES + l] = dzv;
                dDacc[l] += g * ui[l];
                dul[l] = g * Dl[l];
                dwl[l] = 0.0f;
            }
            for (int64_t k = 0; k < n; ++k) {
                const float bk = Bg[k * bs + t * bt], ck = Cg[k * cs + t * ct];
                float sc = 0.0f, sb = 0.0f;
#pragma omp simd reduction(+ : sc, sb)
                for (int64_t l = 0; l < LANES; ++l) {
                    const float a = ac[k * LANES + l], hpv = hp[k * LANES + l];
                    const float dh = G[k][l] + dy[l] * ck;
                    const float da = dh * hpv * a;
                    sc += dy[l] * hc[k * LANES + l];
                    sb += dh * wi[l] * ui[l];
                    dwl[l] += da * Ak[k][l] + dh * bk * ui[l];
                    dAacc[k][l] += da * wi[l];
                    dul[l] += dh * bk * wi[l];
                    G[k][l] = a * dh;
                }
                dCrow[k * L + t] = sc;
                dBrow[k * L + t] = sb;
            }
            for (int64_t l = 0; l < LANES; ++l) {
                ws->du[i * LANES + l] = dul[l];
                ws->dw[i * LANES + l] = dwl[l];
            }
        }
        for (int64_t l = 0; l < nl; ++l) {
            const int64_t c = c0 + l;
            float *dur = du_o + (bi * d + c) * L + t0, *ddr = dd_o + (bi * d + c) * L + t0;
            float *dzr = dz_o + (bi * d + c) * L + t0;
            for (int64_t i = 0; i < T; ++i) {
                float dd = ws->dw[i * LANES + l];
                if (softplus_on) {
                    const float xx = ws->x[i * LANES + l];
                    dd = xx > 20.0f ? dd : dd / (1.0f + exp_poly(-xx));
                }
                dur[i] = ws->du[i * LANES + l];
                ddr[i] = dd;
                dzr[i] = ws->dz[i * LANES + l];
                dbacc[l] += dd;
            }
        }
    }
#undef LOAD_CHUNK
    for (int64_t l = 0; l < nl; ++l) {
        const int64_t c = c0 + l;
        dD_o[bi * d + c] = dDacc[l];
        db_o[bi * d + c] = dbacc[l];
        for (int64_t k = 0; k < n; ++k) dA_o[(bi * d + c) * n + k] = dAacc[k][l];
    }
}

static void *scan_items_bwd(void *arg) {
    const job_t *j = (const job_t *)arg;
    const int64_t *p = j->p;
    const int64_t per = region_size(p), regions = p[P_D] / per, blocks = (per + LANES - 1) / LANES;
    const int64_t n = p[P_N], nch = (p[P_L] + BCHUNK - 1) / BCHUNK;
    bwd_ws_t ws;
    const size_t lane_row = (size_t)BCHUNK * LANES;
    float *mem = malloc(sizeof(float) * ((size_t)nch * n * LANES + 2 * lane_row * n + 10 * lane_row));
    if (!mem) return (void *)1;
    ws.ckpt = mem;
    ws.hs = ws.ckpt + (size_t)nch * n * LANES;
    ws.as = ws.hs + lane_row * n;
    float *q = ws.as + lane_row * n;
    float **bufs[] = {&ws.w, &ws.x, &ws.v, &ws.uu, &ws.zz, &ws.gg, &ws.du, &ws.dw, &ws.dz, &ws.y};
    for (int i = 0; i < 10; ++i) { *bufs[i] = q; q += lane_row; }
    for (int64_t it = j->item0; it < j->item1; ++it) {
        const int64_t bi = it / (regions * blocks), rem = it % (regions * blocks);
        const int64_t c0 = (rem / blocks) * per + (rem % blocks) * LANES;
        const int64_t left = per - (rem % blocks) * LANES;
        scan_block_bwd(j->ptr, p, bi, c0, left < LANES ? left : LANES, rem, regions * blocks, &ws);
    }
    free(mem);
    return NULL;
}

/* Returns 0 on success, 1 on unsupported sizes, 2 for time-invariant B or C, 3 when out of memory. */
int pf_selective_scan_bwd(const float *const *ptr, const int64_t *prm, int64_t threads) {
    if (unsupported(prm)) return 1;
    if (!prm[P_BVAR] || !prm[P_CVAR]) return 2;
    return run_items(scan_items_bwd, ptr, prm, prm[P_B] * pf_selective_scan_items(prm), threads) ? 3 : 0;
}
