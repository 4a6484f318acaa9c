// The LM head: logits = W·x over the vocabulary with the arg-max folded in (greedy decoding
// reads back 8 bytes, not the logits), and a stand-alone arg-max.

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
// one f32 scale per 16 weights (head_i8, the exact factors of a Q8_0 or int8-row head, or of
// a Q6_K head too wide for head_q6 below: Σ_g S[v][g]·Σ_{i<16} W[v][16g+i]·x[16g+i];
// H % 16 == 0, one load = one group), with f32 x. Each warp
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

// The final RMSNorm of a row quantized like llama.cpp's Q8_K, the input of the Q6_K head
// (as bitnet_core::nn::norm::rmsnorm then quant::q6_k::quantize_act_q8k): y = g·(x·r); per
// 256 values, max = the value of largest magnitude (the first one among equal magnitudes),
// iscale = −127/max, q = min(127, rint(iscale·y)), d = 1/iscale (0 and all-zero codes for an
// all-zero block); also the sum of each 16 codes. One block per row, one warp per 256
// values (lane l holds values 8l..8l+7). K % 256 == 0.
extern "C" __global__ void __launch_bounds__(256)
rmsnorm_q8k(const float* __restrict__ x, const float* __restrict__ w, int K, float eps,
            u32* __restrict__ q, float* __restrict__ qd, int* __restrict__ qs) {
    __shared__ double shd[32];
    PDL_WAIT();
    PDL_LAUNCH();
    int row = blockIdx.x, lane = threadIdx.x & 31, wi = threadIdx.x >> 5;
    const float* xr = x + (size_t)row * K;
    float r = inv_rms(xr, K, eps, shd);
    int nb = K >> 8;
    for (int b = wi; b < nb; b += blockDim.x >> 5) {
        int k0 = (b << 8) + 8 * lane;
        float y[8];
        u64 key = 0ull;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            y[e] = w[k0 + e] * (xr[k0 + e] * r);
            float a = fabsf(y[e]);
            // magnitude, then the smaller index, then the sign in bit 0 (NaN never wins)
            u64 kk = ((u64)__float_as_uint(a) << 32) | ((u64)(255 - (8 * lane + e)) << 1) |
                     (u64)(y[e] < 0.0f);
            if (a == a) key = umax64(key, kk);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) key = umax64(key, __shfl_xor_sync(FULL_MASK, key, o));
        float am = __uint_as_float((u32)(key >> 32));
        float mx = (key & 1ull) ? -am : am;
        float is = am == 0.0f ? 0.0f : __fdiv_rn(-127.0f, mx);
        u32 packed[2] = {0u, 0u};
        int sum = 0;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            int qi = am == 0.0f ? 0 : min(127, __float2int_rn(__fmul_rn(is, y[e])));
            sum += qi;
            packed[e >> 2] |= (u32)(qi & 0xff) << (8 * (e & 3));
        }
        size_t at = (size_t)row * (K >> 2) + (k0 >> 2);
        q[at] = packed[0];
        q[at + 1] = packed[1];
        sum += __shfl_xor_sync(FULL_MASK, sum, 1);
        if ((lane & 1) == 0) qs[(size_t)row * (K >> 4) + (k0 >> 4)] = sum;
        if (lane == 0) qd[(size_t)row * nb + b] = am == 0.0f ? 0.0f : __fdiv_rn(1.0f, is);
    }
}

// LM head from Q6_K weights and Q8_K activations, as quant::q6_k::dot_q8k on the CPU (the
// same integer sums, the same float operations in the same order, so the logits are
// bit-identical): per row v, Σ_blocks (d·xd)·isum with isum = Σ_j sc_j·Σ_{16 weights of
// group j} (q − 32)·x, accumulated block after block from 0.
// Layout (0.83 bytes per weight, 272 MB for 128256×2560; the int8 head reads 410 MB): a row
// is cut into tasks of 64 weights (4 groups of 16), each with three 16-byte words: L0, L1 the
// low nibbles (word w of group j: bytes i = weights 16j+8w+i | 16j+8w+4+i << 4; group 0, 1
// in L0, 2, 3 in L1), HB the high bits (word j: bits 8i + 2k of weight 16j+4k+i, the layout
// of the ternary codes); SC the four groups' scales (a byte each), D one f32 per 256.
// Planes are [vocab row][task] so that the lanes of a warp read consecutive words. Each warp
// owns HEAD_RPW vocabulary rows, its lanes take their 4·H/64 tasks in rounds of 32 (a lane
// quad = one block of 256 of one row, summed with two shuffles); the block sums go to shared
// memory and one lane per (row of x, vocabulary row) adds them up in block order.
#define Q6_MAXNB 32  // blocks of 256 per row: H ≤ 8192

