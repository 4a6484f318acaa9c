//! Wrappers of `attention.cu`: causal attention with grouped KV heads over the f16 cache,
//! for prefill (many tokens, [`attention`]) and for decode (one token split over positions,
//! [`attention_decode`]).

use std::sync::OnceLock;

use super::ops::AttnDims;
use super::{Arg, CudaDevice, DevBuf, Stream, K};
use crate::error::{Error, Result};

/// Attention of `m` query tokens at positions `ctl[0] ..` (their keys and values already in
/// the cache) into `out` (`m × n_heads·head_dim`). `max_positions` bounds `ctl[0] + m` and
/// sizes the shared memory: a captured decode step passes the cache's capacity, so the
/// graph stays valid as the position grows.
pub fn attention(
    dev: &CudaDevice,
    stream: &Stream,
    qkv: &DevBuf<f32>,
    m: usize,
    kc: &DevBuf<u16>,
    vc: &DevBuf<u16>,
    out: &mut DevBuf<f32>,
    ctl: &DevBuf<i32>,
    d: AttnDims,
    max_positions: usize,
) -> Result<()> {
    if d.n_kv_heads == 0
        || !d.n_heads.is_multiple_of(d.n_kv_heads)
        || !d.head_dim.is_multiple_of(32)
        || d.head_dim > 256
        || qkv.len() < m * d.qkv_width()
        || kc.len() < d.cache_len()
        || vc.len() < d.cache_len()
        || out.len() < m * d.n_heads * d.head_dim
        || max_positions > d.max_ctx
    {
        return Err(Error::shape(
            "cuda::attention",
            format!("buffers do not fit {d:?} for {m} tokens"),
        ));
    }
    let smem = (9 * d.head_dim + max_positions) * 4; // q, 8 warps' partial outputs, scores
    dev.ensure_smem(K::Attention, smem)?;
    dev.launch(
        K::Attention,
        stream,
        (d.n_heads as u32, m as u32, 1),
        (256, 1, 1),
        smem as u32,
        &attn_args(qkv, kc, vc, out, ctl, d),
    )
}

/// The parameters every attention kernel starts with: q|k|v rows, caches, output, control
/// block, head counts and sizes, and the score scale 1/√head_dim.
fn attn_args(
    qkv: &DevBuf<f32>,
    kc: &DevBuf<u16>,
    vc: &DevBuf<u16>,
    out: &DevBuf<f32>,
    ctl: &DevBuf<i32>,
    d: AttnDims,
) -> [Arg; 10] {
    [
        Arg::P(qkv.ptr()),
        Arg::P(kc.ptr()),
        Arg::P(vc.ptr()),
        Arg::P(out.ptr()),
        Arg::P(ctl.ptr()),
        Arg::I(d.n_heads as i32),
        Arg::I(d.n_kv_heads as i32),
        Arg::I(d.head_dim as i32),
        Arg::I(d.max_ctx as i32),
        Arg::F(1.0f32 / (d.head_dim as f32).sqrt()),
    ]
}

/// Device scratch of [`attention_decode`]: the per-split partial outputs and one counter
/// per head (zero between launches: the kernel's last block resets it).
pub struct DecodeScratch {
    part: DevBuf<f32>,
    ctr: DevBuf<u32>,
    splits: usize,
    chunk_max: usize,
    n_heads: usize,
    head_dim: usize,
}

impl DecodeScratch {
    /// Scratch for decode steps of up to `max_positions` positions (a captured graph passes
    /// the cache's capacity). Splits: one per 64 positions, at most 32.
    pub fn new(
        dev: &CudaDevice,
        stream: &Stream,
        d: AttnDims,
        max_positions: usize,
    ) -> Result<Self> {
        let max_positions = max_positions.max(1);
        let splits = max_positions.div_ceil(64).clamp(1, 32);
        let chunk_max = max_positions.div_ceil(splits);
        let part = dev.alloc::<f32>(d.n_heads * splits * (d.head_dim + 2))?;
        let mut ctr = dev.alloc::<u32>(d.n_heads)?;
        ctr.fill_bytes(stream, 0)?;
        Ok(DecodeScratch {
            part,
            ctr,
            splits,
            chunk_max,
            n_heads: d.n_heads,
            head_dim: d.head_dim,
        })
    }
}

