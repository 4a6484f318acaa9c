//! The persistent decode kernel (`decode.cu`): all layers of one decode step in one
//! cooperative launch, grid-wide barriers between the five stages of a layer, instead of
//! nine dependent launches per layer.

use super::ops::{AttnDims, RopeTables};
use super::ternary::DevTernary;
use super::{Arg, CudaDevice, DevBuf, Stream, K};
use crate::error::{Error, Result};

/// Threads per block of the kernel (8 warps).
const THREADS: u32 = 256;
/// Bytes of each warp's weight ring (`DK_RING` in decode.cu).
const RING_BYTES: usize = 12288;
/// The widest input of a product: each thread keeps 8 float4 of the row it normalizes.
const MAX_WIDTH: usize = 8 * 4 * THREADS as usize;

/// One layer's device data, as the kernel reads it.
pub struct DecodeLayer<'a> {
    pub qkv: &'a DevTernary,
    pub o: &'a DevTernary,
    /// gate and up interleaved row by row (`Epilogue::Relu2` order)
    pub gate_up: &'a DevTernary,
    pub down: &'a DevTernary,
    pub attn_norm: &'a DevBuf<f32>,
    pub attn_sub_norm: &'a DevBuf<f32>,
    pub ffn_norm: &'a DevBuf<f32>,
    pub ffn_sub_norm: &'a DevBuf<f32>,
    pub kc: &'a DevBuf<u16>,
    pub vc: &'a DevBuf<u16>,
}

/// The kernel's fixed inputs for one model: the per-layer pointer table, the dimensions,
/// the attention scratch and the barrier counter, and the launch shape.
pub struct DecodeStep {
    layers: DevBuf<u64>,
    dims: DevBuf<i32>,
    part: DevBuf<f32>,
    ctr: DevBuf<u32>,
    bar: DevBuf<u64>,
    /// Stage timestamps of block 0 ([`DecodeStep::set_timing`]).
    times: Option<DevBuf<u64>>,
    n_layers: usize,
    kernel: K,
    grid: u32,
    smem: usize,
    hidden: usize,
    q_dim: usize,
    ff: usize,
    qkv_width: usize,
}

