//! f32 kernels for the hot element-wise, activation, softmax and reduction ops: a scalar
//! version and an AVX2+FMA version of each, chosen by the [`Kernel`] argument (which
//! [`super::dispatch`] picks). The functions are public so tests and benchmarks can run
//! both paths side by side on the same data.
//!
//! Agreement between the paths:
//! * `+ - * /`, min, max, relu, relu² and max/min reductions are exact (same IEEE
//!   operations, same NaN propagation);
//! * exp-based functions use a Cephes-style polynomial in the AVX2 path and libm in the
//!   scalar path: within 2 ulp for exp, ~1e-6 absolute for tanh/erf-based GELU;
//! * sums are blocked (see [`SUM_BLOCK`]) in both paths but accumulate in a different
//!   order inside a block, so they agree to f32 rounding of the block sums.
//!
//! Any kernel other than [`Kernel::Avx2`] runs the scalar code, so a caller that got
//! `Avx2` from dispatch (which checked the CPU) is the only way into the unsafe path.

use super::dispatch::Kernel;

/// Element-wise binary operations that have SIMD kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// NaN-propagating minimum (like `torch.minimum`, unlike `f32::min`).
    Min,
    /// NaN-propagating maximum.
    Max,
}

/// Element-wise unary functions that have SIMD kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    Relu,
    /// relu(x)², the squared ReLU of BitNet b1.58's FFN.
    Relu2,
    /// x·Φ(x) with the exact normal CDF, Φ(x) = (1 + erf(x/√2)) / 2.
    GeluErf,
    /// The tanh approximation of GELU (GPT-2's).
    GeluTanh,
    /// x·sigmoid(x).
    Silu,
    Sigmoid,
    Tanh,
    Exp,
}

/// Elements per block of the blocked sums: each block is summed in f32, block sums in
/// f64. f32 accumulation error grows with the number of terms, so capping it at 4096
/// keeps a 10M-element sum accurate to ~1e-6 relative while the inner loop stays f32 SIMD.
pub const SUM_BLOCK: usize = 4096;

#[inline]
fn use_avx2(k: Kernel) -> bool {
    cfg!(target_arch = "x86_64") && k == Kernel::Avx2
}

// ------------------------------------------------------------------ scalar definitions

/// The scalar definition of a binary op (also used for tails and strided loops).
#[inline]
pub fn bin_scalar(op: BinOp, a: f32, b: f32) -> f32 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        BinOp::Min => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else if b < a {
                b
            } else {
                a
            }
        }
        BinOp::Max => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else if b > a {
                b
            } else {
                a
            }
        }
    }
}

/// erf by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7), the same formula as the AVX2
/// path so both GELU paths agree; std has no stable `erf`.
#[inline]
pub fn erf_scalar(x: f32) -> f32 {
    let s = if x < 0.0 { -1.0 } else { 1.0 };
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_7) * t - 0.284_496_72) * t
            + 0.254_829_6)
            * t
            * (-a * a).exp();
    s * y
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_TANH_C: f32 = 0.044_715;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// The scalar definition of a unary op.
#[inline]
pub fn un_scalar(op: UnOp, x: f32) -> f32 {
    match op {
        // `x < 0` is false for NaN, so NaN passes through (f32::max would drop it).
        UnOp::Relu => {
            if x < 0.0 {
                0.0
            } else {
                x
            }
        }
        UnOp::Relu2 => {
            let r = if x < 0.0 { 0.0 } else { x };
            r * r
        }
        UnOp::GeluErf => 0.5 * x * (1.0 + erf_scalar(x * FRAC_1_SQRT_2)),
        UnOp::GeluTanh => 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x)).tanh()),
        UnOp::Silu => x / (1.0 + (-x).exp()),
        UnOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnOp::Tanh => x.tanh(),
        UnOp::Exp => x.exp(),
    }
}

// ------------------------------------------------------------------ public kernels

/// `out[i] = a[i] op b[i]`. All three slices have the same length.
pub fn binary_vv(k: Kernel, op: BinOp, a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(a.len() == out.len() && b.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if use_avx2(k) {
        // SAFETY: Kernel::Avx2 is only chosen after the CPU reported AVX2 and FMA.
        return unsafe {
            avx2::binary(
                op,
                a.as_ptr(),
                1,
                b.as_ptr(),
                1,
                out.as_mut_ptr(),
                out.len(),
            )
        };
    }
    let _ = k;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = bin_scalar(op, x, y);
    }
}

