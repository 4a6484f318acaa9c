//! Wrappers of `ops.cu`: fused RMSNorm→int8, RMSNorm, RoPE + KV append, embedding lookup,
//! and a copy kernel for the bandwidth baseline.

use super::ternary::{padded_cols, DevActs, DevTernary, GemvSplit};
use super::{Arg, CudaDevice, DevBuf, Stream, K};
use crate::error::{Error, Result};
use crate::nn::rope::{Rope, RopeStyle};

pub(crate) fn need(op: &'static str, ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::shape(op, msg()))
    }
}

/// RMSNorm (weight `w`, length `k`) of rows `row0 .. row0+m` of `x` (rows of `k`), each
/// quantized to int8 into `acts` (whose row stride becomes `padded_cols(k)`).
pub fn rmsnorm_quant(
    dev: &CudaDevice,
    stream: &Stream,
    x: &DevBuf<f32>,
    row0: usize,
    m: usize,
    k: usize,
    w: &DevBuf<f32>,
    eps: f32,
    acts: &mut DevActs,
) -> Result<()> {
    let kp = padded_cols(k);
    need(
        "cuda::rmsnorm_quant",
        w.len() == k && x.len() >= (row0 + m) * k,
        || {
            format!(
                "x holds {}, norm weight {}, for rows {row0}+{m} of {k}",
                x.len(),
                w.len()
            )
        },
    )?;
    need(
        "cuda::rmsnorm_quant",
        acts.q.len() >= m * kp && acts.f.len() >= m,
        || format!("activation buffer too small for {m}×{kp}"),
    )?;
    acts.k = k;
    acts.kp = kp;
    acts.rows = m;
    // Σq only for the tensor-core products (more than one row).
    acts.sums = m > 1;
    let threads = rmsnorm_quant_threads(k, m);
    dev.launch(
        K::RmsnormQuant,
        stream,
        (m as u32, 1, 1),
        (threads, 1, 1),
        0,
        &[
            Arg::P(x.ptr_at(row0 * k)),
            Arg::P(w.ptr()),
            Arg::I(k as i32),
            Arg::I(kp as i32),
            Arg::F(eps),
            Arg::P(acts.q.ptr()),
            Arg::P(acts.f.ptr()),
            Arg::P(acts.s.ptr()),
            Arg::I(acts.sums as i32),
        ],
    )
}

/// The block size of `rmsnorm_quant` for `m` rows of `k`: rows that are a multiple of 4
/// go as V float4 per thread. One row (decode, where the norm is on the critical path): V =
/// ⌈k/2560⌉, so one thread per four values up to 2,560 values (on the H100 a 2,560-value
/// norm then takes 1.68 µs in a chain instead of 2.10 with eight scalars per thread, a
/// 6,912-value one 2.33 instead of 3.01). Several rows (prefill, one block per row): V =
/// ⌈k/1280⌉, half the threads (one float4 per thread cost 1 % of pp512 on the H200).
/// Other rows go as about eight values per thread; the kernel loops over global memory
/// for longer rows.
fn rmsnorm_quant_threads(k: usize, m: usize) -> u32 {
    const NQ_V: usize = 4;
    let k4 = k / 4;
    let per_block = if m == 1 { 640 } else { 320 };
    let threads = if k.is_multiple_of(4) && k4 <= NQ_V * 1024 {
        let v = k4.div_ceil(per_block).clamp(1, NQ_V);
        k4.div_ceil(v)
    } else {
        k.div_ceil(8)
    };
    (threads.div_ceil(32) * 32).clamp(64, 1024) as u32
}

/// RMSNorm in f32 of rows `row0 .. row0+m` of `x` into the first `m` rows of `out`.
pub fn rmsnorm(
    dev: &CudaDevice,
    stream: &Stream,
    x: &DevBuf<f32>,
    row0: usize,
    m: usize,
    k: usize,
    w: &DevBuf<f32>,
    eps: f32,
    out: &mut DevBuf<f32>,
) -> Result<()> {
    need(
        "cuda::rmsnorm",
        w.len() == k && x.len() >= (row0 + m) * k && out.len() >= m * k,
        || {
            format!(
                "x {}, w {}, out {} for rows {row0}+{m} of {k}",
                x.len(),
                w.len(),
                out.len()
            )
        },
    )?;
    dev.launch(
        K::RmsnormF32,
        stream,
        (m as u32, 1, 1),
        (256, 1, 1),
        0,
        &[
            Arg::P(x.ptr_at(row0 * k)),
            Arg::P(w.ptr()),
            Arg::I(k as i32),
            Arg::F(eps),
            Arg::P(out.ptr()),
        ],
    )
}

