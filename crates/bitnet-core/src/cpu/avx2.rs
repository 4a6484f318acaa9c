//! AVX2 kernels (`vpmaddubsw`).
//!
//! Both layouts decode a 32-byte block into 32-byte vectors of codes `c = q + 1` in
//! {0, 1, 2}, each covering 32 consecutive weights, so `maddubs(c, x)` (u8 × i8 → pairs
//! summed to i16) gives Σ c·x; Σ q·x = Σ c·x − Σ x, and Σ x is computed once per
//! activation row (per gemm task).
//!
//! Overflow: one maddubs lane is c₁x₁ + c₂x₂ with c ≤ 2, x ∈ [−128, 127], so it lies in
//! [−512, 508] and never saturates. A block adds 4 (I2S) or 5 (T1) such results into an
//! i16 lane: |sum| ≤ 2560. The i16 sums of up to 12 blocks (|sum| ≤ 30720 < 32767) are
//! then widened with `madd(·, 1)` into i32 accumulators, which cannot overflow for any
//! realistic K (|Σ q·x| ≤ 128·K).
//!
//! gemm sums in i16 lanes per 32-weight step instead (at most 64 steps, see
//! [`GEMM_I16_STEPS`]).
//!
//! gemv takes one weight row at a time (one sequential weight stream) and decodes in its
//! inner loop. gemm decodes each weight row
//! once per task into a buffer of codes (one byte per weight), then runs 6 × 2 tiles with
//! no decode at all, so I2S and T1 run at the same speed: per 32 weights, two code loads
//! and six activation loads feed 12 `maddubs` + 12 `paddw`.

use std::arch::x86_64::*;

use super::{OutPtr, Prefetch, XRow, BLOCK_BYTES};
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

/// Accumulate Σ c·x of one weight row over `nb` blocks into `acc` (eight i32 lanes, to be
/// summed horizontally; I2S adds 4·Σ c·x). The steps of a block alternate between two i16
/// accumulators. The loop is bound by its vector operations: I2S takes 13 per 32 bytes
/// (one shift, four masks, four `maddubs`, four `paddw`; it was 15 with each code shifted
/// down: one core 19.2 → 20.3 GB/s from cache, and 1-thread gemv from DRAM 77–82 → 80–86 %
/// of the read baseline, BENCHMARKS.md eleventh session). Blocks go two at a time (one
/// 64-byte line), each pair prefetching a line [`Prefetch`](super::Prefetch) ahead; rows are
/// contiguous, so that runs into the following rows (a 64-row task is too short a stream
/// for the hardware prefetcher alone).
///
/// # Safety
/// AVX2 must be available. `w` must point at `nb` readable 32-byte blocks and `x` at
/// `nb · block_weights` readable bytes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn row_dot<const T1: bool>(
    w: *const u8,
    x: *const i8,
    nb: usize,
    pf: Prefetch,
    acc: &mut __m256i,
) {
    let ones = _mm256_set1_epi16(1);
    let bw = if T1 { 160 } else { 128 };
    let mut b0 = 0;
    while b0 < nb {
        // i16 partial sums over up to I16_BLOCKS_T1 / I16_BLOCKS_I2S blocks, widened once.
        let b1 = (b0 + if T1 { I16_BLOCKS_T1 } else { I16_BLOCKS_I2S }).min(nb);
        let mut p = [_mm256_setzero_si256(); 2];
        // One block: the codes of block `b` times its activations, into p.
        let mut block = |b: usize| {
            // Multiply the codes `c` with the 32 activations at offset `s*32` of this block.
            macro_rules! madd_step {
                ($c:expr, $s:expr) => {
                    // SAFETY: the block has bw ≥ ($s+1)·32 activations at x + b·bw.
                    let xv =
                        unsafe { _mm256_loadu_si256(x.add(b * bw + $s * 32) as *const __m256i) };
                    p[$s & 1] = _mm256_add_epi16(p[$s & 1], _mm256_maddubs_epi16($c, xv));
                };
            }
            // SAFETY: w + b·32 is inside the nb blocks of the row.
            let raw = unsafe { _mm256_loadu_si256(w.add(b * BLOCK_BYTES) as *const __m256i) };
            if T1 {
                // State y = byte·3^s mod 256, kept XOR 0x80 so that unsigned compares become
                // signed ones: (b+128)·3 ≡ 3b+128 (mod 256), so the offset survives ×3.
                // code = (y ≥ 86) + (y ≥ 171), i.e. the top two bits of 3y.
                let lo = _mm256_set1_epi8((85i32 - 128) as i8);
                let hi = _mm256_set1_epi8((170i32 - 128) as i8);
                let mut y = _mm256_xor_si256(raw, _mm256_set1_epi8(-128));
                macro_rules! t1_step {
                    ($s:expr) => {
                        if $s > 0 {
                            y = _mm256_add_epi8(y, opaque(_mm256_add_epi8(y, y)));
                        }
                        let m1 = _mm256_cmpgt_epi8(y, lo);
                        let m2 = _mm256_cmpgt_epi8(y, hi);
                        let c = _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), m1), m2);
                        madd_step!(c, $s);
                    };
                }
                t1_step!(0);
                t1_step!(1);
                t1_step!(2);
                t1_step!(3);
                t1_step!(4);
            } else {
                // Codes of steps 0 and 2 (bits 6–7 and 2–3) stay ×4 in place, so one shift
                // and four masks isolate all four (16-bit shift: the masks keep only bits
                // of the same byte). Their sums go to p[0], steps 1 and 3 to p[1]; the
                // widening below multiplies p[1] by 4, and the caller divides by 4.
                let mask = _mm256_set1_epi8(3);
                let mask4 = _mm256_set1_epi8(12);
                let t = _mm256_srli_epi16::<4>(raw);
                madd_step!(_mm256_and_si256(t, mask4), 0);
                madd_step!(_mm256_and_si256(t, mask), 1);
                madd_step!(_mm256_and_si256(raw, mask4), 2);
                madd_step!(_mm256_and_si256(raw, mask), 3);
            }
        };
        // Two blocks (one 64-byte line) per iteration and one prefetch of a line ahead (a
        // parity test per block cost more: BENCHMARKS.md, twelfth session). The weights
        // are read once: where the prefetch goes to L1 (AMD), a non-temporal one keeps
        // them from evicting the token, which every row reads again (1 thread, +3–6
        // points of the read baseline on the large shapes; ibid.).
        let mut b = b0;
        while b < b1 {
            pf.ahead::<_MM_HINT_NTA>(w, b * BLOCK_BYTES);
            block(b);
            if b + 1 < b1 {
                block(b + 1);
            }
            b += 2;
        }
        if T1 {
            let s = _mm256_add_epi16(p[0], p[1]);
            *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(s, ones));
        } else {
            let s = _mm256_add_epi32(
                _mm256_madd_epi16(p[0], ones),
                _mm256_madd_epi16(p[1], _mm256_set1_epi16(4)),
            );
            *acc = _mm256_add_epi32(*acc, s);
        }
        b0 = b1;
    }
}

