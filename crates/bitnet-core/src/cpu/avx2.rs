//! AVX2 kernels (`vpmaddubsw`).
//!
//! Both layouts decode a 32-byte block into 32-byte vectors of codes `c = q + 1` in
//! {0, 1, 2}, each covering 32 consecutive weights, so `maddubs(c, x)` (u8 × i8 → pairs
//! summed to i16) gives Σ c·x; Σ q·x = Σ c·x − Σ x, and Σ x is computed once per
//! activation row.
//!
//! Overflow: one maddubs lane is c₁x₁ + c₂x₂ with c ≤ 2, x ∈ [−128, 127], so it lies in
//! [−512, 508] and never saturates. A block adds 4 (I2S) or 5 (T1) such results into an
//! i16 lane: |sum| ≤ 2560. The i16 sums of up to 12 blocks (|sum| ≤ 30720 < 32767) are
//! then widened with `madd(·, 1)` into i32 accumulators, which cannot overflow for any
//! realistic K (|Σ q·x| ≤ 128·K).
//!
//! Register tiling: a tile is MR activation rows × NR weight rows. gemv uses 1 × 1 (one
//! sequential weight stream); gemm uses 6 × 1 (I2S) or 8 × 1 (T1): each weight block is
//! decoded once and reused for 6 or 8 activation rows.

use std::arch::x86_64::*;

use super::{OutPtr, XRow, BLOCK_BYTES, MAX_BLOCK_WEIGHTS};
use crate::quant::ternary::TernaryLayout;

/// Horizontal sum of eight i32 lanes.
#[target_feature(enable = "avx2")]
#[inline]
fn hsum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Hide a value from LLVM's optimizer. Without it LLVM folds `y + (y + y)` into an 8-bit
/// multiply by 3, which x86 lacks, and emulates it with `vpmullw` on even and odd bytes
/// plus masks and shifts (five instructions instead of two adds).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn opaque(mut v: __m256i) -> __m256i {
    // SAFETY: an empty asm block that only claims to modify `v` in a register.
    unsafe { std::arch::asm!("/* {0} */", inout(ymm_reg) v, options(pure, nomem, nostack)) };
    v
}

/// Accumulate `nb` blocks of an MR × NR tile into `acc[i][r]` (eight i32 lanes each, to be
/// summed horizontally): Σ c·x over those blocks.
///
/// # Safety
/// AVX2 must be available. Each `w[r]` must point at `nb` readable 32-byte blocks and each
/// `x[i]` at `nb · block_weights` readable bytes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tile<const T1: bool, const MR: usize, const NR: usize>(
    w: [*const u8; NR],
    x: [*const i8; MR],
    nb: usize,
    acc: &mut [[__m256i; NR]; MR],
) {
    let ones = _mm256_set1_epi16(1);
    let bw = if T1 { 160 } else { 128 };
    let mut b0 = 0;
    while b0 < nb {
        // i16 partial sums over up to I16_BLOCKS blocks, then widened once.
        let b1 = (b0 + I16_BLOCKS).min(nb);
        let mut p = [[_mm256_setzero_si256(); NR]; MR];
        for b in b0..b1 {
            // Multiply one vector of codes per weight row with the 32 activations at offset
            // `s*32` of this block, for every activation row of the tile.
            macro_rules! madd_step {
                ($c:expr, $s:expr) => {
                    for i in 0..MR {
                        // SAFETY: the block has bw ≥ ($s+1)·32 activations at x[i] + b·bw.
                        let xv = unsafe {
                            _mm256_loadu_si256(x[i].add(b * bw + $s * 32) as *const __m256i)
                        };
                        for r in 0..NR {
                            p[i][r] = _mm256_add_epi16(p[i][r], _mm256_maddubs_epi16($c[r], xv));
                        }
                    }
                };
            }
            // SAFETY: w[r] + b·32 is inside the nb blocks of row r.
            let raw: [__m256i; NR] = std::array::from_fn(|r| unsafe {
                _mm256_loadu_si256(w[r].add(b * BLOCK_BYTES) as *const __m256i)
            });
            if T1 {
                // State y = byte·3^s mod 256, kept XOR 0x80 so that unsigned compares become
                // signed ones: (b+128)·3 ≡ 3b+128 (mod 256), so the offset survives ×3.
                // code = (y ≥ 86) + (y ≥ 171), i.e. the top two bits of 3y.
                let bias = _mm256_set1_epi8(-128);
                let lo = _mm256_set1_epi8((85i32 - 128) as i8);
                let hi = _mm256_set1_epi8((170i32 - 128) as i8);
                let mut y: [__m256i; NR] = std::array::from_fn(|r| _mm256_xor_si256(raw[r], bias));
                macro_rules! t1_step {
                    ($s:expr) => {
                        if $s > 0 {
                            for r in 0..NR {
                                y[r] = _mm256_add_epi8(y[r], opaque(_mm256_add_epi8(y[r], y[r])));
                            }
                        }
                        let c: [__m256i; NR] = std::array::from_fn(|r| {
                            let m1 = _mm256_cmpgt_epi8(y[r], lo);
                            let m2 = _mm256_cmpgt_epi8(y[r], hi);
                            _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), m1), m2)
                        });
                        madd_step!(c, $s);
                    };
                }
                t1_step!(0);
                t1_step!(1);
                t1_step!(2);
                t1_step!(3);
                t1_step!(4);
            } else {
                let mask = _mm256_set1_epi8(3);
                // 16-bit shifts are fine: the mask keeps only bits that came from the same byte.
                let c: [__m256i; NR] =
                    std::array::from_fn(|r| _mm256_and_si256(_mm256_srli_epi16::<6>(raw[r]), mask));
                madd_step!(c, 0);
                let c: [__m256i; NR] =
                    std::array::from_fn(|r| _mm256_and_si256(_mm256_srli_epi16::<4>(raw[r]), mask));
                madd_step!(c, 1);
                let c: [__m256i; NR] =
                    std::array::from_fn(|r| _mm256_and_si256(_mm256_srli_epi16::<2>(raw[r]), mask));
                madd_step!(c, 2);
                let c: [__m256i; NR] = std::array::from_fn(|r| _mm256_and_si256(raw[r], mask));
                madd_step!(c, 3);
            }
        }
        for i in 0..MR {
            for r in 0..NR {
                acc[i][r] = _mm256_add_epi32(acc[i][r], _mm256_madd_epi16(p[i][r], ones));
            }
        }
        b0 = b1;
    }
}

