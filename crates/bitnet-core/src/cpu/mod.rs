//! CPU kernels for ternary matrices: a scalar reference and SIMD versions, chosen at run
//! time.
//!
//! Every kernel computes exact `i32` dot products of ternary weights with int8 activations,
//! so all paths must agree bit for bit with [`reference`]; the tests check that.
//!
//! Path selection, in order of precedence:
//! 1. a programmatic override, [`set_forced_path`];
//! 2. the `BITNET_KERNEL` environment variable (`scalar`, `avx2`, `avx512`, `amx`), read
//!    once;
//! 3. [`best_path`], the fastest path this CPU supports.
//!
//! The AMX path has a gemm kernel only: its gemv (m = 1, also a gemm of one row) runs on
//! [`KernelPath::gemv_path`], the AVX-512 VNNI kernels where available, else AVX2.
//!
//! A forced path that this CPU lacks is an error ([`Error::KernelUnavailable`]) at the
//! first kernel call, never a silent fallback: a benchmark that asked for AVX-512 must not
//! quietly measure AVX2.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::quant::ternary::TernaryLayout;

#[cfg(target_arch = "x86_64")]
pub mod amx;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod reference;

/// Weights per block and bytes per block of each layout. Both layouts use 32-byte blocks
/// so one AVX2 load fetches exactly one block.
pub const BLOCK_BYTES: usize = 32;
/// The largest block (in weights) of any layout: the size of the zero-padded stack
/// buffers that hold the last partial block of an activation row.
pub const MAX_BLOCK_WEIGHTS: usize = 160;

/// Weight rows per rayon task. Big enough that task overhead (~1 µs) is small next to the
/// work (64 rows × 2560 weights ≈ 10 µs at memory speed), small enough that the 640-row
/// shapes still split into 10 tasks for 2 threads.
pub const ROWS_PER_TASK: usize = 64;

/// How far ahead of their reads the streaming matrix-vector kernels (the AVX2 and AVX-512
/// ternary gemv, the LM head's Q6_K, Q8_0, int8-row, f16 and bf16 dots) prefetch weights,
/// and into which cache level. Chosen once per process from the CPU vendor; both measured
/// (BENCHMARKS.md, eleventh to thirteenth sessions):
/// - AMD (a 2-core Zen 3 EPYC): 2 KiB ahead into L1 (`prefetcht0`; `prefetchnta` in the
///   AVX2 gemv, whose weights would otherwise evict the token). The AVX2 gemv's former
///   whole rows two rows ahead left 2560×6912 at 67–76 % of the read baseline, against
///   75–88 % with 2 KiB; an extra L2 prefetch at 6 or 8 KiB gained nothing.
/// - Intel (2 cores of a Xeon with AMX): 8 KiB ahead into L2 (`prefetcht1`). With the AMD
///   setting the I2S gemv reached 61–73 % of the read baseline (1 and 2 threads); 8 KiB
///   into L2 reaches 92–100 % on every 2B-4T shape, into L1 84–87 %, non-temporal 69–86 %.
///
/// The f32 dot (64 bytes per step) is faster without.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prefetch {
    bytes: usize,
    into_l2: bool,
}

#[cfg(target_arch = "x86_64")]
impl Prefetch {
    /// This CPU's setting (read once; pass the value into hot loops).
    pub(crate) fn get() -> Prefetch {
        static PLAN: OnceLock<Prefetch> = OnceLock::new();
        *PLAN.get_or_init(|| {
            // SAFETY: CPUID leaf 0 exists on every x86-64 CPU.
            #[allow(unused_unsafe)]
            let id = unsafe { std::arch::x86_64::__cpuid(0) };
            // "GenuineIntel": EBX "Genu", EDX "ineI", ECX "ntel".
            let intel = (id.ebx, id.edx, id.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e);
            if intel {
                Prefetch {
                    bytes: 8192,
                    into_l2: true,
                }
            } else {
                Prefetch {
                    bytes: 2048,
                    into_l2: false,
                }
            }
        })
    }

    /// Prefetch the line `self.bytes` past `p + off`: into L2 where that is this CPU's
    /// setting, else with `_mm_prefetch` hint `HINT`. A prefetch never faults, and
    /// `wrapping_add` keeps the address computation defined past the end of the buffer.
    #[inline(always)]
    pub(crate) fn ahead<const HINT: i32>(self, p: *const u8, off: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let at = p.wrapping_add(off + self.bytes) as *const i8;
        // SAFETY: SSE is part of the x86_64 baseline, and a prefetch reads no memory.
        unsafe {
            if self.into_l2 {
                _mm_prefetch::<_MM_HINT_T1>(at)
            } else {
                _mm_prefetch::<HINT>(at)
            }
        }
    }
}

