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