/// Attention shapes on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions the cache holds (stride between KV heads).
    pub max_ctx: usize,
}

impl AttnDims {
    /// Width of one fused q|k|v row.
    pub fn qkv_width(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }

    /// Elements of one layer's key (or value) cache.
    pub fn cache_len(&self) -> usize {
        self.n_kv_heads * self.max_ctx * self.head_dim
    }

    /// Whether `kc`, `vc` hold one layer's cache and `rope` covers its positions.
    fn fits(&self, kc: &DevBuf<u16>, vc: &DevBuf<u16>, rope: &RopeTables) -> bool {
        kc.len() >= self.cache_len()
            && vc.len() >= self.cache_len()
            && rope.head_dim == self.head_dim
            && rope.max_pos >= self.max_ctx
    }

    fn check(&self) -> Result<()> {
        let s = self;
        need(
            "cuda attention",
            s.n_kv_heads > 0
                && s.n_heads.is_multiple_of(s.n_kv_heads)
                && s.head_dim > 0
                && s.head_dim.is_multiple_of(2)
                && s.head_dim <= 1024,
            || format!("{s:?}"),
        )
    }
}

/// cos/sin tables of RoPE on the device: the CPU [`Rope`]'s tables, uploaded.
pub struct RopeTables {
    cos: DevBuf<f32>,
    sin: DevBuf<f32>,
    head_dim: usize,
    max_pos: usize,
    neox: bool,
}

impl RopeTables {
    pub fn new(
        dev: &CudaDevice,
        stream: &Stream,
        head_dim: usize,
        max_pos: usize,
        theta: f32,
        style: RopeStyle,
    ) -> Result<Self> {
        let rope = Rope::new(head_dim, max_pos, theta, style)?;
        let (cos, sin) = rope.tables();
        let t = RopeTables {
            cos: dev.upload_exact(stream, cos)?,
            sin: dev.upload_exact(stream, sin)?,
            head_dim,
            max_pos,
            neox: style == RopeStyle::Neox,
        };
        stream.sync()?;
        Ok(t)
    }

    pub(crate) fn cos_ptr(&self) -> u64 {
        self.cos.ptr()
    }

    pub(crate) fn sin_ptr(&self) -> u64 {
        self.sin.ptr()
    }

    pub(crate) fn head_dim(&self) -> usize {
        self.head_dim
    }

    pub(crate) fn max_pos(&self) -> usize {
        self.max_pos
    }

    pub(crate) fn neox(&self) -> bool {
        self.neox
    }
}

/// Rotate q and k of `m` fused q|k|v rows (positions `ctl[0] ..`) in place and append k, v
/// to the f16 caches of one layer.
pub fn rope_kv(
    dev: &CudaDevice,
    stream: &Stream,
    qkv: &mut DevBuf<f32>,
    m: usize,
    kc: &mut DevBuf<u16>,
    vc: &mut DevBuf<u16>,
    rope: &RopeTables,
    ctl: &DevBuf<i32>,
    d: AttnDims,
) -> Result<()> {
    d.check()?;
    need(
        "cuda::rope_kv",
        qkv.len() >= m * d.qkv_width() && d.fits(kc, vc, rope),
        || format!("buffers do not fit {d:?} for {m} tokens"),
    )?;
    dev.launch(
        K::RopeKv,
        stream,
        (m as u32, (d.n_heads + d.n_kv_heads) as u32, 1),
        ((d.head_dim / 2).min(256) as u32, 1, 1),
        0,
        &[
            Arg::P(qkv.ptr()),
            Arg::P(kc.ptr()),
            Arg::P(vc.ptr()),
            Arg::P(rope.cos.ptr()),
            Arg::P(rope.sin.ptr()),
            Arg::P(ctl.ptr()),
            Arg::I(d.n_heads as i32),
            Arg::I(d.n_kv_heads as i32),
            Arg::I(d.head_dim as i32),
            Arg::I(d.max_ctx as i32),
            Arg::I(rope.neox as i32),
        ],
    )
}

