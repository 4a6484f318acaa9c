// Causal attention with grouped KV heads over the f16 cache ([kv_head][position][hd]),
// softmax in f32, following bitnet_core::nn::attention::causal_attention. One block of 8
// warps per (head, token); grid (nh, m); positions 0 ..= ctl[0] + token. hd % 32 == 0,
// hd ≤ 256. Dynamic shared memory: q (hd) + scores (positions) + per-warp partial outputs
// (8·hd) floats.
//  - scores: one thread per position (16-byte key loads, q broadcast from shared memory),
//    so a decode step's ~600 positions take three rounds of independent loads;
//  - values: warps take positions round-robin, lanes own dimensions (coalesced rows),
//    partial sums are added across warps at the end.
#define ATT_WARPS 8
extern "C" __global__ void __launch_bounds__(256)
attention(const float* __restrict__ qkv, const u16* __restrict__ kc, const u16* __restrict__ vc,
          float* __restrict__ out, const i32* __restrict__ ctl, int nh, int nkv, int hd,
          int max_ctx, float scale) {
    extern __shared__ float sm[];
    __shared__ float shr[32];
    PDL_WAIT();
    PDL_LAUNCH();
    int h = blockIdx.x, i = blockIdx.y;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int n = ctl[0] + i + 1;
    int kvh = h / (nh / nkv);
    float* qs = sm;
    float* red = sm + hd;
    float* sc = sm + hd + ATT_WARPS * hd;
    const float* qh = qkv + (size_t)i * (nh + 2 * nkv) * hd + (size_t)h * hd;
    for (int d = tid; d < hd; d += blockDim.x) qs[d] = qh[d];
    __syncthreads();
    const u16* kb = kc + (size_t)kvh * max_ctx * hd;
    const u16* vb = vc + (size_t)kvh * max_ctx * hd;
    int h8 = hd >> 3;
    for (int p = tid; p < n; p += blockDim.x) {
        const uint4* kr = (const uint4*)(kb + (size_t)p * hd);
        float acc = 0.0f;
#pragma unroll 4
        for (int j = 0; j < h8; j++) {
            uint4 u = kr[j];
            const float* q = qs + 8 * j;
            acc += q[0] * h2f((u16)(u.x & 0xffff)) + q[1] * h2f((u16)(u.x >> 16)) +
                   q[2] * h2f((u16)(u.y & 0xffff)) + q[3] * h2f((u16)(u.y >> 16)) +
                   q[4] * h2f((u16)(u.z & 0xffff)) + q[5] * h2f((u16)(u.z >> 16)) +
                   q[6] * h2f((u16)(u.w & 0xffff)) + q[7] * h2f((u16)(u.w >> 16));
        }
        sc[p] = acc * scale;
    }
    __syncthreads();
    float mx = -3.402823466e38f;
    for (int p = tid; p < n; p += blockDim.x) mx = fmaxf(mx, sc[p]);
    mx = block_max(mx, shr);
    float sum = 0.0f;
    for (int p = tid; p < n; p += blockDim.x) {
        float e = expf(sc[p] - mx);
        sc[p] = e;
        sum += e;
    }
    sum = block_sum(sum, shr);
    float inv = 1.0f / sum;
    __syncthreads();
    float acc[8];
#pragma unroll
    for (int j = 0; j < 8; j++) acc[j] = 0.0f;
#pragma unroll 4
    for (int p = warp; p < n; p += ATT_WARPS) {
        float w = sc[p] * inv;
        const u16* vr = vb + (size_t)p * hd + lane;
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (32 * j < hd) acc[j] += w * h2f(vr[32 * j]);
    }
#pragma unroll
    for (int j = 0; j < 8; j++)
        if (32 * j < hd) red[warp * hd + 32 * j + lane] = acc[j];
    __syncthreads();
    float* o = out + (size_t)i * nh * hd + (size_t)h * hd;
    for (int d = tid; d < hd; d += blockDim.x) {
        float s = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++) s += red[w * hd + d];
        o[d] = s;
    }
}

