// Element-wise and per-row kernels of the forward pass. `ctl` is the control block the
// model keeps on the device: ctl[0] = position of the first token, ctl[2..] = token ids;
// kernels read positions from it so that a captured decode graph replays unchanged.

// RMSNorm then int8 quantization of each row (one block per row), as
// bitnet_core::nn::norm::rmsnorm_quantize: the sum of squares in f64, y = g·(x·r),
// a = 127 / max(|y|max, 1e-5), q = clamp(rint(y·a)) (round half to even). Writes the
// factor 1/a, zeros in the padding [K, kp) and, with `sums`, Σq (the code offset of the
// tensor-core products; the one-token products sum the token themselves, so a decode
// norm skips that third block reduction).
// Rows of up to NQ_E·blockDim values are read once into registers (the wrapper picks
// blockDim ≈ K/8, up to 1024: one global read per value, three block reductions of one
// barrier each, each into its own shared array); longer rows loop over global memory. The
// norm weights are loaded before PDL_WAIT.
#define NQ_E 8
extern "C" __global__ void __launch_bounds__(1024)
rmsnorm_quant(const float* __restrict__ x, const float* __restrict__ w, int K, int kp, float eps,
              i8* __restrict__ q, float* __restrict__ qf, i32* __restrict__ qs, int sums) {
    __shared__ double shd[32];
    __shared__ float shf[32];
    __shared__ int shi[32];
    int row = blockIdx.x, tid = threadIdx.x, bd = blockDim.x;
    const float* xr = x + (size_t)row * K;
    i8* qr = q + (size_t)row * kp;
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
        am = block_reduce_once(am, shf, 0.0f, OpMax());
        float a = 127.0f / fmaxf(am, 1e-5f);
        int s = 0;
#pragma unroll
        for (int e = 0; e < NQ_E; e++) {
            int k = tid + e * bd;
            if (k < K) {
                float v = rintf(xv[e] * a);
                v = fminf(fmaxf(v, -128.0f), 127.0f);
                int qi = (int)v;
                qr[k] = (i8)qi;
                s += qi;
            }
        }
        for (int k = K + tid; k < kp; k += bd) qr[k] = 0;
        if (sums) s = block_reduce_once(s, shi, 0, OpAdd());
        if (tid == 0) {
            qf[row] = 1.0f / a;
            if (sums) qs[row] = s;
        }
        return;
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
    am = block_reduce_once(am, shf, 0.0f, OpMax());
    float a = 127.0f / fmaxf(am, 1e-5f);
    int s = 0;
    for (int k = tid; k < K; k += bd) {
        float v = rintf((w[k] * (xr[k] * r)) * a);
        v = fminf(fmaxf(v, -128.0f), 127.0f);
        int qi = (int)v;
        qr[k] = (i8)qi;
        s += qi;
    }
    for (int k = K + tid; k < kp; k += bd) qr[k] = 0;
    if (sums) s = block_reduce_once(s, shi, 0, OpAdd());
    if (tid == 0) {
        qf[row] = 1.0f / a;
        if (sums) qs[row] = s;
    }
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
    double ss = 0.0;
    for (int k = tid; k < K; k += bd) {
        double v = (double)xr[k];
        ss += v * v;
    }
    ss = block_reduce_once(ss, shd, 0.0, OpAdd());
    float var = (float)(ss / (double)K);
    float r = 1.0f / sqrtf(var + eps);
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

// Order-preserving key of (value, index): larger values win, then smaller indices.
__device__ __forceinline__ u64 argmax_key(float v, u32 idx) {
    u32 b = __float_as_uint(v);
    if (v != v) b = 0;  // NaN never wins
    else b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((u64)b << 32) | (u64)(0xffffffffu - idx);
}

__device__ __forceinline__ u64 umax64(u64 a, u64 b) { return a > b ? a : b; }

__device__ __forceinline__ void block_argmax_commit(u64 key, u64* best) {
    __shared__ u64 shk[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) key = umax64(key, __shfl_xor_sync(FULL_MASK, key, o));
    if (lane == 0) shk[w] = key;
    __syncthreads();
    if (w == 0) {
        u64 k = lane < nw ? shk[lane] : 0ull;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) k = umax64(k, __shfl_xor_sync(FULL_MASK, k, o));
        if (lane == 0 && k != 0ull) atomicMax(best, k);
    }
}

