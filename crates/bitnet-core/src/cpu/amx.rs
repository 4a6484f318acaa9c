//! AMX-INT8 gemm (`tdpbusd`), Sapphire Rapids and later: the prefill product.
//!
//! `tdpbusd` multiplies a 16 × 64 tile of u8 by a 64 × 16 tile of i8 and adds the 16 × 16
//! i32 results into an accumulator tile: 16 384 multiply-adds per instruction. The second
//! operand is stored in the "VNNI layout": 16 rows of 64 bytes, row q holding, for each of
//! the 16 columns j, the four K values 4q..4q+4 of column j at bytes 4j..4j+4. As in the
//! other paths the weights enter as codes `c = q + 1` ∈ {0, 1, 2} (the u8 operand) and
//! Σ q·x = Σ c·x − Σ x.
//!
//! * Activations are repacked once per gemm call ([`PackedActs`]): tiles of 16 tokens × 64
//!   K, zero past `cols` and past `m`. The zeros make padded K positions contribute nothing
//!   whatever the weight codes there (code 0 is weight −1, so the weights cannot be the
//!   padding); Σ x is taken over the real K.
//! * Weights: a task decodes 32 rows (two 16-row panels) at a time into u8 codes with AVX2,
//!   one contiguous 1 KiB block per 16 × 64 tile, into a per-thread scratch buffer, and runs
//!   them against every token tile before decoding the next 32 rows.
//! * 2 × 2 blocking: A tiles tmm0/tmm1 (32 weight rows), B tiles tmm2/tmm3 (32 tokens),
//!   accumulators tmm4..tmm7; the edges use one A or one B tile. The K loop is one asm
//!   block per blocking shape (the tile registers are named in the instructions).
//! * The tile configuration (palette 1, eight 16 × 64-byte tiles) is per thread: every task
//!   loads it before its first tile instruction and releases the tiles at its end.
//!
//! gemv (m = 1) has no AMX kernel: a 16-token tile would be 1/16 used, and gemv is bound by
//! memory bandwidth rather than multiply-adds; [`super::KernelPath::gemv_path`] sends it to
//! the AVX-512 VNNI (else AVX2) kernels.
//!
//! Availability needs CPUID's AMX-TILE and AMX-INT8 bits, AVX2 (the decoder), and Linux's
//! permission for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, Linux 5.16+),
//! asked for once per process.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

use rayon::prelude::*;

use super::{sum_i8, OutPtr, BLOCK_BYTES};
use crate::quant::ternary::TernaryLayout;

/// Rows of every tile: weight rows of an A tile, K quads of a B tile.
const TR: usize = 16;
/// Bytes per tile row: 64 K values of an A tile, 16 tokens × 4 K values of a B tile.
const TK: usize = 64;
/// Bytes of one tile.
const TILE: usize = TR * TK;

/// Whether this CPU and OS can run the AMX path (checked once per process).
pub fn is_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        cpu_has_amx_int8() && is_x86_feature_detected!("avx2") && request_tile_data()
    })
}

/// CPUID leaf 7, subleaf 0, EDX bits 24 (AMX-TILE) and 25 (AMX-INT8).
// `__cpuid` and `__cpuid_count` are unsafe functions in older Rust releases (the
// workspace's rust-version among them) and safe ones in newer releases.
#[allow(unused_unsafe)]
fn cpu_has_amx_int8() -> bool {
    const AMX_TILE_INT8: u32 = (1 << 24) | (1 << 25);
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only if leaf 0 lists it.
    let max_leaf = unsafe { __cpuid(0) }.eax;
    max_leaf >= 7 && unsafe { __cpuid_count(7, 0) }.edx & AMX_TILE_INT8 == AMX_TILE_INT8
}

/// Ask Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`). The permission covers every thread of the process; without it
/// the first tile instruction is fatal. Fails on kernels older than 5.16.
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: isize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: this arch_prctl only extends the process's permitted extended state; the
    // `syscall` instruction clobbers rcx and r11 and writes no memory of ours.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// The `ldtilecfg` operand: palette 1, tiles 0..8 of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

static TILE_CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// The tiles configured on the current thread; released when dropped.
struct Tiles;