/// Blocks whose `maddubs` results are summed in i16 lanes before widening to i32. T1: one
/// lane gains at most 5 · 512 = 2560 per block, so 12 blocks stay within ±30720. I2S: the
/// ×4 lane gains at most 2 · 2 · 8 · 128 = 4096 per block, so 8 blocks stay within ±32768
/// (−32768 is reached only with every activation −128, which still fits).
const I16_BLOCKS_T1: usize = 12;
const I16_BLOCKS_I2S: usize = 8;

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

/// Rows are read one at a time, so memory is read strictly sequentially (measured,
/// 2560×2560, 1 thread: four interleaved rows reached 3.7 GB/s from DRAM, one row 5.4–6.2
/// GB/s).
#[target_feature(enable = "avx2")]
unsafe fn gemv_rows_impl<const T1: bool>(w: &[u8], rb: usize, x: &XRow<'_>, out: &mut [i32]) {
    assert!(w.len() >= out.len() * rb);
    let n = out.len();
    let pf = Prefetch::get();
    for r in 0..n {
        let mut acc = _mm256_setzero_si256();
        // SAFETY: row r is inside `w` (asserted above) with nfull whole blocks and, with a
        // tail, one more; x has nfull whole blocks and the tail one block (XRow's contract).
        unsafe {
            let row = w.as_ptr().add(r * rb);
            row_dot::<T1>(row, x.x.as_ptr(), x.nfull, pf, &mut acc);
            if !x.tail.is_empty() {
                row_dot::<T1>(
                    row.add(x.nfull * BLOCK_BYTES),
                    x.tail.as_ptr(),
                    1,
                    pf,
                    &mut acc,
                );
            }
        }
        // I2S rows come out ×4 (see `row_dot`); the sum is a multiple of 4, so the shift
        // is exact.
        out[r] = if T1 { hsum(acc) } else { hsum(acc) >> 2 } - x.sum;
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
    // Each thread keeps its code buffer and activation pieces across calls: no allocation
    // or zeroing per task (every code a tile reads is decoded first, every activation
    // piece copied in before use).
    GEMM_SCRATCH.with_borrow_mut(|(codes, xt)| {
        // SAFETY: forwarded.
        unsafe {
            match layout {
                TernaryLayout::I2S => {
                    gemm_rows_impl::<false>(w, rb, nr, cols, x, m, out, ldo, codes, xt)
                }
                TernaryLayout::T1 => {
                    gemm_rows_impl::<true>(w, rb, nr, cols, x, m, out, ldo, codes, xt)
                }
            }
        }
    })
}

thread_local! {
    /// Each thread's decoded weight codes and activation pieces for the gemm.
    static GEMM_SCRATCH: std::cell::RefCell<(Vec<__m256i>, Vec<[__m256i; GEMM_XT_STEPS]>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Decode one packed block into its `bw` codes, in weight order.
///
/// # Safety
/// AVX2 available; `src` readable for 32 bytes, `dst` writable for 128 (I2S) or 160 (T1).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn decode_block<const T1: bool>(src: *const u8, dst: *mut u8) {
    // SAFETY: the caller's contract.
    let raw = unsafe { _mm256_loadu_si256(src as *const __m256i) };
    let put = |s: usize, c: __m256i| {
        // SAFETY: s·32 + 32 ≤ the block's codes (caller's contract).
        unsafe { _mm256_storeu_si256(dst.add(s * 32) as *mut __m256i, c) }
    };
    if T1 {
        // As in `tile`.
        let bias = _mm256_set1_epi8(-128);
        let lo = _mm256_set1_epi8((85i32 - 128) as i8);
        let hi = _mm256_set1_epi8((170i32 - 128) as i8);
        let mut y = _mm256_xor_si256(raw, bias);
        for s in 0..5 {
            if s > 0 {
                y = _mm256_add_epi8(y, opaque(_mm256_add_epi8(y, y)));
            }
            let m1 = _mm256_cmpgt_epi8(y, lo);
            let m2 = _mm256_cmpgt_epi8(y, hi);
            put(
                s,
                _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), m1), m2),
            );
        }
    } else {
        let mask = _mm256_set1_epi8(3);
        put(0, _mm256_and_si256(_mm256_srli_epi16::<6>(raw), mask));
        put(1, _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask));
        put(2, _mm256_and_si256(_mm256_srli_epi16::<2>(raw), mask));
        put(3, _mm256_and_si256(raw, mask));
    }
}