/// Blocks whose `maddubs` results are summed in i16 lanes before widening to i32: one
/// lane gains at most 5 · 512 = 2560 per (T1) block, so 12 blocks stay within ±30720.
const I16_BLOCKS: usize = 12;

/// Σ c·x of an MR × NR tile over whole rows (full blocks from `x`, the partial last block
/// from `tails`), reduced to i32.
///
/// # Safety
/// AVX2 available; `w[r]` point at whole packed rows of `nfull + has_tail` blocks, `x[i]` at
/// `nfull` whole blocks of activations, and `tails[i]` at one whole block if `has_tail`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tile_dot<const T1: bool, const MR: usize, const NR: usize>(
    w: [*const u8; NR],
    x: [*const i8; MR],
    tails: [*const i8; MR],
    nfull: usize,
    has_tail: bool,
) -> [[i32; NR]; MR] {
    let mut acc = [[_mm256_setzero_si256(); NR]; MR];
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        tile::<T1, MR, NR>(w, x, nfull, &mut acc);
        if has_tail {
            let wt = w.map(|p| p.add(nfull * BLOCK_BYTES));
            tile::<T1, MR, NR>(wt, tails, 1, &mut acc);
        }
    }
    acc.map(|row| row.map(|v| hsum(v)))
}

/// Rows of a gemv (see [`super::gemv`]).
///
/// # Safety
/// AVX2 must be available; `w` holds `out.len()` rows of `rb` bytes matching `x`.
#[target_feature(enable = "avx2")]
pub unsafe fn gemv_rows(layout: TernaryLayout, w: &[u8], rb: usize, x: &XRow<'_>, out: &mut [i32]) {
    // SAFETY: forwarded.
    unsafe {
        match layout {
            TernaryLayout::I2S => gemv_rows_impl::<false>(w, rb, x, out),
            TernaryLayout::T1 => gemv_rows_impl::<true>(w, rb, x, out),
        }
    }
}

/// Weight rows per gemv tile. 1, not 4: with four rows in flight the loop walks four
/// interleaved 640-byte streams per 64-row task, too short for the hardware prefetcher to
/// lock on, and the 1 × 4 tile also spills a register; one row at a time reads memory
/// strictly sequentially. Measured (2560×2560, 1 thread): 1 × 4 reached 3.7 GB/s from DRAM
/// and 10 GB/s from L2, 1 × 1 5.4–6.2 GB/s from DRAM and 15 GB/s from L2.
const GEMV_ROWS_PER_TILE: usize = 1;

/// How many rows ahead the gemv loop prefetches its weights (one `prefetcht0` per 64-byte
/// line): a 64-row task is too short a stream for the hardware prefetcher alone.
const GEMV_PREFETCH_ROWS: usize = 2;