// DL f16 values at p (2·DL-byte aligned) as DL/2 words.
template <int DL>
__device__ __forceinline__ void ld_words(const u16* p, u32* w) {
    if constexpr (DL == 8) {
        uint4 u = __ldcg((const uint4*)p);
        w[0] = u.x; w[1] = u.y; w[2] = u.z; w[3] = u.w;
    } else if constexpr (DL == 4) {
        uint2 u = __ldcg((const uint2*)p);
        w[0] = u.x; w[1] = u.y;
    } else {
#pragma unroll
        for (int i = 0; i < DL / 2; i++) w[i] = __ldcg((const unsigned int*)p + i);
    }
}

template <int DL>
__device__ __forceinline__ void words_f(const u32* w, float* f) {
#pragma unroll
    for (int i = 0; i < DL / 2; i++) {
        f[2 * i] = h2f((u16)(w[i] & 0xffff));
        f[2 * i + 1] = h2f((u16)(w[i] >> 16));
    }
}

// Decode attention (one query token at position ctl[0], positions 0 ..= ctl[0]), split
// over positions (flash-decoding): work item (h, sp) takes the sp-th of S equal chunks of
// the positions with the W warps of a block. Lanes own D = hd/32 consecutive dimensions,
// so a warp reads a whole key or value row with one load per lane; each warp takes every
// W-th position of the chunk, eight positions' loads in flight at a time. The item writes
// its unnormalised partial output, its max and its Σexp to `part` ([h][sp][hd + 2]); the
// last item of head h to finish (counter `ctr[h]`, reset afterwards) combines the S
// partials in split order, so the result does not depend on which item finishes last.
// The kernel attn_decode runs one item per block (grid (nh, S), 4 warps); the persistent
// decode kernel (decode.cu) runs items with 8 warps. The query and the cache are read
// through L2 (ld.global.cg): in the persistent kernel other blocks wrote them.
// Shared memory `sm`: chunk_max + W·hd floats.
#define AD_U 8
// D f16 values at p as floats (one wide load for even D).
template <int D>
__device__ __forceinline__ void ld_h(const u16* p, float* f) {
    if constexpr (D % 2 == 0) {
        u32 w[D / 2];
        ld_words<D>(p, w);
        words_f<D>(w, f);
    } else {
#pragma unroll
        for (int d = 0; d < D; d++) f[d] = h2f(__ldcg((const unsigned short*)p + d));
    }
}