/// A kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// Portable scalar code; the reference all other paths are tested against.
    Scalar,
    /// AVX2 (`vpmaddubsw`), x86-64 since Haswell / Zen 1.
    Avx2,
    /// AVX-512 VNNI (`vpdpbusd`), Ice Lake / Zen 4 and later.
    Avx512Vnni,
    /// AMX-INT8 tiles (`tdpbusd`), Sapphire Rapids and later, on Linux 5.16+: gemm only;
    /// gemv runs on [`gemv_path`](Self::gemv_path).
    Amx,
}

impl KernelPath {
    /// Every path, slowest first.
    pub const ALL: [KernelPath; 4] = [
        KernelPath::Scalar,
        KernelPath::Avx2,
        KernelPath::Avx512Vnni,
        KernelPath::Amx,
    ];

    /// The name used by `BITNET_KERNEL` and in benchmark labels.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512Vnni => "avx512",
            KernelPath::Amx => "amx",
        }
    }

    /// Parse a name as written in `BITNET_KERNEL` (case-insensitive).
    pub fn from_name(s: &str) -> Option<KernelPath> {
        let s = s.trim().to_ascii_lowercase();
        KernelPath::ALL
            .into_iter()
            .find(|p| p.name() == s || (s == "avx512vnni" && *p == KernelPath::Avx512Vnni))
    }

    /// Whether this CPU (and OS) can run this path.
    pub fn is_available(self) -> bool {
        match self {
            KernelPath::Scalar => true,
            KernelPath::Avx2 => has_avx2(),
            KernelPath::Avx512Vnni => has_avx512vnni(),
            KernelPath::Amx => has_amx(),
        }
    }

    /// The path whose kernels run a gemv (m = 1) when `self` is selected: `self`, except
    /// for AMX, which has no gemv kernel (one token would use 1 of a tile's 16 columns, and
    /// gemv is bound by memory bandwidth): AVX-512 VNNI where available, else AVX2.
    pub fn gemv_path(self) -> KernelPath {
        match self {
            KernelPath::Amx if has_avx512vnni() => KernelPath::Avx512Vnni,
            KernelPath::Amx => KernelPath::Avx2,
            p => p,
        }
    }

    /// `Ok(self)` if available, else [`Error::KernelUnavailable`].
    pub fn check(self) -> Result<KernelPath> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(Error::KernelUnavailable(self.name().to_string()))
        }
    }
}

impl std::fmt::Display for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
}
#[cfg(not(target_arch = "x86_64"))]
fn has_avx2() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn has_avx512vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}
#[cfg(not(target_arch = "x86_64"))]
fn has_avx512vnni() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn has_amx() -> bool {
    amx::is_available()
}
#[cfg(not(target_arch = "x86_64"))]
fn has_amx() -> bool {
    false
}

/// Every path this CPU can run, slowest first (always starts with `Scalar`).
pub fn available_paths() -> Vec<KernelPath> {
    KernelPath::ALL
        .into_iter()
        .filter(|p| p.is_available())
        .collect()
}

/// The fastest available path.
pub fn best_path() -> KernelPath {
    static BEST: OnceLock<KernelPath> = OnceLock::new();
    *BEST.get_or_init(|| {
        *available_paths()
            .last()
            .expect("the scalar path is always available")
    })
}

/// 0 = no override, otherwise 1 + index into `KernelPath::ALL`.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// What `BITNET_KERNEL` asked for: `None` if unset, `Some(Err(name))` if unparsable.
static ENV_PATH: OnceLock<Option<std::result::Result<KernelPath, String>>> = OnceLock::new();

fn env_path() -> &'static Option<std::result::Result<KernelPath, String>> {
    ENV_PATH.get_or_init(|| {
        let v = std::env::var("BITNET_KERNEL").ok()?;
        if v.trim().is_empty() {
            return None;
        }
        Some(KernelPath::from_name(&v).ok_or(v))
    })
}

/// Force every subsequent kernel call (all threads) onto `path`, or clear the override
/// with `None`. Errors if `path` is not available on this CPU.
pub fn set_forced_path(path: Option<KernelPath>) -> Result<()> {
    let code = match path {
        None => 0,
        Some(p) => {
            p.check()?;
            1 + KernelPath::ALL.iter().position(|&q| q == p).unwrap() as u8
        }
    };
    FORCED.store(code, Ordering::Relaxed);
    Ok(())
}