impl Tiles {
    /// # Safety
    /// [`is_available`] returned true.
    unsafe fn configure() -> Tiles {
        // SAFETY: AMX is usable (caller); the operand is a valid 64-byte configuration.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &TILE_CONFIG, options(nostack, readonly));
        }
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: a `Tiles` exists only after `ldtilecfg` succeeded on this thread.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// One cache line: the unit of the tile buffers, so that every 64-byte tile row is
/// aligned and a tile load never splits a line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; TK]);

const ZERO_LINE: Line = Line([0; TK]);

fn bytes(lines: &[Line]) -> &[u8] {
    // SAFETY: `Line` is 64 plain bytes without padding.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast(), lines.len() * TK) }
}

fn bytes_mut(lines: &mut [Line]) -> &mut [u8] {
    // SAFETY: as above; every byte pattern is a valid `Line`.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * TK) }
}

fn quads_mut(lines: &mut [Line]) -> &mut [u32] {
    // SAFETY: as above: 16 u32 per `Line`, which is aligned to 64 bytes.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * TK / 4) }
}

/// The activations of one gemm call in B-tile form, shared by all its tasks.
pub(crate) struct PackedActs {
    /// Token tile tt, K tile kt at byte `(tt·nkt + kt)·TILE`; its row q holds, for token
    /// j < 16, `x[16·tt + j][64·kt + 4q ..][..4]` at bytes 4j..4j+4 (zero past `cols` or m).
    tiles: Vec<Line>,
    /// Σ x per token, over the real K.
    sums: Vec<i32>,
    m: usize,
    /// K tiles: `cols` rounded up to 64, over 64.
    nkt: usize,
}

impl PackedActs {
    /// Repack `x` (`m × cols`, row-major), one rayon task per 16-token tile. Every byte of
    /// the tiles is written (padding with zeros), so the buffer of the previous call on
    /// this thread is reused as it is: a fresh one costs a page fault per 4 KiB (80 per
    /// call at m = 128, K = 2560). The buffer stays with the calling thread, as large as
    /// its largest call (m·K bytes, rounded up to whole tiles).
    pub(crate) fn new(x: &[i8], m: usize, cols: usize) -> PackedActs {
        debug_assert_eq!(x.len(), m * cols);
        let nkt = cols.div_ceil(TK);
        let sums = (0..m)
            .map(|i| sum_i8(&x[i * cols..(i + 1) * cols]))
            .collect();
        let mut tiles = ACTS.take();
        tiles.resize(m.div_ceil(TR) * nkt * TR, ZERO_LINE);
        if nkt > 0 {
            tiles
                .par_chunks_mut(nkt * TR)
                .enumerate()
                .for_each(|(tt, lines)| {
                    // As 4-byte groups a token tile is a [K quad][token] matrix: quad q of
                    // token j is group 16·q + j.
                    let d = quads_mut(lines);
                    // The 4-byte group of activations 4q..4q+4 of a row, zero-padded.
                    let group = |row: &[i8], q: usize| match row.get(4 * q..4 * q + 4) {
                        Some(b) => {
                            u32::from_ne_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
                        }
                        None => {
                            let mut g = [0u8; 4];
                            for (dst, &v) in g.iter_mut().zip(row.get(4 * q..).unwrap_or(&[])) {
                                *dst = v as u8;
                            }
                            u32::from_ne_bytes(g)
                        }
                    };
                    // Tokens past m are empty rows; the destination is written in order.
                    let rows: [&[i8]; TR] = std::array::from_fn(|j| {
                        let i = tt * TR + j;
                        if i < m {
                            &x[i * cols..(i + 1) * cols]
                        } else {
                            &[]
                        }
                    });
                    for (q, groups) in d.chunks_exact_mut(TR).enumerate() {
                        for (g, row) in groups.iter_mut().zip(rows) {
                            *g = group(row, q);
                        }
                    }
                });
        }
        PackedActs {
            tiles,
            sums,
            m,
            nkt,
        }
    }
}

impl Drop for PackedActs {
    fn drop(&mut self) {
        ACTS.set(std::mem::take(&mut self.tiles));
    }
}

thread_local! {
    /// The tiles of the last [`PackedActs`] made on this thread, for the next one. (Taken,
    /// not borrowed: a gemm nested inside another one's task would find it empty.)
    static ACTS: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };

