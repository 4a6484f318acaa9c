// Element-wise and per-row kernels of the forward pass. `ctl` is the control block the
// model keeps on the device: ctl[0] = position of the first token, ctl[2..] = token ids;
// kernels read positions from it so that a captured decode graph replays unchanged.

// RMSNorm then int8 quantization of each row (one block per row), as
// bitnet_core::nn::norm::rmsnorm_quantize: the sum of squares in f64, y = g·(x·r),
// a = 127 / max(|y|max, 1e-5), q = clamp(rint(y·a)) (round half to even). Writes the
// factor 1/a, zeros in the padding [K, kp) and, with `sums`, Σq (the code offset of the
// tensor-core products; the one-token products sum the token themselves, so a decode
// norm skips that third block reduction).
// Rows are read once into registers: as V ≤ NQ_V float4 per thread when K is a multiple
// of 4 (the wrapper picks blockDim ≈ K/(4V) with V = ⌈K/2560⌉: one 16-byte load and one
// 4-byte store per four values), else as up to NQ_E scalars per thread; each block
// reduction takes one barrier, into its own shared array. Longer rows loop over global
// memory. The norm weights are loaded before PDL_WAIT.
#define NQ_V 4
#define NQ_E 8

__device__ __forceinline__ int quant_code(float y, float a) {
    float v = rintf(y * a);
    return (int)fminf(fmaxf(v, -128.0f), 127.0f);
}

__device__ __forceinline__ void rq_finish(int tid, int sums, int s, int K, int kp, float a,
                                          i8* __restrict__ qr, float* __restrict__ qf,
                                          i32* __restrict__ qs, int* shi) {
    for (int k = K + tid; k < kp; k += blockDim.x) qr[k] = 0;
    if (sums) s = block_reduce_once(s, shi, 0, OpAdd());
    if (tid == 0) {
        qf[blockIdx.x] = 1.0f / a;
        if (sums) qs[blockIdx.x] = s;
    }
}

