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
template <int D>
__device__ __forceinline__ void ld_h(const u16* p, float* f) {
    if (D == 8) {
        uint4 u = __ldcg((const uint4*)p);
        f[0] = h2f((u16)(u.x & 0xffff)); f[1] = h2f((u16)(u.x >> 16));
        f[2] = h2f((u16)(u.y & 0xffff)); f[3] = h2f((u16)(u.y >> 16));
        f[4] = h2f((u16)(u.z & 0xffff)); f[5] = h2f((u16)(u.z >> 16));
        f[6] = h2f((u16)(u.w & 0xffff)); f[7] = h2f((u16)(u.w >> 16));
    } else if (D == 4) {
        uint2 u = __ldcg((const uint2*)p);
        f[0] = h2f((u16)(u.x & 0xffff)); f[1] = h2f((u16)(u.x >> 16));
        f[2] = h2f((u16)(u.y & 0xffff)); f[3] = h2f((u16)(u.y >> 16));
    } else if (D == 2) {
        u32 u = __ldcg((const unsigned int*)p);
        f[0] = h2f((u16)(u & 0xffff)); f[1] = h2f((u16)(u >> 16));
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