/// 32-weight steps whose `maddubs` results a gemm tile sums in i16 lanes before widening:
/// one step adds a value in [−512, 508] to a lane, so 64 steps stay within [−32768, 32512].
const GEMM_I16_STEPS: usize = 64;

/// Σ c·x of an MR × NR gemm tile over `steps` 32-weight steps of pre-decoded codes, added
/// to `acc[i][r]` (eight i32 lanes each). No decode: per step, one load of codes per weight
/// row and of activations per activation row, then one `maddubs` and one `paddw` per pair.
///
/// # Safety
/// AVX2 available; `c[r]` and `x[i]` readable for `steps · 32` bytes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tile_codes<const MR: usize, const NR: usize>(
    c: [*const u8; NR],
    x: [*const i8; MR],
    steps: usize,
    acc: &mut [[__m256i; NR]; MR],
) {
    let ones = _mm256_set1_epi16(1);
    let mut s0 = 0;
    while s0 < steps {
        let s1 = (s0 + GEMM_I16_STEPS).min(steps);
        let mut p = [[_mm256_setzero_si256(); NR]; MR];
        for s in s0..s1 {
            // SAFETY: s·32 + 32 ≤ steps·32 bytes are readable at every c[r] and x[i].
            let cv: [__m256i; NR] = std::array::from_fn(|r| unsafe {
                _mm256_load_si256(c[r].add(s * 32) as *const __m256i)
            });
            for i in 0..MR {
                // SAFETY: as above.
                let xv = unsafe { _mm256_load_si256(x[i].add(s * 32) as *const __m256i) };
                for r in 0..NR {
                    p[i][r] = _mm256_add_epi16(p[i][r], _mm256_maddubs_epi16(cv[r], xv));
                }
            }
        }
        for i in 0..MR {
            for r in 0..NR {
                acc[i][r] = _mm256_add_epi32(acc[i][r], _mm256_madd_epi16(p[i][r], ones));
            }
        }
        s0 = s1;
    }
}

