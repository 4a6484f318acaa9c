//! llama.cpp's `TQ2_0` ternary format (GGML type id 35): 2 bits per weight, blocks of 256.
//!
//! Source: ggml-org/llama.cpp `ggml/src/ggml-common.h` (`block_tq2_0`: `uint8_t qs[QK_K/4]`
//! then `ggml_half d`) and `ggml/src/ggml-quants.c` (`quantize_row_tq2_0_ref`,
//! `dequantize_row_tq2_0`). Re-implemented here.
//!
//! Within a block, 32-byte group `j/32` (0 or 1) covers weights `128·(j/32) ..`: byte
//! `j+m` holds weights `128·g + m + 32·l` for `l = 0..4` at bit `2·l`, code `c` meaning
//! `c − 1`. `d` = f16 of the block's max|x|; weight = `(c − 1)·d`.
//!
//! bitnet.cpp's `llama-quantize` writes TQ2_0 from the already-ternarized f32 weights
//! `q/s`, so in the fixture every block's `d` is f16(mean|W|) (or 0 for an all-zero
//! block).

use crate::error::{Error, Result};
use half::f16;

/// Weights per block.
pub const QK_K: usize = 256;
/// Bytes per block: 64 bytes of codes + f16 scale.
pub const BLOCK_BYTES: usize = 66;

/// `ggml-common.h`'s `block_tq2_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockTq2_0 {
    /// 2-bit codes, 4 per byte.
    pub qs: [u8; QK_K / 4],
    /// f16 bits of the block scale.
    pub d: u16,
}

const _: () = assert!(std::mem::size_of::<BlockTq2_0>() == BLOCK_BYTES);

const FMT: &str = "TQ2_0";
const BLOCKS: super::Blocks = super::Blocks {
    name: FMT,
    block: QK_K,
    bytes: BLOCK_BYTES,
};

impl BlockTq2_0 {
    /// Read a block from its 66 little-endian bytes.
    pub fn from_bytes(b: &[u8; BLOCK_BYTES]) -> Self {
        let mut qs = [0u8; QK_K / 4];
        qs.copy_from_slice(&b[..64]);
        BlockTq2_0 {
            qs,
            d: u16::from_le_bytes([b[64], b[65]]),
        }
    }

    /// Write the block as 66 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; BLOCK_BYTES] {
        let mut b = [0u8; BLOCK_BYTES];
        b[..64].copy_from_slice(&self.qs);
        b[64..].copy_from_slice(&self.d.to_le_bytes());
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

/// `quantize_row_tq2_0_ref`: quantize `x` (a multiple of 256 values) into `out`
/// (`x.len()/256·66` bytes). Per block `d = max|x|`, code = `lroundf(x/d) + 1`.
pub fn quantize_row(x: &[f32], out: &mut [u8]) -> Result<()> {
    if !x.len().is_multiple_of(QK_K) || out.len() != x.len() / QK_K * BLOCK_BYTES {
        return Err(Error::format(
            FMT,
            format!("quantize_row: {} values into {} bytes", x.len(), out.len()),
        ));
    }
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        let amax = xb.iter().fold(0f32, |m, &v| m.max(v.abs()));
        let id = if amax != 0.0 { 1.0 / amax } else { 0.0 };
        for g in 0..2 {
            for m in 0..32 {
                let mut q = 0u8;
                for l in 0..4 {
                    // lroundf rounds half away from zero, like f32::round.
                    let xi = (xb[128 * g + m + 32 * l] * id).round() as i32 + 1;
                    q |= ((xi & 3) as u8) << (2 * l);
                }
                ob[32 * g + m] = q;
            }
        }
        ob[64..66].copy_from_slice(&f16::from_f32(amax).to_bits().to_le_bytes());
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
    for ((tb, ob), &d) in trits
        .chunks_exact(QK_K)
        .zip(out.chunks_exact_mut(BLOCK_BYTES))
        .zip(scales)
    {
        for g in 0..2 {
            for m in 0..32 {
                let mut q = 0u8;
                for l in 0..4 {
                    let c = (tb[128 * g + m + 32 * l].clamp(-1, 1) + 1) as u8;
                    q |= c << (2 * l);
                }
                ob[32 * g + m] = q;
            }
        }
        ob[64..66].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    }
    Ok(out)
}

/// Codes of one block in weight order (0..=3).
#[inline]
fn block_codes(b: &[u8], out: &mut [u8; QK_K]) {
    for g in 0..2 {
        for l in 0..4 {
            for m in 0..32 {
                out[128 * g + 32 * l + m] = (b[32 * g + m] >> (2 * l)) & 3;
            }
        }
    }
}

#[inline]
fn block_d(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[64], b[65]])).to_f32()
}

