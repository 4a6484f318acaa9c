//! RMSNorm, alone and fused with int8 activation quantization (the input of every
//! BitLinear in BitNet b1.58 is `quantize(rmsnorm(x))`).

use crate::quant::act;

/// `1/sqrt(mean(x²) + eps)`, with the same operations as transformers' `BitNetRMSNorm`
/// (f32 mean of squares, then `rsqrt(variance + eps)` computed as `1 / sqrt`). The sum of
/// squares is accumulated in f64 and rounded once, which gives the correctly rounded f32
/// mean; PyTorch's pairwise f32 sum agrees with it except in rare last-bit cases.
#[inline]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    // Eight independent f64 sums (vectorized) instead of one dependent chain; each square
    // is exact in f64, so only the order of the f64 additions changes.
    let mut acc = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v as f64) * (v as f64);
        }
    }
    let ss = rest
        .iter()
        .fold(acc.iter().sum::<f64>(), |s, &v| s + (v as f64) * (v as f64));
    let variance = if x.is_empty() {
        0.0
    } else {
        (ss / x.len() as f64) as f32
    };
    1.0f32 / (variance + eps).sqrt()
}

/// One row: `out = weight * (x * (1/sqrt(mean(x²) + eps)))`, in f32, in that order.
///
/// # Panics
/// If `weight` or `out` differ in length from `x`.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(weight.len(), x.len(), "rmsnorm: weight length");
    assert_eq!(out.len(), x.len(), "rmsnorm: output length");
    let r = inv_rms(x, eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(weight) {
        *o = g * (v * r);
    }
}

/// [`rmsnorm`] then [`act::quantize`], fused without a temporary row: the normalized
/// values are computed twice (once for the absmax, once to quantize) with the identical
/// f32 operations, so `q` is bit-identical to the unfused pair. Returns the activation
/// factor `1/a`.
///
/// # Panics
/// If `weight` or `q` differ in length from `x`.
pub fn rmsnorm_quantize(x: &[f32], weight: &[f32], eps: f32, q: &mut [i8]) -> f32 {
    assert_eq!(weight.len(), x.len(), "rmsnorm_quantize: weight length");
    assert_eq!(q.len(), x.len(), "rmsnorm_quantize: output length");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected at run time.
        return unsafe { avx2::rmsnorm_quantize(x, weight, eps, q) };
    }
    rmsnorm_quantize_scalar(x, weight, eps, q)
}

/// [`rmsnorm_quantize`] in plain Rust (what the AVX2 version must equal bit for bit).
pub fn rmsnorm_quantize_scalar(x: &[f32], weight: &[f32], eps: f32, q: &mut [i8]) -> f32 {
    assert_eq!(weight.len(), x.len(), "rmsnorm_quantize: weight length");
    assert_eq!(q.len(), x.len(), "rmsnorm_quantize: output length");
    let r = inv_rms(x, eps);
    // Eight running maxima (vectorized); the maximum does not depend on the order.
    let mut mx = [0.0f32; 8];
    for (c, g) in x.chunks_exact(8).zip(weight.chunks_exact(8)) {
        for ((m, &v), &g) in mx.iter_mut().zip(c).zip(g) {
            *m = m.max((g * (v * r)).abs());
        }
    }
    let tail = x.len() / 8 * 8;
    let absmax = x[tail..]
        .iter()
        .zip(&weight[tail..])
        .fold(mx.iter().fold(0.0f32, |a, &b| a.max(b)), |m, (&v, &g)| {
            m.max((g * (v * r)).abs())
        });
    let a = act::multiplier(absmax);
    for ((qi, &v), &g) in q.iter_mut().zip(x).zip(weight) {
        *qi = act::round_to_i8((g * (v * r)) * a);
    }
    1.0 / a
}

