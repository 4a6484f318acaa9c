//! llama.cpp's `TQ1_0` ternary format (GGML type id 34): 1.6875 bits per weight, blocks
//! of 256.
//!
//! Source: ggml-org/llama.cpp `ggml/src/ggml-common.h` (`block_tq1_0`:
//! `uint8_t qs[(QK_K - 4*QK_K/64)/5]` = 48, `uint8_t qh[QK_K/64]` = 4, `ggml_half d`) and
//! `ggml/src/ggml-quants.c` (`quantize_row_tq1_0_ref`, `dequantize_row_tq1_0`).
//! Re-implemented here.
//!
//! Trits are stored as base-3 fixed point: a byte holding trits `t0..t4` (codes 0..=2,
//! `t0` most significant) stores `ceil(Σ t_k·3^(4−k) · 256 / 243)`; trit `n` is read back
//! as `((byte · 3^n) mod 256) · 3 >> 8`. Weight order inside a block:
//! * weights `0..160`: `qs[m]` (m < 32) holds weights `m + 32·n`, n = 0..5;
//! * weights `160..240`: `qs[32+m]` (m < 16) holds weights `160 + m + 16·n`, n = 0..5;
//! * weights `240..256`: `qh[j]` (j < 4) holds weights `240 + j + 4·n`, n = 0..4 (4 trits,
//!   shifted up by one trit before the fixed-point conversion).
//!
//! `d` = f16 of the block's max|x|.

use crate::error::{Error, Result};
use half::f16;

/// Weights per block.
pub const QK_K: usize = 256;
/// Bytes per block: 48 + 4 + 2.
pub const BLOCK_BYTES: usize = 54;

/// `ggml-common.h`'s `block_tq1_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockTq1_0 {
    /// 5 trits per byte.
    pub qs: [u8; 48],
    /// 4 trits per byte.
    pub qh: [u8; 4],
    /// f16 bits of the block scale.
    pub d: u16,
}

const _: () = assert!(std::mem::size_of::<BlockTq1_0>() == BLOCK_BYTES);

const FMT: &str = "TQ1_0";
const BLOCKS: super::Blocks = super::Blocks {
    name: FMT,
    block: QK_K,
    bytes: BLOCK_BYTES,
};
const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

impl BlockTq1_0 {
    /// Read a block from its 54 little-endian bytes.
    pub fn from_bytes(b: &[u8; BLOCK_BYTES]) -> Self {
        let mut qs = [0u8; 48];
        qs.copy_from_slice(&b[..48]);
        let mut qh = [0u8; 4];
        qh.copy_from_slice(&b[48..52]);
        BlockTq1_0 {
            qs,
            qh,
            d: u16::from_le_bytes([b[52], b[53]]),
        }
    }

    /// Write the block as 54 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; BLOCK_BYTES] {
        let mut b = [0u8; BLOCK_BYTES];
        b[..48].copy_from_slice(&self.qs);
        b[48..52].copy_from_slice(&self.qh);
        b[52..].copy_from_slice(&self.d.to_le_bytes());
        b
    }
}

/// Number of weights of a `rows × cols` tensor, checked (`cols % 256 == 0`, no overflow).
pub fn check_shape(rows: usize, cols: usize) -> Result<usize> {
    BLOCKS.check_shape(rows, cols)
}

/// Bytes of a `rows × cols` tensor (`cols` a multiple of 256).
pub fn tensor_bytes(rows: usize, cols: usize) -> Result<usize> {
    Ok(BLOCKS.size_of(check_shape(rows, cols)?))
}

fn check_len(bytes: &[u8], n: usize) -> Result<()> {
    BLOCKS.check_len(bytes, n)
}

/// Fixed-point encode base-3 digits (already accumulated as `q`): ceil(q·256/243).
#[inline]
fn fixed(q: u8) -> u8 {
    (q as u16 * 256).div_ceil(243) as u8
}

