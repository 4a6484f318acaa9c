//! AVX-512 VNNI kernels (`vpdpbusd`).
//!
//! Same decoding as the AVX2 kernels (codes `c = q + 1`, Σ q·x = Σ c·x − Σ x), but a
//! 64-byte load covers two blocks and `dpbusd` multiplies u8 codes by i8 activations and
//! adds groups of four straight into i32 lanes, so there is no i16 stage and no overflow
//! bound to respect. A block pair needs its activations as one 512-bit vector: the two
//! 32-byte halves come from the two blocks and are joined with `vinserti64x4`. An odd
//! block left over at the end of a row uses the 256-bit form (`avx512vl`).
//!
//! Tiles: gemv 1 activation row × 4 weight rows; gemm 4 × 2 (32 zmm registers leave room
//! for the eight accumulators, two sets of codes and the activations).

#![allow(clippy::incompatible_msrv)] // AVX-512 intrinsics are stable since Rust 1.89.

use std::arch::x86_64::*;

use super::{OutPtr, Prefetch, XRow, BLOCK_BYTES, MAX_BLOCK_WEIGHTS};
use crate::quant::ternary::TernaryLayout;

/// Codes of one 256-bit block vector, step `s` (AVX2 + AVX-512VL instructions only).
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn codes256<const T1: bool>(y: &mut __m256i, raw: __m256i, s: usize) -> __m256i {
    if T1 {
        // y holds byte·3^s mod 256, XOR 0x80 (see avx2.rs): code = (y ≥ 86) + (y ≥ 171).
        if s > 0 {
            // The asm barrier stops LLVM turning y + 2y into an emulated 8-bit multiply.
            let mut d = _mm256_add_epi8(*y, *y);
            // SAFETY: empty asm that only claims to modify `d` in a register.
            unsafe {
                std::arch::asm!("/* {0} */", inout(ymm_reg) d, options(pure, nomem, nostack))
            };
            *y = _mm256_add_epi8(*y, d);
        }
        let m1 = _mm256_cmpgt_epi8(*y, _mm256_set1_epi8((85i32 - 128) as i8));
        let m2 = _mm256_cmpgt_epi8(*y, _mm256_set1_epi8((170i32 - 128) as i8));
        _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), m1), m2)
    } else {
        let sh = _mm_cvtsi32_si128(6 - 2 * s as i32);
        _mm256_and_si256(_mm256_srl_epi16(raw, sh), _mm256_set1_epi8(3))
    }
}

/// Codes of one 512-bit (two-block) vector, step `s`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn codes512<const T1: bool>(y: &mut __m512i, raw: __m512i, s: usize) -> __m512i {
    if T1 {
        if s > 0 {
            let mut d = _mm512_add_epi8(*y, *y);
            // SAFETY: as in codes256.
            unsafe {
                std::arch::asm!("/* {0} */", inout(zmm_reg) d, options(pure, nomem, nostack))
            };
            *y = _mm512_add_epi8(*y, d);
        }
        let one = _mm512_set1_epi8(1);
        let m1 = _mm512_cmpgt_epi8_mask(*y, _mm512_set1_epi8((85i32 - 128) as i8));
        let m2 = _mm512_cmpgt_epi8_mask(*y, _mm512_set1_epi8((170i32 - 128) as i8));
        _mm512_add_epi8(
            _mm512_maskz_mov_epi8(m1, one),
            _mm512_maskz_mov_epi8(m2, one),
        )
    } else {
        let sh = _mm_cvtsi32_si128(6 - 2 * s as i32);
        _mm512_and_si512(_mm512_srl_epi16(raw, sh), _mm512_set1_epi8(3))
    }
}