    /// Decoded weight codes of the current 32 rows (two panels of `nkt` tiles), reused by
    /// every task this thread runs; grows to the largest K seen.
    static PANELS: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// Decode `rows` ≤ 32 weight rows (`rb` bytes each, from `w`) into codes: row r's K tile
/// kt goes to row r % 16 of tile `(r / 16)·nkt + kt` of `panels`. K positions past the
/// packed blocks (T1 only: 160-weight blocks need not cover whole 64-K tiles) keep old
/// bytes, which meet zero activations.
///
/// Block-major, rows inner: the stores of one block fill the same 2–3 tiles row after row,
/// so they stream through a few lines at a time. Row-major order (one row's tile lines,
/// 1 KiB apart and so crowded into a few L1 sets, then the next row's) measured 3.4× (I2S)
/// and 2× (T1) slower for the decode alone on Zen 3 (2560 × 2560).
///
/// # Safety
/// AVX2 available.
#[target_feature(enable = "avx2")]
unsafe fn decode_rows<const T1: bool>(
    w: &[u8],
    rb: usize,
    rows: usize,
    nkt: usize,
    panels: &mut [u8],
) {
    let bw = if T1 { 160 } else { 128 };
    let steps = if T1 { 5 } else { 4 };
    let kmax = nkt * TK;
    assert!(rows <= 2 * TR && w.len() >= rows * rb && panels.len() >= 2 * nkt * TILE);
    let mask = _mm256_set1_epi8(3);
    let bias = _mm256_set1_epi8(-128);
    let lo = _mm256_set1_epi8((85i32 - 128) as i8);
    let hi = _mm256_set1_epi8((170i32 - 128) as i8);
    for b in 0..rb / BLOCK_BYTES {
        for r in 0..rows {
            let base = (r / TR) * nkt * TILE + (r % TR) * TK;
            // SAFETY: block b of row r lies inside `w` (asserted above).
            let raw =
                unsafe { _mm256_loadu_si256(w.as_ptr().add(r * rb + b * BLOCK_BYTES).cast()) };
            // T1 state: byte·3^s mod 256, XOR 0x80 (see avx2.rs).
            let mut y = _mm256_xor_si256(raw, bias);
            for s in 0..steps {
                // Weights k..k+32 of the row; k is a multiple of 32 in both layouts.
                let k = b * bw + 32 * s;
                if k >= kmax {
                    break;
                }
                let codes = if T1 {
                    if s > 0 {
                        y = _mm256_add_epi8(y, super::avx2::opaque(_mm256_add_epi8(y, y)));
                    }
                    let m1 = _mm256_cmpgt_epi8(y, lo);
                    let m2 = _mm256_cmpgt_epi8(y, hi);
                    _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), m1), m2)
                } else {
                    let sh = _mm_cvtsi32_si128(6 - 2 * s as i32);
                    _mm256_and_si256(_mm256_srl_epi16(raw, sh), mask)
                };
                let at = base + (k / TK) * TILE + k % TK;
                debug_assert!(at + 32 <= 2 * nkt * TILE);
                // SAFETY: k < kmax and k % 64 ∈ {0, 32}, so the 32 bytes at `at` lie in
                // row r % 16 of tile (r / 16)·nkt + k / 64 < 2·nkt (asserted above).
                unsafe { _mm256_storeu_si256(panels.as_mut_ptr().add(at).cast(), codes) };
            }
        }
    }
}

/// The four accumulator tiles after a product, tile `2·ia + ib` for A tile ia and B tile
/// ib, each 16 rows (weight rows) × 16 i32 (tokens).
#[repr(C, align(64))]
struct Acc([[i32; TR * TR]; 4]);

