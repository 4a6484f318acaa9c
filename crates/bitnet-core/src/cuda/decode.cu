// The whole layer stack of one decode step in one persistent kernel: every block stays
// resident (cooperative launch), and grid-wide barriers separate the stages that need all
// of the previous stage's output. Per layer:
//   1. RMSNorm→int8 of x (each block, into shared memory) → q|k|v rows, RoPE on q and k
//      in the epilogue (a warp computes the two rows a rotation pairs), k and v appended
//      to the f16 cache                                                       | barrier
//   2. attention of the new token, (head, split) items over the blocks; the last item of
//      a head to finish combines the head's splits                           | barrier
//   3. RMSNorm→int8 of the attention output → o rows, x += o                  | barrier
//   4. RMSNorm→int8 of x → gate/up row pairs, relu(gate)²·up                  | barrier
//   5. RMSNorm→int8 of the FFN activations → down rows, x += down            | barrier
// Each warp streams its weight rows through a ring of shared-memory slots with cp.async,
// and queues the first pairs of its next product before each barrier (weights are
// constant), so the weight stream runs under the barriers and norms. The arithmetic is the
// same as the separate kernels' (rmsnorm_quant, tern_gemv, rope_kv, attn_decode): f64 sum
// of squares, exact integer dot products, the same epilogue expressions; attention is
// attention.cu's attn_decode_item with 8 warps. Data written in this kernel by other blocks is read
// through L2 (ld.global.cg), never through the incoherent L1/texture path.

#define DK_THREADS 256
#define DK_WARPS 8
#ifndef DK_MIN_BLOCKS
#define DK_MIN_BLOCKS 1  // blocks per SM the register budget is cut for (2 spills)
#endif

// Per-layer device pointers, 18 × 8 bytes (the Rust side writes them as u64 words).
struct DecLayer {
    const uint4* qkv_w; const float* qkv_s; const float* qkv_b;
    const uint4* o_w;   const float* o_s;   const float* o_b;
    const uint4* gu_w;  const float* gu_s;  const float* gu_b;
    const uint4* dn_w;  const float* dn_s;  const float* dn_b;
    const float* attn_norm; const float* attn_sub_norm;
    const float* ffn_norm;  const float* ffn_sub_norm;
    u16* kc; u16* vc;
};

// Integer parameters (i32 words): see decode.rs `Dims`.
#define DD_LAYERS 0
#define DD_HIDDEN 1
#define DD_FF 2
#define DD_NH 3
#define DD_NKV 4
#define DD_MAXCTX 5
#define DD_SPLITS 6
#define DD_CHUNK 7
#define DD_NEOX 8
#define DD_EPS 9     // f32 bits
#define DD_SCALE 10  // f32 bits
#define DD_N 11