template <int D, int W>
__device__ __forceinline__ void attn_decode_item(
    int h, int sp, const float* qkv, const u16* kc, const u16* vc, float* out, int n, int nh,
    int nkv, int max_ctx, float scale, float* part, u32* ctr, int S, int chunk_max,
    float* sm) {
    const int hd = 32 * D, bd = 32 * W;
    __shared__ float shr[32];
    __shared__ int last;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int chunk = (n + S - 1) / S;
    if (chunk > chunk_max) chunk = chunk_max;  // never, when the launch sized it
    int p0 = sp * chunk, p1 = min(n, p0 + chunk);
    int kvh = h / (nh / nkv);
    float q[D];
#pragma unroll
    for (int d = 0; d < D; d++) q[d] = __ldcg(qkv + (size_t)h * hd + lane * D + d);
    const u16* kb = kc + (size_t)kvh * max_ctx * hd + lane * D;
    const u16* vb = vc + (size_t)kvh * max_ctx * hd + lane * D;
    float* sc = sm;
    float* red = sm + chunk_max;
    float mx = -3.402823466e38f;
    for (int pb = p0 + warp; pb < p1; pb += AD_U * W) {
        float kf[AD_U][D];
#pragma unroll
        for (int u = 0; u < AD_U; u++) {
            int p = pb + u * W;
            if (p < p1) ld_h<D>(kb + (size_t)p * hd, kf[u]);
        }
#pragma unroll
        for (int u = 0; u < AD_U; u++) {
            int p = pb + u * W;
            if (p < p1) {
                float a = 0.0f;
#pragma unroll
                for (int d = 0; d < D; d++) a += q[d] * kf[u][d];
                a = warp_sum(a) * scale;
                if (lane == 0) sc[p - p0] = a;
                mx = fmaxf(mx, a);
            }
        }
    }
    mx = block_max(mx, shr);
    float sum = 0.0f;
    for (int p = p0 + tid; p < p1; p += bd) {
        float e = expf(sc[p - p0] - mx);
        sc[p - p0] = e;
        sum += e;
    }
    sum = block_sum(sum, shr);
    float acc[D];
#pragma unroll
    for (int d = 0; d < D; d++) acc[d] = 0.0f;
    for (int pb = p0 + warp; pb < p1; pb += AD_U * W) {
        float vf[AD_U][D];
#pragma unroll
        for (int u = 0; u < AD_U; u++) {
            int p = pb + u * W;
            if (p < p1) ld_h<D>(vb + (size_t)p * hd, vf[u]);
        }
#pragma unroll
        for (int u = 0; u < AD_U; u++) {
            int p = pb + u * W;
            if (p < p1) {
                float e = sc[p - p0];
#pragma unroll
                for (int d = 0; d < D; d++) acc[d] += e * vf[u][d];
            }
        }
    }
#pragma unroll
    for (int d = 0; d < D; d++) red[warp * hd + lane * D + d] = acc[d];
    __syncthreads();
    float* po = part + ((size_t)h * S + sp) * (hd + 2);
    for (int d = tid; d < hd; d += bd) {
        float t = 0.0f;
        for (int w = 0; w < W; w++) t += red[w * hd + d];
        po[d] = t;
    }
    if (tid == 0) {
        po[hd] = mx;
        po[hd + 1] = sum;
    }
    __threadfence();
    __syncthreads();
    if (tid == 0) last = atomicAdd(ctr + h, 1u) == (u32)(S - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    // Combine: the splits' weights exp(m_s − M) once into shared memory (one thread per
    // split), then each dimension sums S partials with eight loads in flight.
    const float* ph = part + (size_t)h * S * (hd + 2);
    float* coef = sm;  // the scores are no longer needed
    float ms = -3.402823466e38f, ls = 0.0f;
    if (tid < S) {
        ms = __ldcg(ph + (size_t)tid * (hd + 2) + hd);
        ls = __ldcg(ph + (size_t)tid * (hd + 2) + hd + 1);
    }
    float M = block_max(ls > 0.0f ? ms : -3.402823466e38f, shr);
    float cw = ls > 0.0f ? expf(ms - M) : 0.0f;
    if (tid < S) coef[tid] = cw;
    float L = block_sum(cw * ls, shr);
    float inv = 1.0f / L;
    for (int d = tid; d < hd; d += bd) {
        float o = 0.0f;
#pragma unroll 8
        for (int t = 0; t < S; t++) o += coef[t] * __ldcg(ph + (size_t)t * (hd + 2) + d);
        out[(size_t)h * hd + d] = o * inv;
    }
    if (tid == 0) ctr[h] = 0u;
}

extern "C" __global__ void __launch_bounds__(128)
attn_decode(const float* __restrict__ qkv, const u16* __restrict__ kc,
            const u16* __restrict__ vc, float* __restrict__ out, const i32* __restrict__ ctl,
            int nh, int nkv, int hd, int max_ctx, float scale, float* __restrict__ part,
            u32* __restrict__ ctr, int S, int chunk_max) {
    extern __shared__ float adsm[];
    PDL_WAIT();
    PDL_LAUNCH();
    int n = ctl[0] + 1;
#define AD_CASE(D)                                                                     \
    case D:                                                                            \
        attn_decode_item<D, 4>(blockIdx.x, blockIdx.y, qkv, kc, vc, out, n, nh, nkv,   \
                               max_ctx, scale, part, ctr, S, chunk_max, adsm);         \
        break;
    switch (hd >> 5) {
        AD_CASE(1) AD_CASE(2) AD_CASE(3) AD_CASE(4) AD_CASE(5) AD_CASE(6) AD_CASE(7) AD_CASE(8)
        default: break;
    }
#undef AD_CASE
}

// Decode attention for sm_90 with thread-block clusters (replaces attn_decode there): the
// AC_S blocks of a cluster take the AC_S chunks of one head's positions (grid (AC_S, nh),
// cluster (AC_S, 1, 1), AC_W warps). A warp takes every AC_W-th position of its chunk and
// loads the keys and the values of AC_U positions at once (lanes own D = hd/32 dimensions),
// keeping an online softmax (running max, Σexp and weighted sum of values, rescaled when
// the max grows). The warps' states merge in shared memory, then the blocks' states merge
// across the cluster through distributed shared memory: block r produces the output
// dimensions [r·hd/AC_S, (r+1)·hd/AC_S). Merges run in a fixed order, so the result does
// not depend on timing. No global scratch, no atomics, one launch. Dynamic shared memory:
// (2·AC_W + 2 + (AC_W + 1)·hd) floats.
#define AC_S 8
#define AC_W 8
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ u32 cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
// All threads of all blocks of the cluster; orders shared-memory writes before the barrier
// with reads after it, cluster-wide.
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::
                     : "memory");
}
// The end of a block that read its peers' shared memory: it stays until every block of the
// cluster is done reading (the memory of an exited block is gone). The arrive is relaxed:
// the reads are complete once their values are used, and a release would also wait for
// this block's global stores to complete (about 0.5 µs of a decode attention launch on the
// H100). `result` runs between the arrive and the wait.
template <typename F>
__device__ __forceinline__ void cluster_leave(F result) {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
    result();
    asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
}
// Read a float of block `rank`'s shared memory at the address `p` has in this block.
__device__ __forceinline__ float ld_cluster(const float* p, u32 rank) {
    u32 a = (u32)__cvta_generic_to_shared(p), r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(r) : "memory");
    return v;
}

