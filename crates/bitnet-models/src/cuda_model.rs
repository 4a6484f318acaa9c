//! The BitNet b1.58 forward pass on an NVIDIA GPU (feature `cuda`).
//!
//! [`CudaModel::new`] uploads the weights of a CPU [`Model`] once: q, k, v fused into one
//! ternary matrix, gate and up interleaved row by row so that one product writes
//! `relu(gate)²·up`, the embeddings as f32 (exact lookups) and the LM head in Q6_K's 6-bit
//! codes (its logits bit-identical to the CPU's Q6_K·Q8_K products), as int8 with a scale
//! per 16 weights for other integer-coded heads (Q8_0: exact), else as f16. The model keeps
//! its own f16 KV cache and scratch buffers on the device, allocated up front, so the decode
//! loop allocates nothing. [`CudaModel::greedy_next`] runs one decode step (captured once
//! into a CUDA graph and replayed) and reads back only the chosen token id.
//!
//! Per layer: RMSNorm→int8 (one kernel) → qkv product → RoPE + KV append → attention (for
//! one token: split over positions, flash-decoding style) →
//! RMSNorm→int8 → o product with the residual add fused → RMSNorm→int8 → gate/up product
//! with relu²·up fused → RMSNorm→int8 → down product with the residual add fused. A decode
//! step can run all of that in one persistent kernel instead (`bitnet_core::cuda::decode`,
//! opt-in: [`CudaOptions::persistent_decode`]): embedding lookup, the layers, final norm,
//! LM head with arg-max.

use std::sync::Arc;

use bitnet_core::cuda::attention::{attention, attention_decode, DecodeScratch};
use bitnet_core::cuda::decode::{DecodeLayer, DecodeStep};
use bitnet_core::cuda::head::{self, DevHead, HeadInput};
use bitnet_core::cuda::ops::{self, AttnDims, RopeTables};
use bitnet_core::cuda::ternary::{matmul, DevActs, DevTernary, Epilogue};
use bitnet_core::cuda::{CudaDevice, DevBuf, Event, Graph, Stream};
use bitnet_core::quant::dense::DenseMatrix;
use rayon::prelude::*;

use crate::bitnet::{Config, Logits, Model};
use crate::{Error, Result};

/// From this many attended positions on, one-token decode attention runs 16 blocks per KV
/// head instead of 8 (where the device places such clusters), in a graph of its own.
/// Decode at positions 3,457..3,585: +19 % on the H100, +22 % on the H200; at 513..641
/// +1–2 %; always wide, tg128 (positions 0..128) lost about 1 %.
const WIDE_ATTENTION_FROM: usize = 512;

/// Options of [`CudaModel::with_options`].
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// Context length of the GPU KV cache (default: the model's `max_ctx`).
    pub max_ctx: Option<usize>,
    /// Tokens per prefill chunk (longer prompts run in chunks); sizes the scratch buffers.
    pub max_batch: usize,
    /// Capture the decode step in a CUDA graph and replay it.
    pub use_graph: bool,
    /// Decode with the persistent kernel (all layers in one launch) where the model's
    /// shapes allow it, instead of nine launches per layer. Off by default: on the H100 it
    /// is correct but slower so far (BENCHMARKS.md, "persistent decode kernel").
    pub persistent_decode: bool,
    /// Blocks per multiprocessor of the persistent kernel (at most what fits).
    pub decode_blocks_per_sm: usize,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            max_ctx: None,
            max_batch: 512,
            use_graph: true,
            persistent_decode: false,
            decode_blocks_per_sm: 1,
        }
    }
}

struct GpuLayer {
    attn_norm: DevBuf<f32>,
    qkv: DevTernary,
    o: DevTernary,
    attn_sub_norm: DevBuf<f32>,
    ffn_norm: DevBuf<f32>,
    gate_up: DevTernary,
    down: DevTernary,
    ffn_sub_norm: DevBuf<f32>,
    kc: DevBuf<u16>,
    vc: DevBuf<u16>,
}