/// `acc[2·ia + ib] = Σ_kt A(ia, kt) · B(ib, kt)` for ia < na, ib < nb (the other tiles of
/// `acc` are left as they were). A tile (ia, kt) is at `a + (ia·nkt + kt)·TILE`, B tile
/// (ib, kt) at `b + (ib·nkt + kt)·TILE`.
///
/// # Safety
/// Tiles configured on this thread ([`Tiles`]); nkt > 0; 1 ≤ na, nb ≤ 2 and those tiles
/// readable.
unsafe fn tile_product(
    na: usize,
    nb: usize,
    a: *const u8,
    b: *const u8,
    nkt: usize,
    acc: &mut Acc,
) {
    let c = acc.0.as_mut_ptr();
    // The second A and B pointers are only advanced, never loaded from, when na or nb is 1.
    let (a1, b1) = (a.wrapping_add(nkt * TILE), b.wrapping_add(nkt * TILE));
    macro_rules! product {
        ([$($body:literal),* $(,)?], [$($store:literal),* $(,)?]) => {
            // SAFETY: the loop reads nkt consecutive tiles from each pointer it loads from
            // and stores into `acc` (4 KiB); the tile registers belong to this code alone.
            unsafe {
                asm!(
                    "tilezero tmm4",
                    "tilezero tmm5",
                    "tilezero tmm6",
                    "tilezero tmm7",
                    "2:",
                    $($body,)*
                    "add {a0}, {tile}",
                    "add {a1}, {tile}",
                    "add {b0}, {tile}",
                    "add {b1}, {tile}",
                    "dec {n}",
                    "jnz 2b",
                    $($store,)*
                    a0 = inout(reg) a => _,
                    a1 = inout(reg) a1 => _,
                    b0 = inout(reg) b => _,
                    b1 = inout(reg) b1 => _,
                    n = inout(reg) nkt => _,
                    s = in(reg) TK,
                    c = in(reg) c,
                    tile = const TILE,
                    options(nostack),
                )
            }
        };
    }
    match (na, nb) {
        (2, 2) => product!(
            [
                "tileloadd tmm0, [{a0} + {s}*1]",
                "tileloadd tmm1, [{a1} + {s}*1]",
                "tileloadd tmm2, [{b0} + {s}*1]",
                "tileloadd tmm3, [{b1} + {s}*1]",
                "tdpbusd tmm4, tmm0, tmm2",
                "tdpbusd tmm5, tmm0, tmm3",
                "tdpbusd tmm6, tmm1, tmm2",
                "tdpbusd tmm7, tmm1, tmm3",
            ],
            [
                "tilestored [{c} + {s}*1], tmm4",
                "tilestored [{c} + {s}*1 + 1024], tmm5",
                "tilestored [{c} + {s}*1 + 2048], tmm6",
                "tilestored [{c} + {s}*1 + 3072], tmm7",
            ]
        ),
        (2, 1) => product!(
            [
                "tileloadd tmm0, [{a0} + {s}*1]",
                "tileloadd tmm1, [{a1} + {s}*1]",
                "tileloadd tmm2, [{b0} + {s}*1]",
                "tdpbusd tmm4, tmm0, tmm2",
                "tdpbusd tmm6, tmm1, tmm2",
            ],
            [
                "tilestored [{c} + {s}*1], tmm4",
                "tilestored [{c} + {s}*1 + 2048], tmm6",
            ]
        ),
        (1, 2) => product!(
            [
                "tileloadd tmm0, [{a0} + {s}*1]",
                "tileloadd tmm2, [{b0} + {s}*1]",
                "tileloadd tmm3, [{b1} + {s}*1]",
                "tdpbusd tmm4, tmm0, tmm2",
                "tdpbusd tmm5, tmm0, tmm3",
            ],
            [
                "tilestored [{c} + {s}*1], tmm4",
                "tilestored [{c} + {s}*1 + 1024], tmm5",
            ]
        ),
        (1, 1) => product!(
            [
                "tileloadd tmm0, [{a0} + {s}*1]",
                "tileloadd tmm2, [{b0} + {s}*1]",
                "tdpbusd tmm4, tmm0, tmm2",
            ],
            ["tilestored [{c} + {s}*1], tmm4"]
        ),
        _ => unreachable!("1 or 2 tiles per operand"),
    }
}

/// Write one accumulator tile transposed: `out[j·ldo + i] = c[16·i + j] − sums[j]` for
/// weight rows i < `rows` and tokens j < `sums.len()`. Full tiles go through four AVX2 8 × 8
/// transposes, partial ones element by element.
///
/// # Safety
/// AVX2 available; `out` writable at those offsets.
#[target_feature(enable = "avx2")]
unsafe fn store_tile(c: &[i32; TR * TR], rows: usize, sums: &[i32], out: *mut i32, ldo: usize) {
    if rows < TR || sums.len() < TR {
        for (j, &sum) in sums.iter().enumerate() {
            for i in 0..rows {
                // SAFETY: j < tokens, i < rows (caller's contract).
                unsafe { *out.add(j * ldo + i) = c[i * TR + j] - sum };
            }
        }
        return;
    }
    for i0 in [0, 8] {
        for j0 in [0, 8] {
            // v[i] = c[i0 + i][j0..j0 + 8].
            // SAFETY: rows i0..i0+8, columns j0..j0+8 of the 16 × 16 tile.
            let v: [__m256i; 8] = std::array::from_fn(|i| unsafe {
                _mm256_loadu_si256(c.as_ptr().add((i0 + i) * TR + j0).cast())
            });
            let t = [
                _mm256_unpacklo_epi32(v[0], v[1]),
                _mm256_unpackhi_epi32(v[0], v[1]),
                _mm256_unpacklo_epi32(v[2], v[3]),
                _mm256_unpackhi_epi32(v[2], v[3]),
                _mm256_unpacklo_epi32(v[4], v[5]),
                _mm256_unpackhi_epi32(v[4], v[5]),
                _mm256_unpacklo_epi32(v[6], v[7]),
                _mm256_unpackhi_epi32(v[6], v[7]),
            ];
            // u[j] holds column j (rows 0..4 of v) in its low lane and column j + 4 in its
            // high lane; u[4 + j] the same for rows 4..8.
            let u = [
                _mm256_unpacklo_epi64(t[0], t[2]),
                _mm256_unpackhi_epi64(t[0], t[2]),
                _mm256_unpacklo_epi64(t[1], t[3]),
                _mm256_unpackhi_epi64(t[1], t[3]),
                _mm256_unpacklo_epi64(t[4], t[6]),
                _mm256_unpackhi_epi64(t[4], t[6]),
                _mm256_unpacklo_epi64(t[5], t[7]),
                _mm256_unpackhi_epi64(t[5], t[7]),
            ];
            for j in 0..4 {
                let cols = [
                    _mm256_permute2x128_si256::<0x20>(u[j], u[4 + j]),
                    _mm256_permute2x128_si256::<0x31>(u[j], u[4 + j]),
                ];
                for (h, col) in cols.into_iter().enumerate() {
                    let tok = j0 + j + 4 * h;
                    let v = _mm256_sub_epi32(col, _mm256_set1_epi32(sums[tok]));
                    // SAFETY: token tok < 16, rows i0..i0+8 (caller's contract).
                    unsafe { _mm256_storeu_si256(out.add(tok * ldo + i0).cast(), v) };
                }
            }
        }
    }
}