// One output merged across the S blocks of a cluster in rank order: block r's running max
// at m, its sum of weights at l and its accumulator at o (this block's shared-memory
// addresses; the same offsets in every block).
template <int S>
__device__ __forceinline__ float cluster_merge(const float* m, const float* l, const float* o) {
    float ms[S], ls[S], os[S];
#pragma unroll
    for (int r = 0; r < S; r++) {
        ms[r] = ld_cluster(m, r);
        ls[r] = ld_cluster(l, r);
        os[r] = ld_cluster(o, r);
    }
    float Mc = ms[0];
#pragma unroll
    for (int r = 1; r < S; r++) Mc = fmaxf(Mc, ms[r]);
    float L = 0.0f, v = 0.0f;
#pragma unroll
    for (int r = 0; r < S; r++) {
        float c = expf(ms[r] - Mc);
        L += c * ls[r];
        v += c * os[r];
    }
    return v / L;
}

template <int D>
__device__ __forceinline__ void attn_cluster_body(const float* qkv, const u16* kc,
                                                  const u16* vc, float* out, int n, int nh,
                                                  int nkv, int max_ctx, float scale,
                                                  float* sm) {
    constexpr int hd = 32 * D, U = D <= 4 ? 8 : 4;
    float *wm = sm, *wl = sm + AC_W, *bml = sm + 2 * AC_W, *bacc = bml + 2, *wacc = bacc + hd;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int h = blockIdx.y;
    u32 rank = cluster_rank();
    int chunk = (n + AC_S - 1) / AC_S;
    int p0 = (int)rank * chunk, p1 = min(n, p0 + chunk);
    int kvh = h / (nh / nkv);
    float q[D], acc[D];
#pragma unroll
    for (int d = 0; d < D; d++) {
        q[d] = __ldcg(qkv + (size_t)h * hd + lane * D + d);
        acc[d] = 0.0f;
    }
    const u16* kb = kc + (size_t)kvh * max_ctx * hd + lane * D;
    const u16* vb = vc + (size_t)kvh * max_ctx * hd + lane * D;
    float m = -3.402823466e38f, l = 0.0f;
    for (int pb = p0 + warp; pb < p1; pb += U * AC_W) {
        float kf[U][D], vf[U][D];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = pb + u * AC_W;
            if (p < p1) {
                ld_h<D>(kb + (size_t)p * hd, kf[u]);
                ld_h<D>(vb + (size_t)p * hd, vf[u]);
            }
        }
        float s[U], mb = m;
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = pb + u * AC_W;
            s[u] = -3.402823466e38f;
            if (p < p1) {
                float a = 0.0f;
#pragma unroll
                for (int d = 0; d < D; d++) a += q[d] * kf[u][d];
                s[u] = warp_sum(a) * scale;
                mb = fmaxf(mb, s[u]);
            }
        }
        float c = expf(m - mb);
        l *= c;