template <int V>
__device__ __forceinline__ void rq_vec4(const float* __restrict__ xr, const float* __restrict__ w,
                                        int K, int kp, float eps, i8* __restrict__ qr,
                                        float* __restrict__ qf, i32* __restrict__ qs, int sums,
                                        double* shd, float* shf, int* shi) {
    int tid = threadIdx.x, bd = blockDim.x, K4 = K >> 2;
    const float4* w4 = (const float4*)w;
    const float4* x4 = (const float4*)xr;
    float4 wv[V], xv[V];
#pragma unroll
    for (int e = 0; e < V; e++) {
        int k = tid + e * bd;
        wv[e] = k < K4 ? w4[k] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    PDL_WAIT();
    PDL_LAUNCH();
#pragma unroll
    for (int e = 0; e < V; e++) {
        int k = tid + e * bd;
        xv[e] = k < K4 ? x4[k] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    double ss = 0.0;
#pragma unroll
    for (int e = 0; e < V; e++) {
        double d0 = xv[e].x, d1 = xv[e].y, d2 = xv[e].z, d3 = xv[e].w;
        ss += d0 * d0;
        ss += d1 * d1;
        ss += d2 * d2;
        ss += d3 * d3;
    }
    ss = block_reduce_once(ss, shd, 0.0, OpAdd());
    float r = 1.0f / sqrtf((float)(ss / (double)K) + eps);
    float am = 0.0f;
#pragma unroll
    for (int e = 0; e < V; e++) {
        xv[e] = make_float4(wv[e].x * (xv[e].x * r), wv[e].y * (xv[e].y * r),
                            wv[e].z * (xv[e].z * r), wv[e].w * (xv[e].w * r));
        am = fmaxf(am, fmaxf(fmaxf(fabsf(xv[e].x), fabsf(xv[e].y)),
                             fmaxf(fabsf(xv[e].z), fabsf(xv[e].w))));
    }
    am = block_reduce_once(am, shf, 0.0f, OpMaxNonNeg());
    float a = 127.0f / fmaxf(am, 1e-5f);
    int s = 0;
    u32* q4 = (u32*)qr;
#pragma unroll
    for (int e = 0; e < V; e++) {
        int k = tid + e * bd;
        if (k < K4) {
            int c0 = quant_code(xv[e].x, a), c1 = quant_code(xv[e].y, a);
            int c2 = quant_code(xv[e].z, a), c3 = quant_code(xv[e].w, a);
            q4[k] = (u32)(c0 & 255) | ((u32)(c1 & 255) << 8) | ((u32)(c2 & 255) << 16) |
                    ((u32)(c3 & 255) << 24);
            s += c0 + c1 + c2 + c3;
        }
    }
    rq_finish(tid, sums, s, K, kp, a, qr, qf, qs, shi);
}

extern "C" __global__ void __launch_bounds__(1024)
rmsnorm_quant(const float* __restrict__ x, const float* __restrict__ w, int K, int kp, float eps,
              i8* __restrict__ q, float* __restrict__ qf, i32* __restrict__ qs, int sums) {
    __shared__ double shd[32];
    __shared__ float shf[32];
    __shared__ int shi[32];
    int row = blockIdx.x, tid = threadIdx.x, bd = blockDim.x;
    const float* xr = x + (size_t)row * K;
    i8* qr = q + (size_t)row * kp;
    if ((K & 3) == 0) {  // (kp is a multiple of 64: the codes' u32 stores stay aligned)
        int v = ((K >> 2) + bd - 1) / bd;
        if (v == 1) return rq_vec4<1>(xr, w, K, kp, eps, qr, qf, qs, sums, shd, shf, shi);
        if (v == 2) return rq_vec4<2>(xr, w, K, kp, eps, qr, qf, qs, sums, shd, shf, shi);
        if (v == 3) return rq_vec4<3>(xr, w, K, kp, eps, qr, qf, qs, sums, shd, shf, shi);
        if (v == NQ_V) return rq_vec4<NQ_V>(xr, w, K, kp, eps, qr, qf, qs, sums, shd, shf, shi);
    }
    if (K <= NQ_E * bd) {
        float wv[NQ_E], xv[NQ_E];
#pragma unroll
        for (int e = 0; e < NQ_E; e++) {
            int k = tid + e * bd;
            wv[e] = k < K ? w[k] : 0.0f;
        }
        PDL_WAIT();
        PDL_LAUNCH();
#pragma unroll
        for (int e = 0; e < NQ_E; e++) {
            int k = tid + e * bd;
            xv[e] = k < K ? xr[k] : 0.0f;
        }
        double ss = 0.0;
#pragma unroll
        for (int e = 0; e < NQ_E; e++) {
            double v = (double)xv[e];
            ss += v * v;
        }
        ss = block_reduce_once(ss, shd, 0.0, OpAdd());
        float var = (float)(ss / (double)K);
        float r = 1.0f / sqrtf(var + eps);
        float am = 0.0f;
#pragma unroll
        for (int e = 0; e < NQ_E; e++) {
            xv[e] = wv[e] * (xv[e] * r);
            am = fmaxf(am, fabsf(xv[e]));
        }
        am = block_reduce_once(am, shf, 0.0f, OpMaxNonNeg());
        float a = 127.0f / fmaxf(am, 1e-5f);
        int s = 0;
#pragma unroll
        for (int e = 0; e < NQ_E; e++) {
            int k = tid + e * bd;
            if (k < K) {
                int qi = quant_code(xv[e], a);
                qr[k] = (i8)qi;
                s += qi;
            }
        }
        return rq_finish(tid, sums, s, K, kp, a, qr, qf, qs, shi);
    }
    PDL_WAIT();
    PDL_LAUNCH();
    double ss = 0.0;
    for (int k = tid; k < K; k += bd) {
        double v = (double)xr[k];
        ss += v * v;
    }
    ss = block_reduce_once(ss, shd, 0.0, OpAdd());
    float var = (float)(ss / (double)K);
    float r = 1.0f / sqrtf(var + eps);
    float am = 0.0f;
    for (int k = tid; k < K; k += bd) am = fmaxf(am, fabsf(w[k] * (xr[k] * r)));
    am = block_reduce_once(am, shf, 0.0f, OpMaxNonNeg());
    float a = 127.0f / fmaxf(am, 1e-5f);
    int s = 0;
    for (int k = tid; k < K; k += bd) {
        int qi = quant_code(w[k] * (xr[k] * r), a);
        qr[k] = (i8)qi;
        s += qi;
    }
    rq_finish(tid, sums, s, K, kp, a, qr, qf, qs, shi);
}

// 1/sqrt(mean(x²) + eps) of a row, the sum of squares in f64 (every thread gets it).
__device__ __forceinline__ float inv_rms(const float* __restrict__ xr, int K, float eps,
                                         double* shd) {
    double ss = 0.0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        double v = (double)xr[k];
        ss += v * v;
    }
    ss = block_reduce_once(ss, shd, 0.0, OpAdd());
    float var = (float)(ss / (double)K);
    return 1.0f / sqrtf(var + eps);
}

// RMSNorm in f32 (the final norm before the LM head): out = g·(x·r).
extern "C" __global__ void __launch_bounds__(256)
rmsnorm_f32(const float* __restrict__ x, const float* __restrict__ w, int K, float eps,
            float* __restrict__ out) {
    __shared__ double shd[32];
    PDL_WAIT();
    PDL_LAUNCH();
    int row = blockIdx.x, tid = threadIdx.x, bd = blockDim.x;
    const float* xr = x + (size_t)row * K;
    float r = inv_rms(xr, K, eps, shd);
    for (int k = tid; k < K; k += bd) out[(size_t)row * K + k] = w[k] * (xr[k] * r);
}

// Rotary embedding of q and k in place in the fused qkv rows (m × (nh+2·nkv)·hd), then the
// keys and values of each token appended to the f16 cache ([kv_head][position][hd]).
// grid (m, nh + nkv); `neox` = rotate-half, else interleaved pairs.
extern "C" __global__ void rope_kv(float* __restrict__ qkv, u16* __restrict__ kc,
                                   u16* __restrict__ vc, const float* __restrict__ cosT,
                                   const float* __restrict__ sinT, const i32* __restrict__ ctl,
                                   int nh, int nkv, int hd, int max_ctx, int neox) {
    PDL_WAIT();
    PDL_LAUNCH();
    int i = blockIdx.x, h = blockIdx.y, half = hd >> 1;
    int pos = ctl[0] + i;
    float* row = qkv + (size_t)i * (nh + 2 * nkv) * hd;
    float* xh = h < nh ? row + h * hd : row + (size_t)nh * hd + (h - nh) * hd;
    const float* c = cosT + (size_t)pos * half;
    const float* s = sinT + (size_t)pos * half;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        int i0 = neox ? j : 2 * j;
        int i1 = neox ? j + half : 2 * j + 1;
        float x0 = xh[i0], x1 = xh[i1];
        float y0 = x0 * c[j] - x1 * s[j];
        float y1 = x1 * c[j] + x0 * s[j];
        if (h < nh) {
            xh[i0] = y0;
            xh[i1] = y1;
        } else {
            int kvh = h - nh;
            size_t at = ((size_t)kvh * max_ctx + pos) * hd;
            const float* vh = row + (size_t)(nh + nkv) * hd + kvh * hd;
            kc[at + i0] = f2h(y0);
            kc[at + i1] = f2h(y1);
            vc[at + i0] = f2h(vh[i0]);
            vc[at + i1] = f2h(vh[i1]);
        }
    }
}