__device__ __forceinline__ int q6_group(u32 l0, u32 l1, u32 h, int4 x, int acc) {
    acc = __dp4a((int)((l0 & 0x0F0F0F0Fu) | ((h << 4) & 0x30303030u)), x.x, acc);
    acc = __dp4a((int)(((l0 >> 4) & 0x0F0F0F0Fu) | ((h << 2) & 0x30303030u)), x.y, acc);
    acc = __dp4a((int)((l1 & 0x0F0F0F0Fu) | (h & 0x30303030u)), x.z, acc);
    acc = __dp4a((int)(((l1 >> 4) & 0x0F0F0F0Fu) | ((h >> 2) & 0x30303030u)), x.w, acc);
    return acc;
}

struct Q6Task {
    uint4 a, b, h;
    u32 sc;
    float d;
};

__device__ __forceinline__ int q6_task_dot(const Q6Task& t, const int4* __restrict__ x,
                                           int4 bs) {
    int s0 = q6_group(t.a.x, t.a.y, t.h.x, __ldg(x), 0) - 32 * bs.x;
    int s1 = q6_group(t.a.z, t.a.w, t.h.y, __ldg(x + 1), 0) - 32 * bs.y;
    int s2 = q6_group(t.b.x, t.b.y, t.h.z, __ldg(x + 2), 0) - 32 * bs.z;
    int s3 = q6_group(t.b.z, t.b.w, t.h.w, __ldg(x + 3), 0) - 32 * bs.w;
    int sc = (int)t.sc;
    return ((sc << 24) >> 24) * s0 + ((sc << 16) >> 24) * s1 + ((sc << 8) >> 24) * s2 +
           (sc >> 24) * s3;
}

template <int MAXR>
__device__ __forceinline__ void head_q6_impl(const uint4* __restrict__ L0,
                                             const uint4* __restrict__ L1,
                                             const uint4* __restrict__ HB,
                                             const u32* __restrict__ SC,
                                             const float* __restrict__ D,
                                             const int4* __restrict__ xq,
                                             const float* __restrict__ xd,
                                             const int4* __restrict__ xs,
                                             float* __restrict__ logits, int V, int H, int rows,
                                             u64* best) {
    __shared__ float part[8][MAXR * HEAD_RPW * Q6_MAXNB];
    int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
    int warp = (int)(blockIdx.x * (blockDim.x >> 5)) + wib;
    int T = H >> 6, nb = H >> 8;
    int v0 = warp * HEAD_RPW;
    int nv = min(HEAD_RPW, V - v0);
    int ntask = nv > 0 ? nv * T : 0;
    size_t tb = (size_t)v0 * T;
    float* sp = part[wib];
    auto load = [&](int t, Q6Task& k) {
        bool ok = t < ntask;
        size_t g = tb + t;
        uint4 z = make_uint4(0, 0, 0, 0);
        k.a = ok ? ld_stream(L0 + g) : z;
        k.b = ok ? ld_stream(L1 + g) : z;
        k.h = ok ? ld_stream(HB + g) : z;
        k.sc = ok ? __ldg(SC + g) : 0u;
        k.d = ok ? __ldg(D + (g >> 2)) : 0.0f;
    };
    Q6Task cur, nxt;
    load(lane, cur);  // before PDL_WAIT: the weights are constant
    PDL_WAIT();
    PDL_LAUNCH();
    for (int t0 = 0; t0 < ntask; t0 += 32) {
        if (t0 + 32 < ntask) load(t0 + 32 + lane, nxt);
        int t = t0 + lane;
        int lr = t / T, tc = t - lr * T, blk = tc >> 2;
#pragma unroll
        for (int rr = 0; rr < MAXR; rr++) {
            if (rr < rows) {
                int isum = 0;
                if (t < ntask)
                    isum = q6_task_dot(cur, xq + (size_t)rr * (H >> 4) + 4 * tc,
                                       __ldg(xs + (size_t)rr * (H >> 6) + tc));
                isum += __shfl_xor_sync(FULL_MASK, isum, 1);
                isum += __shfl_xor_sync(FULL_MASK, isum, 2);
                if (t < ntask && (lane & 3) == 0)
                    sp[(rr * HEAD_RPW + lr) * nb + blk] =
                        __fmul_rn(__fmul_rn(cur.d, __ldg(xd + (size_t)rr * nb + blk)),
                                  (float)isum);
            }
        }
        cur = nxt;
    }
    __syncwarp();
    u64 key = 0ull;
    int rr = lane / HEAD_RPW, lr = lane % HEAD_RPW;
    if (rr < rows && lr < nv) {
        const float* pp = sp + (rr * HEAD_RPW + lr) * nb;
        float acc = 0.0f;
        for (int b = 0; b < nb; b++) acc = __fadd_rn(acc, pp[b]);
        logits[(size_t)rr * V + v0 + lr] = acc;
        if (rr == 0) key = argmax_key(acc, (u32)(v0 + lr));
    }
    if (best) block_argmax_commit(key, best);
}