#pragma unroll
        for (int d = 0; d < D; d++) acc[d] *= c;
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (pb + u * AC_W < p1) {
                float e = expf(s[u] - mb);
                l += e;
#pragma unroll
                for (int d = 0; d < D; d++) acc[d] += e * vf[u][d];
            }
        }
        m = mb;
    }
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int d = 0; d < D; d++) wacc[warp * hd + lane * D + d] = acc[d];
    __syncthreads();
    // This block's state: the warps' states rescaled to the largest max.
    float M = wm[0], cw[AC_W];
#pragma unroll
    for (int w = 1; w < AC_W; w++) M = fmaxf(M, wm[w]);
#pragma unroll
    for (int w = 0; w < AC_W; w++) cw[w] = expf(wm[w] - M);
    for (int d = tid; d < hd; d += 32 * AC_W) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < AC_W; w++) o += cw[w] * wacc[w * hd + d];
        bacc[d] = o;
    }
    if (tid == 0) {
        float t = 0.0f;
#pragma unroll
        for (int w = 0; w < AC_W; w++) t += cw[w] * wl[w];
        bml[0] = M;
        bml[1] = t;
    }
    cluster_sync();
    // The cluster's state for this block's share of the dimensions.
    constexpr int share = hd / AC_S;
    float v = tid < share ? cluster_merge<AC_S>(bml, bml + 1, bacc + rank * share + tid) : 0.0f;
    cluster_leave([&]() {
        if (tid < share) out[(size_t)h * hd + rank * share + tid] = v;
    });
}
#endif

extern "C" __global__ void __launch_bounds__(256, 2)
attn_decode_cluster(const float* __restrict__ qkv, const u16* __restrict__ kc,
                    const u16* __restrict__ vc, float* __restrict__ out,
                    const i32* __restrict__ ctl, int nh, int nkv, int hd, int max_ctx,
                    float scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    PDL_WAIT();
    PDL_LAUNCH();
    extern __shared__ float acsm[];
    int n = ctl[0] + 1;
#define AC_CASE(D)                                                                         \
    case D:                                                                                \
        attn_cluster_body<D>(qkv, kc, vc, out, n, nh, nkv, max_ctx, scale, acsm);          \
        break;
    switch (hd >> 5) {
        AC_CASE(1) AC_CASE(2) AC_CASE(3) AC_CASE(4) AC_CASE(5) AC_CASE(6) AC_CASE(7) AC_CASE(8)
        default: break;
    }
#undef AC_CASE
#endif
}

// Decode attention for sm_90 by KV group (replaces attn_decode_cluster where the shapes
// allow it): one cluster of S blocks per KV head (8, or 16 for long contexts: the launch
// chooses, the kernel reads its cluster size) takes all G query heads that share it,
// so each key and value is loaded once for the G heads. Block r of the cluster takes the
// r-th chunk of the positions; a half-warp (16 lanes, DL = hd/16 dimensions each) takes one
// position at a time, a warp two, U of them per load round (4; 2 for hd > 64); the G scores
// of a position are reduced over the 16 lanes (4 shuffle steps each, not 5 per head and
// position). Each
// half-warp keeps an online softmax per head; the halves merge with shuffles, the warps in
// shared memory, the blocks through distributed shared memory (block r writes outputs
// [r·G·hd/S, (r+1)·G·hd/S) of the group), in a fixed order. The dot products and the
// value sums use fused multiply-adds and the weights `__expf` (within 5e-7 of the CPU in
// the kernel test, as with separate roundings and `expf`; fewer instructions on the
// serial path of each round). Dynamic shared memory: (AG_W·G·(hd + 3) + G·(hd + 2))
// floats.
#define AG_W 4
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
template <int DL, int G, int S>
__device__ __forceinline__ void attn_gqa_body(const float* qkv, const u16* kc, const u16* vc,
                                              float* out, int n, int max_ctx, float scale,
                                              float* sm) {
    constexpr int hd = 16 * DL, U = DL <= 4 ? 4 : 2, share = G * hd / S;
    // Shared memory: per warp G maxima, G sums, G·hd accumulators, G merge weights; then
    // the block's maxima, sums and accumulators.
    float *wm = sm, *wl = sm + AG_W * G, *wacc = sm + 2 * AG_W * G;
    float *wc = wacc + AG_W * G * hd, *bm = wc + AG_W * G, *bl = bm + G, *bacc = bl + G;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int half = lane >> 4, hl = lane & 15;
    int kvh = blockIdx.y;
    u32 rank = cluster_rank();
    int chunk = (n + S - 1) / S;
    int p0 = (int)rank * chunk, p1 = min(n, p0 + chunk);
    const u16* kb = kc + (size_t)kvh * max_ctx * hd + hl * DL;
    const u16* vb = vc + (size_t)kvh * max_ctx * hd + hl * DL;
    constexpr int step = 2 * AG_W;  // positions a block covers per load
    // Before PDL_WAIT: the keys and values of the earlier positions are constant (only the
    // current one, n − 1, is the q|k|v product's), so the first round is loaded and the
    // half-warp's later positions are prefetched into L2 while the product still runs.
    int pb0 = p0 + 2 * warp + half, pc = n - 1;
    // The keys and values of positions pr + u·step below `end` (zeros past it).
    auto load_round = [&](int pr, int end, u32 (&k)[U][DL / 2], u32 (&v)[U][DL / 2]) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = pr + u * step;
            if (p < end) {
                ld_words<DL>(kb + (size_t)p * hd, k[u]);
                ld_words<DL>(vb + (size_t)p * hd, v[u]);
            } else {
#pragma unroll
                for (int i = 0; i < DL / 2; i++) k[u][i] = v[u][i] = 0u;
            }
        }
    };
    u32 kw[U][DL / 2], vw[U][DL / 2];
    load_round(pb0, min(p1, pc), kw, vw);
    if ((hl & 7) == 0) {
        for (int p = pb0 + U * step; p < min(p1, pc); p += step) {
            asm volatile("prefetch.global.L2 [%0];" ::"l"(kb + (size_t)p * hd));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(vb + (size_t)p * hd));
        }
    }
    PDL_WAIT();
    PDL_LAUNCH();
