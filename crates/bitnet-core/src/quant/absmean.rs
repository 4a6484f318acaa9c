//! BitNet b1.58 weight ternarization (paper §2, "absmean" quantization):
//! `s = 1 / max(mean|W|, eps)`, `q = clamp(round(W·s), -1, 1)`, `W ≈ q / s`.
//!
//! Matches transformers' `WeightQuant` / bitnet.cpp's `preprocess-huggingface-bitnet.py`:
//! the multiplier is computed in f32 and rounding is half to even like `torch.round`.

/// Floor for the mean absolute value, so an all-zero tensor gets a finite scale.
pub const EPS: f32 = 1e-5;

/// Ternarize a whole tensor with one absmean scale.
///
/// Writes the trits (−1, 0, +1) into `q` and returns the dequantization scale
/// `max(mean|W|, EPS)`, so that `W ≈ q · scale`.
///
/// # Panics
/// If `q.len() != w.len()` (a programming error, not bad input).
pub fn ternarize(w: &[f32], q: &mut [i8]) -> f32 {
    assert_eq!(w.len(), q.len(), "ternarize: output length");
    let scale = mean_abs(w).max(EPS);
    let s = 1.0f32 / scale;
    for (qi, &wi) in q.iter_mut().zip(w) {
        *qi = (wi * s).round_ties_even().clamp(-1.0, 1.0) as i8;
    }
    scale
}

/// Mean of |w|, accumulated in f64 so the result is the correctly rounded f32 mean for
/// any realistic tensor size (PyTorch's pairwise f32 sum lands on the same value).
pub fn mean_abs(w: &[f32]) -> f32 {
    if w.is_empty() {
        return 0.0;
    }
    let sum: f64 = w.iter().map(|&x| x.abs() as f64).sum();
    (sum / w.len() as f64) as f32
}

/// `q · scale` back to f32.
pub fn dequantize(q: &[i8], scale: f32, out: &mut [f32]) {
    assert_eq!(q.len(), out.len(), "dequantize: output length");
    for (o, &qi) in out.iter_mut().zip(q) {
        *o = qi as f32 * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_and_clamps() {
        // mean|w| = 1 -> s = 1: ±0.5 -> 0 (half to even), 1.5 and 2.5 -> 2 -> clamp 1.
        let w = [0.5f32, -0.5, 1.5, 2.5, -2.5, 0.5, 0.0, 0.0];
        let mut q = [9i8; 8];
        let scale = ternarize(&w, &mut q);
        assert_eq!(scale, 1.0);
        assert_eq!(q, [0, 0, 1, 1, -1, 0, 0, 0]);
    }

    #[test]
    fn all_zero_tensor_gets_eps_scale() {
        let w = [0.0f32; 16];
        let mut q = [1i8; 16];
        assert_eq!(ternarize(&w, &mut q), EPS);
        assert!(q.iter().all(|&x| x == 0));
    }
}