// LM head: logits[r][v] = Σ_k W[v][k]·x[r][k], f32 accumulation, up to 8 rows of x per pass
// over W. W is either f16 (head_gemv; H % 8 == 0, one 16-byte load = 8 weights) or int8 with
// one f32 scale per 16 weights (head_i8, the exact factors of a Q6_K, Q8_0 or int8-row head:
// Σ_g S[v][g]·Σ_{i<16} W[v][16g+i]·x[16g+i]; H % 16 == 0, one load = one group). Each warp
// takes HEAD_RPW consecutive vocabulary rows; with `best` non-null (one row of x) the
// block's arg-max is folded into *best with one atomic per block, so greedy decoding reads
// back 8 bytes, not the logits.
#define HEAD_RPW 4
#define HEAD_MAXR 8

__device__ __forceinline__ float dot4_i8(u32 w, float4 x) {
    return (float)((int)(w << 24) >> 24) * x.x + (float)((int)(w << 16) >> 24) * x.y +
           (float)((int)(w << 8) >> 24) * x.z + (float)((int)w >> 24) * x.w;
}

// The x values at the columns of one 16-byte load of weights: four float4 (16 int8
// weights) or two (8 f16); head_dot takes the load against them.
template <bool I8>
__device__ __forceinline__ void head_x(const float* __restrict__ x, int j, float4* xv) {
    const float4* xr = (const float4*)x + (I8 ? 4 : 2) * j;
    xv[0] = __ldg(xr);
    xv[1] = __ldg(xr + 1);
    if (I8) {
        xv[2] = __ldg(xr + 2);
        xv[3] = __ldg(xr + 3);
    }
}

template <bool I8>
__device__ __forceinline__ float head_dot(uint4 w, const float4* xv) {
    if (I8) {
        return dot4_i8(w.x, xv[0]) + dot4_i8(w.y, xv[1]) + dot4_i8(w.z, xv[2]) +
               dot4_i8(w.w, xv[3]);
    }
    float4 xa = xv[0], xb = xv[1];
    return h2f((u16)(w.x & 0xffff)) * xa.x + h2f((u16)(w.x >> 16)) * xa.y +
           h2f((u16)(w.y & 0xffff)) * xa.z + h2f((u16)(w.y >> 16)) * xa.w +
           h2f((u16)(w.z & 0xffff)) * xb.x + h2f((u16)(w.z >> 16)) * xb.y +
           h2f((u16)(w.w & 0xffff)) * xb.z + h2f((u16)(w.w >> 16)) * xb.w;
}

// One row of x (decode): the warp's HEAD_RPW vocabulary rows side by side, so that each
// load of x serves all of them (x, not the weights, dominates the loads otherwise), two
// column steps of HEAD_RPW 16-byte weight loads in flight per lane.
#define HEAD_U 2
template <bool I8>
__device__ __forceinline__ void head_one(const uint4* __restrict__ W,
                                         const float* __restrict__ S,
                                         const float* __restrict__ x,
                                         float* __restrict__ logits, int V, int H, u64* best) {
    int lane = threadIdx.x & 31;
    int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int hw = I8 ? H >> 4 : H >> 3;
    int v0 = warp * HEAD_RPW;
    uint4 p[HEAD_U][HEAD_RPW];
    float sc[HEAD_U][HEAD_RPW];
    float acc[HEAD_RPW];
    auto load = [&](int j0) {
#pragma unroll
        for (int u = 0; u < HEAD_U; u++) {
#pragma unroll
            for (int r = 0; r < HEAD_RPW; r++) {
                int j = j0 + 32 * u;
                bool ok = v0 + r < V && j < hw;
                size_t at = (size_t)(v0 + r) * hw + j;
                p[u][r] = ok ? ld_stream(W + at) : make_uint4(0, 0, 0, 0);
                sc[u][r] = I8 && ok ? __ldg(S + at) : 1.0f;
            }
        }
    };
    load(lane);  // before PDL_WAIT: the weights are constant
    PDL_WAIT();
    PDL_LAUNCH();
#pragma unroll
    for (int r = 0; r < HEAD_RPW; r++) acc[r] = 0.0f;
    for (int j0 = lane; j0 < hw; j0 += 32 * HEAD_U) {
        if (j0 != lane) load(j0);
#pragma unroll
        for (int u = 0; u < HEAD_U; u++) {
            int j = j0 + 32 * u;
            if (j >= hw) break;
            float4 xv[4];
            head_x<I8>(x, j, xv);
#pragma unroll
            for (int r = 0; r < HEAD_RPW; r++) {
                float g = head_dot<I8>(p[u][r], xv);
                acc[r] += I8 ? sc[u][r] * g : g;
            }
        }
    }
    u64 key = 0ull;
#pragma unroll
    for (int r = 0; r < HEAD_RPW; r++) {
        float s = warp_sum(acc[r]);
        if (v0 + r < V) {
            if (lane == 0) logits[v0 + r] = s;
            key = umax64(key, argmax_key(s, (u32)(v0 + r)));
        }
    }
    if (best) block_argmax_commit(key, best);
}