#pragma unroll
    for (int u = 0; u < U; u++) {
        if (pb0 + u * step == pc && pc < p1) {
            ld_words<DL>(kb + (size_t)pc * hd, kw[u]);
            ld_words<DL>(vb + (size_t)pc * hd, vw[u]);
        }
    }
    float q[G][DL], acc[G][DL], m[G], l[G];
#pragma unroll
    for (int g = 0; g < G; g++) {
        m[g] = -3.402823466e38f;
        l[g] = 0.0f;
        const float* qg = qkv + (size_t)(kvh * G + g) * hd + hl * DL;
#pragma unroll
        for (int d = 0; d < DL; d += 2) {
            float2 v = __ldcg((const float2*)(qg + d));
            q[g][d] = v.x * scale;
            q[g][d + 1] = v.y * scale;
        }
#pragma unroll
        for (int d = 0; d < DL; d++) acc[g][d] = 0.0f;
    }
    for (int pb = pb0; pb - half < p1; pb += U * step) {
        // The next round's keys and values are loaded before this round's arithmetic.
        u32 kn[U][DL / 2], vn[U][DL / 2];
        load_round(pb + U * step, p1, kn, vn);
        float s[U][G];
#pragma unroll
        for (int u = 0; u < U; u++) {
            float kf[DL];
            words_f<DL>(kw[u], kf);
#pragma unroll
            for (int g = 0; g < G; g++) {
                float a = 0.0f;
#pragma unroll
                for (int d = 0; d < DL; d++) a = __fmaf_rn(q[g][d], kf[d], a);
#pragma unroll
                for (int o = 8; o > 0; o >>= 1) a += __shfl_xor_sync(FULL_MASK, a, o);
                s[u][g] = a;
            }
        }
#pragma unroll
        for (int g = 0; g < G; g++) {
            float mb = m[g];
#pragma unroll
            for (int u = 0; u < U; u++)
                if (pb + u * step < p1) mb = fmaxf(mb, s[u][g]);
            float c = __expf(m[g] - mb);
            l[g] *= c;
#pragma unroll
            for (int d = 0; d < DL; d++) acc[g][d] *= c;
            m[g] = mb;
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (pb + u * step < p1) {
                float vf[DL];
                words_f<DL>(vw[u], vf);
#pragma unroll
                for (int g = 0; g < G; g++) {
                    float e = __expf(s[u][g] - m[g]);
                    l[g] += e;
#pragma unroll
                    for (int d = 0; d < DL; d++) acc[g][d] = __fmaf_rn(e, vf[d], acc[g][d]);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
#pragma unroll
            for (int i = 0; i < DL / 2; i++) {
                kw[u][i] = kn[u][i];
                vw[u][i] = vn[u][i];
            }
        }
    }
    // The two half-warps' states (same dimensions, other positions).
#pragma unroll
    for (int g = 0; g < G; g++) {
        float mo = __shfl_xor_sync(FULL_MASK, m[g], 16);
        float lo = __shfl_xor_sync(FULL_MASK, l[g], 16);
        float M = fmaxf(m[g], mo);
        float c = __expf(m[g] - M), co = __expf(mo - M);
        l[g] = l[g] * c + lo * co;
#pragma unroll
        for (int d = 0; d < DL; d++) {
            float ao = __shfl_xor_sync(FULL_MASK, acc[g][d], 16);
            acc[g][d] = acc[g][d] * c + ao * co;
        }
        m[g] = M;
    }
    if (half == 0) {
#pragma unroll
        for (int g = 0; g < G; g++) {
            if (hl == 0) {
                wm[warp * G + g] = m[g];
                wl[warp * G + g] = l[g];
            }
#pragma unroll
            for (int d = 0; d < DL; d++) wacc[(warp * G + g) * hd + hl * DL + d] = acc[g][d];
        }
    }
    __syncthreads();
    // This block's state per head: the warps' states rescaled to the largest max (thread g
    // computes head g's weights once, then every thread sums its outputs).
    if (tid < G) {
        float M = wm[tid];
#pragma unroll
        for (int w = 1; w < AG_W; w++) M = fmaxf(M, wm[w * G + tid]);
        float t = 0.0f;
#pragma unroll
        for (int w = 0; w < AG_W; w++) {
            float c = __expf(wm[w * G + tid] - M);
            wc[w * G + tid] = c;
            t += c * wl[w * G + tid];
        }
        bm[tid] = M;
        bl[tid] = t;
    }
    __syncthreads();
    for (int i = tid; i < G * hd; i += 32 * AG_W) {
        int g = i / hd;
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < AG_W; w++) o += wc[w * G + g] * wacc[w * G * hd + i];
        bacc[i] = o;
    }
    cluster_sync();
    // The cluster's state for this block's share of the group's outputs.
    int i = (int)rank * share + tid;
    float v = tid < share ? cluster_merge<S>(bm + i / hd, bl + i / hd, bacc + i) : 0.0f;
    cluster_leave([&]() {
        if (tid < share) out[(size_t)kvh * G * hd + i] = v;
    });
}
#endif