/// Pack one block of codes (0..=2 each, in weight order) into `ob[..52]`.
fn pack_codes(c: &[u8; QK_K], ob: &mut [u8]) {
    for m in 0..32 {
        let mut q = 0u8;
        for n in 0..5 {
            q = q * 3 + c[m + 32 * n];
        }
        ob[m] = fixed(q);
    }
    for m in 0..16 {
        let mut q = 0u8;
        for n in 0..5 {
            q = q * 3 + c[160 + m + 16 * n];
        }
        ob[32 + m] = fixed(q);
    }
    for j in 0..4 {
        let mut q = 0u8;
        for n in 0..4 {
            q = q * 3 + c[240 + j + 4 * n];
        }
        ob[48 + j] = fixed(q * 3);
    }
}

#[inline]
fn trit(byte: u8, n: usize) -> u8 {
    let q = byte.wrapping_mul(POW3[n]);
    ((q as u16 * 3) >> 8) as u8
}

/// Codes (0..=2) of one block in weight order.
fn block_codes(b: &[u8], c: &mut [u8; QK_K]) {
    for n in 0..5 {
        for m in 0..32 {
            c[m + 32 * n] = trit(b[m], n);
        }
    }
    for n in 0..5 {
        for m in 0..16 {
            c[160 + m + 16 * n] = trit(b[32 + m], n);
        }
    }
    for n in 0..4 {
        for j in 0..4 {
            c[240 + j + 4 * n] = trit(b[48 + j], n);
        }
    }
}

#[inline]
fn block_d(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[52], b[53]])).to_f32()
}

/// `quantize_row_tq1_0_ref`: quantize `x` (a multiple of 256 values) into `out`
/// (`x.len()/256·54` bytes). Per block `d = max|x|`, code = `lroundf(x/d) + 1`.
pub fn quantize_row(x: &[f32], out: &mut [u8]) -> Result<()> {
    if !x.len().is_multiple_of(QK_K) || out.len() != x.len() / QK_K * BLOCK_BYTES {
        return Err(Error::format(
            FMT,
            format!("quantize_row: {} values into {} bytes", x.len(), out.len()),
        ));
    }
    let mut c = [0u8; QK_K];
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        let amax = xb.iter().fold(0f32, |m, &v| m.max(v.abs()));
        let id = if amax != 0.0 { 1.0 / amax } else { 0.0 };
        for (ci, &v) in c.iter_mut().zip(xb) {
            // lroundf = round half away from zero; |v·id| <= 1 so the code is 0..=2.
            *ci = ((v * id).round() as i32 + 1).clamp(0, 2) as u8;
        }
        pack_codes(&c, ob);
        ob[52..54].copy_from_slice(&f16::from_f32(amax).to_bits().to_le_bytes());
    }
    Ok(())
}

/// Quantize a row-major `rows × cols` f32 tensor.
pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>> {
    let n = check_shape(rows, cols)?;
    BLOCKS.check_values(x, n)?;
    let mut out = vec![0u8; BLOCKS.size_of(n)];
    quantize_row(x, &mut out)?;
    Ok(out)
}

/// Pack trits with one f32 scale per 256-weight block (stored as f16).
pub fn from_trits_and_scales(trits: &[i8], scales: &[f32]) -> Result<Vec<u8>> {
    if !trits.len().is_multiple_of(QK_K) || scales.len() != trits.len() / QK_K {
        return Err(Error::format(
            FMT,
            format!("{} trits with {} block scales", trits.len(), scales.len()),
        ));
    }
    let mut out = vec![0u8; scales.len() * BLOCK_BYTES];
    let mut c = [0u8; QK_K];
    for ((tb, ob), &d) in trits
        .chunks_exact(QK_K)
        .zip(out.chunks_exact_mut(BLOCK_BYTES))
        .zip(scales)
    {
        for (ci, &t) in c.iter_mut().zip(tb) {
            *ci = (t.clamp(-1, 1) + 1) as u8;
        }
        pack_codes(&c, ob);
        ob[52..54].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    }
    Ok(out)
}