/// Attention of one query token (row 0 of `qkv`, position `ctl[0]`, its key and value
/// already in the cache) over positions `0 ..= ctl[0]` into `out` (`n_heads·head_dim`),
/// split over positions: on sm_90, one cluster of 8 blocks per KV head for all the query
/// heads that share it (`wide`: 16 blocks where the device places such clusters, which pays
/// from a few hundred positions on) or, for shapes that kernel is not built for, 8 blocks
/// per query head,
/// merged through distributed shared memory; before that, `n_heads × splits` blocks
/// combined by the last block of each head.
/// `ctl[0] + 1` must not exceed the `max_positions` the scratch was made for.
pub fn attention_decode(
    dev: &CudaDevice,
    stream: &Stream,
    qkv: &DevBuf<f32>,
    kc: &DevBuf<u16>,
    vc: &DevBuf<u16>,
    out: &mut DevBuf<f32>,
    ctl: &DevBuf<i32>,
    d: AttnDims,
    scratch: &mut DecodeScratch,
    wide: bool,
) -> Result<()> {
    if d.n_kv_heads == 0
        || !d.n_heads.is_multiple_of(d.n_kv_heads)
        || !d.head_dim.is_multiple_of(32)
        || d.head_dim > 256
        || qkv.len() < d.qkv_width()
        || kc.len() < d.cache_len()
        || vc.len() < d.cache_len()
        || out.len() < d.n_heads * d.head_dim
        || scratch.n_heads != d.n_heads
        || scratch.head_dim != d.head_dim
    {
        return Err(Error::shape(
            "cuda::attention_decode",
            format!("buffers do not fit {d:?}"),
        ));
    }
    // The cluster kernels take just these; the global-memory merge adds its scratch.
    let args = attn_args(qkv, kc, vc, out, ctl, d);
    if dev.has_clusters() {
        // Clusters of splits blocks merged through distributed shared memory (no scratch, no
        // counters): one per KV head for all its query heads (attn_decode_gqa) where that
        // kernel is built for the shapes, else one per query head (attn_decode_cluster).
        let (k, groups, warps, splits, smem) = if gqa_kernel_fits(d) {
            let g = d.n_heads / d.n_kv_heads;
            let smem = (GQA_WARPS * g * (d.head_dim + 3) + g * (d.head_dim + 2)) * 4;
            let splits = if wide {
                dev.cluster_size_up_to_16(K::AttnDecodeGqa, 32 * GQA_WARPS as u32, smem as u32)?
            } else {
                8
            };
            (K::AttnDecodeGqa, d.n_kv_heads, GQA_WARPS, splits, smem)
        } else {
            let smem = (2 * CLUSTER_WARPS + 2 + (CLUSTER_WARPS + 1) * d.head_dim) * 4;
            (
                K::AttnDecodeCluster,
                d.n_heads,
                CLUSTER_WARPS,
                CLUSTER_SPLITS,
                smem,
            )
        };
        return dev.launch_cluster(
            k,
            stream,
            (splits, groups as u32, 1),
            (32 * warps as u32, 1, 1),
            smem as u32,
            &args,
            splits,
        );
    }
    let smem = (scratch.chunk_max + 4 * d.head_dim) * 4;
    dev.ensure_smem(K::AttnDecode, smem)?;
    dev.launch(
        K::AttnDecode,
        stream,
        (d.n_heads as u32, scratch.splits as u32, 1),
        (128, 1, 1),
        smem as u32,
        &[
            &args[..],
            &[
                Arg::P(scratch.part.ptr()),
                Arg::P(scratch.ctr.ptr()),
                Arg::I(scratch.splits as i32),
                Arg::I(scratch.chunk_max as i32),
            ],
        ]
        .concat(),
    )
}

/// Warps per block (`AG_W` in attention.cu) of the sm_90 decode attention by KV group.
const GQA_WARPS: usize = 4;

/// Whether `attn_decode_gqa` is built for these shapes (head_dim 32, 64, 96 or 128 and
/// 1, 2, 4 or 8 query heads per KV head, at most 32 registers of query per lane) and not
/// turned off with `BITNET_CUDA_GQA=0` (which keeps one cluster per query head).
fn gqa_kernel_fits(d: AttnDims) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("BITNET_CUDA_GQA").map_or(true, |v| v != "0"));
    let g = d.n_heads / d.n_kv_heads;
    let dl = d.head_dim / 16;
    on && d.head_dim.is_multiple_of(16)
        && matches!(dl, 2 | 4 | 6 | 8)
        && matches!(g, 1 | 2 | 4 | 8)
        && g * dl <= 32
}

/// Blocks per head (the cluster size, `AC_S` in attention.cu) and warps per block (`AC_W`)
/// of the sm_90 decode attention.
const CLUSTER_SPLITS: u32 = 8;
const CLUSTER_WARPS: usize = 8;