/// The maximum and the codes 8 lanes at a time. Compiled for baseline x86-64, the scalar
/// loops stayed scalar (`as i8` saturates per element, and `f32::max` ignores NaN), and
/// prompt processing spent 13 % of its time here on the Xeon (BENCHMARKS.md, thirteenth
/// session). Every lane does the scalar code's f32 operations in the same order.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{act, inv_rms};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 must be available; `weight` and `q` as long as `x`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn rmsnorm_quantize(x: &[f32], weight: &[f32], eps: f32, q: &mut [i8]) -> f32 {
        let n = x.len();
        let r = inv_rms(x, eps);
        let rv = _mm256_set1_ps(r);
        let sign = _mm256_set1_ps(-0.0);
        // y = g·(x·r), as in the scalar code.
        let y = |i: usize| {
            // SAFETY: callers pass i + 8 <= n, and all three slices hold n values.
            let (v, g) = unsafe {
                (
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                    _mm256_loadu_ps(weight.as_ptr().add(i)),
                )
            };
            _mm256_mul_ps(g, _mm256_mul_ps(v, rv))
        };
        // max(|y|, m) returns m where |y| is NaN, as `f32::max` ignores NaN.
        let mut m = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            m = _mm256_max_ps(_mm256_andnot_ps(sign, y(i)), m);
            i += 8;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        let absmax = x[i..].iter().zip(&weight[i..]).fold(
            lanes.iter().fold(0.0f32, |a, &b| a.max(b)),
            |m, (&v, &g)| m.max((g * (v * r)).abs()),
        );
        let a = act::multiplier(absmax);
        let av = _mm256_set1_ps(a);
        let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
        let magic = _mm256_set1_ps(act::ROUND_MAGIC);
        // One step: 8 codes as i32 (round half to even by the 1.5·2^23 trick after the
        // clamp, as `act::round_to_i8`; NaN lanes 0, as `as i8` makes them).
        let codes = |i: usize| {
            let t = _mm256_mul_ps(y(i), av);
            let c = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
            let rnd = _mm256_sub_ps(_mm256_add_ps(c, magic), magic);
            let ordered = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(t, t));
            _mm256_and_si256(_mm256_cvtps_epi32(rnd), ordered)
        };
        let mut i = 0;
        while i + 32 <= n {
            let (c0, c1, c2, c3) = (codes(i), codes(i + 8), codes(i + 16), codes(i + 24));
            // packs work within 128-bit lanes; the permute puts the four groups in order.
            let p = _mm256_packs_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
            let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            // SAFETY: i + 32 <= n = q.len().
            unsafe { _mm256_storeu_si256(q.as_mut_ptr().add(i) as *mut __m256i, p) };
            i += 32;
        }
        for ((qi, &v), &g) in q[i..].iter_mut().zip(&x[i..]).zip(&weight[i..]) {
            *qi = act::round_to_i8((g * (v * r)) * a);
        }
        1.0 / a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatched version (AVX2 where available) equals the scalar code bit for bit,
    /// including NaN, ±inf, zero rows, exact ties and lengths around the 32-value step.
    #[test]
    fn rmsnorm_quantize_equals_the_scalar_code() {
        let mut s = 7u64;
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        };
        for n in [1usize, 7, 8, 31, 32, 33, 64, 100, 2560, 6912] {
            for case in 0..8 {
                let mut x: Vec<f32> = (0..n).map(|_| next()).collect();
                let w: Vec<f32> = (0..n).map(|_| next()).collect();
                match case {
                    1 => x.iter_mut().for_each(|v| *v = 0.0),
                    2 => x[n / 2] = f32::NAN,
                    3 => x[n - 1] = f32::INFINITY,
                    4 => x[0] = f32::NEG_INFINITY,
                    // Values whose codes land on .5 before rounding: ties to even.
                    5 => x
                        .iter_mut()
                        .enumerate()
                        .for_each(|(i, v)| *v = (i % 9) as f32 * 0.5),
                    6 => x.iter_mut().step_by(3).for_each(|v| *v = f32::NAN),
                    _ => {}
                }
                let (mut q1, mut q2) = (vec![0i8; n], vec![0i8; n]);
                let f1 = rmsnorm_quantize_scalar(&x, &w, 1e-5, &mut q1);
                let f2 = rmsnorm_quantize(&x, &w, 1e-5, &mut q2);
                assert_eq!(q1, q2, "n {n} case {case}");
                assert_eq!(f1.to_bits(), f2.to_bits(), "n {n} case {case}");
            }
        }
    }
}
