//! llama.cpp's `Q8_0` (GGML type id 8): blocks of 32 weights, f16 scale + 32 × i8.
//!
//! Source: ggml-org/llama.cpp `ggml/src/ggml-common.h` (`block_q8_0 { ggml_half d;
//! int8_t qs[QK8_0]; }`) and `ggml/src/ggml-quants.c` (`quantize_row_q8_0_ref`:
//! `d = max|x|/127`, `q = roundf(x/d)`; `dequantize_row_q8_0`: `x = q·d`). Re-implemented.
//!
//! Also the int8 activation side used by [`crate::quant::dense`]: [`quantize_act`]
//! quantizes an f32 vector per block of 32 with an **f32** scale (llama.cpp's Q8_0
//! activations use an f16 scale; f32 avoids that extra 2^-11 relative error), values in
//! −127..=127 so the AVX2 `maddubs` sign trick cannot overflow.

use crate::error::{Error, Result};
use half::f16;

/// Weights per block.
pub const QK: usize = 32;
/// Bytes per block: f16 scale + 32 i8.
pub const BLOCK_BYTES: usize = 34;

/// `ggml-common.h`'s `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// f16 bits of the scale.
    pub d: u16,
    pub qs: [i8; QK],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == BLOCK_BYTES);

const FMT: &str = "Q8_0";
const BLOCKS: super::Blocks = super::Blocks {
    name: FMT,
    block: QK,
    bytes: BLOCK_BYTES,
};

/// Number of weights of a `rows × cols` tensor, checked (`cols % 32 == 0`, no overflow).
pub fn check_shape(rows: usize, cols: usize) -> Result<usize> {
    BLOCKS.check_shape(rows, cols)
}

/// Bytes of one row of `cols` weights.
pub fn row_bytes(cols: usize) -> usize {
    BLOCKS.size_of(cols)
}

/// Bytes of a `rows × cols` tensor.
pub fn tensor_bytes(rows: usize, cols: usize) -> Result<usize> {
    Ok(BLOCKS.size_of(check_shape(rows, cols)?))
}

/// `quantize_row_q8_0_ref` on `x` (a multiple of 32 values) into `out`.
pub fn quantize_row(x: &[f32], out: &mut [u8]) -> Result<()> {
    if !x.len().is_multiple_of(QK) || out.len() != x.len() / QK * BLOCK_BYTES {
        return Err(Error::format(
            FMT,
            format!("quantize_row: {} values into {} bytes", x.len(), out.len()),
        ));
    }
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        let amax = xb.iter().fold(0f32, |m, &v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob[..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for (o, &v) in ob[2..].iter_mut().zip(xb) {
            // roundf: half away from zero.
            *o = (v * id).round() as i8 as u8;
        }
    }
    Ok(())
}

/// Quantize a row-major `rows × cols` tensor.
pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>> {
    let n = check_shape(rows, cols)?;
    BLOCKS.check_values(x, n)?;
    let mut out = crate::memory::weight_buffer(BLOCKS.size_of(n));
    quantize_row(x, &mut out)?;
    Ok(out)
}

/// `dequantize_row_q8_0`: `bytes` holds `out.len()/32` blocks.
pub fn dequantize_row(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    if !out.len().is_multiple_of(QK) || bytes.len() < out.len() / QK * BLOCK_BYTES {
        return Err(Error::format(
            FMT,
            format!(
                "dequantize_row: {} bytes for {} values",
                bytes.len(),
                out.len()
            ),
        ));
    }
    for (b, ob) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK))
    {
        let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        for (o, &q) in ob.iter_mut().zip(&b[2..]) {
            *o = q as i8 as f32 * d;
        }
    }
    Ok(())
}

/// Dequantize a whole `rows × cols` tensor.
pub fn dequantize(bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>> {
    let n = check_shape(rows, cols)?;
    let mut out = vec![0f32; n];
    dequantize_row(bytes, &mut out)?;
    Ok(out)
}

/// Dot product of one Q8_0 row (`x.len()/32` blocks) with an f32 vector (weights
/// dequantized on the fly, f32 accumulation).
pub fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in row.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(QK)) {
        let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        let s: f32 = b[2..]
            .iter()
            .zip(xb)
            .map(|(&q, &v)| q as i8 as f32 * v)
            .sum();
        acc += d * s;
    }
    acc
}

/// Quantize activations per block of 32: `xq ∈ −127..=127`, `xd[b]` = f32 block scale
/// (`max|x_b|/127`), so `x ≈ xq·xd`. `x.len()` must be a multiple of 32.
pub fn quantize_act(x: &[f32], xq: &mut [i8], xd: &mut [f32]) {
    assert!(x.len().is_multiple_of(QK) && xq.len() == x.len() && xd.len() == x.len() / QK);
    for ((xb, qb), d) in x.chunks_exact(QK).zip(xq.chunks_exact_mut(QK)).zip(xd) {
        let amax = xb.iter().fold(0f32, |m, &v| m.max(v.abs()));
        *d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    }
}

/// Σ_i w_i·x_i over 32 int8 pairs (scalar).
#[inline]
pub fn isum32_scalar(w: &[i8], x: &[i8]) -> i32 {
    w.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum()
}