/// `dequantize_row_tq2_0`: `bytes` holds `out.len()/256` blocks.
pub fn dequantize_row(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    if !out.len().is_multiple_of(QK_K) {
        return Err(Error::format(
            FMT,
            format!("row length {} not a multiple of {QK_K}", out.len()),
        ));
    }
    check_len(bytes, out.len())?;
    let mut codes = [0u8; QK_K];
    for (b, ob) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let d = block_d(b);
        block_codes(b, &mut codes);
        for (o, &c) in ob.iter_mut().zip(codes.iter()) {
            *o = (c as i32 - 1) as f32 * d;
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
/// block (f16 widened), in storage order. Errors on code 3 (not ternary) or a
/// non-finite/negative scale.
pub fn to_trits_and_scales(bytes: &[u8], rows: usize, cols: usize) -> Result<(Vec<i8>, Vec<f32>)> {
    let n = check_shape(rows, cols)?;
    check_len(bytes, n)?;
    let mut trits = vec![0i8; n];
    let mut scales = Vec::with_capacity(n / QK_K);
    let mut codes = [0u8; QK_K];
    for (b, tb) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(trits.chunks_exact_mut(QK_K))
    {
        let d = block_d(b);
        if !d.is_finite() || d < 0.0 {
            return Err(Error::format(FMT, format!("invalid block scale {d}")));
        }
        scales.push(d);
        block_codes(b, &mut codes);
        for (t, &c) in tb.iter_mut().zip(codes.iter()) {
            if c == 3 {
                return Err(Error::format(FMT, "invalid 2-bit code 3 (not ternary)"));
            }
            *t = c as i8 - 1;
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
    fn quantize_dequantize_ternary_exact() {
        let t = trits(512, 1);
        let x: Vec<f32> = t.iter().map(|&q| q as f32 * 0.5).collect();
        let b = quantize(&x, 1, 512).unwrap();
        assert_eq!(b.len(), 132);
        assert_eq!(dequantize(&b, 1, 512).unwrap(), x);
        let (t2, s) = to_trits_and_scales(&b, 1, 512).unwrap();
        assert_eq!(t2, t);
        assert_eq!(s, vec![0.5, 0.5]);
        assert_eq!(from_trits_and_scales(&t, &s).unwrap(), b);
    }

    #[test]
    fn bit_positions() {
        // weight 128 + 5 + 32*2 -> byte 32+5, bits 4..6
        let mut t = vec![0i8; 256];
        t[128 + 5 + 64] = 1;
        let b = from_trits_and_scales(&t, &[1.0]).unwrap();
        assert_eq!(b[37], 0b01_10_01_01);
        assert_eq!(b[0], 0b0101_0101);
        let blk = BlockTq2_0::from_bytes(b[..66].try_into().unwrap());
        assert_eq!(blk.to_bytes().as_slice(), &b[..66]);
    }

    #[test]
    fn general_values_round_to_nearest() {
        let x: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) / 128.0).collect();
        let b = quantize(&x, 1, 256).unwrap();
        let y = dequantize(&b, 1, 256).unwrap();
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 0.5 + 1e-3, "{a} {b}");
        }
    }

    #[test]
    fn errors() {
        assert!(dequantize(&[0u8; 65], 1, 256).is_err());
        assert!(dequantize(&[0u8; 66], 1, 128).is_err());
        let mut b = vec![0xffu8; 66];
        b[64] = 0;
        b[65] = 0x3c;
        assert!(to_trits_and_scales(&b, 1, 256).is_err());
    }
}