template <bool I8>
__device__ __forceinline__ void head_impl(const uint4* __restrict__ W,
                                          const float* __restrict__ S,
                                          const float* __restrict__ x,
                                          float* __restrict__ logits, int V, int H, int rows,
                                          u64* best) {
    if (rows == 1) {
        head_one<I8>(W, S, x, logits, V, H, best);
        return;
    }
    int lane = threadIdx.x & 31;
    int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int hw = I8 ? H >> 4 : H >> 3;
    u64 key = 0ull;
    // The first batch of the first row is loaded before PDL_WAIT (weights are constant).
    uint4 p[4];
    float sc[4];
    {
        int v = warp * HEAD_RPW;
#pragma unroll
        for (int u = 0; u < 4; u++) {
            int j = lane + 32 * u;
            bool ok = v < V && j < hw;
            p[u] = ok ? ld_stream(W + (size_t)v * hw + j) : make_uint4(0, 0, 0, 0);
            sc[u] = I8 && ok ? __ldg(S + (size_t)v * hw + j) : 0.0f;
        }
    }
    PDL_WAIT();
    PDL_LAUNCH();
    bool first = true;
    for (int rr = 0; rr < HEAD_RPW; rr++) {
        int v = warp * HEAD_RPW + rr;
        if (v >= V) break;
        const uint4* wr = W + (size_t)v * hw;
        float acc[HEAD_MAXR];
#pragma unroll
        for (int r = 0; r < HEAD_MAXR; r++) acc[r] = 0.0f;
        for (int j0 = lane; j0 < hw; j0 += 128) {
            if (!first) {
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    int j = j0 + 32 * u;
                    p[u] = j < hw ? ld_stream(wr + j) : make_uint4(0, 0, 0, 0);
                    if (I8) sc[u] = j < hw ? __ldg(S + (size_t)v * hw + j) : 0.0f;
                }
            }
            first = false;
#pragma unroll
            for (int u = 0; u < 4; u++) {
                int j = j0 + 32 * u;
                if (j >= hw) break;
#pragma unroll
                for (int r = 0; r < HEAD_MAXR; r++) {
                    if (r < rows) {
                        float4 xv[4];
                        head_x<I8>(x + (size_t)r * H, j, xv);
                        float g = head_dot<I8>(p[u], xv);
                        acc[r] += I8 ? sc[u] * g : g;
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < HEAD_MAXR; r++) {
            if (r < rows) {
                float s = warp_sum(acc[r]);
                if (lane == 0) logits[(size_t)r * V + v] = s;
                if (r == 0) key = umax64(key, argmax_key(s, (u32)v));
            }
        }
    }
    if (best) block_argmax_commit(key, best);
}

extern "C" __global__ void __launch_bounds__(256)
head_gemv(const uint4* __restrict__ W, const float* __restrict__ x, float* __restrict__ logits,
          int V, int H, int rows, u64* best) {
    head_impl<false>(W, nullptr, x, logits, V, H, rows, best);
}

extern "C" __global__ void __launch_bounds__(256)
head_i8(const uint4* __restrict__ W, const float* __restrict__ S, const float* __restrict__ x,
        float* __restrict__ logits, int V, int H, int rows, u64* best) {
    head_impl<true>(W, S, x, logits, V, H, rows, best);
}

// Arg-max of a vector into *best (which the caller zeroes first); grid-stride blocks.
extern "C" __global__ void __launch_bounds__(256)
argmax_f32(const float* __restrict__ x, int n, u64* best) {
    PDL_WAIT();
    PDL_LAUNCH();
    u64 key = 0ull;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        key = umax64(key, argmax_key(x[i], (u32)i));
    block_argmax_commit(key, best);
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
