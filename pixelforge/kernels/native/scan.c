/* Fused selective-scan forward for CPU (pixelforge.kernels.native), the whole op in one pass over time:
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
 * with the system C compiler; no Python or torch headers.
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

/* Returns 0 on success, 1 on unsupported sizes (n > MAX_STATE, groups not dividing d). */
int pf_selective_scan_fwd(const float *const *ptr, const int64_t *prm, int64_t threads) {
    const int64_t d = prm[P_D], n = prm[P_N], gB = prm[P_GB], gC = prm[P_GC];
    if (n < 1 || n > MAX_STATE || gB < 1 || gC < 1 || d % gB || d % gC) return 1;
    const int64_t g = gB / gcd64(gB, gC) * gC;
    if (d % g) return 1;
    const int64_t per = d / g;
    const int64_t items = prm[P_B] * g * ((per + LANES - 1) / LANES);
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
    for (int64_t i = 1; i < threads; ++i) started[i] = pthread_create(&tid[i], NULL, scan_items, &jobs[i]) == 0;
    scan_items(&jobs[0]);
    for (int64_t i = 1; i < threads; ++i) {
        if (started[i]) pthread_join(tid[i], NULL);
        else scan_items(&jobs[i]); /* a thread that could not start: its items run here */
    }
    return 0;
}
