//! bitnet.cpp's `I2_S` ternary weight format (GGML type id 36), x86 layout.
//!
//! Source: microsoft/BitNet `src/ggml-bitnet-mad.cpp` (`quantize_i2_s`,
//! `ggml_vec_dot_i2_i8_s`, `QK_I2_S = 128` on x86) and the vendored llama.cpp fork's
//! `ggml.c` (`ggml_nbytes`).
//!
//! # Layout
//!
//! The whole tensor (all `rows × cols` weights, flattened row-major, i.e. GGML's
//! `ne0 = cols` fastest) is cut into blocks of 128 weights; each block is 32 bytes. Byte
//! `j` of a block holds weights `j, j+32, j+64, j+96` of that block at bit shifts
//! `6, 4, 2, 0`. Codes: `0 = −1`, `1 = 0`, `2 = +1` (`3` never occurs; bitnet.cpp's
//! kernel would read it as +2, we reject it).
//!
//! After the packed data (`n/4` bytes) comes a **32-byte trailer**: bytes 0..4 are the
//! per-tensor scale as little-endian f32, bytes 4..32 are padding.
//!
//! # Findings on the fixture (`fixtures/tiny-bitnet/gguf/tiny-bitnet-i2_s.gguf`)
//!
//! * bitnet.cpp's `ggml_nbytes` for I2_S is `ne/4 + 32` (its `quantize_i2_s` returns the
//!   same); in the fixture every I2_S tensor spans exactly `ne/4 + 32` bytes (e.g. ffn
//!   768×256: 49152 + 32 = 49184), so the next tensor starts right after the trailer.
//! * Only the first 4 trailer bytes are written by `quantize_i2_s`
//!   (`scale_ptr[0] = i2_scale`). The other 28 bytes are **uninitialized memory**: in
//!   the fixture they are zero for `blk.0.ffn_down` but hold leftover packed-looking bytes
//!   for `blk.0.attn_k`. Readers must ignore them; [`pack_with_scale`] writes zeros.
//! * The scale is `max|W|` over the whole tensor (computed in double, stored as f32).
//!   bitnet.cpp quantizes the already-ternarized f32 weights `W' = q/s`, so the stored
//!   scale is `f32(1/s)` = mean|W| up to one ulp. Codes: `|w| < 1e-6 → 0`, else the
//!   sign of `w`.
//! * The tensor's row order is the Hugging Face `[out, in]` order (no permutation, see
//!   `bitnet_models::gguf`).

use crate::error::{Error, Result};

/// Weights per block (x86 layout).
pub const QK: usize = 128;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 32;
/// Bytes after the packed data: the f32 scale and 28 bytes of padding.
pub const TRAILER_BYTES: usize = 32;

/// One block of 128 weights: byte `j` holds weights `j, j+32, j+64, j+96` at shifts
/// 6/4/2/0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockI2S {
    pub qs: [u8; BLOCK_BYTES],
}

const _: () = assert!(std::mem::size_of::<BlockI2S>() == BLOCK_BYTES);

const FMT: &str = "I2_S";

/// Number of weights, checked: `rows*cols` must not overflow and must be a multiple of
/// 128 (bitnet.cpp's block packing does not handle a partial last block).
pub fn check_shape(rows: usize, cols: usize) -> Result<usize> {
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| Error::format(FMT, format!("{rows}x{cols} overflows")))?;
    if !n.is_multiple_of(QK) {
        return Err(Error::format(
            FMT,
            format!("{rows}x{cols} = {n} weights is not a multiple of {QK}"),
        ));
    }
    Ok(n)
}

/// Bytes of packed data (without the trailer): `n/4`.
pub fn packed_bytes(rows: usize, cols: usize) -> usize {
    rows.saturating_mul(cols) / 4
}

/// Bytes of the whole tensor as stored in a GGUF file (= bitnet.cpp's `ggml_nbytes`):
/// `n/4 + 32`.
pub fn tensor_bytes(rows: usize, cols: usize) -> usize {
    packed_bytes(rows, cols).saturating_add(TRAILER_BYTES)
}

#[inline]
fn code_of(t: i8) -> u8 {
    match t {
        t if t < 0 => 0,
        0 => 1,
        _ => 2,
    }
}

/// Pack trits (−1, 0, +1; row-major `rows × cols`) into I2_S data **without** the
/// trailer (`n/4` bytes). Values outside −1..=1 are clamped by sign.
///
/// # Panics
/// If `trits.len() != rows*cols` or the shape is not a multiple of 128 weights
/// (programming errors; use [`check_shape`] first for untrusted shapes).
pub fn pack(trits: &[i8], rows: usize, cols: usize) -> Vec<u8> {
    let n = check_shape(rows, cols).expect("i2s::pack: shape");
    assert_eq!(trits.len(), n, "i2s::pack: trits length");
    let mut out = crate::memory::weight_buffer(n / 4);
    for (blk, tb) in out
        .chunks_exact_mut(BLOCK_BYTES)
        .zip(trits.chunks_exact(QK))
    {
        for j in 0..BLOCK_BYTES {
            blk[j] = (code_of(tb[j]) << 6)
                | (code_of(tb[j + 32]) << 4)
                | (code_of(tb[j + 64]) << 2)
                | code_of(tb[j + 96]);
        }
    }
    out
}

/// Pack trits and append the 32-byte trailer (f32 `scale`, then 28 zero bytes):
/// exactly [`tensor_bytes`] bytes, as stored in a GGUF file.
///
/// # Panics
/// As [`pack`].
pub fn pack_with_scale(trits: &[i8], rows: usize, cols: usize, scale: f32) -> Vec<u8> {
    let mut out = pack(trits, rows, cols);
    out.extend_from_slice(&scale.to_le_bytes());
    out.resize(out.len() + TRAILER_BYTES - 4, 0);
    out
}

