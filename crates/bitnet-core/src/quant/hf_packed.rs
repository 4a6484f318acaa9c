//! The packed ternary layout of Hugging Face's `microsoft/bitnet-b1.58-2B-4T` checkpoint
//! (transformers `integrations/bitnet.py`: `pack_weights` / `unpack_weights`).
//!
//! A projection weight with trits `q[out, in]` is stored as `uint8 [out/4, in]`:
//! `packed[r, c] = Σ_{i=0..3} (q[i·(out/4) + r, c] + 1) << 2i`. So bits `2i..2i+2` of
//! packed row `r` hold original row `i·(out/4) + r` (the four quarters of the matrix are
//! interleaved bitwise, not adjacent rows). Unpacking: `q[i·(out/4)+r, c] =
//! ((packed[r,c] >> 2i) & 3) − 1`. The companion `weight_scale` (bf16 [1]) is mean|W|
//! (see fixtures/README.md §3: `W ≈ q · weight_scale` for `linear_class: autobitlinear`).

use crate::error::{Error, Result};

const FMT: &str = "HF packed";

/// Shape `[out/4, in]` of the packed tensor.
pub fn packed_shape(out_features: usize, in_features: usize) -> Result<[usize; 2]> {
    if !out_features.is_multiple_of(4) {
        return Err(Error::format(
            FMT,
            format!("out_features {out_features} is not a multiple of 4"),
        ));
    }
    out_features
        .checked_mul(in_features)
        .ok_or_else(|| Error::format(FMT, "shape overflows"))?;
    Ok([out_features / 4, in_features])
}

/// Pack row-major trits `q[out, in]` into `[out/4, in]` bytes. Values are clamped to
/// −1..=1.
pub fn pack(trits: &[i8], out_features: usize, in_features: usize) -> Result<Vec<u8>> {
    let [pr, k] = packed_shape(out_features, in_features)?;
    if trits.len() != out_features * in_features {
        return Err(Error::format(
            FMT,
            format!(
                "expected {} trits, got {}",
                out_features * in_features,
                trits.len()
            ),
        ));
    }
    let mut out = crate::memory::weight_buffer(pr * k);
    for i in 0..4 {
        for r in 0..pr {
            let src = &trits[(i * pr + r) * k..][..k];
            let dst = &mut out[r * k..][..k];
            for (d, &t) in dst.iter_mut().zip(src) {
                *d |= ((t.clamp(-1, 1) + 1) as u8) << (2 * i);
            }
        }
    }
    Ok(out)
}

/// Unpack `[out/4, in]` bytes into row-major trits `q[out, in]` written to `out`.
/// Errors on code 3 (which transformers would turn into +2).
pub fn unpack_into(
    packed: &[u8],
    out_features: usize,
    in_features: usize,
    out: &mut [i8],
) -> Result<()> {
    let [pr, k] = packed_shape(out_features, in_features)?;
    if packed.len() != pr * k {
        return Err(Error::format(
            FMT,
            format!("expected {} packed bytes, got {}", pr * k, packed.len()),
        ));
    }
    if out.len() != out_features * in_features {
        return Err(Error::format(FMT, "output length does not match the shape"));
    }
    let mut bad = false;
    for i in 0..4 {
        for r in 0..pr {
            let src = &packed[r * k..][..k];
            let dst = &mut out[(i * pr + r) * k..][..k];
            for (d, &b) in dst.iter_mut().zip(src) {
                let c = (b >> (2 * i)) & 3;
                bad |= c == 3;
                *d = c as i8 - 1;
            }
        }
    }
    if bad {
        return Err(Error::format(FMT, "invalid 2-bit code 3 (not ternary)"));
    }
    Ok(())
}

/// Unpack `[out/4, in]` bytes into row-major trits `q[out, in]`.
pub fn unpack(packed: &[u8], out_features: usize, in_features: usize) -> Result<Vec<i8>> {
    let n = out_features
        .checked_mul(in_features)
        .ok_or_else(|| Error::format(FMT, "shape overflows"))?;
    let mut out = vec![0i8; n];
    unpack_into(packed, out_features, in_features, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_matches_transformers() {
        // out = 8, in = 3: packed rows 0..2; row r holds original rows r, r+2, r+4, r+6.
        let mut q = vec![0i8; 24];
        q[0] = 1; // row 0, c 0 -> packed[0,0] bits 0..2 = 2
        q[2 * 3 + 1] = -1; // row 2 = i 1, r 0, c 1 -> packed[0,1] bits 2..4 = 0
        q[7 * 3 + 2] = 1; // row 7 = i 3, r 1, c 2 -> packed[1,2] bits 6..8 = 2
        let p = pack(&q, 8, 3).unwrap();
        assert_eq!(p.len(), 6);
        assert_eq!(p[0], 0b01_01_01_10);
        assert_eq!(p[1], 0b01_01_00_01);
        assert_eq!(p[3 + 2], 0b10_01_01_01);
        assert_eq!(unpack(&p, 8, 3).unwrap(), q);
    }

    #[test]
    fn errors() {
        assert!(unpack(&[0u8; 6], 6, 3).is_err());
        assert!(unpack(&[0u8; 5], 8, 3).is_err());
        assert!(unpack(&[0xffu8; 6], 8, 3).is_err());
    }
}