/// `out[i] = a[i] op s`.
pub fn binary_vs(k: Kernel, op: BinOp, a: &[f32], s: f32, out: &mut [f32]) {
    assert_eq!(a.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if use_avx2(k) {
        // SAFETY: as in `binary_vv`; a stride of 0 reads `s` only.
        return unsafe { avx2::binary(op, a.as_ptr(), 1, &s, 0, out.as_mut_ptr(), out.len()) };
    }
    let _ = k;
    for (o, &x) in out.iter_mut().zip(a) {
        *o = bin_scalar(op, x, s);
    }
}

/// `out[i] = s op b[i]`.
pub fn binary_sv(k: Kernel, op: BinOp, s: f32, b: &[f32], out: &mut [f32]) {
    assert_eq!(b.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if use_avx2(k) {
        // SAFETY: as in `binary_vs`.
        return unsafe { avx2::binary(op, &s, 0, b.as_ptr(), 1, out.as_mut_ptr(), out.len()) };
    }
    let _ = k;
    for (o, &y) in out.iter_mut().zip(b) {
        *o = bin_scalar(op, s, y);
    }
}

/// `a[i] = a[i] op b[i]` in place (`b` of the same length).
pub fn binary_assign_vv(k: Kernel, op: BinOp, a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if use_avx2(k) {
        // SAFETY: as in `binary_vv`; the kernel loads each vector of `a` before storing it.
        return unsafe { avx2::binary(op, a.as_ptr(), 1, b.as_ptr(), 1, a.as_mut_ptr(), a.len()) };
    }
    let _ = k;
    for (x, &y) in a.iter_mut().zip(b) {
        *x = bin_scalar(op, *x, y);
    }
}

/// `a[i] = a[i] op s` in place.
pub fn binary_assign_vs(k: Kernel, op: BinOp, a: &mut [f32], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2(k) {
        // SAFETY: as in `binary_assign_vv`.
        return unsafe { avx2::binary(op, a.as_ptr(), 1, &s, 0, a.as_mut_ptr(), a.len()) };
    }
    let _ = k;
    for x in a.iter_mut() {
        *x = bin_scalar(op, *x, s);
    }
}

/// `out[i] = op(x[i])`.
pub fn unary(k: Kernel, op: UnOp, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if use_avx2(k) {
        // SAFETY: as in `binary_vv`.
        return unsafe { avx2::unary(op, x, out) };
    }
    let _ = k;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = un_scalar(op, v);
    }
}

/// `x[i] = op(x[i])` in place.
pub fn unary_inplace(k: Kernel, op: UnOp, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2(k) {
        // SAFETY: as in `binary_vv`; `avx2::unary_ptr` reads each vector before writing it.
        return unsafe { avx2::unary_ptr(op, x.as_ptr(), x.as_mut_ptr(), x.len()) };
    }
    let _ = k;
    for v in x.iter_mut() {
        *v = un_scalar(op, *v);
    }
}

/// Sum of `x`: f32 within blocks of [`SUM_BLOCK`], f64 across blocks.
pub fn sum(k: Kernel, x: &[f32]) -> f64 {
    x.chunks(SUM_BLOCK)
        .map(|c| {
            #[cfg(target_arch = "x86_64")]
            if use_avx2(k) {
                // SAFETY: as in `binary_vv`.
                return unsafe { avx2::sum(c) } as f64;
            }
            let _ = k;
            c.iter().sum::<f32>() as f64
        })
        .sum()
}

/// `Σ (x[i] − mean)²`, blocked like [`sum`]; the second pass of a two-pass variance.
pub fn sum_sq_dev(k: Kernel, x: &[f32], mean: f32) -> f64 {
    x.chunks(SUM_BLOCK)
        .map(|c| {
            #[cfg(target_arch = "x86_64")]
            if use_avx2(k) {
                // SAFETY: as in `binary_vv`.
                return unsafe { avx2::sum_sq_dev(c, mean) } as f64;
            }
            let _ = k;
            c.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() as f64
        })
        .sum()
}

/// Maximum of `x`, NaN if any element is NaN, −∞ for an empty slice.
pub fn max(k: Kernel, x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if use_avx2(k) {
        // SAFETY: as in `binary_vv`.
        return unsafe { avx2::minmax(x, true) };
    }
    let _ = k;
    x.iter()
        .fold(f32::NEG_INFINITY, |m, &v| bin_scalar(BinOp::Max, m, v))
}

/// Minimum of `x`, NaN if any element is NaN, +∞ for an empty slice.
pub fn min(k: Kernel, x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if use_avx2(k) {
        // SAFETY: as in `binary_vv`.
        return unsafe { avx2::minmax(x, false) };
    }
    let _ = k;
    x.iter()
        .fold(f32::INFINITY, |m, &v| bin_scalar(BinOp::Min, m, v))
}

/// `out[i] = exp(x[i] − m)`; returns Σ out (the softmax numerator and denominator).
pub fn exp_sub_sum(k: Kernel, x: &[f32], m: f32, out: &mut [f32]) -> f64 {
    binary_vs(k, BinOp::Sub, x, m, out);
    unary_inplace(k, UnOp::Exp, out);
    sum(k, out)
}

// ------------------------------------------------------------------ AVX2

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{bin_scalar, BinOp, UnOp, FRAC_1_SQRT_2, GELU_TANH_C, SQRT_2_OVER_PI};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn bin(op: BinOp, a: __m256, b: __m256) -> __m256 {
        // SAFETY: only called from functions compiled with avx2 enabled.
        unsafe {
            match op {
                BinOp::Add => _mm256_add_ps(a, b),
                BinOp::Sub => _mm256_sub_ps(a, b),
                BinOp::Mul => _mm256_mul_ps(a, b),
                BinOp::Div => _mm256_div_ps(a, b),
                // maxps/minps return the second operand when either is NaN, so b's NaN
                // comes through; a's NaN is blended back in explicitly.
                BinOp::Min => {
                    let m = _mm256_min_ps(a, b);
                    _mm256_blendv_ps(m, a, _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a))
                }
                BinOp::Max => {
                    let m = _mm256_max_ps(a, b);
                    _mm256_blendv_ps(m, a, _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a))
                }
            }
        }
    }

    /// `out[i] = a[i*sa] op b[i*sb]` with `sa`, `sb` ∈ {0, 1} (0 = broadcast scalar).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn binary(
        op: BinOp,
        a: *const f32,
        sa: usize,
        b: *const f32,
        sb: usize,
        o: *mut f32,
        n: usize,
    ) {
        // SAFETY: the callers pass `a`/`b` valid for n elements at stride 1, or for one
        // element at stride 0, and `o` valid for n elements. `o` may equal `a` (in-place):
        // each vector is loaded before it is stored.
        unsafe {
            let load = |p: *const f32, s: usize, i: usize| {
                if s == 0 {
                    _mm256_set1_ps(*p)
                } else {
                    _mm256_loadu_ps(p.add(i))
                }
            };
            let mut i = 0;
            while i + 32 <= n {
                for u in 0..4 {
                    let j = i + 8 * u;
                    _mm256_storeu_ps(o.add(j), bin(op, load(a, sa, j), load(b, sb, j)));
                }
                i += 32;
            }
            while i + 8 <= n {
                _mm256_storeu_ps(o.add(i), bin(op, load(a, sa, i), load(b, sb, i)));
                i += 8;
            }
            while i < n {
                *o.add(i) = bin_scalar(op, *a.add(i * sa), *b.add(i * sb));
                i += 1;
            }
        }
    }

    /// exp(x) for 8 lanes: Cephes `expf` (range reduction by ln 2 in two parts, degree-5
    /// polynomial), NaN-propagating; +∞ above ln(f32::MAX), gradual underflow down to the
    /// smallest subnormal and 0 below −103.97.
    #[inline(always)]
    pub unsafe fn exp(x: __m256) -> __m256 {
        // SAFETY: only called from functions compiled with avx2+fma enabled.
        unsafe {
            let hi = _mm256_set1_ps(88.722_83);
            let lo = _mm256_set1_ps(-103.972_08);
            // min/max with x second keep a NaN x (they return the second operand).
            let xc = _mm256_max_ps(lo, _mm256_min_ps(hi, x));
            let fx = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            );
            let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), xc);
            let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), r);
            let mut y = _mm256_set1_ps(1.987_569_1e-4);
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.398_2e-3));
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.333_452e-3));
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.166_579_6e-2));
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.166_666_65));
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.5));
            let r2 = _mm256_mul_ps(r, r);
            y = _mm256_fmadd_ps(y, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
            // Scale by 2^n as 2^(n/2) · 2^(n − n/2): n ∈ [−150, 128] after the clamp, and
            // each half stays a normal power of two, so results near f32::MAX do not
            // overflow early and tiny ones underflow gradually, like libm.
            let n = _mm256_cvtps_epi32(fx);
            let n1 = _mm256_srai_epi32::<1>(n);
            let n2 = _mm256_sub_epi32(n, n1);
            let bias = _mm256_set1_epi32(127);
            let p1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
            let p2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
            let y = _mm256_mul_ps(_mm256_mul_ps(y, p1), p2);
            let y = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, lo), y);
            _mm256_blendv_ps(
                y,
                _mm256_set1_ps(f32::INFINITY),
                _mm256_cmp_ps::<_CMP_GT_OQ>(x, hi),
            )
        }
    }

    /// erf by Abramowitz & Stegun 7.1.26 (as `erf_scalar`).
    #[inline(always)]
    unsafe fn erf(x: __m256) -> __m256 {
        // SAFETY: only called from functions compiled with avx2+fma enabled.
        unsafe {
            let sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0));
            let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
            let one = _mm256_set1_ps(1.0);
            let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.327_591_1), a, one));
            let mut p = _mm256_set1_ps(1.061_405_4);
            p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453_152_1));
            p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421_413_7));
            p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284_496_72));
            p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254_829_6));
            p = _mm256_mul_ps(p, t);
            let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
            let y = _mm256_fnmadd_ps(p, e, one);
            _mm256_or_ps(y, sign)
        }
    }

    /// tanh: an odd Taylor polynomial below |x| = 0.3 (where 1 − 2/(e^{2|x|}+1) would
    /// cancel), that formula above; NaN-propagating.
    #[inline(always)]
    unsafe fn tanh(x: __m256) -> __m256 {
        // SAFETY: only called from functions compiled with avx2+fma enabled.
        unsafe {
            let sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0));
            let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
            let one = _mm256_set1_ps(1.0);
            let e = exp(_mm256_add_ps(a, a));
            let big = _mm256_sub_ps(
                one,
                _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one)),
            );
            let a2 = _mm256_mul_ps(a, a);
            let mut p = _mm256_set1_ps(62.0 / 2835.0);
            p = _mm256_fmadd_ps(p, a2, _mm256_set1_ps(-17.0 / 315.0));
            p = _mm256_fmadd_ps(p, a2, _mm256_set1_ps(2.0 / 15.0));
            p = _mm256_fmadd_ps(p, a2, _mm256_set1_ps(-1.0 / 3.0));
            let small = _mm256_fmadd_ps(_mm256_mul_ps(p, a2), a, a);
            let y = _mm256_blendv_ps(
                big,
                small,
                _mm256_cmp_ps::<_CMP_LT_OQ>(a, _mm256_set1_ps(0.3)),
            );
            // A NaN input fails the comparison and takes `big`, which is NaN too.
            _mm256_or_ps(y, sign)
        }
    }

    #[inline(always)]
    unsafe fn un(op: UnOp, x: __m256) -> __m256 {
        // SAFETY: only called from functions compiled with avx2+fma enabled.
        unsafe {
            let zero = _mm256_setzero_ps();
            let one = _mm256_set1_ps(1.0);
            let half = _mm256_set1_ps(0.5);
            match op {
                // maxps(0, x) returns x when x is NaN and keeps −0.0 (0 > −0 is false),
                // exactly the scalar `if x < 0 { 0 } else { x }`.
                UnOp::Relu => _mm256_max_ps(zero, x),
                UnOp::Relu2 => {
                    let r = _mm256_max_ps(zero, x);
                    _mm256_mul_ps(r, r)
                }
                UnOp::GeluErf => {
                    let e = erf(_mm256_mul_ps(x, _mm256_set1_ps(FRAC_1_SQRT_2)));
                    _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, e))
                }
                UnOp::GeluTanh => {
                    let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
                    let inner = _mm256_mul_ps(
                        _mm256_set1_ps(SQRT_2_OVER_PI),
                        _mm256_fmadd_ps(_mm256_set1_ps(GELU_TANH_C), x3, x),
                    );
                    _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, tanh(inner)))
                }
                UnOp::Silu => {
                    let e = exp(_mm256_sub_ps(zero, x));
                    _mm256_div_ps(x, _mm256_add_ps(one, e))
                }
                UnOp::Sigmoid => {
                    let e = exp(_mm256_sub_ps(zero, x));
                    _mm256_div_ps(one, _mm256_add_ps(one, e))
                }
                UnOp::Tanh => tanh(x),
                UnOp::Exp => exp(x),
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn unary(op: UnOp, x: &[f32], out: &mut [f32]) {
        // SAFETY: both slices have the same length (checked by the caller).
        unsafe { unary_ptr(op, x.as_ptr(), out.as_mut_ptr(), out.len()) }
    }

    /// `o[i] = op(x[i])` for n elements; `x` may equal `o` (each vector is loaded before
    /// it is stored).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn unary_ptr(op: UnOp, x: *const f32, o: *mut f32, n: usize) {
        // SAFETY: x and o are valid for n elements (caller).
        unsafe {
            let mut i = 0;
            while i + 8 <= n {
                _mm256_storeu_ps(o.add(i), un(op, _mm256_loadu_ps(x.add(i))));
                i += 8;
            }
            if i < n {
                // The tail goes through the vector code too (via a padded copy), so every
                // element of an output gets the same approximation.
                let mut buf = [0f32; 8];
                let rest = n - i;
                std::ptr::copy_nonoverlapping(x.add(i), buf.as_mut_ptr(), rest);
                let v = un(op, _mm256_loadu_ps(buf.as_ptr()));
                _mm256_storeu_ps(buf.as_mut_ptr(), v);
                std::ptr::copy_nonoverlapping(buf.as_ptr(), o.add(i), rest);
            }
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: only called from functions compiled with avx2 enabled.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sum(x: &[f32]) -> f32 {
        let n = x.len();
        let p = x.as_ptr();
        // SAFETY: all loads are inside `x`.
        unsafe {
            // Four accumulators hide the 3–4 cycle add latency.
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_add_ps(*a, _mm256_loadu_ps(p.add(i + 8 * u)));
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_add_ps(acc[0], _mm256_loadu_ps(p.add(i)));
                i += 8;
            }
            let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut s = hsum(v);
            while i < n {
                s += *p.add(i);
                i += 1;
            }
            s
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
        let n = x.len();
        let p = x.as_ptr();
        // SAFETY: all loads are inside `x`.
        unsafe {
            let m = _mm256_set1_ps(mean);
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (u, a) in acc.iter_mut().enumerate() {
                    let d = _mm256_sub_ps(_mm256_loadu_ps(p.add(i + 8 * u)), m);
                    *a = _mm256_fmadd_ps(d, d, *a);
                }
                i += 32;
            }
            while i + 8 <= n {
                let d = _mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m);
                acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
                i += 8;
            }
            let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut s = hsum(v);
            while i < n {
                let d = *p.add(i) - mean;
                s += d * d;
                i += 1;
            }
            s
        }
    }

    /// NaN-propagating max (`is_max`) or min of `x`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn minmax(x: &[f32], is_max: bool) -> f32 {
        let n = x.len();
        let p = x.as_ptr();
        let init = if is_max {
            f32::NEG_INFINITY
        } else {
            f32::INFINITY
        };
        // SAFETY: all loads are inside `x`.
        unsafe {
            let mut acc = [_mm256_set1_ps(init); 2];
            // NaNs are tracked separately: maxps would drop them.
            let mut nan = _mm256_setzero_ps();
            let mut i = 0;
            while i + 16 <= n {
                for (u, a) in acc.iter_mut().enumerate() {
                    let v = _mm256_loadu_ps(p.add(i + 8 * u));
                    nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                    *a = if is_max {
                        _mm256_max_ps(*a, v)
                    } else {
                        _mm256_min_ps(*a, v)
                    };
                }
                i += 16;
            }
            while i + 8 <= n {
                let v = _mm256_loadu_ps(p.add(i));
                nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                acc[0] = if is_max {
                    _mm256_max_ps(acc[0], v)
                } else {
                    _mm256_min_ps(acc[0], v)
                };
                i += 8;
            }
            if _mm256_movemask_ps(nan) != 0 {
                return f32::NAN;
            }
            let mut lanes = [0f32; 16];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[1]);
            let op = if is_max { BinOp::Max } else { BinOp::Min };
            let mut m = lanes.iter().fold(init, |m, &v| bin_scalar(op, m, v));
            while i < n {
                m = bin_scalar(op, m, *p.add(i));
                i += 1;
            }
            m
        }
    }
}