__device__ __forceinline__ u64 ld_acquire_u64(const u64* p) {
    u64 v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void st_release_u64(u64* p, u64 v) {
    asm volatile("st.release.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ u64 globaltimer() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Grid-wide barrier. bar[0] counts arrivals (monotonic over launches), bar[16] (another
// cache line, so polling does not slow the arrivals) is the release word: the k-th
// barrier of a launch waits until it reaches base + k·gridDim.x (base = the counter at
// launch, a multiple of gridDim.x, read at the start); the last block to arrive writes it.
// With `times` (timing on), block 0 records when it arrives and when it leaves.
__device__ __forceinline__ void grid_sync(u64* bar, u64& target, u64* times, int& tk) {
    __syncthreads();
    target += gridDim.x;
    if (threadIdx.x == 0) {
        bool rec = times != nullptr && blockIdx.x == 0;
        if (rec) times[tk++] = globaltimer();
        __threadfence();
        u64 prev = atomicAdd((unsigned long long*)bar, 1ull);
        if (prev + 1 == target) {
            st_release_u64(bar + 16, target);
        } else {
            while (ld_acquire_u64(bar + 16) < target) {
            }
        }
        __threadfence();
        if (rec) times[tk++] = globaltimer();
    }
    __syncthreads();
}

// RMSNorm→int8 of v[0..K) (K % 4 == 0, K ≤ 4·DK_NQ·DK_THREADS) with weight w into qs
// (kw·64 bytes, zero padding), as rmsnorm_quant computes it. Each thread keeps its values in
// registers, and all its loads are issued at once. Returns 1/a and Σq.
#define DK_NQ 8
__device__ __forceinline__ void dk_norm_quant(const float* v, const float* __restrict__ w,
                                              int K, int kw, float eps, i8* qs, float& fac,
                                              int& qsum) {
    __shared__ double shd[32];
    __shared__ float shf[32];
    __shared__ int shi[32];
    int tid = threadIdx.x;
    int K4 = K >> 2;
    float4 xv[DK_NQ], wv[DK_NQ];
#pragma unroll
    for (int e = 0; e < DK_NQ; e++) {
        int k = tid + e * DK_THREADS;
        if (k < K4) {
            xv[e] = __ldcg((const float4*)v + k);
            wv[e] = __ldg((const float4*)w + k);
        } else {
            xv[e] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            wv[e] = xv[e];
        }
    }
    double ss = 0.0;
#pragma unroll
    for (int e = 0; e < DK_NQ; e++) {
        ss += (double)xv[e].x * (double)xv[e].x;
        ss += (double)xv[e].y * (double)xv[e].y;
        ss += (double)xv[e].z * (double)xv[e].z;
        ss += (double)xv[e].w * (double)xv[e].w;
    }
    ss = block_sum_d(ss, shd);
    float var = (float)(ss / (double)K);
    float r = 1.0f / sqrtf(var + eps);
    float am = 0.0f;
#pragma unroll
    for (int e = 0; e < DK_NQ; e++) {
        xv[e].x = wv[e].x * (xv[e].x * r);
        xv[e].y = wv[e].y * (xv[e].y * r);
        xv[e].z = wv[e].z * (xv[e].z * r);
        xv[e].w = wv[e].w * (xv[e].w * r);
        am = fmaxf(am, fmaxf(fmaxf(fabsf(xv[e].x), fabsf(xv[e].y)),
                             fmaxf(fabsf(xv[e].z), fabsf(xv[e].w))));
    }
    am = block_max(am, shf);
    float a = 127.0f / fmaxf(am, 1e-5f);
    int s = 0;
#pragma unroll
    for (int e = 0; e < DK_NQ; e++) {
        int k = tid + e * DK_THREADS;
        if (k < K4) {
            float f[4] = {xv[e].x, xv[e].y, xv[e].z, xv[e].w};
            u32 packed = 0;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                float q = rintf(f[c] * a);
                q = fminf(fmaxf(q, -128.0f), 127.0f);
                int qi = (int)q;
                s += qi;
                packed |= (u32)(qi & 0xff) << (8 * c);
            }
            ((u32*)qs)[k] = packed;
        }
    }
    for (int k = K4 + tid; k < kw * 16; k += DK_THREADS) ((u32*)qs)[k] = 0u;
    qsum = block_sum_i(s, shi);  // its barriers also publish qs
    fac = 1.0f / a;
}

__device__ __forceinline__ void dk_mark(u64* times, int& tk) {
    if (times != nullptr && blockIdx.x == 0 && threadIdx.x == 0) times[tk++] = globaltimer();
}

// The products of a layer: which rows a pair takes and what its epilogue writes.
#define ST_QKV 0  // q|k|v, RoPE, cache append
#define ST_O 1    // x += o
#define ST_GU 2   // ffn = relu(gate)²·up
#define ST_DOWN 3 // x += down

// Where a stage's results go (the pointers its epilogue needs).
struct DkOut {
    float* x;
    float* q;
    float* ffn;
    u16* kc;
    u16* vc;
    const float* cosT;
    const float* sinT;
    int pos, nh, nkv, hd, neox, max_ctx, H;
};

__device__ __forceinline__ void dk_rows(int st, int p, const DkOut& o, int& r0, int& r1) {
    if (st == ST_QKV) {
        qkv_rows(p, o.nh, o.nkv, o.hd, o.neox, r0, r1);
    } else if (st == ST_GU) {
        r0 = 2 * p;
        r1 = r0 + 1;
    } else {  // the last pair of an odd row count repeats its row
        r0 = 2 * p;
        r1 = min(r0 + 1, o.H - 1);
    }
}

// Each warp streams its weight rows through its own ring of NS slots in shared memory with
// cp.async (16 bytes per lane per instruction, one commit group per slot): NS pairs of rows
// are in flight per warp without holding registers. NS is 8 for inputs up to 3072 wide and
// 3 up to 8192 (DK_RING bytes per warp either way).
#define DK_RING 12288

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    u32 sa = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sa), "l"(gmem) : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Queue pair p of stage st into ring slot `slot` (if p < P) and close one commit group.
__device__ __forceinline__ void dk_issue(int st, const uint4* W, int kw, int P, int p,
                                         uint4* ring, int slot, const DkOut& o) {
    int lane = threadIdx.x & 31;
    if (p < P) {
        int r0, r1;
        dk_rows(st, p, o, r0, r1);
        uint4* dst = ring + (size_t)slot * 2 * kw;
        for (int c = lane; c < 2 * kw; c += 32) {
            const uint4* src = c < kw ? W + (size_t)r0 * kw + c : W + (size_t)r1 * kw + (c - kw);
            cp_async16(dst + c, src);
        }
    }
    cp_async_commit();
}

// Start stage st's first NS pairs of warp gw (before a barrier: the weights are constant).
template <int NS>
__device__ __forceinline__ void dk_ring_start(int st, const uint4* W, int kw, int P, int gw,
                                              int nw, uint4* ring, const DkOut& o) {
#pragma unroll
    for (int i = 0; i < NS; i++) dk_issue(st, W, kw, P, gw + i * nw, ring, i, o);
}

// Stage st's product: warp gw of nw takes pairs gw, gw + nw, ...; the ring holds the next NS
// of them (dk_ring_start queued the first NS). Pair i is read from slot i % NS, which is then
// refilled with pair i + NS.
template <int NS>
__device__ __forceinline__ void dk_product(int st, const uint4* W, const float* rs,
                                           const float* bias, int kw, int P, int gw, int nw,
                                           const int4* x4, float fac, int qsum,
                                           const DkOut& o, uint4* ring) {
    int lane = threadIdx.x & 31;
    int i = 0;
    for (int p = gw; p < P; p += nw, i++) {
        int slot = i % NS;
        int r0, r1;
        dk_rows(st, p, o, r0, r1);
        // The epilogue's inputs are loaded before the dot products, so that their latency
        // overlaps them instead of following them.
        float s0 = 0.0f, s1 = 0.0f, b0 = 0.0f, b1 = 0.0f, e0 = 0.0f, e1 = 0.0f;
        if (lane == 0) {
            s0 = rs[r0];
            s1 = rs[r1];
            if (bias) {
                b0 = bias[r0];
                b1 = bias[r1];
            }
            if (st == ST_QKV) {
                int t = qkv_rope_at(r0, o.nh, o.nkv, o.hd, o.neox, o.pos);
                if (t >= 0) {
                    e0 = o.cosT[t];
                    e1 = o.sinT[t];
                }
            } else if (st != ST_GU) {
                e0 = __ldcg(o.x + r0);
                e1 = __ldcg(o.x + r1);
            }
        }
        cp_async_wait<NS - 1>();
        __syncwarp();
        const uint4* w0 = ring + (size_t)slot * 2 * kw;
        const uint4* w1 = w0 + kw;
        int a0 = 0, a1 = 0;
        for (int j = lane; j < kw; j += 32) {
            int4 xv[4];
            xv[0] = x4[4 * j];
            xv[1] = x4[4 * j + 1];
            xv[2] = x4[4 * j + 2];
            xv[3] = x4[4 * j + 3];
            a0 = dot64(w0[j], xv, a0);
            a1 = dot64(w1[j], xv, a1);
        }
        __syncwarp();  // every lane is done with the slot
        dk_issue(st, W, kw, P, p + NS * nw, ring, slot, o);
        a0 = warp_sum_i(a0);
        a1 = warp_sum_i(a1);
        if (lane == 0) {
            float v0 = tern_value_b(a0, qsum, s0, fac, bias, b0);
            float v1 = tern_value_b(a1, qsum, s1, fac, bias, b1);
            if (st == ST_QKV) {
                qkv_rope_store(r0, r1, v0, v1, e0, e1, o.q, o.kc, o.vc, o.pos, o.nh, o.nkv,
                               o.hd, o.max_ctx);
            } else if (st == ST_GU) {
                float rg = fmaxf(v0, 0.0f);
                __stcg(o.ffn + p, rg * rg * v1);
            } else {
                __stcg(o.x + r0, e0 + v0);
                if (r1 != r0) __stcg(o.x + r1, e1 + v1);
            }
        }
    }
}

// NS for an input of kw 16-byte words.
#define DK_START(st, W, kw, P)                                                  \
    if (32 * 8 * (kw) <= DK_RING)                                               \
        dk_ring_start<8>(st, W, kw, P, gw, nw, ring, o);                         \
    else                                                                        \
        dk_ring_start<3>(st, W, kw, P, gw, nw, ring, o);
#define DK_PRODUCT(st, W, rs, b, kw, P)                                         \
    if (32 * 8 * (kw) <= DK_RING)                                               \
        dk_product<8>(st, W, rs, b, kw, P, gw, nw, x4, fac, qsum, o, ring);     \
    else                                                                        \
        dk_product<3>(st, W, rs, b, kw, P, gw, nw, x4, fac, qsum, o, ring);

template <int D>
__device__ __forceinline__ void decode_layers_impl(
    const DecLayer* __restrict__ layers, const i32* __restrict__ dims, float* x, float* qkv,
    float* attn, float* ffn, const float* __restrict__ cosT, const float* __restrict__ sinT,
    const i32* __restrict__ ctl, float* part, u32* ctr, u64* bar, u64* times) {
    const int hd = 32 * D;
    extern __shared__ __align__(16) unsigned char dsm[];
    __shared__ u64 base_sh;
    const int nl = dims[DD_LAYERS], H = dims[DD_HIDDEN], FF = dims[DD_FF];
    const int nh = dims[DD_NH], nkv = dims[DD_NKV], max_ctx = dims[DD_MAXCTX];
    const int S = dims[DD_SPLITS], chunk_max = dims[DD_CHUNK], neox = dims[DD_NEOX];
    const float eps = __int_as_float(dims[DD_EPS]), scale = __int_as_float(dims[DD_SCALE]);
    const int QD = nh * hd, NQKV = (nh + 2 * nkv) * hd;
    const int kwH = (H + 63) >> 6, kwQ = (QD + 63) >> 6, kwF = (FF + 63) >> 6;
    const int kwMax = max(kwH, max(kwQ, kwF));
    // Shared memory: the int8 row (kwMax·64 bytes), then the attention's scores and
    // partial outputs.
    i8* qs = (i8*)dsm;
    const int tid0 = threadIdx.x;
    uint4* ring = (uint4*)(dsm + (size_t)kwMax * 64 + (size_t)(tid0 >> 5) * DK_RING);
    float* fs = (float*)(dsm + (size_t)kwMax * 64 + (size_t)DK_WARPS * DK_RING);
    const int4* x4 = (const int4*)qs;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int gw = blockIdx.x * DK_WARPS + warp, nw = gridDim.x * DK_WARPS;
    const int pos = ctl[0];
    if (tid == 0) {
        u64 c = ld_acquire_u64(bar);
        base_sh = c - c % (u64)gridDim.x;
    }
    __syncthreads();
    u64 target = base_sh;
    int tk = 0;
    dk_mark(times, tk);

    const int Pqkv = NQKV >> 1, Po = (H + 1) >> 1, Pgu = FF, Pdn = (H + 1) >> 1;
    DkOut o;
    o.x = x;
    o.q = qkv;
    o.ffn = ffn;
    o.cosT = cosT;
    o.sinT = sinT;
    o.pos = pos;
    o.nh = nh;
    o.nkv = nkv;
    o.hd = hd;
    o.neox = neox;
    o.max_ctx = max_ctx;
    o.H = H;
    DK_START(ST_QKV, layers[0].qkv_w, kwH, Pqkv)
    for (int l = 0; l < nl; l++) {
        const DecLayer& L = layers[l];
        o.kc = L.kc;
        o.vc = L.vc;
        float fac;
        int qsum;
        // 1. q|k|v with RoPE and the cache append.
        dk_norm_quant(x, L.attn_norm, H, kwH, eps, qs, fac, qsum);
        dk_mark(times, tk);
        DK_PRODUCT(ST_QKV, L.qkv_w, L.qkv_s, L.qkv_b, kwH, Pqkv)
        grid_sync(bar, target, times, tk);
        // 2. Attention, (head, split) items over the blocks.
        for (int it = blockIdx.x; it < nh * S; it += gridDim.x) {
            __syncthreads();  // the previous item's shared memory is free
            attn_decode_item<D, DK_WARPS>(it / S, it % S, qkv, L.kc, L.vc, attn, pos + 1, nh,
                                          nkv, max_ctx, scale, part, ctr, S, chunk_max, fs);
        }
        DK_START(ST_O, L.o_w, kwQ, Po)
        grid_sync(bar, target, times, tk);
        // 3. o, x += o.
        dk_norm_quant(attn, L.attn_sub_norm, QD, kwQ, eps, qs, fac, qsum);
        dk_mark(times, tk);
        DK_PRODUCT(ST_O, L.o_w, L.o_s, L.o_b, kwQ, Po)
        DK_START(ST_GU, L.gu_w, kwH, Pgu)
        grid_sync(bar, target, times, tk);
        // 4. gate/up, relu(gate)²·up.
        dk_norm_quant(x, L.ffn_norm, H, kwH, eps, qs, fac, qsum);
        dk_mark(times, tk);
        DK_PRODUCT(ST_GU, L.gu_w, L.gu_s, L.gu_b, kwH, Pgu)
        DK_START(ST_DOWN, L.dn_w, kwF, Pdn)
        grid_sync(bar, target, times, tk);
        // 5. down, x += down.
        dk_norm_quant(ffn, L.ffn_sub_norm, FF, kwF, eps, qs, fac, qsum);
        dk_mark(times, tk);
        DK_PRODUCT(ST_DOWN, L.dn_w, L.dn_s, L.dn_b, kwF, Pdn)
        if (l + 1 < nl) {
            DK_START(ST_QKV, layers[l + 1].qkv_w, kwH, Pqkv)
            grid_sync(bar, target, times, tk);
        }
    }
    if (times != nullptr && blockIdx.x == 0) {
        __syncthreads();
        if (tid == 0) times[tk] = globaltimer();
    }
#undef DK_START
#undef DK_PRODUCT
}

#define DK_KERNEL(D)                                                                        \
    extern "C" __global__ void __launch_bounds__(DK_THREADS, DK_MIN_BLOCKS)                 \
    decode_layers_d##D(const DecLayer* __restrict__ layers, const i32* __restrict__ dims,   \
                       float* x, float* qkv, float* attn, float* ffn,                       \
                       const float* __restrict__ cosT, const float* __restrict__ sinT,      \
                       const i32* __restrict__ ctl, float* part, u32* ctr, u64* bar,        \
                       u64* times) {                                                        \
        decode_layers_impl<D>(layers, dims, x, qkv, attn, ffn, cosT, sinT, ctl, part, ctr,  \
                              bar, times);                                                  \
    }
DK_KERNEL(1)
DK_KERNEL(2)
DK_KERNEL(4)
DK_KERNEL(8)
#undef DK_KERNEL