/// A model resident on one GPU, with its KV cache.
pub struct CudaModel {
    dev: Arc<CudaDevice>,
    stream: Stream,
    config: Config,
    dims: AttnDims,
    layers: Vec<GpuLayer>,
    embed: DevBuf<f32>,
    head: DevHead,
    norm: DevBuf<f32>,
    rope: RopeTables,
    ctl: DevBuf<i32>,
    x: DevBuf<f32>,
    qkv: DevBuf<f32>,
    attn: DevBuf<f32>,
    ffn: DevBuf<f32>,
    acts: DevActs,
    att_scratch: DecodeScratch,
    xn: HeadInput,
    logits1: DevBuf<f32>,
    best: DevBuf<u64>,
    /// A sampling step's candidates (values, ids), and the ids whose logits come too.
    top_vals: DevBuf<f32>,
    top_ids: DevBuf<u32>,
    top_extra: DevBuf<u32>,
    ctl_host: Vec<i32>,
    pos: usize,
    max_batch: usize,
    max_ctx: usize,
    use_graph: bool,
    /// The captured decode step: [0] below [`WIDE_ATTENTION_FROM`] positions, [1] from
    /// there on (decode attention over twice the blocks).
    graphs: [Option<Graph>; 2],
    graph_note: Option<String>,
    weight_bytes: usize,
    /// The persistent decode kernel's setup, or why it is not used.
    step: std::result::Result<DecodeStep, String>,
    persistent: bool,
    /// While profiling: an event recorded after each kernel, with the kernel's label.
    prof: Option<Vec<(&'static str, Event)>>,
}

/// Record a profiling event labelled `what` (no-op unless profiling).
fn mark(
    prof: &mut Option<Vec<(&'static str, Event)>>,
    s: &Stream,
    what: &'static str,
) -> Result<()> {
    if let Some(p) = prof {
        p.push((what, s.record()?));
    }
    Ok(())
}

fn upload_f32(dev: &CudaDevice, s: &Stream, v: &[f32]) -> Result<DevBuf<f32>> {
    Ok(dev.upload_exact(s, v)?)
}

/// All rows of a dense matrix as f32, in parallel.
fn dense_rows_f32(m: &DenseMatrix) -> Result<Vec<f32>> {
    let (rows, cols) = (m.rows(), m.cols());
    let mut out = vec![0.0f32; rows * cols];
    if cols == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(cols)
        .enumerate()
        .try_for_each(|(r, row)| m.row_f32(r, row))?;
    Ok(out)
}

impl CudaModel {
    /// Upload `model` to CUDA device `ordinal` with default options.
    pub fn new(model: &Model, ordinal: usize) -> Result<CudaModel> {
        Self::with_options(model, ordinal, CudaOptions::default())
    }

    pub fn with_options(model: &Model, ordinal: usize, opts: CudaOptions) -> Result<CudaModel> {
        let c = model.config.clone();
        let dev = CudaDevice::new(ordinal)?;
        let stream = dev.new_stream()?;
        let s = &stream;
        let max_ctx = opts.max_ctx.unwrap_or(c.max_ctx).min(c.max_ctx).max(1);
        let max_batch = opts.max_batch.clamp(1, max_ctx);
        if c.head_dim > 256 || !c.head_dim.is_multiple_of(32) || !c.hidden.is_multiple_of(8) {
            return Err(Error::InvalidArgument(format!(
                "CUDA backend needs head_dim a multiple of 32 up to 256 and a hidden size divisible by 8 (got {} and {})",
                c.head_dim, c.hidden
            )));
        }
        let dims = AttnDims {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            max_ctx,
        };
        let mut weight_bytes = 0;
        let mut layers = Vec::with_capacity(model.layers.len());
        for l in &model.layers {
            let qkv = DevTernary::from_bitlinear(&dev, s, &[&l.q, &l.k, &l.v], false)?;
            let o = DevTernary::from_bitlinear(&dev, s, &[&l.o], false)?;
            let gate_up = DevTernary::from_bitlinear(&dev, s, &[&l.gate, &l.up], true)?;
            let down = DevTernary::from_bitlinear(&dev, s, &[&l.down], false)?;
            weight_bytes += qkv.nbytes() + o.nbytes() + gate_up.nbytes() + down.nbytes();
            let mut kc = dev.alloc_exact::<u16>(dims.cache_len())?;
            let mut vc = dev.alloc_exact::<u16>(dims.cache_len())?;
            kc.fill_bytes(s, 0)?;
            vc.fill_bytes(s, 0)?;
            layers.push(GpuLayer {
                attn_norm: upload_f32(&dev, s, &l.attn_norm)?,
                qkv,
                o,
                attn_sub_norm: upload_f32(&dev, s, &l.attn_sub_norm)?,
                ffn_norm: upload_f32(&dev, s, &l.ffn_norm)?,
                gate_up,
                down,
                ffn_sub_norm: upload_f32(&dev, s, &l.ffn_sub_norm)?,
                kc,
                vc,
            });
        }
        let embed_f32 = dense_rows_f32(&model.embed)?;
        let embed = upload_f32(&dev, s, &embed_f32)?;
        s.sync()?;
        drop(embed_f32);
        let head = DevHead::upload(&dev, s, model.lm_head.as_ref().unwrap_or(&model.embed))?;
        weight_bytes += head.nbytes();
        let norm = upload_f32(&dev, s, &model.norm)?;
        let rope = RopeTables::new(
            &dev,
            s,
            c.head_dim,
            max_ctx,
            c.rope_theta,
            model.rope.style(),
        )?;
        let (h, qd, ff) = (c.hidden, c.q_dim(), c.intermediate);
        let mb = max_batch;
        let kmax = h.max(qd).max(ff);
        let mut m = CudaModel {
            ctl: dev.alloc(2 + mb)?,
            x: dev.alloc(mb * h)?,
            qkv: dev.alloc(mb * dims.qkv_width())?,
            attn: dev.alloc(mb * qd)?,
            ffn: dev.alloc(mb * ff)?,
            acts: DevActs::new(&dev, mb, kmax)?,
            att_scratch: DecodeScratch::new(&dev, &stream, dims, max_ctx)?,
            xn: HeadInput::alloc(&dev, &head, mb.min(8), h)?,
            logits1: dev.alloc(c.vocab_size)?,
            best: dev.alloc(1)?,
            top_vals: dev.alloc(2 * head::TOPK_MAX)?,
            top_ids: dev.alloc(2 * head::TOPK_MAX)?,
            top_extra: dev.alloc(head::TOPK_MAX)?,
            ctl_host: vec![0; 2 + mb],
            dev,
            stream,
            dims,
            layers,
            embed,
            head,
            norm,
            rope,
            pos: 0,
            max_batch,
            max_ctx,
            use_graph: opts.use_graph,
            graphs: [None, None],
            graph_note: None,
            weight_bytes,
            prof: None,
            persistent: false,
            step: Err("turned off".into()),
            config: c,
        };
        if opts.persistent_decode {
            m.set_decode_blocks_per_sm(opts.decode_blocks_per_sm);
        }
        Ok(m)
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    /// How the LM head is held on the device.
    pub fn head_format(&self) -> &'static str {
        self.head.describe()
    }

    /// "NVIDIA H100 80GB HBM3 (sm_90)".
    pub fn device_name(&self) -> String {
        format!("{} ({})", self.dev.name(), self.dev.arch())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Positions filled in the KV cache.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Context length of the GPU cache.
    pub fn max_ctx(&self) -> usize {
        self.max_ctx
    }

    /// Forget the cache (positions restart at 0).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Drop positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.pos = self.pos.min(len);
    }

    /// Bytes of weights on the device (packed ternary + the LM head; the f32 embedding table
    /// is read one row per token and not counted).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Turn graph capture/replay of the decode step on or off (off drops a captured graph).
    pub fn set_use_graph(&mut self, on: bool) {
        self.use_graph = on;
        if !on {
            self.graphs = [None, None];
        }
    }

    /// (Re)build the persistent decode kernel's setup with at most `n` blocks per
    /// multiprocessor and decode with it; if it cannot be set up (see
    /// [`CudaModel::decode_status`]), decode runs on separate kernels. Drops a captured
    /// graph.
    pub fn set_decode_blocks_per_sm(&mut self, n: usize) {
        let c = &self.config;
        let refs: Vec<DecodeLayer> = self
            .layers
            .iter()
            .map(|l| DecodeLayer {
                qkv: &l.qkv,
                o: &l.o,
                gate_up: &l.gate_up,
                down: &l.down,
                attn_norm: &l.attn_norm,
                attn_sub_norm: &l.attn_sub_norm,
                ffn_norm: &l.ffn_norm,
                ffn_sub_norm: &l.ffn_sub_norm,
                kc: &l.kc,
                vc: &l.vc,
            })
            .collect();
        let (h, ff, eps) = (c.hidden, c.intermediate, c.rms_eps);
        let (dev, s) = (&*self.dev, &self.stream);
        let step = DecodeStep::new(dev, s, &refs, h, ff, self.dims, eps, &self.rope, n);
        self.step = step.map_err(|e| e.to_string());
        self.persistent = self.step.is_ok();
        self.graphs = [None, None];
    }

    /// Decode with the persistent kernel (if it could be set up; see
    /// [`CudaModel::decode_status`]) or with separate kernels. Drops a captured graph.
    pub fn set_persistent_decode(&mut self, on: bool) {
        self.persistent = on && self.step.is_ok();
        self.graphs = [None, None];
    }

    /// How a decode step runs: "persistent kernel (N blocks)" or "separate kernels (why)".
    pub fn decode_status(&self) -> String {
        match (&self.step, self.persistent) {
            (Ok(st), true) => format!("persistent kernel ({} blocks)", st.grid()),
            (Ok(_), false) => "separate kernels (persistent kernel turned off)".into(),
            (Err(why), _) => format!("separate kernels (persistent kernel: {why})"),
        }
    }

    /// Whether greedy decode replays a CUDA graph, or why not.
    pub fn graph_status(&self) -> String {
        let any = self.graphs.iter().find_map(|g| g.as_ref());
        match (any, &self.graph_note, self.use_graph) {
            (Some(_), _, _) => "CUDA graph replay".into(),
            (None, Some(n), _) => format!("eager launches ({n})"),
            (None, None, false) => "eager launches (graphs disabled)".into(),
            (None, None, true) => "graph not captured yet".into(),
        }
    }

    /// Whether the one-token step at the next position attends over at least
    /// [`WIDE_ATTENTION_FROM`] positions.
    fn wide_attention(&self) -> bool {
        self.pos + 1 >= WIDE_ATTENTION_FROM
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("forward: no tokens".into()));
        }
        if let Some(&t) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(Error::InvalidArgument(format!(
                "token id {t} is outside the vocabulary (size {})",
                self.config.vocab_size
            )));
        }
        if self.pos + tokens.len() > self.max_ctx {
            return Err(Error::ContextFull {
                needed: self.pos + tokens.len(),
                limit: self.max_ctx,
            });
        }
        Ok(())
    }

    fn upload_ctl(&mut self, tokens: &[u32]) -> Result<()> {
        let m = tokens.len();
        self.ctl_host[0] = self.pos as i32;
        self.ctl_host[1] = m as i32;
        for (d, &t) in self.ctl_host[2..2 + m].iter_mut().zip(tokens) {
            *d = t as i32;
        }
        self.ctl.copy_from(&self.stream, &self.ctl_host[..2 + m])?;
        Ok(())
    }

    /// Queue the layers for `m` tokens whose ids and first position are in `ctl`. One token
    /// takes the matrix-vector kernels (RoPE and the cache append fused into the q|k|v
    /// product) and the split attention, nine launches per layer; more tokens take the
    /// tensor-core products, ten. Under programmatic dependent
    /// launch (sm_90) each product's weights stream in while the previous kernel finishes.
    fn enqueue_layers(&mut self, m: usize, max_positions: usize, best: bool) -> Result<()> {
        let c = &self.config;
        let (dev, s) = (&*self.dev, &self.stream);
        let (h, qd, ff, eps) = (c.hidden, c.q_dim(), c.intermediate, c.rms_eps);
        let best = if best { Some(&self.best) } else { None };
        let split_attn = m == 1;
        let wide = self.wide_attention();
        ops::embed(dev, s, &self.embed, h, &self.ctl, m, &mut self.x, best)?;
        mark(&mut self.prof, s, "embed")?;
        for l in &mut self.layers {
            let (acts, pr) = (&mut self.acts, &mut self.prof);
            ops::rmsnorm_quant(dev, s, &self.x, 0, m, h, &l.attn_norm, eps, acts)?;
            mark(pr, s, "norm→int8 (attn)")?;
            let (kc, vc, r, c) = (&mut l.kc, &mut l.vc, &self.rope, &self.ctl);
            if m == 1 {
                let q = &mut self.qkv;
                ops::qkv_rope_decode(dev, s, &l.qkv, acts, q, kc, vc, r, c, self.dims)?;
                mark(pr, s, "gemv qkv + rope + kv")?;
            } else {
                let (q, epi) = (&mut self.qkv, Epilogue::Store);
                matmul(dev, s, &l.qkv, acts, m, q, epi, false)?;
                mark(pr, s, "gemm qkv")?;
                ops::rope_kv(dev, s, q, m, kc, vc, r, c, self.dims)?;
                mark(pr, s, "rope+kv")?;
            }
            if split_attn {
                let sc = &mut self.att_scratch;
                attention_decode(
                    dev,
                    s,
                    &self.qkv,
                    kc,
                    vc,
                    &mut self.attn,
                    &self.ctl,
                    self.dims,
                    sc,
                    wide,
                )?;
            } else {
                let (q, a) = (&self.qkv, &mut self.attn);
                attention(dev, s, q, m, kc, vc, a, &self.ctl, self.dims, max_positions)?;
            }
            mark(pr, s, "attention")?;
            ops::rmsnorm_quant(dev, s, &self.attn, 0, m, qd, &l.attn_sub_norm, eps, acts)?;
            mark(pr, s, "norm→int8 (attn sub)")?;
            matmul(dev, s, &l.o, acts, m, &mut self.x, Epilogue::Add, false)?;
            mark(pr, s, "gemv/gemm o (+res)")?;
            ops::rmsnorm_quant(dev, s, &self.x, 0, m, h, &l.ffn_norm, eps, acts)?;
            mark(pr, s, "norm→int8 (ffn)")?;
            let (ffn, epi) = (&mut self.ffn, Epilogue::Relu2);
            matmul(dev, s, &l.gate_up, acts, m, ffn, epi, false)?;
            mark(pr, s, "gemv/gemm gate/up relu²")?;
            ops::rmsnorm_quant(dev, s, &self.ffn, 0, m, ff, &l.ffn_sub_norm, eps, acts)?;
            mark(pr, s, "norm→int8 (ffn sub)")?;
            matmul(dev, s, &l.down, acts, m, &mut self.x, Epilogue::Add, false)?;
            mark(pr, s, "gemv/gemm down (+res)")?;
        }
        Ok(())
    }

    /// Run `tokens` at the next positions and return logits (`vocab` floats per returned
    /// position), as [`Model::forward`] does. Prompts longer than the batch size run in
    /// chunks.
    pub fn forward(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let v = self.config.vocab_size;
        let h = self.config.hidden;
        let eps = self.config.rms_eps;
        let n_chunks = tokens.len().div_ceil(self.max_batch);
        let mut out = Vec::new();
        for (ci, chunk) in tokens.chunks(self.max_batch).enumerate() {
            let m = chunk.len();
            self.upload_ctl(chunk)?;
            let maxp = self.pos + m;
            self.enqueue_layers(m, maxp, false)?;
            let (dev, s) = (&*self.dev, &self.stream);
            match which {
                Logits::All => {
                    let mut r0 = 0;
                    while r0 < m {
                        let nr = (m - r0).min(8);
                        head::head_norm(dev, s, &self.x, r0, nr, h, &self.norm, eps, &mut self.xn)?;
                        let mut part = dev.alloc::<f32>(nr * v)?;
                        head::head(dev, s, &self.head, v, h, &self.xn, nr, &mut part, None)?;
                        out.extend(part.read(s, nr * v)?);
                        r0 += nr;
                    }
                }
                Logits::Last if ci + 1 == n_chunks => {
                    head::head_norm(dev, s, &self.x, m - 1, 1, h, &self.norm, eps, &mut self.xn)?;
                    head::head(
                        dev,
                        s,
                        &self.head,
                        v,
                        h,
                        &self.xn,
                        1,
                        &mut self.logits1,
                        None,
                    )?;
                    out = self.logits1.read(s, v)?;
                }
                Logits::Last => {}
            }
            self.stream.sync()?;
            self.pos += m;
        }
        Ok(out)
    }

    fn enqueue_decode(&mut self) -> Result<()> {
        match &self.step {
            Ok(step) if self.persistent => {
                let (dev, s) = (&*self.dev, &self.stream);
                let h = self.config.hidden;
                ops::embed(
                    dev,
                    s,
                    &self.embed,
                    h,
                    &self.ctl,
                    1,
                    &mut self.x,
                    Some(&self.best),
                )?;
                mark(&mut self.prof, s, "embed")?;
                let (x, q, a, f) = (&mut self.x, &mut self.qkv, &mut self.attn, &mut self.ffn);
                step.enqueue(dev, s, x, q, a, f, &self.rope, &self.ctl)?;
                mark(&mut self.prof, s, "layers (persistent kernel)")?;
            }
            _ => {
                let max_ctx = self.max_ctx;
                self.enqueue_layers(1, max_ctx, true)?;
            }
        }
        let c = &self.config;
        let (dev, s) = (&*self.dev, &self.stream);
        head::head_norm(
            dev,
            s,
            &self.x,
            0,
            1,
            c.hidden,
            &self.norm,
            c.rms_eps,
            &mut self.xn,
        )?;
        mark(&mut self.prof, s, "final norm")?;
        head::head(
            dev,
            s,
            &self.head,
            c.vocab_size,
            c.hidden,
            &self.xn,
            1,
            &mut self.logits1,
            Some(&self.best),
        )?;
        mark(&mut self.prof, s, "LM head + arg-max")?;
        Ok(())
    }

    /// GPU time per kernel kind of one decode step of `token` at the current position,
    /// launched eagerly with an event after each kernel (the GPU first sleeps 20 ms so that
    /// the whole step is queued before it runs: no host gaps in the times). Returns
    /// (label, launches, total ms) in order of first appearance; the position does not
    /// advance. With the persistent kernel, its stages come first (block 0's view: work per
    /// stage and wait at the barrier after it, summed over the layers), then the launches.
    /// For profiling only.
    pub fn profile_decode(&mut self, token: u32) -> Result<Vec<(&'static str, usize, f64)>> {
        self.check_tokens(&[token])?;
        self.upload_ctl(&[token])?;
        let timed = self.persistent;
        if let (Ok(st), true) = (&mut self.step, timed) {
            st.set_timing(&self.dev, true)?;
        }
        ops::gpu_sleep(&self.dev, &self.stream, 20_000_000)?;
        self.prof = Some(vec![("start", self.stream.record()?)]);
        let r = self.enqueue_decode();
        let marks = self.prof.take().unwrap_or_default();
        r?;
        self.stream.sync()?;
        let mut out: Vec<(&'static str, usize, f64)> = Vec::new();
        if let (Ok(st), true) = (&mut self.step, timed) {
            let stages = st.stage_times(&self.stream);
            st.set_timing(&self.dev, false)?;
            let n = self.layers.len();
            for (label, ns) in stages? {
                out.push((label, n, ns * 1e-6));
            }
        }
        for w in marks.windows(2) {
            let dt = bitnet_core::cuda::elapsed_ms(&w[0].1, &w[1].1)?;
            match out.iter_mut().find(|e| e.0 == w[1].0) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += dt;
                }
                None => out.push((w[1].0, 1, dt)),
            }
        }
        Ok(out)
    }

    /// GPU time of one captured decode step (ms), replayed `n` times back to back at the
    /// current position with no host round trip between steps (queued behind a 20 ms GPU
    /// sleep): what [`CudaModel::greedy_next`] costs minus its per-token host work (upload
    /// of the token, graph launch, read-back of the arg-max). The position does not advance.
    /// For benchmarks only.
    pub fn time_graph_replays(&mut self, token: u32, n: usize) -> Result<f64> {
        self.greedy_next(token)?; // the graph, captured
        self.pos -= 1;
        self.upload_ctl(&[token])?;
        let Some(g) = &self.graphs[self.wide_attention() as usize] else {
            return Err(Error::InvalidArgument(
                "time_graph_replays: no decode graph (graphs turned off or capture failed)".into(),
            ));
        };
        ops::gpu_sleep(&self.dev, &self.stream, 20_000_000)?;
        let t0 = self.stream.record()?;
        for _ in 0..n {
            g.launch()?;
        }
        let t1 = self.stream.record()?;
        self.stream.sync()?;
        Ok(bitnet_core::cuda::elapsed_ms(&t0, &t1)? / n.max(1) as f64)
    }

    /// One greedy decode step: run `token` at the next position and return the arg-max of
    /// its logits, computed on the GPU (only the token id comes back).
    pub fn greedy_next(&mut self, token: u32) -> Result<u32> {
        self.decode_step(token)?;
        let key = self.best.read(&self.stream, 1)?[0];
        self.pos += 1;
        head::argmax_index(key)
            .ok_or_else(|| Error::InvalidArgument("greedy_next: every logit was NaN".into()))
    }

    /// One sampling decode step: run `token` at the next position (the same captured graph
    /// as [`CudaModel::greedy_next`]) and return the `k` largest logits as (logit, id), in
    /// no particular order, selected on the GPU (ties to lower ids; at most
    /// [`head::TOPK_MAX`]), then the logits of the `extra` ids (a repetition penalty's
    /// recent tokens): a top-k sampler needs only those, not the logits.
    pub fn top_next(&mut self, token: u32, k: usize, extra: &[u32]) -> Result<Vec<(f32, u32)>> {
        if k == 0 || k > head::TOPK_MAX || extra.len() > head::TOPK_MAX {
            return Err(Error::InvalidArgument(format!(
                "top_next: k = {k} and {} more ids (each at most {} on the GPU)",
                extra.len(),
                head::TOPK_MAX
            )));
        }
        self.decode_step(token)?;
        let (dev, s, v) = (&*self.dev, &self.stream, self.config.vocab_size);
        let m = extra.len();
        if m > 0 {
            self.top_extra.copy_from(s, extra)?;
        }
        let ex = (m > 0).then_some((&self.top_extra, m));
        let (vals, ids) = (&mut self.top_vals, &mut self.top_ids);
        head::topk(dev, s, &self.logits1, v, k, ex, vals, ids)?;
        let n = k.min(v) + m;
        let vals = self.top_vals.read(s, n)?;
        let ids = self.top_ids.read(s, n)?;
        self.pos += 1;
        Ok(vals.into_iter().zip(ids).collect())
    }

    /// Queue the decode step of `token` at the next position (the captured graph where
    /// possible): logits in `logits1`, their arg-max in `best`. The position is not
    /// advanced.
    fn decode_step(&mut self, token: u32) -> Result<()> {
        self.check_tokens(&[token])?;
        self.upload_ctl(&[token])?;
        let gi = self.wide_attention() as usize;
        if self.use_graph && self.graphs[gi].is_none() && self.graph_note.is_none() {
            self.stream.begin_capture()?;
            let queued = self.enqueue_decode();
            let graph = self.stream.end_capture().map_err(Error::from);
            match (queued, graph) {
                (Ok(()), Ok(g)) => self.graphs[gi] = Some(g),
                (Err(e), _) | (_, Err(e)) => {
                    self.graph_note = Some(format!("graph capture failed: {e}"));
                }
            }
        }
        match &self.graphs[gi] {
            Some(g) => g.launch()?,
            None => self.enqueue_decode()?,
        }
        Ok(())
    }

    /// The logits of the last [`CudaModel::greedy_next`] step (for checks; not needed to
    /// decode).
    pub fn last_logits(&self) -> Result<Vec<f32>> {
        Ok(self.logits1.read(&self.stream, self.config.vocab_size)?)
    }
}