extern "C" __global__ void __launch_bounds__(256)
attn_decode_gqa(const float* __restrict__ qkv, const u16* __restrict__ kc,
                const u16* __restrict__ vc, float* __restrict__ out,
                const i32* __restrict__ ctl, int nh, int nkv, int hd, int max_ctx,
                float scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // PDL_WAIT is in the body, after the loads that may come first. ctl is written before
    // the step, by no kernel.
    extern __shared__ float agsm[];
    int n = ctl[0] + 1;
    int g = nh / nkv;
    u32 cs;
    asm("mov.u32 %0, %%cluster_nctarank;" : "=r"(cs));
#define AG_CASE(DL, G)                                                                     \
    if (hd == 16 * DL && g == G) {                                                         \
        if (cs == 16)                                                                      \
            attn_gqa_body<DL, G, 16>(qkv, kc, vc, out, n, max_ctx, scale, agsm);            \
        else                                                                               \
            attn_gqa_body<DL, G, 8>(qkv, kc, vc, out, n, max_ctx, scale, agsm);             \
        return;                                                                            \
    }
    AG_CASE(2, 1) AG_CASE(2, 2) AG_CASE(2, 4) AG_CASE(2, 8)
    AG_CASE(4, 1) AG_CASE(4, 2) AG_CASE(4, 4) AG_CASE(4, 8)
    AG_CASE(6, 1) AG_CASE(6, 2) AG_CASE(6, 4)
    AG_CASE(8, 1) AG_CASE(8, 2) AG_CASE(8, 4)
#undef AG_CASE
#endif
}
