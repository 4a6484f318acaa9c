//! RMSNorm, alone and fused with int8 activation quantization (the input of every
//! BitLinear in BitNet b1.58 is `quantize(rmsnorm(x))`).

use crate::quant::act;

/// `1/sqrt(mean(x²) + eps)`, with the same operations as transformers' `BitNetRMSNorm`
/// (f32 mean of squares, then `rsqrt(variance + eps)` computed as `1 / sqrt`). The sum of
/// squares is accumulated in f64 and rounded once, which gives the correctly rounded f32
/// mean; PyTorch's pairwise f32 sum agrees with it except in rare last-bit cases.
#[inline]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
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
    let r = inv_rms(x, eps);
    let absmax = x
        .iter()
        .zip(weight)
        .fold(0.0f32, |m, (&v, &g)| m.max((g * (v * r)).abs()));
    let a = act::multiplier(absmax);
    for ((qi, &v), &g) in q.iter_mut().zip(x).zip(weight) {
        *qi = act::round_to_i8((g * (v * r)) * a);
    }
    1.0 / a
}