/// The eight horizontal sums of `v` as one vector.
#[target_feature(enable = "avx2")]
#[inline]
fn hsum8(v: &[__m256i; 8]) -> __m256i {
    let a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    // a: lane j of v[0..4]'s low 128 bits summed in its low 128 bits, of their high 128
    // bits in its high 128 bits; b likewise for v[4..8].
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(a, b),
        _mm256_permute2x128_si256::<0x31>(a, b),
    )
}

/// Activation rows × weight rows of a gemm tile: 12 i16 sums, 2 code vectors and one
/// activation vector fill 15 of the 16 ymm registers. The loop runs at the speed of
/// `maddubs` + `paddw` on registers alone (≈ 1.6 `maddubs` per cycle on Zen 3, measured).
const GEMM_MR: usize = 6;
const GEMM_NR: usize = 2;

/// Weight rows decoded at a time into a task's code buffer (`GEMM_CHUNK_ROWS · K` bytes,
/// read from L2 by every activation tile), i.e. the whole 64-row task: each activation
/// tile is copied once per chunk (see `gemm_chunk_tile`). Measured on Zen 3 (m = 128,
/// K = 2560, CPU time, 1 thread): 241 / 248 Gop/s for 32 / 64 rows; sizing the chunk to
/// 192 KiB of codes (24 rows at K = 6912) lost 10 % there.
const GEMM_CHUNK_ROWS: usize = 64;

/// Most 32-weight steps of activations copied at a time into a tile's aligned buffer
/// (MR · 32 · GEMM_XT_STEPS bytes, which stay in L1 while every weight row of the chunk
/// meets them): all of K = 2560, K = 6912 in three pieces. Measured as above: 237 / 233 /
/// 244 Gop/s for 40 / 64 / 80 steps.
const GEMM_XT_STEPS: usize = 80;
const _: () = assert!(
    GEMM_XT_STEPS <= 127,
    "the i16 sums of Σ x in gemm_chunk_tile"
);

/// The decoded codes of one chunk of weight rows and the activations they meet.
struct Chunk<'a> {
    /// `rows` rows of codes, `ld` vectors (32-weight steps) apart.
    codes: &'a [__m256i],
    ld: usize,
    rows: usize,
    /// `m × cols` activations.
    x: &'a [i8],
    cols: usize,
}

/// Activation rows `i0..i0+MR` against every weight row of the chunk; writes
/// `out[(i0+t)*ldo + r]` for the chunk's rows r. K runs in pieces of at most
/// [`GEMM_XT_STEPS`] steps; each piece of the MR activation rows is first copied into
/// `xt` (aligned, so no load splits a cache line; the last partial step zero-padded).
///
/// # Safety
/// AVX2 available; `i0 + MR ≤ m`; `ch.codes` holds `ch.rows` rows of ⌈cols/32⌉ code
/// vectors; `out` is writable at those elements.
#[target_feature(enable = "avx2")]
unsafe fn gemm_chunk_tile<const MR: usize>(
    ch: &Chunk<'_>,
    i0: usize,
    xt: &mut [[__m256i; GEMM_XT_STEPS]],
    out: OutPtr,
    ldo: usize,
) {
    let mut acc = [[_mm256_setzero_si256(); GEMM_CHUNK_ROWS]; MR];
    let mut sums = [_mm256_setzero_si256(); MR];
    let (ones8, ones16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
    let steps = ch.cols.div_ceil(32);
    let piece = steps.div_ceil(steps.div_ceil(GEMM_XT_STEPS));
    let mut k0 = 0;
    while k0 < steps {
        let n = piece.min(steps - k0);
        for (t, dst) in xt[..MR].iter_mut().enumerate() {
            let row = &ch.x[(i0 + t) * ch.cols..(i0 + t + 1) * ch.cols];
            let whole = (ch.cols - k0 * 32) / 32;
            // Σ x of this piece of the row: pairs summed into i16 lanes (|lane| ≤ 256 per
            // step, at most GEMM_XT_STEPS ≤ 127 steps), then widened.
            let mut s16 = _mm256_setzero_si256();
            for (s, d) in dst[..n].iter_mut().enumerate() {
                let v = if s < whole {
                    let p = row[(k0 + s) * 32..].as_ptr() as *const __m256i;
                    // SAFETY: step k0+s is a whole step (32 bytes) inside the row.
                    unsafe { _mm256_loadu_si256(p) }
                } else {
                    // The last, partial step, zero-padded.
                    let mut buf = [0i8; 32];
                    let rest = &row[(k0 + s) * 32..];
                    buf[..rest.len()].copy_from_slice(rest);
                    // SAFETY: buf is 32 bytes.
                    unsafe { _mm256_loadu_si256(buf.as_ptr() as *const __m256i) }
                };
                *d = v;
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(ones8, v));
            }
            sums[t] = _mm256_add_epi32(sums[t], _mm256_madd_epi16(s16, ones16));
        }
        let xp: [*const i8; MR] = std::array::from_fn(|t| xt[t].as_ptr() as *const i8);
        let mut r = 0;
        while r < ch.rows {
            macro_rules! tile_at {
                ($nr:expr) => {{
                    let mut a: [[__m256i; $nr]; MR] =
                        std::array::from_fn(|t| std::array::from_fn(|j| acc[t][r + j]));
                    let c: [*const u8; $nr] = std::array::from_fn(|j| {
                        ch.codes[(r + j) * ch.ld + k0..].as_ptr() as *const u8
                    });
                    // SAFETY: n steps from k0 are inside every row of codes (⌈cols/32⌉
                    // aligned vectors) and inside xt.
                    unsafe { tile_codes::<MR, $nr>(c, xp, n, &mut a) };
                    for t in 0..MR {
                        acc[t][r..r + $nr].copy_from_slice(&a[t]);
                    }
                    r += $nr;
                }};
            }
            if r + GEMM_NR <= ch.rows {
                tile_at!(GEMM_NR);
            } else {
                tile_at!(1);
            }
        }
        k0 += n;
    }
    for (t, acc) in acc.iter().enumerate() {
        let row = i0 + t;
        let sum = hsum(sums[t]);
        let mut r = 0;
        while r + 8 <= ch.rows {
            let v = _mm256_sub_epi32(
                hsum8(acc[r..r + 8].try_into().unwrap()),
                _mm256_set1_epi32(sum),
            );
            // SAFETY: the caller's contract (eight elements of this chunk's columns).
            unsafe { _mm256_storeu_si256(out.add(row * ldo + r) as *mut __m256i, v) };
            r += 8;
        }
        while r < ch.rows {
            // SAFETY: the caller's contract.
            unsafe { *out.add(row * ldo + r) = hsum(acc[r]) - sum };
            r += 1;
        }
    }
}