/// The path kernel calls without an explicit path use: the override, else
/// `BITNET_KERNEL`, else [`best_path`]. Errors if a forced path is unavailable or
/// `BITNET_KERNEL` names no path.
pub fn active_path() -> Result<KernelPath> {
    let code = FORCED.load(Ordering::Relaxed);
    if code != 0 {
        return Ok(KernelPath::ALL[code as usize - 1]);
    }
    match env_path() {
        None => Ok(best_path()),
        Some(Ok(p)) => p.check(),
        Some(Err(name)) => Err(Error::KernelUnavailable(format!(
            "{name} (BITNET_KERNEL must be scalar, avx2, avx512 or amx)"
        ))),
    }
}

/// A packed ternary matrix as the kernels see it: `rows` rows of `row_bytes` bytes, each
/// row a sequence of 32-byte blocks in `layout`.
#[derive(Clone, Copy, Debug)]
pub struct PackedView<'a> {
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    pub layout: TernaryLayout,
}

/// One activation row as the kernels see it.
///
/// Tail handling: the packed weight rows are padded with zero trits to whole blocks but
/// `x` has exactly `cols` entries, so kernels read `nfull` whole blocks straight from `x`
/// and the last, partial block (if any) from `tail`, a zero-padded copy on the caller's
/// stack. No kernel ever reads past the end of `x`.
#[derive(Clone, Copy, Debug)]
pub struct XRow<'a> {
    /// The activations, `cols` long.
    pub x: &'a [i8],
    /// Whole blocks in `x`.
    pub nfull: usize,
    /// The zero-padded last partial block: exactly one block long, or empty.
    pub tail: &'a [i8],
    /// Σ x, which the code-based kernels subtract (they compute Σ (q+1)·x).
    pub sum: i32,
}

impl<'a> XRow<'a> {
    /// Split `x` into whole blocks and a zero-padded tail written into `buf`.
    pub fn new(x: &'a [i8], layout: TernaryLayout, buf: &'a mut [i8; MAX_BLOCK_WEIGHTS]) -> Self {
        let bw = layout.block_weights();
        let nfull = x.len() / bw;
        let rem = x.len() - nfull * bw;
        let tail: &[i8] = if rem == 0 {
            &[]
        } else {
            buf[..rem].copy_from_slice(&x[nfull * bw..]);
            buf[rem..bw].fill(0);
            &buf[..bw]
        };
        XRow {
            x,
            nfull,
            tail,
            sum: sum_i8(x),
        }
    }
}

/// Σ x as i32 (the compiler vectorizes this; it runs once per activation row).
pub fn sum_i8(x: &[i8]) -> i32 {
    x.iter().map(|&v| v as i32).sum()
}

/// A raw output pointer shared by gemm tasks that write disjoint columns.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub *mut i32);
// SAFETY: gemm tasks write disjoint sets of elements (distinct weight-row ranges `n`
// within each output row), and the caller holds the `&mut [i32]` for the whole call.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `off` elements further (a method, so closures capture the whole
    /// `Send` wrapper rather than its raw-pointer field).
    ///
    /// # Safety
    /// The result must stay inside the output buffer.
    #[inline]
    pub(crate) unsafe fn add(self, off: usize) -> *mut i32 {
        // SAFETY: forwarded to the caller.
        unsafe { self.0.add(off) }
    }
}

/// Longest activation row that [`aligned_x`] copies (bytes, on the caller's stack).
const ALIGNED_X_MAX: usize = 32 * 1024;

/// Stack room for [`aligned_x`].
#[repr(C, align(64))]
struct AlignedX([MaybeUninit<i8>; ALIGNED_X_MAX]);

impl AlignedX {
    fn new() -> Self {
        AlignedX([MaybeUninit::uninit(); ALIGNED_X_MAX])
    }
}

/// `x` on a 64-byte boundary: itself if it is (or is longer than [`ALIGNED_X_MAX`]), else
/// a copy in `buf`. The gemv kernels read every activation once per weight row with
/// 32- or 64-byte loads; from a `Vec` that starts 16 bytes past a boundary, every second
/// 32-byte load (every 64-byte one) spans two cache lines. Measured (BENCHMARKS.md, twelfth
/// session), 2560×6912 from DRAM, 1 thread: 75–77 % of the read baseline from such a
/// `Vec`, 91–93 % from an aligned copy; the copy is K bytes against K·N/4 of weights.
fn aligned_x<'a>(x: &'a [i8], buf: &'a mut AlignedX) -> &'a [i8] {
    if (x.as_ptr() as usize).is_multiple_of(64) || x.len() > ALIGNED_X_MAX {
        return x;
    }
    // SAFETY: x.len() ≤ ALIGNED_X_MAX bytes are copied into buf, which the returned slice
    // borrows, and exactly those are read back; i8 and MaybeUninit<i8> share a layout.
    unsafe {
        std::ptr::copy_nonoverlapping(x.as_ptr(), buf.0.as_mut_ptr().cast::<i8>(), x.len());
        std::slice::from_raw_parts(buf.0.as_ptr().cast::<i8>(), x.len())
    }
}