extern "C" __global__ void __launch_bounds__(256)
head_q6_r1(const uint4* __restrict__ L0, const uint4* __restrict__ L1,
           const uint4* __restrict__ HB, const u32* __restrict__ SC, const float* __restrict__ D,
           const int4* __restrict__ xq, const float* __restrict__ xd,
           const int4* __restrict__ xs, float* __restrict__ logits, int V, int H, int rows,
           u64* best) {
    head_q6_impl<1>(L0, L1, HB, SC, D, xq, xd, xs, logits, V, H, rows, best);
}

extern "C" __global__ void __launch_bounds__(256)
head_q6_r8(const uint4* __restrict__ L0, const uint4* __restrict__ L1,
           const uint4* __restrict__ HB, const u32* __restrict__ SC, const float* __restrict__ D,
           const int4* __restrict__ xq, const float* __restrict__ xd,
           const int4* __restrict__ xs, float* __restrict__ logits, int V, int H, int rows,
           u64* best) {
    head_q6_impl<HEAD_MAXR>(L0, L1, HB, SC, D, xq, xd, xs, logits, V, H, rows, best);
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

// The K largest of x[0..n) (ties: lower indices first; NaN lowest) as (value, index) pairs,
// in no particular order, into vals/idx: one block of TOPK_T threads, on order-preserving
// keys of the values. A histogram of the keys' top 12 bits finds the bin holding the K-th
// largest; when that bin and the ones above hold at most TOPK_CAP values, they are gathered
// into shared memory as (key, index) pairs and sorted (bitonic, larger key first, then lower
// index): two reads of x. Otherwise an exact radix select of the K-th largest key (four
// passes of 8 bits) and a compaction in index order (block-wide prefix sums over contiguous
// ranges). For sampling: only the candidates cross the bus. The values at the m indices in
// `extra` (a repetition penalty's recent tokens) follow in slots K .. K + m.
#define TOPK_T 1024
#define TOPK_CAP 4096
__device__ __forceinline__ u32 order_key(float v) {
    u32 b = __float_as_uint(v);
    if (v != v) return 0u;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Exclusive prefix sum over the block of one value per thread (TOPK_T threads); *total
// gets the sum. `sh` holds 32 values.
__device__ __forceinline__ u32 block_excl_scan(u32 v, u32* sh, u32* total) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads();  // `sh` may still be read from the previous scan
    u32 inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        u32 t = __shfl_up_sync(FULL_MASK, inc, o);
        if (lane >= o) inc += t;
    }
    if (lane == 31) sh[w] = inc;
    __syncthreads();
    if (w == 0) {
        u32 s = sh[lane], si = s;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            u32 t = __shfl_up_sync(FULL_MASK, si, o);
            if (lane >= o) si += t;
        }
        sh[lane] = si - s;  // exclusive prefix of the warp totals
        if (lane == 31) *total = si;
    }
    __syncthreads();
    return sh[w] + inc - v;
}

