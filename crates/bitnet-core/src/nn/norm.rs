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