/// `out[n] = Σ_k q[n,k]·x[k]` on `path`, multi-threaded over row chunks on the current
/// rayon pool. Shapes must already be checked; `path` must be available.
pub(crate) fn gemv(path: KernelPath, w: &PackedView<'_>, x: &[i8], out: &mut [i32]) {
    debug_assert_eq!(x.len(), w.cols);
    debug_assert_eq!(out.len(), w.rows);
    let mut xa = AlignedX::new();
    let x = aligned_x(x, &mut xa);
    let mut buf = [0i8; MAX_BLOCK_WEIGHTS];
    let xr = XRow::new(x, w.layout, &mut buf);
    let rb = w.row_bytes;
    let run = |r0: usize, o: &mut [i32]| {
        let wr = &w.data[r0 * rb..(r0 + o.len()) * rb];
        gemv_rows(path, w.layout, wr, rb, &xr, o);
    };
    if w.rows <= ROWS_PER_TASK {
        run(0, out);
    } else {
        out.par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(c, o)| run(c * ROWS_PER_TASK, o));
    }
}

/// Several matrices with the same `cols` and layout against the same `m` activation rows,
/// as one parallel region: `outs[j]` (`m × ws[j].rows`, row-major like [`gemm`]) gets
/// `ws[j]`'s products. One dispatch of all the matrices' row tiles instead of one per
/// matrix halves the fork/join points of a layer (q/k/v, gate/up), and for `m == 1` the
/// activation sum Σx is computed once for all of them. Shapes must already be checked.
pub(crate) fn gemm_multi(
    path: KernelPath,
    ws: &[PackedView<'_>],
    x: &[i8],
    m: usize,
    outs: &mut [&mut [i32]],
) {
    debug_assert_eq!(ws.len(), outs.len());
    if m == 0 || ws.is_empty() {
        return;
    }
    let (cols, layout) = (ws[0].cols, ws[0].layout);
    debug_assert!(ws.iter().all(|w| w.cols == cols && w.layout == layout));
    debug_assert_eq!(x.len(), m * cols);
    let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    // Task t of matrix j covers rows c·ROWS_PER_TASK.. of it; `first[j]` is j's first task.
    let mut first = Vec::with_capacity(ws.len() + 1);
    let mut total = 0;
    for w in ws {
        first.push(total);
        total += w.rows.div_ceil(ROWS_PER_TASK);
    }
    first.push(total);
    let mut xa = AlignedX::new();
    let mut buf = [0i8; MAX_BLOCK_WEIGHTS];
    let x1 = if m == 1 {
        aligned_x(x, &mut xa)
    } else {
        &x[..0]
    };
    let xr = XRow::new(x1, layout, &mut buf);
    let acts = GemmActs::new(path, x, m, cols);
    let task = |t: usize| {
        let j = first.partition_point(|&f| f <= t) - 1;
        let w = &ws[j];
        let n0 = (t - first[j]) * ROWS_PER_TASK;
        let nr = ROWS_PER_TASK.min(w.rows - n0);
        let rb = w.row_bytes;
        let wr = &w.data[n0 * rb..(n0 + nr) * rb];
        if m == 1 {
            // SAFETY: rows n0..n0+nr of output j belong to this task alone and lie inside
            // it (`outs[j]` has w.rows elements).
            let o = unsafe { std::slice::from_raw_parts_mut(ptrs[j].add(n0), nr) };
            gemv_rows(path, layout, wr, rb, &xr, o);
        } else {
            // SAFETY: as in `gemm`: columns n0..n0+nr of the m rows of output j.
            let o = unsafe { ptrs[j].add(n0) };
            gemm_rows(path, layout, wr, rb, nr, &acts, o, w.rows);
        }
    };
    if total == 1 {
        task(0);
    } else {
        (0..total).into_par_iter().for_each(task);
    }
}

/// One task's rows of a gemv: `w` holds exactly `out.len()` rows.
fn gemv_rows(
    path: KernelPath,
    layout: TernaryLayout,
    w: &[u8],
    rb: usize,
    x: &XRow<'_>,
    out: &mut [i32],
) {
    match path {
        KernelPath::Scalar => reference::gemv_rows(layout, w, rb, x, out),
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 => {
            // SAFETY: callers only pass available paths (checked in `TernaryMatrix`).
            unsafe { avx2::gemv_rows(layout, w, rb, x, out) }
        }
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512Vnni => {
            // SAFETY: as above.
            unsafe { avx512::gemv_rows(layout, w, rb, x, out) }
        }
        KernelPath::Amx => gemv_rows(path.gemv_path(), layout, w, rb, x, out),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only the scalar path exists on this architecture"),
    }
}

/// `out[i*rows+n] = Σ_k q[n,k]·x[i*cols+k]` on `path`, multi-threaded over weight-row
/// tiles (every task sees all `m` activation rows, so each weight block is decoded once per
/// activation tile and the task's weights stay in L2). On AMX, m = 1 is a gemv.
pub(crate) fn gemm(path: KernelPath, w: &PackedView<'_>, x: &[i8], m: usize, out: &mut [i32]) {
    debug_assert_eq!(x.len(), m * w.cols);
    debug_assert_eq!(out.len(), m * w.rows);
    if m == 0 || w.rows == 0 {
        return;
    }
    if m == 1 && path == KernelPath::Amx {
        return gemv(path, w, x, out);
    }
    let acts = GemmActs::new(path, x, m, w.cols);
    let ptr = OutPtr(out.as_mut_ptr());
    let rb = w.row_bytes;
    let ntasks = w.rows.div_ceil(ROWS_PER_TASK);
    let task = |t: usize| {
        let n0 = t * ROWS_PER_TASK;
        let nr = ROWS_PER_TASK.min(w.rows - n0);
        let wr = &w.data[n0 * rb..(n0 + nr) * rb];
        // SAFETY: this task writes only columns n0..n0+nr of each of the m output rows,
        // all inside `out` (m × rows), and no other task writes those columns.
        let o = unsafe { ptr.add(n0) };
        gemm_rows(path, w.layout, wr, rb, nr, &acts, o, w.rows);
    };
    if ntasks == 1 {
        task(0);
    } else {
        (0..ntasks).into_par_iter().for_each(task);
    }
}

/// The activations of one gemm call as its tasks see them.
struct GemmActs<'a> {
    /// `m × cols`, row-major.
    x: &'a [i8],
    m: usize,
    cols: usize,
    /// AMX with m > 1 only (m = 1 runs as a gemv): `x` repacked into tiles once per call,
    /// shared by every task.
    #[cfg(target_arch = "x86_64")]
    amx: Option<amx::PackedActs>,
}