extern "C" __global__ void __launch_bounds__(TOPK_T)
topk_f32(const float* __restrict__ x, int n, int K, float* __restrict__ vals,
         u32* __restrict__ idx, const u32* __restrict__ extra, int m) {
    // The histogram (4096 counts) and, once the bin is known, the candidates share memory.
    __shared__ u64 cand[TOPK_CAP];
    u32* hist = (u32*)cand;
    __shared__ u32 sh_prefix, sh_need, sh_total, sh_count;
    __shared__ u32 scan_sh[32];
    PDL_WAIT();
    PDL_LAUNCH();
    int tid = threadIdx.x;
    if (K > n) K = n;
    for (int j = tid; j < m; j += TOPK_T) {
        u32 id = extra[j];
        vals[max(K, 0) + j] = id < (u32)n ? x[id] : __int_as_float(0x7fc00000);
        idx[max(K, 0) + j] = id;
    }
    if (K <= 0) return;
    // Histogram of the top 12 bits; thread t owns bins 4095−4t−3 .. 4095−4t.
    for (int i = tid; i < 4096; i += TOPK_T) hist[i] = 0u;
    if (tid == 0) sh_count = 0u;
    __syncthreads();
    for (int i = tid; i < n; i += TOPK_T) atomicAdd(&hist[order_key(x[i]) >> 20], 1u);
    __syncthreads();
    {
        int top = 4095 - 4 * tid;
        u32 seg = hist[top] + hist[top - 1] + hist[top - 2] + hist[top - 3];
        u32 above = block_excl_scan(seg, scan_sh, &sh_total);
        if (above < (u32)K && above + seg >= (u32)K) {
            for (int b = top; b > top - 4; b--) {
                if (above + hist[b] >= (u32)K) {
                    sh_prefix = (u32)b;              // the K-th largest key's bin
                    sh_need = above + hist[b];       // values in it and above
                    break;
                }
                above += hist[b];
            }
        }
        __syncthreads();
    }
    u32 bin = sh_prefix, ncand = sh_need;
    if (ncand <= TOPK_CAP) {
        for (int i = tid; i < n; i += TOPK_T) {
            u32 k = order_key(x[i]);
            if ((k >> 20) >= bin) {
                u32 at = atomicAdd(&sh_count, 1u);
                cand[at] = ((u64)k << 32) | (u64)(0xffffffffu - (u32)i);
            }
        }
        int m = 1;
        while (m < (int)ncand) m <<= 1;
        for (int i = (int)ncand + tid; i < m; i += TOPK_T) cand[i] = 0ull;
        __syncthreads();
        // Bitonic sort, descending.
        for (int size = 2; size <= m; size <<= 1) {
            for (int stride = size >> 1; stride > 0; stride >>= 1) {
                for (int i = tid; i < m; i += TOPK_T) {
                    int j = i ^ stride;
                    if (j > i) {
                        bool desc = (i & size) == 0;
                        u64 a = cand[i], b = cand[j];
                        if (desc ? a < b : a > b) {
                            cand[i] = b;
                            cand[j] = a;
                        }
                    }
                }
                __syncthreads();
            }
        }
        for (int i = tid; i < K; i += TOPK_T) {
            u32 id = 0xffffffffu - (u32)(cand[i] & 0xffffffffull);
            vals[i] = x[id];
            idx[i] = id;
        }
        return;
    }
    u32 prefix = 0u, mask = 0u, need = (u32)K;
    for (int d = 24; d >= 0; d -= 8) {
        __syncthreads();
        for (int i = tid; i < 256; i += TOPK_T) hist[i] = 0u;
        __syncthreads();
        for (int i = tid; i < n; i += TOPK_T) {
            u32 k = order_key(x[i]);
            if ((k & mask) == prefix) atomicAdd(&hist[(k >> d) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            u32 cum = 0u;
            int b = 255;
            for (; b > 0; b--) {
                if (cum + hist[b] >= need) break;
                cum += hist[b];
            }
            sh_prefix = prefix | ((u32)b << d);
            sh_need = need - cum;
        }
        __syncthreads();
        prefix = sh_prefix;
        need = sh_need;
        mask |= 255u << d;
    }
    // prefix: the K-th largest key; K − need keys lie above it; take the first `need` equal.
    int chunk = (n + TOPK_T - 1) / TOPK_T;
    int i0 = min(n, tid * chunk), i1 = min(n, i0 + chunk);
    u32 gt = 0u, eq = 0u;
    for (int i = i0; i < i1; i++) {
        u32 k = order_key(x[i]);
        gt += k > prefix;
        eq += k == prefix;
    }
    u32 og = block_excl_scan(gt, scan_sh, &sh_total);
    u32 oe = block_excl_scan(eq, scan_sh, &sh_total);
    u32 above = (u32)K - need;
    for (int i = i0; i < i1; i++) {
        float v = x[i];
        u32 k = order_key(v);
        if (k > prefix) {
            vals[og] = v;
            idx[og] = (u32)i;
            og++;
        } else if (k == prefix) {
            if (oe < need) {
                vals[above + oe] = v;
                idx[above + oe] = (u32)i;
            }
            oe++;
        }
    }
}