#[target_feature(enable = "avx2")]
unsafe fn gemv_rows_impl<const T1: bool>(w: &[u8], rb: usize, x: &XRow<'_>, out: &mut [i32]) {
    assert!(w.len() >= out.len() * rb);
    let has_tail = !x.tail.is_empty();
    let xp = [x.x.as_ptr()];
    let tp = [if has_tail {
        x.tail.as_ptr()
    } else {
        x.x.as_ptr()
    }];
    let n = out.len();
    let mut r = 0;
    while r + 4 <= n && GEMV_ROWS_PER_TILE == 4 {
        // SAFETY: rows r..r+4 are inside `w` (asserted above); x is `cols` long with
        // nfull whole blocks and the tail one block (XRow's contract).
        let wp: [*const u8; 4] = std::array::from_fn(|j| unsafe { w.as_ptr().add((r + j) * rb) });
        let d = unsafe { tile_dot::<T1, 1, 4>(wp, xp, tp, x.nfull, has_tail) };
        for j in 0..4 {
            out[r + j] = d[0][j] - x.sum;
        }
        r += 4;
    }
    while r < n {
        if r + GEMV_PREFETCH_ROWS < n {
            // SAFETY: prefetches never fault; the address is inside `w` anyway.
            let ahead = unsafe { w.as_ptr().add((r + GEMV_PREFETCH_ROWS) * rb) };
            for off in (0..rb).step_by(64) {
                // SAFETY: as above.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.add(off) as *const i8) };
            }
        }
        // SAFETY: as above, for one row.
        let d =
            unsafe { tile_dot::<T1, 1, 1>([w.as_ptr().add(r * rb)], xp, tp, x.nfull, has_tail) };
        out[r] = d[0][0] - x.sum;
        r += 1;
    }
}

/// One gemm task (see [`super::gemm`]).
///
/// # Safety
/// AVX2 must be available; `w` holds `nr` rows of `rb` bytes; `x` is `m × cols`; `out`
/// is writable at `i*ldo + r` for i < m, r < nr.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_rows(
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
    // SAFETY: forwarded.
    unsafe {
        match layout {
            TernaryLayout::I2S => {
                gemm_rows_impl::<false, GEMM_MR_I2S>(w, rb, nr, cols, x, m, out, ldo)
            }
            TernaryLayout::T1 => {
                gemm_rows_impl::<true, GEMM_MR_T1>(w, rb, nr, cols, x, m, out, ldo)
            }
        }
    }
}

/// Activation rows per gemm tile (each decoded weight block is reused for MR rows, whose
/// i16 sums stay in registers). Measured on Zen 3 (m = 128, K = 2560, CPU time): I2S
/// 204 / 207 / 160 Gop/s for MR = 4 / 6 / 8 (at 8 the i16 sums no longer fit the 16 ymm
/// registers next to the decode temporaries), T1 155 / 175 / 182 Gop/s (T1's longer decode
/// is amortized over more rows).
const GEMM_MR_I2S: usize = 6;
const GEMM_MR_T1: usize = 8;

#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_rows_impl<const T1: bool, const MR: usize>(
    w: &[u8],
    rb: usize,
    nr: usize,
    cols: usize,
    x: &[i8],
    m: usize,
    out: OutPtr,
    ldo: usize,
) {
    assert!(w.len() >= nr * rb && x.len() >= m * cols);
    let bw = if T1 { 160 } else { 128 };
    let nfull = cols / bw;
    let rem = cols - nfull * bw;
    let has_tail = rem != 0;
    // Zero-padded copies of the partial last block of each activation row of a tile.
    let mut tails = [[0i8; MAX_BLOCK_WEIGHTS]; MR];
    let mut i = 0;
    while i < m {
        let mr = MR.min(m - i);
        let mut sums = [0i32; MR];
        for t in 0..mr {
            let row = &x[(i + t) * cols..(i + t + 1) * cols];
            sums[t] = super::sum_i8(row);
            tails[t][..rem].copy_from_slice(&row[nfull * bw..]);
        }
        // SAFETY (all pointer arithmetic below): rows i..i+mr of x and rows 0..nr of w are
        // in bounds (asserted above); out has m rows of ldo ≥ nr (caller's contract).
        let xrow = |t: usize| unsafe { x.as_ptr().add((i + t) * cols) };
        let wrow = |r: usize| unsafe { w.as_ptr().add(r * rb) };
        let store =
            |t: usize, r: usize, v: i32| unsafe { *out.add((i + t) * ldo + r) = v - sums[t] };
        if mr == MR {
            let xp: [*const i8; MR] = std::array::from_fn(xrow);
            let tp: [*const i8; MR] = std::array::from_fn(|t| tails[t].as_ptr());
            for r in 0..nr {
                let d = unsafe { tile_dot::<T1, MR, 1>([wrow(r)], xp, tp, nfull, has_tail) };
                for t in 0..MR {
                    store(t, r, d[t][0]);
                }
            }
        } else {
            // Leftover activation rows: one at a time, four weight rows per tile like gemv.
            for t in 0..mr {
                let xp = [xrow(t)];
                let tp = [tails[t].as_ptr()];
                let mut r = 0;
                while r + 4 <= nr {
                    let wp: [*const u8; 4] = std::array::from_fn(|j| wrow(r + j));
                    let d = unsafe { tile_dot::<T1, 1, 4>(wp, xp, tp, nfull, has_tail) };
                    for j in 0..4 {
                        store(t, r + j, d[0][j]);
                    }
                    r += 4;
                }
                while r < nr {
                    let d = unsafe { tile_dot::<T1, 1, 1>([wrow(r)], xp, tp, nfull, has_tail) };
                    store(t, r, d[0][0]);
                    r += 1;
                }
            }
        }
        i += mr;
    }
}