/// `dequantize_row_tq1_0`: `bytes` holds `out.len()/256` blocks.
pub fn dequantize_row(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    if !out.len().is_multiple_of(QK_K) {
        return Err(Error::format(
            FMT,
            format!("row length {} not a multiple of {QK_K}", out.len()),
        ));
    }
    check_len(bytes, out.len())?;
    let mut c = [0u8; QK_K];
    for (b, ob) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let d = block_d(b);
        block_codes(b, &mut c);
        for (o, &ci) in ob.iter_mut().zip(c.iter()) {
            *o = (ci as i32 - 1) as f32 * d;
        }
    }
    Ok(())
}

/// Dequantize a whole `rows × cols` tensor.
pub fn dequantize(bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>> {
    let n = check_shape(rows, cols)?;
    check_len(bytes, n)?;
    let mut out = vec![0f32; n];
    dequantize_row(bytes, &mut out)?;
    Ok(out)
}

/// Split a `rows × cols` tensor into trits (row-major) and one f32 scale per 256-weight
/// block (f16 widened), in storage order. Errors on a non-finite/negative scale. (Every
/// byte decodes to valid trits, so there is no invalid-code case as in TQ2_0.)
pub fn to_trits_and_scales(bytes: &[u8], rows: usize, cols: usize) -> Result<(Vec<i8>, Vec<f32>)> {
    let n = check_shape(rows, cols)?;
    check_len(bytes, n)?;
    let mut trits = vec![0i8; n];
    let mut scales = Vec::with_capacity(n / QK_K);
    let mut c = [0u8; QK_K];
    for (b, tb) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(trits.chunks_exact_mut(QK_K))
    {
        let d = block_d(b);
        if !d.is_finite() || d < 0.0 {
            return Err(Error::format(FMT, format!("invalid block scale {d}")));
        }
        scales.push(d);
        block_codes(b, &mut c);
        for (t, &ci) in tb.iter_mut().zip(c.iter()) {
            *t = ci as i8 - 1;
        }
    }
    Ok((trits, scales))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trits(n: usize, seed: u32) -> Vec<i8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                ((s >> 16) % 3) as i8 - 1
            })
            .collect()
    }

    #[test]
    fn every_byte_pattern_round_trips() {
        // All 3^5 digit combinations survive the fixed-point encoding.
        for v in 0..243u16 {
            let mut digits = [0u8; 5];
            let mut r = v;
            for k in (0..5).rev() {
                digits[k] = (r % 3) as u8;
                r /= 3;
            }
            let mut q = 0u8;
            for &d in &digits {
                q = q * 3 + d;
            }
            let b = fixed(q);
            for (n, &d) in digits.iter().enumerate() {
                assert_eq!(trit(b, n), d, "value {v} trit {n}");
            }
        }
    }

    #[test]
    fn quantize_dequantize_ternary_exact() {
        let t = trits(768, 9);
        let x: Vec<f32> = t.iter().map(|&q| q as f32 * 0.25).collect();
        let b = quantize(&x, 1, 768).unwrap();
        assert_eq!(b.len(), 3 * 54);
        assert_eq!(dequantize(&b, 1, 768).unwrap(), x);
        let (t2, s) = to_trits_and_scales(&b, 1, 768).unwrap();
        assert_eq!(t2, t);
        assert_eq!(s, vec![0.25; 3]);
        assert_eq!(from_trits_and_scales(&t, &s).unwrap(), b);
        let blk = BlockTq1_0::from_bytes(b[..54].try_into().unwrap());
        assert_eq!(blk.to_bytes().as_slice(), &b[..54]);
    }

    #[test]
    fn known_encoding() {
        // All zero trits (code 1): qs byte = ceil(121·256/243) = 128; qh = ceil(120·256/243) = 127.
        let b = from_trits_and_scales(&[0i8; 256], &[1.0]).unwrap();
        assert!(b[..48].iter().all(|&x| x == 128));
        assert!(b[48..52].iter().all(|&x| x == 127));
    }

    #[test]
    fn errors() {
        assert!(dequantize(&[0u8; 53], 1, 256).is_err());
        assert!(to_trits_and_scales(&[0u8; 54], 1, 100).is_err());
    }
}