// Embedding lookup (f32 table) of the tokens in ctl[2..2+m]; block 0 also clears the
// arg-max slot that the LM head fills.
extern "C" __global__ void embed_rows(const float* __restrict__ table, const i32* __restrict__ ctl,
                                      float* __restrict__ x, int H, u64* best) {
    PDL_WAIT();
    PDL_LAUNCH();
    int i = blockIdx.x;
    if (best && i == 0 && threadIdx.x == 0) *best = 0ull;
    u32 tok = (u32)ctl[2 + i];
    const float4* src = (const float4*)(table + (size_t)tok * H);
    float4* dst = (float4*)(x + (size_t)i * H);
    if ((H & 3) == 0) {
        for (int k = threadIdx.x; k < (H >> 2); k += blockDim.x) dst[k] = src[k];
    } else {
        for (int k = threadIdx.x; k < H; k += blockDim.x)
            x[(size_t)i * H + k] = table[(size_t)tok * H + k];
    }
}

// Copy kernel for the bandwidth baseline (16-byte loads and stores, grid-stride).
extern "C" __global__ void copy_u4(const uint4* __restrict__ src, uint4* __restrict__ dst, u64 n) {
    PDL_WAIT();
    PDL_LAUNCH();
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        dst[i] = src[i];
}

// Busy-wait `ns` nanoseconds on the GPU (one thread): the profiler queues it first so that
// the host has queued a whole decode step before the GPU reaches it. With ns = 0 it returns
// at once (cuda_bench times a chain of those: the cost of a dependent launch itself).
extern "C" __global__ void gpu_sleep(u64 ns) {
    PDL_WAIT();
    PDL_LAUNCH();
    u64 t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    for (t = t0; t - t0 < ns;) {
        __nanosleep(1000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    }
}