/// One gemm task (see [`super::gemm`]): weight rows `w` (`nr` rows of `rb` bytes) against
/// every token of `acts`; writes `out[i*ldo + r]` for i < m, r < nr.
///
/// # Safety
/// [`is_available`] returned true; `w` matches `acts`' K; `out` is writable at those
/// offsets.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn gemm_rows(
    layout: TernaryLayout,
    w: &[u8],
    rb: usize,
    nr: usize,
    acts: &PackedActs,
    out: OutPtr,
    ldo: usize,
) {
    let (m, nkt) = (acts.m, acts.nkt);
    if nkt == 0 {
        // K = 0: every sum is empty.
        for i in 0..m {
            for r in 0..nr {
                // SAFETY: i < m and r < nr (caller's contract).
                unsafe { *out.add(i * ldo + r) = 0 };
            }
        }
        return;
    }
    PANELS.with_borrow_mut(|panels| {
        if panels.len() < 2 * nkt * TR {
            panels.resize(2 * nkt * TR, ZERO_LINE);
        }
        let panels = bytes_mut(panels);
        let b_tiles = bytes(&acts.tiles);
        let mut acc = Acc([[0; TR * TR]; 4]);
        // SAFETY: AMX is available (caller's contract).
        let _tiles = unsafe { Tiles::configure() };
        for r0 in (0..nr).step_by(2 * TR) {
            let rows = (nr - r0).min(2 * TR);
            let wr = &w[r0 * rb..(r0 + rows) * rb];
            // SAFETY: AVX2 is part of AMX availability; sizes as asserted in decode_rows.
            match layout {
                TernaryLayout::I2S => unsafe { decode_rows::<false>(wr, rb, rows, nkt, panels) },
                TernaryLayout::T1 => unsafe { decode_rows::<true>(wr, rb, rows, nkt, panels) },
            }
            let na = rows.div_ceil(TR);
            for t0 in (0..m).step_by(2 * TR) {
                let tokens = (m - t0).min(2 * TR);
                let nb = tokens.div_ceil(TR);
                let b = b_tiles[(t0 / TR) * nkt * TILE..].as_ptr();
                // SAFETY: tiles configured; na A tiles of nkt K tiles in `panels` (2·nkt
                // tiles long) and nb B tiles from token tile t0/16 on (m.div_ceil(16) of
                // them in `acts`).
                unsafe { tile_product(na, nb, panels.as_ptr(), b, nkt, &mut acc) };
                for ia in 0..na {
                    for ib in 0..nb {
                        let (r, t) = (r0 + ia * TR, t0 + ib * TR);
                        // SAFETY: rows r.. and tokens t.. of `out`, as many as exist.
                        unsafe {
                            store_tile(
                                &acc.0[2 * ia + ib],
                                TR.min(rows - ia * TR),
                                &acts.sums[t..t + TR.min(tokens - ib * TR)],
                                out.add(t * ldo + r),
                                ldo,
                            )
                        };
                    }
                }
            }
        }
    });
}
