// Shared prelude of every bitnet CUDA kernel source. NVRTC compiles it with no system
// headers, so the integer types and the f16 conversions are spelled out here.
typedef signed char i8;
typedef unsigned char u8;
typedef int i32;
typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;
typedef unsigned long long u64;

#define FULL_MASK 0xffffffffu

// Programmatic dependent launch (sm_90+): PDL_WAIT blocks until the previous kernel of the
// stream has finished and its writes are visible; PDL_LAUNCH lets the next kernel's blocks
// start (they run only their own prologue, then wait). Every kernel calls PDL_WAIT before
// touching any buffer another kernel reads or writes; on older GPUs, or when launched
// without the attribute, both are no-ops.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#define PDL_LAUNCH() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#else
#define PDL_WAIT()
#define PDL_LAUNCH()
#endif

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Warp- and block-wide reductions with an associative `op`; every thread gets the result.
// The block versions need `sh` to hold at least 32 values.
struct OpAdd {
    template <typename T>
    __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct OpMax {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Integer sums, and maxima of values known to be ≥ 0 (OpMaxNonNeg: NaN counts as 0, as
// fmaxf ignores it), take one redux.sync instruction on sm_80+ instead of five shuffle
// steps (exact either way: integer addition, and non-negative floats order as their bits).
struct OpMaxNonNeg {};

__device__ __forceinline__ int warp_reduce(int v, OpAdd op) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    int r;
    asm volatile("redux.sync.add.s32 %0, %1, 0xffffffff;" : "=r"(r) : "r"(v));
    return r;
#else
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
#endif
}

__device__ __forceinline__ float warp_reduce(float v, OpMaxNonNeg) {
    u32 b = v == v ? __float_as_uint(v) : 0u;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    u32 r;
    asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(r) : "r"(b));
    return __uint_as_float(r);
#else
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) b = max(b, __shfl_xor_sync(FULL_MASK, b, o));
    return __uint_as_float(b);
#endif
}

// One barrier: for an `sh` that the block uses for this reduction only (nothing may read
// it from an earlier reduction when it is written).
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce_once(T v, T* sh, T identity, Op op) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_reduce(v, op);
    if (lane == 0) sh[w] = v;
    __syncthreads();
    T t = lane < nw ? sh[lane] : identity;
    return warp_reduce(t, op);
}

// Two barriers: `sh` may be reused by consecutive reductions.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T* sh, T identity, Op op) {
    __syncthreads();
    return block_reduce_once(v, sh, identity, op);
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce(v, OpAdd()); }
__device__ __forceinline__ int warp_sum_i(int v) { return warp_reduce(v, OpAdd()); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce(v, OpMax()); }
__device__ __forceinline__ double block_sum_d(double v, double* sh) {
    return block_reduce(v, sh, 0.0, OpAdd());
}
__device__ __forceinline__ float block_max(float v, float* sh) {
    return block_reduce(v, sh, -3.402823466e38f, OpMax());
}
__device__ __forceinline__ float block_sum(float v, float* sh) {
    return block_reduce(v, sh, 0.0f, OpAdd());
}
__device__ __forceinline__ int block_sum_i(int v, int* sh) {
    return block_reduce(v, sh, 0, OpAdd());
}

// Epilogue modes of the ternary products.
#define EPI_STORE 0   // out[m][n]  = acc·s + b
#define EPI_ADD 1     // out[m][n] += acc·s + b   (residual add)
#define EPI_RELU2 2   // rows 2j, 2j+1 are gate j, up j: out[m][j] = relu(g)²·u
