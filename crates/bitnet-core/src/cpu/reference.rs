//! Scalar reference kernels: unpack a block to trits, then dot. Simple enough to be
//! obviously right; every SIMD path is tested against these bit for bit.

use super::{OutPtr, XRow, BLOCK_BYTES, MAX_BLOCK_WEIGHTS};
use crate::quant::ternary::{t1_code, TernaryLayout};

/// Unpack one 32-byte block into trits (−1, 0, 1): 128 (I2S) or 160 (T1) of them, written
/// to the front of `out`.
pub fn decode_block(layout: TernaryLayout, blk: &[u8], out: &mut [i8; MAX_BLOCK_WEIGHTS]) {
    debug_assert_eq!(blk.len(), BLOCK_BYTES);
    match layout {
        TernaryLayout::I2S => {
            for (j, &b) in blk.iter().enumerate() {
                for i in 0..4 {
                    out[j + 32 * i] = ((b >> (6 - 2 * i)) & 3) as i8 - 1;
                }
            }
        }
        TernaryLayout::T1 => {
            for (j, &b) in blk.iter().enumerate() {
                for i in 0..5 {
                    out[j + 32 * i] = t1_code(b, i as u32) as i8 - 1;
                }
            }
        }
    }
}

/// Σ_k q[k]·x[k] for one packed row against one activation row.
pub fn dot_row(layout: TernaryLayout, row: &[u8], x: &XRow<'_>) -> i32 {
    let bw = layout.block_weights();
    let mut buf = [0i8; MAX_BLOCK_WEIGHTS];
    let mut acc = 0i32;
    for (b, blk) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        decode_block(layout, blk, &mut buf);
        let xb = if b < x.nfull {
            &x.x[b * bw..(b + 1) * bw]
        } else {
            x.tail
        };
        acc += buf[..bw]
            .iter()
            .zip(xb)
            .map(|(&q, &v)| q as i32 * v as i32)
            .sum::<i32>();
    }
    acc
}

/// Rows of a gemv: `w` holds `out.len()` rows of `rb` bytes.
pub fn gemv_rows(layout: TernaryLayout, w: &[u8], rb: usize, x: &XRow<'_>, out: &mut [i32]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_row(layout, &w[r * rb..(r + 1) * rb], x);
    }
}

/// One gemm task: `nr` weight rows against `m` activation rows of `cols`; writes
/// `out[i*ldo + r]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_rows(
    layout: TernaryLayout,
    w: &[u8],
    rb: usize,
    nr: usize,
    cols: usize,
    x: &[i8],
    m: usize,
    out: OutPtr,
    ldo: usize,
) {
    let mut buf = [0i8; MAX_BLOCK_WEIGHTS];
    for i in 0..m {
        let xr = XRow::new(&x[i * cols..(i + 1) * cols], layout, &mut buf);
        for r in 0..nr {
            let v = dot_row(layout, &w[r * rb..(r + 1) * rb], &xr);
            // SAFETY: i < m and r < nr, inside this task's columns of `out` (see cpu::gemm).
            unsafe { *out.add(i * ldo + r) = v };
        }
    }
}