/// Dot of a Q8_0 row with block-quantized activations (see [`quantize_act`]):
/// `Σ_b d_w[b]·xd[b]·Σ w·xq`. Uses AVX2 when available.
pub fn dot_q8(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: AVX2, FMA and F16C were detected at run time.
            return unsafe { avx2::dot_q8(row, xq, xd) };
        }
    }
    dot_q8_scalar(row, xq, xd)
}

/// Scalar version of [`dot_q8`].
pub fn dot_q8_scalar(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    let mut acc = 0f32;
    for ((b, qb), &d) in row
        .chunks_exact(BLOCK_BYTES)
        .zip(xq.chunks_exact(QK))
        .zip(xd)
    {
        let dw = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        // Bytes 2..34 are the i8 quants.
        let s: i32 = b[2..]
            .iter()
            .zip(qb)
            .map(|(&w, &v)| w as i8 as i32 * v as i32)
            .sum();
        acc += dw * d * s as f32;
    }
    acc
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use crate::cpu::Prefetch;
    use std::arch::x86_64::*;

    /// Eight i32 lanes of Σ w·x over 32 int8 pairs (x in −127..=127).
    ///
    /// # Safety
    /// Requires AVX2; `w` and `x` must point to 32 readable bytes each.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn isum32(w: *const u8, x: *const i8) -> __m256i {
        // SAFETY: the caller guarantees 32 readable bytes at each pointer.
        let (wv, xv) = unsafe {
            (
                _mm256_loadu_si256(w as *const __m256i),
                _mm256_loadu_si256(x as *const __m256i),
            )
        };
        let aw = _mm256_sign_epi8(wv, wv);
        let sx = _mm256_sign_epi8(xv, wv);
        let p16 = _mm256_maddubs_epi16(aw, sx);
        _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
    }

    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
        let pf = Prefetch::get();
        let nb = (row.len() / super::BLOCK_BYTES)
            .min(xq.len() / super::QK)
            .min(xd.len());
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            let blk = &row[b * super::BLOCK_BYTES..][..super::BLOCK_BYTES];
            if b % 2 == 0 {
                // One line per 68 bytes, the prefetch distance ahead.
                pf.ahead::<_MM_HINT_T0>(blk.as_ptr(), 0);
            }
            // F16C converts exactly, like `half`, whose run-time dispatch is an out-of-line
            // call per block that spills this loop's vector registers. The scale comes in
            // with an 8-byte load (lane 0 of four halves): a 16-bit insert into a register
            // let LLVM merge into the accumulator's register, chaining every block's scale
            // behind the previous block's FMA (6.9 GiB/s on one core).
            // SAFETY: the block is 34 bytes long, so bytes 0..8 are in bounds.
            let h = unsafe { _mm_loadl_epi64(blk.as_ptr() as *const __m128i) };
            let dw = _mm_cvtss_f32(_mm_cvtph_ps(h));
            // SAFETY: blk[2..34] and xq[32b..32b+32] are in bounds (b < nb).
            let s = unsafe { isum32(blk.as_ptr().add(2), xq.as_ptr().add(b * super::QK)) };
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(dw * xd[b]), acc);
        }
        hsum(acc)
    }

    /// Horizontal sum of 8 f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    #[test]
    fn quantize_dequantize_error_bound() {
        let x = data(4 * 64, 1);
        let b = quantize(&x, 4, 64).unwrap();
        assert_eq!(b.len(), 4 * 2 * 34);
        let y = dequantize(&b, 4, 64).unwrap();
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let amax = xb.iter().fold(0f32, |m, &v| m.max(v.abs()));
            for (a, c) in xb.iter().zip(yb) {
                assert!((a - c).abs() <= amax / 127.0 * 0.5 + amax * 1e-3, "{a} {c}");
            }
        }
    }

    #[test]
    fn int8_dot_matches_scalar_and_reference() {
        let w = data(256, 2);
        let x = data(256, 3);
        let b = quantize(&w, 1, 256).unwrap();
        let wd = dequantize(&b, 1, 256).unwrap();
        let exact: f32 = wd.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!((dot_f32(&b, &x) - exact).abs() < 1e-4);
        let mut xq = vec![0i8; 256];
        let mut xd = vec![0f32; 8];
        quantize_act(&x, &mut xq, &mut xd);
        let s = dot_q8_scalar(&b, &xq, &xd);
        let v = dot_q8(&b, &xq, &xd);
        assert!((s - v).abs() <= 1e-4 * s.abs().max(1.0), "{s} {v}");
        // Activation rounding error bound: Σ_b Σ|w|·xd/2.
        let bound: f32 = wd
            .chunks(32)
            .zip(&xd)
            .map(|(wb, d)| wb.iter().map(|w| w.abs()).sum::<f32>() * d * 0.5)
            .sum();
        assert!(
            (s - exact).abs() <= bound * 1.01 + 1e-5,
            "{s} {exact} {bound}"
        );
    }

    #[test]
    fn errors() {
        assert!(quantize(&[0.0; 30], 1, 30).is_err());
        assert!(dequantize(&[0u8; 33], 1, 32).is_err());
    }
}