impl DecodeStep {
    /// Prepare the step for `layers` (hidden size `hidden`, FFN width `ff`, attention
    /// `dims`, RMSNorm `eps`, `rope` tables covering `dims.max_ctx` positions), with at most
    /// `blocks_per_sm` blocks per multiprocessor. Errors (the caller falls back to separate
    /// kernels) if the head dimension is not 32, 64, 128 or 256, or the shapes are
    /// inconsistent.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dev: &CudaDevice,
        stream: &Stream,
        layers: &[DecodeLayer],
        hidden: usize,
        ff: usize,
        dims: AttnDims,
        eps: f32,
        rope: &RopeTables,
        blocks_per_sm: usize,
    ) -> Result<Self> {
        let kernel = match dims.head_dim {
            32 => K::DecodeD1,
            64 => K::DecodeD2,
            128 => K::DecodeD4,
            256 => K::DecodeD8,
            hd => {
                return Err(Error::Unsupported(format!(
                    "persistent decode kernel: head dimension {hd} (needs 32, 64, 128 or 256)"
                )))
            }
        };
        let q_dim = dims.n_heads * dims.head_dim;
        let qkv_width = dims.qkv_width();
        let bad = |what: String| Err(Error::shape("cuda::DecodeStep", what));
        if layers.is_empty()
            || dims.n_kv_heads == 0
            || !dims.n_heads.is_multiple_of(dims.n_kv_heads)
            || !hidden.is_multiple_of(4)
            || !ff.is_multiple_of(4)
            || !q_dim.is_multiple_of(4)
            || hidden.max(q_dim).max(ff) > MAX_WIDTH
            || rope.head_dim() != dims.head_dim
            || rope.max_pos() < dims.max_ctx
        {
            return bad(format!(
                "{} layers, hidden {hidden}, ffn {ff}, {dims:?}",
                layers.len()
            ));
        }
        let mut table = Vec::with_capacity(layers.len() * 18);
        for (i, l) in layers.iter().enumerate() {
            let want = [
                (l.qkv, qkv_width, hidden),
                (l.o, hidden, q_dim),
                (l.gate_up, 2 * ff, hidden),
                (l.down, hidden, ff),
            ];
            for (m, rows, cols) in want {
                if m.rows() != rows || m.cols() != cols {
                    return bad(format!(
                        "layer {i}: a {}×{} matrix where {rows}×{cols} was expected",
                        m.rows(),
                        m.cols()
                    ));
                }
                table.extend(m.ptrs());
            }
            let norms = [
                (l.attn_norm, hidden),
                (l.attn_sub_norm, q_dim),
                (l.ffn_norm, hidden),
                (l.ffn_sub_norm, ff),
            ];
            for (n, len) in norms {
                if n.len() < len {
                    return bad(format!("layer {i}: norm of {} values for {len}", n.len()));
                }
                table.push(n.ptr());
            }
            if l.kc.len() < dims.cache_len() || l.vc.len() < dims.cache_len() {
                return bad(format!("layer {i}: KV cache smaller than {dims:?}"));
            }
            table.push(l.kc.ptr());
            table.push(l.vc.ptr());
        }
        // Shared memory: the int8 row of the widest input, each warp's weight ring, then
        // floats for the attention item's scores and partial outputs.
        let kw_max = hidden.max(q_dim).max(ff).div_ceil(64);
        let sms = dev.sm_count().max(1);
        let probe_smem = |splits: usize| {
            let chunk_max = dims.max_ctx.div_ceil(splits);
            let floats = chunk_max + 8 * dims.head_dim;
            (chunk_max, kw_max * 64 + 8 * RING_BYTES + floats * 4)
        };
        // Size for one block per SM first, then see how many fit.
        let (_, smem1) = probe_smem((sms / dims.n_heads).clamp(1, dims.max_ctx.clamp(1, 128)));
        dev.ensure_smem(kernel, smem1)?;
        let fit = dev.blocks_per_sm(kernel, THREADS, smem1)?;
        if fit == 0 {
            return Err(Error::Unsupported(format!(
                "persistent decode kernel: one block ({smem1} bytes of shared memory) does not fit a multiprocessor"
            )));
        }
        let grid = sms * fit.min(blocks_per_sm.max(1));
        // The combine step takes one thread per split (at most 256).
        let splits = (grid / dims.n_heads).clamp(1, dims.max_ctx.clamp(1, 128));
        let (chunk_max, smem) = probe_smem(splits);
        if smem > smem1 {
            return Err(Error::Unsupported(format!(
                "persistent decode kernel: {smem} bytes of shared memory for {grid} blocks"
            )));
        }
        let d = [
            layers.len() as i32,
            hidden as i32,
            ff as i32,
            dims.n_heads as i32,
            dims.n_kv_heads as i32,
            dims.max_ctx as i32,
            splits as i32,
            chunk_max as i32,
            rope.neox() as i32,
            eps.to_bits() as i32,
            (1.0f32 / (dims.head_dim as f32).sqrt()).to_bits() as i32,
        ];
        let mut ctr = dev.alloc_exact::<u32>(dims.n_heads)?;
        ctr.fill_bytes(stream, 0)?;
        // The arrival counter and, a cache line further, the release word.
        let mut bar = dev.alloc_exact::<u64>(32)?;
        bar.fill_bytes(stream, 0)?;
        let step = DecodeStep {
            layers: dev.upload_exact(stream, &table)?,
            dims: dev.upload_exact(stream, &d)?,
            part: dev.alloc_exact(dims.n_heads * splits * (dims.head_dim + 2))?,
            ctr,
            bar,
            times: None,
            n_layers: layers.len(),
            kernel,
            grid: grid as u32,
            smem: smem1,
            hidden,
            q_dim,
            ff,
            qkv_width,
        };
        stream.sync()?;
        Ok(step)
    }

    /// Blocks of the launch.
    pub fn grid(&self) -> usize {
        self.grid as usize
    }

    /// Record, in block 0, the GPU time (ns) at the start, after each norm→int8, at every
    /// barrier's arrival and departure and at the end of each launch, for
    /// [`DecodeStep::stage_times`].
    pub fn set_timing(&mut self, dev: &CudaDevice, on: bool) -> Result<()> {
        self.times = if on {
            Some(dev.alloc_exact(14 * self.n_layers)?)
        } else {
            None
        };
        Ok(())
    }

    /// The last timed launch, in ns per part summed over the layers (block 0's view;
    /// labels start with "stage: "): the four norm→int8 of a layer, each product, the
    /// attention, and the waits at the five barriers. Errors if timing is off.
    pub fn stage_times(&self, stream: &Stream) -> Result<[(&'static str, f64); 7]> {
        let Some(t) = &self.times else {
            return Err(Error::Unsupported("decode stage timing is off".into()));
        };
        let t = t.to_vec(stream)?;
        let mut out = [
            ("stage: norm→int8 (4 per layer)", 0.0),
            ("stage: q|k|v product + RoPE/KV", 0.0),
            ("stage: attention", 0.0),
            ("stage: o product (+res)", 0.0),
            ("stage: gate/up product relu²", 0.0),
            ("stage: down product (+res)", 0.0),
            ("stage: barrier waits (5 per layer)", 0.0),
        ];
        // Marks per layer: norm, arrive, leave (q|k|v); arrive, leave (attention); norm,
        // arrive, leave (o); norm, arrive, leave (gate/up); norm, arrive, leave (down; the
        // last layer's "arrive" is the end of the launch and it has no "leave").
        const PART: [usize; 14] = [0, 1, 6, 2, 6, 0, 3, 6, 0, 4, 6, 0, 5, 6];
        for (i, w) in t.windows(2).enumerate() {
            out[PART[i % 14]].1 += w[1].saturating_sub(w[0]) as f64;
        }
        Ok(out)
    }

    /// Run every layer for the token whose position is `ctl[0]`: `x` (hidden) holds its
    /// embedding and receives the last layer's output; `qkv`, `attn` and `ffn` are
    /// scratch of at least one row each. Errors if a buffer is too small.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &self,
        dev: &CudaDevice,
        stream: &Stream,
        x: &mut DevBuf<f32>,
        qkv: &mut DevBuf<f32>,
        attn: &mut DevBuf<f32>,
        ffn: &mut DevBuf<f32>,
        rope: &RopeTables,
        ctl: &DevBuf<i32>,
    ) -> Result<()> {
        if x.len() < self.hidden
            || qkv.len() < self.qkv_width
            || attn.len() < self.q_dim
            || ffn.len() < self.ff
            || ctl.is_empty()
        {
            return Err(Error::shape(
                "cuda::DecodeStep::enqueue",
                "scratch buffers smaller than one token",
            ));
        }
        dev.launch_cooperative(
            self.kernel,
            stream,
            (self.grid, 1, 1),
            (THREADS, 1, 1),
            self.smem as u32,
            &[
                Arg::P(self.layers.ptr()),
                Arg::P(self.dims.ptr()),
                Arg::P(x.ptr()),
                Arg::P(qkv.ptr()),
                Arg::P(attn.ptr()),
                Arg::P(ffn.ptr()),
                Arg::P(rope.cos_ptr()),
                Arg::P(rope.sin_ptr()),
                Arg::P(ctl.ptr()),
                Arg::P(self.part.ptr()),
                Arg::P(self.ctr.ptr()),
                Arg::P(self.bar.ptr()),
                Arg::P(self.times.as_ref().map_or(0, |t| t.ptr())),
            ],
        )
    }
}