impl<'a> GemmActs<'a> {
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn new(path: KernelPath, x: &'a [i8], m: usize, cols: usize) -> Self {
        GemmActs {
            x,
            m,
            cols,
            #[cfg(target_arch = "x86_64")]
            amx: (path == KernelPath::Amx && m > 1).then(|| amx::PackedActs::new(x, m, cols)),
        }
    }
}

/// One task of a gemm: weight rows `w` (nr rows) against all `m` activation rows; writes
/// `out[i*ldo + r]` for i < m, r < nr.
fn gemm_rows(
    path: KernelPath,
    layout: TernaryLayout,
    w: &[u8],
    rb: usize,
    nr: usize,
    acts: &GemmActs<'_>,
    out: *mut i32,
    ldo: usize,
) {
    let out = OutPtr(out);
    let (x, m, cols) = (acts.x, acts.m, acts.cols);
    match path {
        KernelPath::Scalar => reference::gemm_rows(layout, w, rb, nr, cols, x, m, out, ldo),
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 => {
            // SAFETY: the path was checked available; `out` covers m rows of ldo.
            unsafe { avx2::gemm_rows(layout, w, rb, nr, cols, x, m, out, ldo) }
        }
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512Vnni => {
            // SAFETY: as above.
            unsafe { avx512::gemm_rows(layout, w, rb, nr, cols, x, m, out, ldo) }
        }
        #[cfg(target_arch = "x86_64")]
        KernelPath::Amx => {
            let acts = acts.amx.as_ref().expect("GemmActs::new packs for AMX");
            // SAFETY: as above.
            unsafe { amx::gemm_rows(layout, w, rb, nr, acts, out, ldo) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only the scalar path exists on this architecture"),
    }
}