#[target_feature(enable = "avx2")]
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
    codes: &mut Vec<__m256i>,
    xt: &mut Vec<[__m256i; GEMM_XT_STEPS]>,
) {
    assert!(w.len() >= nr * rb && x.len() >= m * cols);
    let bw = if T1 { 160 } else { 128 };
    let nb = cols.div_ceil(bw);
    assert!(rb >= nb * BLOCK_BYTES);
    // Codes of whole blocks: at least ⌈cols/32⌉ vectors per row.
    let ld = nb * bw / 32;
    let need = GEMM_CHUNK_ROWS.min(nr) * ld;
    if codes.len() < need {
        codes.resize(need, _mm256_setzero_si256());
    }
    if xt.len() < GEMM_MR {
        xt.resize(GEMM_MR, [_mm256_setzero_si256(); GEMM_XT_STEPS]);
    }
    let mut r0 = 0;
    while r0 < nr {
        let rows = GEMM_CHUNK_ROWS.min(nr - r0);
        for r in 0..rows {
            for b in 0..nb {
                // SAFETY: block b of row r0+r is inside `w` (asserted above); its codes
                // are inside row r of `codes` (sized above).
                unsafe {
                    decode_block::<T1>(
                        w.as_ptr().add((r0 + r) * rb + b * BLOCK_BYTES),
                        codes.as_mut_ptr().add(r * ld + b * bw / 32) as *mut u8,
                    )
                };
            }
        }
        let ch = Chunk {
            codes,
            ld,
            rows,
            x,
            cols,
        };
        // SAFETY: this chunk's columns r0..r0+rows of `out` (caller's contract).
        let o = OutPtr(unsafe { out.add(r0) });
        let mut i = 0;
        while i < m {
            let mr = GEMM_MR.min(m - i);
            // SAFETY: rows i..i+mr < m; the chunk's codes are decoded above.
            unsafe {
                match mr {
                    GEMM_MR => gemm_chunk_tile::<GEMM_MR>(&ch, i, xt, o, ldo),
                    1 => gemm_chunk_tile::<1>(&ch, i, xt, o, ldo),
                    2 => gemm_chunk_tile::<2>(&ch, i, xt, o, ldo),
                    3 => gemm_chunk_tile::<3>(&ch, i, xt, o, ldo),
                    4 => gemm_chunk_tile::<4>(&ch, i, xt, o, ldo),
                    _ => gemm_chunk_tile::<5>(&ch, i, xt, o, ldo),
                }
            }
            i += mr;
        }
        r0 += rows;
    }
}