/// One token's q|k|v product with RoPE and the cache append fused in (what [`matmul`]
/// into `qkv` followed by [`rope_kv`] computes, in one launch): `w` is the fused q|k|v
/// matrix, `x` the token's int8 activations; q (rotated) goes to `q[..n_heads·head_dim]`,
/// k and v to the caches at position `ctl[0]`.
///
/// [`matmul`]: super::ternary::matmul
#[allow(clippy::too_many_arguments)]
pub fn qkv_rope_decode(
    dev: &CudaDevice,
    stream: &Stream,
    w: &DevTernary,
    x: &DevActs,
    q: &mut DevBuf<f32>,
    kc: &mut DevBuf<u16>,
    vc: &mut DevBuf<u16>,
    rope: &RopeTables,
    ctl: &DevBuf<i32>,
    d: AttnDims,
) -> Result<()> {
    d.check()?;
    need(
        "cuda::qkv_rope_decode",
        w.rows() == d.qkv_width()
            && x.kp == w.kp()
            && x.k == w.cols()
            && x.rows >= 1
            && q.len() >= d.n_heads * d.head_dim
            && d.fits(kc, vc, rope),
        || {
            format!(
                "a {}×{} matrix and buffers that do not fit {d:?}",
                w.rows(),
                w.cols()
            )
        },
    )?;
    let [wp, sp, bp] = w.ptrs();
    let pairs = d.qkv_width() / 2;
    let split = GemvSplit::choose(dev, 2 * pairs, w.kp() / 64);
    let k = match split {
        GemvSplit::None => K::TernGemvQkv4,
        GemvSplit::TwoU1 => K::TernGemvQkv4S2U1,
        GemvSplit::TwoU2 => K::TernGemvQkv4S2,
    };
    dev.launch(
        k,
        stream,
        (split.blocks(2 * pairs), 1, 1),
        (128, 1, 1),
        0,
        &[
            Arg::P(wp),
            Arg::P(x.q.ptr()),
            Arg::P(x.f.ptr()),
            Arg::P(sp),
            Arg::P(bp),
            Arg::P(q.ptr()),
            Arg::P(kc.ptr()),
            Arg::P(vc.ptr()),
            Arg::P(rope.cos.ptr()),
            Arg::P(rope.sin.ptr()),
            Arg::P(ctl.ptr()),
            Arg::I((w.kp() / 64) as i32),
            Arg::I(d.n_heads as i32),
            Arg::I(d.n_kv_heads as i32),
            Arg::I(d.head_dim as i32),
            Arg::I(d.max_ctx as i32),
            Arg::I(rope.neox as i32),
        ],
    )
}

/// Embedding rows (f32 table, `h` wide) of the `m` tokens in `ctl[2..]` into `x`; clears
/// `best` (the LM head's arg-max slot) when given.
pub fn embed(
    dev: &CudaDevice,
    stream: &Stream,
    table: &DevBuf<f32>,
    h: usize,
    ctl: &DevBuf<i32>,
    m: usize,
    x: &mut DevBuf<f32>,
    best: Option<&DevBuf<u64>>,
) -> Result<()> {
    need(
        "cuda::embed",
        x.len() >= m * h && ctl.len() >= 2 + m,
        || {
            format!(
                "x holds {}, ctl {}, for {m} rows of {h}",
                x.len(),
                ctl.len()
            )
        },
    )?;
    dev.launch(
        K::EmbedRows,
        stream,
        (m as u32, 1, 1),
        (256, 1, 1),
        0,
        &[
            Arg::P(table.ptr()),
            Arg::P(ctl.ptr()),
            Arg::P(x.ptr()),
            Arg::I(h as i32),
            Arg::P(best.map_or(0, |b| b.ptr())),
        ],
    )
}

/// Device-to-device copy of `bytes` (a multiple of 16) with the copy kernel.
pub fn copy(
    dev: &CudaDevice,
    stream: &Stream,
    src: &DevBuf<u8>,
    dst: &mut DevBuf<u8>,
    bytes: usize,
) -> Result<()> {
    need(
        "cuda::copy",
        bytes.is_multiple_of(16) && src.len() >= bytes && dst.len() >= bytes,
        || format!("{bytes} bytes"),
    )?;
    let blocks = (dev.sm_count() * 8).max(1) as u32;
    let n = (bytes / 16) as u64;
    dev.launch(
        K::CopyU4,
        stream,
        (blocks, 1, 1),
        (256, 1, 1),
        0,
        &[Arg::P(src.ptr()), Arg::P(dst.ptr()), Arg::P(n)],
    )
}

/// Keep the GPU busy for `ns` nanoseconds (one thread spinning on the global timer), so
/// that work queued after it is queued in full before it starts (for profiling).
pub fn gpu_sleep(dev: &CudaDevice, stream: &Stream, ns: u64) -> Result<()> {
    dev.launch(K::GpuSleep, stream, (1, 1, 1), (1, 1, 1), 0, &[Arg::P(ns)])
}
