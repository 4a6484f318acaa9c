//! Wrapper of `attention.cu`: causal attention with grouped KV heads over the f16 cache,
//! for decode (one token) and prefill (many).

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
    let scale = 1.0f32 / (d.head_dim as f32).sqrt();
    dev.launch(
        K::Attention,
        stream,
        (d.n_heads as u32, m as u32, 1),
        (256, 1, 1),
        smem as u32,
        &[
            Arg::P(qkv.ptr()),
            Arg::P(kc.ptr()),
            Arg::P(vc.ptr()),
            Arg::P(out.ptr()),
            Arg::P(ctl.ptr()),
            Arg::I(d.n_heads as i32),
            Arg::I(d.n_kv_heads as i32),
            Arg::I(d.head_dim as i32),
            Arg::I(d.max_ctx as i32),
            Arg::F(scale),
        ],
    )
}