/// bitnet.cpp's `quantize_i2_s` on f32 weights: scale = max|w| over the tensor, code =
/// sign of `w` (`|w| < 1e-6` → 0). Meant for weights that are already ternary up to a
/// scale (`W' = q/s`). Returns the whole tensor ([`tensor_bytes`] bytes).
pub fn quantize_f32(w: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>> {
    let n = check_shape(rows, cols)?;
    if w.len() != n {
        return Err(Error::format(
            FMT,
            format!("expected {n} weights, got {}", w.len()),
        ));
    }
    let max = w.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let trits: Vec<i8> = w
        .iter()
        .map(|&x| {
            if (x as f64).abs() < 1e-6 {
                0
            } else if x > 0.0 {
                1
            } else {
                -1
            }
        })
        .collect();
    Ok(pack_with_scale(&trits, rows, cols, max as f32))
}

fn check_len(bytes: &[u8], need: usize, what: &str) -> Result<()> {
    if bytes.len() < need {
        return Err(Error::format(
            FMT,
            format!("{what}: need {need} bytes, got {}", bytes.len()),
        ));
    }
    Ok(())
}

/// Unpack I2_S data (with or without the trailer) into `out` (row-major trits).
pub fn unpack_into(bytes: &[u8], rows: usize, cols: usize, out: &mut [i8]) -> Result<()> {
    let n = check_shape(rows, cols)?;
    check_len(bytes, n / 4, "packed data")?;
    if out.len() != n {
        return Err(Error::format(
            FMT,
            format!("output holds {} trits, need {n}", out.len()),
        ));
    }
    let mut bad = false;
    for (blk, ob) in bytes[..n / 4]
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK))
    {
        for j in 0..BLOCK_BYTES {
            let b = blk[j];
            let c = [(b >> 6) & 3, (b >> 4) & 3, (b >> 2) & 3, b & 3];
            bad |= c.contains(&3);
            ob[j] = c[0] as i8 - 1;
            ob[j + 32] = c[1] as i8 - 1;
            ob[j + 64] = c[2] as i8 - 1;
            ob[j + 96] = c[3] as i8 - 1;
        }
    }
    if bad {
        return Err(Error::format(FMT, "invalid 2-bit code 3 in packed data"));
    }
    Ok(())
}

/// Unpack I2_S data (with or without the trailer) to row-major trits.
pub fn unpack(bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<i8>> {
    let n = check_shape(rows, cols)?;
    let mut out = vec![0i8; n];
    unpack_into(bytes, rows, cols, &mut out)?;
    Ok(out)
}

/// The per-tensor f32 scale stored right after the packed data. Errors if the bytes are
/// too short or the scale is not finite or negative.
pub fn read_scale(bytes: &[u8], rows: usize, cols: usize) -> Result<f32> {
    let n = check_shape(rows, cols)?;
    check_len(bytes, n / 4 + 4, "scale trailer")?;
    let o = n / 4;
    let s = f32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    if !s.is_finite() || s < 0.0 {
        return Err(Error::format(FMT, format!("invalid tensor scale {s}")));
    }
    Ok(s)
}

/// Dequantize the whole tensor to f32 (`trit · scale`).
pub fn dequantize(bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>> {
    let scale = read_scale(bytes, rows, cols)?;
    let q = unpack(bytes, rows, cols)?;
    Ok(q.iter().map(|&t| t as f32 * scale).collect())
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
    fn layout_matches_bitnet_cpp() {
        // Weight j+32g sits in byte j at shift 6-2g.
        let mut t = vec![0i8; 128];
        t[0] = 1; // byte 0, shift 6: code 2
        t[32] = -1; // byte 0, shift 4: code 0
        t[97] = 1; // byte 1, shift 0: code 2
        let p = pack(&t, 1, 128);
        assert_eq!(p.len(), 32);
        assert_eq!(p[0], (2 << 6) | (1 << 2) | 1);
        assert_eq!(p[1], (1 << 6) | (1 << 4) | (1 << 2) | 2);
        assert_eq!(p[2], 0b0101_0101);
    }

    #[test]
    fn round_trip_with_trailer() {
        let t = trits(4 * 256, 7);
        let b = pack_with_scale(&t, 4, 256, 0.25);
        assert_eq!(b.len(), tensor_bytes(4, 256));
        assert_eq!(unpack(&b, 4, 256).unwrap(), t);
        assert_eq!(read_scale(&b, 4, 256).unwrap(), 0.25);
        let d = dequantize(&b, 4, 256).unwrap();
        assert!(d.iter().zip(&t).all(|(&x, &q)| x == q as f32 * 0.25));
    }

    #[test]
    fn quantize_like_bitnet_cpp() {
        let w: Vec<f32> = trits(256, 3).iter().map(|&q| q as f32 * 0.02).collect();
        let b = quantize_f32(&w, 2, 128).unwrap();
        assert_eq!(read_scale(&b, 2, 128).unwrap(), 0.02);
        let q = unpack(&b, 2, 128).unwrap();
        assert!(q.iter().zip(&w).all(|(&q, &x)| q as f32 * 0.02 == x));
    }

    #[test]
    fn errors_not_panics() {
        assert!(unpack(&[0u8; 10], 1, 128).is_err());
        assert!(unpack(&[0u8; 32], 1, 100).is_err());
        assert!(unpack(&[0xffu8; 32], 1, 128).is_err());
        assert!(read_scale(&[0u8; 33], 1, 128).is_err());
        assert!(check_shape(usize::MAX, 2).is_err());
    }
}