/// Accumulate blocks `[b0, b0+nb)` of an MR × NR tile into 512-bit accumulators.
///
/// # Safety
/// AVX-512 VNNI available; `w[r]` has blocks up to `b0+nb` (32 bytes each) and `x[i]` has
/// `(b0+nb)·bw` activations readable.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn tile<const T1: bool, const MR: usize, const NR: usize>(
    w: [*const u8; NR],
    x: [*const i8; MR],
    b0: usize,
    nb: usize,
    pf: Prefetch,
    acc: &mut [[__m512i; NR]; MR],
) {
    let bw = if T1 { 160 } else { 128 };
    let nsteps = if T1 { 5 } else { 4 };
    let bias512 = _mm512_set1_epi8(-128);
    let bias256 = _mm256_set1_epi8(-128);
    let mut b = b0;
    while b + 2 <= b0 + nb {
        if MR == 1 {
            // One activation row: a gemv, which streams its weights. Each row's line a
            // prefetch distance ahead.
            for p in w {
                pf.ahead::<_MM_HINT_T0>(p, b * BLOCK_BYTES);
            }
        }
        // SAFETY: blocks b and b+1 of each row are readable (caller's contract).
        let raw: [__m512i; NR] = std::array::from_fn(|r| unsafe {
            _mm512_loadu_si512(w[r].add(b * BLOCK_BYTES) as *const _)
        });
        let mut y: [__m512i; NR] = std::array::from_fn(|r| _mm512_xor_si512(raw[r], bias512));
        for s in 0..nsteps {
            let c: [__m512i; NR] = std::array::from_fn(|r| codes512::<T1>(&mut y[r], raw[r], s));
            for i in 0..MR {
                // SAFETY: both blocks' activations at step s are readable.
                let xv = unsafe {
                    let lo = _mm256_loadu_si256(x[i].add(b * bw + s * 32) as *const __m256i);
                    let hi = _mm256_loadu_si256(x[i].add((b + 1) * bw + s * 32) as *const __m256i);
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
                };
                for r in 0..NR {
                    acc[i][r] = _mm512_dpbusd_epi32(acc[i][r], c[r], xv);
                }
            }
        }
        b += 2;
    }
    if b < b0 + nb {
        // One block left: the 256-bit form, accumulated into the low half.
        // SAFETY: block b is readable.
        let raw: [__m256i; NR] = std::array::from_fn(|r| unsafe {
            _mm256_loadu_si256(w[r].add(b * BLOCK_BYTES) as *const __m256i)
        });
        let mut y: [__m256i; NR] = std::array::from_fn(|r| _mm256_xor_si256(raw[r], bias256));
        let mut part = [[_mm256_setzero_si256(); NR]; MR];
        for s in 0..nsteps {
            let c: [__m256i; NR] = std::array::from_fn(|r| codes256::<T1>(&mut y[r], raw[r], s));
            for i in 0..MR {
                // SAFETY: block b's activations at step s are readable.
                let xv = unsafe { _mm256_loadu_si256(x[i].add(b * bw + s * 32) as *const __m256i) };
                for r in 0..NR {
                    part[i][r] = _mm256_dpbusd_epi32(part[i][r], c[r], xv);
                }
            }
        }
        for i in 0..MR {
            for r in 0..NR {
                // zext, not cast: a cast leaves the upper half undefined.
                acc[i][r] = _mm512_add_epi32(acc[i][r], _mm512_zextsi256_si512(part[i][r]));
            }
        }
    }
}

/// Σ c·x of an MR × NR tile over whole rows, reduced to i32.
///
/// # Safety
/// As [`tile`], with `x[i]` holding `nfull` whole blocks and `tails[i]` one block if
/// `has_tail`; `w[r]` holds `nfull + has_tail` blocks.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn tile_dot<const T1: bool, const MR: usize, const NR: usize>(
    w: [*const u8; NR],
    x: [*const i8; MR],
    tails: [*const i8; MR],
    nfull: usize,
    has_tail: bool,
) -> [[i32; NR]; MR] {
    let mut acc = [[_mm512_setzero_si512(); NR]; MR];
    let pf = Prefetch::get();
    // SAFETY: forwarded from the caller's contract. The tail block is block `nfull` of the
    // weight rows; its activations live in `tails`, so shift their pointers back by
    // `nfull` blocks' worth (never dereferenced below `tails`: only block `nfull` is read).
    unsafe {
        tile::<T1, MR, NR>(w, x, 0, nfull, pf, &mut acc);
        if has_tail {
            let wt = w.map(|p| p.add(nfull * BLOCK_BYTES));
            tile::<T1, MR, NR>(wt, tails, 0, 1, pf, &mut acc);
        }
    }
    acc.map(|row| row.map(|v| _mm512_reduce_add_epi32(v)))
}

