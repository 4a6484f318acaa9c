//! Per-token absmax int8 activation quantization (BitNet b1.58 paper §2):
//! `a = 127 / max(max|x|, eps)`, `q = clamp(round(x·a), -128, 127)`, `x ≈ q / a`.
//!
//! Matches transformers' `ActQuant` bit for bit: the multiplier is an f32 division and
//! rounding is half to even (`torch.round`).

/// Floor for max|x|, as in transformers and bitnet.cpp.
pub const EPS: f32 = 1e-5;

/// max|x| over a row (0 for an empty row).
#[inline]
pub fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, &v| m.max(v.abs()))
}

/// The quantization multiplier `a = 127 / max(absmax, EPS)`.
#[inline]
pub fn multiplier(absmax: f32) -> f32 {
    127.0f32 / absmax.max(EPS)
}

/// Quantize one token's activations. Returns the dequantization factor `1 / a`, so that
/// `x ≈ q · factor`.
///
/// # Panics
/// If `q.len() != x.len()`.
pub fn quantize(x: &[f32], q: &mut [i8]) -> f32 {
    assert_eq!(x.len(), q.len(), "act::quantize: output length");
    let a = multiplier(absmax(x));
    quantize_with(x, a, q);
    1.0 / a
}

/// `clamp(round_half_even(v), -128, 127)` as i8.
///
/// Clamping first is equivalent (rounding is monotonic and the bounds are integers) and
/// keeps |v| < 2^22, where adding and subtracting 1.5·2^23 rounds half to even in the
/// default rounding mode. Unlike `f32::round_ties_even`, which compiles to a call to libm's
/// `rintf` on baseline x86-64, this stays inline and vectorizes. NaN becomes 0.
#[inline(always)]
pub fn round_to_i8(v: f32) -> i8 {
    ((v.clamp(-128.0, 127.0) + ROUND_MAGIC) - ROUND_MAGIC) as i8
}

/// 1.5 · 2^23: adding and subtracting it rounds |v| < 2^22 half to even ([`round_to_i8`]).
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;

/// Quantize with a known multiplier `a` (see [`multiplier`]).
#[inline]
pub fn quantize_with(x: &[f32], a: f32, q: &mut [i8]) {
    for (qi, &xi) in q.iter_mut().zip(x) {
        *qi = round_to_i8(xi * a);
    }
}

/// Quantize `rows` tokens of length `k` each (row-major), writing one factor per row.
pub fn quantize_rows(x: &[f32], k: usize, q: &mut [i8], factors: &mut [f32]) {
    assert_eq!(x.len(), q.len(), "act::quantize_rows: output length");
    assert_eq!(x.len(), k * factors.len(), "act::quantize_rows: rows");
    for ((xr, qr), f) in x.chunks_exact(k).zip(q.chunks_exact_mut(k)).zip(factors) {
        *f = quantize(xr, qr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_values() {
        let x = [1.0f32, -0.5, 0.25, 0.0, -1.0];
        let mut q = [0i8; 5];
        let f = quantize(&x, &mut q);
        // a = 127: 127, -63.5 -> -64 (half to even), 31.75 -> 32, 0, -127
        assert_eq!(q, [127, -64, 32, 0, -127]);
        assert_eq!(f, 1.0 / 127.0);
    }

    #[test]
    fn fast_rounding_equals_round_ties_even_then_clamp() {
        let mut v = -300.0f32;
        while v <= 300.0 {
            for x in [v, v + 0.5, v - 0.5, f32::from_bits(v.to_bits() + 1)] {
                let want = x.round_ties_even().clamp(-128.0, 127.0) as i8;
                assert_eq!(round_to_i8(x), want, "{x}");
            }
            v += 0.25;
        }
        assert_eq!(round_to_i8(f32::NAN), 0);
        assert_eq!(round_to_i8(f32::INFINITY), 127);
        assert_eq!(round_to_i8(f32::NEG_INFINITY), -128);
    }

    #[test]
    fn zero_row_is_all_zero() {
        let x = [0.0f32; 7];
        let mut q = [9i8; 7];
        quantize(&x, &mut q);
        assert!(q.iter().all(|&v| v == 0));
    }
}