/// Rows of a gemv (see [`super::gemv`]).
///
/// # Safety
/// AVX-512 VNNI must be available; `w` holds `out.len()` rows of `rb` bytes matching `x`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemv_rows(layout: TernaryLayout, w: &[u8], rb: usize, x: &XRow<'_>, out: &mut [i32]) {
    // SAFETY: forwarded.
    unsafe {
        match layout {
            TernaryLayout::I2S => gemv_rows_impl::<false>(w, rb, x, out),
            TernaryLayout::T1 => gemv_rows_impl::<true>(w, rb, x, out),
        }
    }
}

#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
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
    while r + 4 <= n {
        // SAFETY: rows r..r+4 are inside `w`; x follows XRow's contract.
        let wp: [*const u8; 4] = std::array::from_fn(|j| unsafe { w.as_ptr().add((r + j) * rb) });
        let d = unsafe { tile_dot::<T1, 1, 4>(wp, xp, tp, x.nfull, has_tail) };
        for j in 0..4 {
            out[r + j] = d[0][j] - x.sum;
        }
        r += 4;
    }
    while r < n {
        // SAFETY: as above, one row.
        let d =
            unsafe { tile_dot::<T1, 1, 1>([w.as_ptr().add(r * rb)], xp, tp, x.nfull, has_tail) };
        out[r] = d[0][0] - x.sum;
        r += 1;
    }
}

/// One gemm task (see [`super::gemm`]).
///
/// # Safety
/// AVX-512 VNNI must be available; `w` holds `nr` rows of `rb` bytes; `x` is `m × cols`;
/// `out` is writable at `i*ldo + r` for i < m, r < nr.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
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
            TernaryLayout::I2S => gemm_rows_impl::<false>(w, rb, nr, cols, x, m, out, ldo),
            TernaryLayout::T1 => gemm_rows_impl::<true>(w, rb, nr, cols, x, m, out, ldo),
        }
    }
}

const MR: usize = 4;

#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_rows_impl<const T1: bool>(
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
        // SAFETY (pointer arithmetic below): rows i..i+mr of x and 0..nr of w are in
        // bounds (asserted); out has m rows of ldo ≥ nr (caller's contract).
        let xrow = |t: usize| unsafe { x.as_ptr().add((i + t) * cols) };
        let wrow = |r: usize| unsafe { w.as_ptr().add(r * rb) };
        let store =
            |t: usize, r: usize, v: i32| unsafe { *out.add((i + t) * ldo + r) = v - sums[t] };
        if mr == MR {
            let xp: [*const i8; MR] = std::array::from_fn(xrow);
            let tp: [*const i8; MR] = std::array::from_fn(|t| tails[t].as_ptr());
            let mut r = 0;
            while r + 2 <= nr {
                let d = unsafe {
                    tile_dot::<T1, MR, 2>([wrow(r), wrow(r + 1)], xp, tp, nfull, has_tail)
                };
                for t in 0..MR {
                    store(t, r, d[t][0]);
                    store(t, r + 1, d[t][1]);
                }
                r += 2;
            }
            if r < nr {
                let d = unsafe { tile_dot::<T1, MR, 1>([wrow(r)], xp, tp, nfull, has_tail) };
                for t in 0..MR {
                    store(t, r, d[t][0]);
                }
            }
        } else {
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
