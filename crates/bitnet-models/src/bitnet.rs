//! The BitNet b1.58 architecture (Ma et al., "The Era of 1-bit LLMs", 2024; the 2B-4T
//! technical report, 2025), following transformers' `modeling_bitnet.py` and llama.cpp's
//! `src/models/bitnet.cpp`.
//!
//! A pre-norm Llama block whose seven projections are BitLinear (ternary weights, int8
//! activations), with two extra sub-norms:
//! ```text
//! h   = x + o_proj(attn_sub_norm(attn(rope(q,k), v)))      q,k,v = proj(attn_norm(x))
//! out = h + down_proj(ffn_sub_norm(relu(gate(n))² · up(n)))  n = ffn_norm(h)
//! ```
//! Embeddings, the final norm and the LM head stay in higher precision.

use bitnet_core::nn::bitlinear::{BitLinear, QuantizedActs};
use bitnet_core::nn::norm::{rmsnorm, rmsnorm_quantize};
use bitnet_core::nn::rope::{Rope, RopeStyle};
use bitnet_core::quant::dense::DenseMatrix;
use rayon::prelude::*;

use crate::kv_cache::KvCache;
use crate::names::Slot;
use crate::{Error, Result};

/// Hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub max_ctx: usize,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

impl Config {
    /// BitNet b1.58 2B-4T (the released model's config.json).
    pub fn b2b4t() -> Config {
        Config {
            vocab_size: 128256,
            hidden: 2560,
            intermediate: 6912,
            n_layers: 30,
            n_heads: 20,
            n_kv_heads: 5,
            head_dim: 128,
            rms_eps: 1e-5,
            rope_theta: 500000.0,
            max_ctx: 4096,
            bos: Some(128000),
            eos: Some(128001),
        }
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Check the numbers fit together; `what` names the source for the message.
    pub fn validate(&self, what: &std::path::Path) -> Result<()> {
        let bad = |m: String| Err(Error::bad_model(what, m));
        if self.hidden == 0 || self.n_layers == 0 || self.n_heads == 0 || self.vocab_size == 0 {
            return bad(format!("hyper-parameters must be non-zero: {self:?}"));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} attention heads cannot be grouped over {} KV heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dimension {} must be even", self.head_dim));
        }
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if !(positive(self.rms_eps) && positive(self.rope_theta)) {
            return bad(format!(
                "rms_norm_eps ({}) and rope_theta ({}) must be finite and positive",
                self.rms_eps, self.rope_theta
            ));
        }
        if self.max_ctx > MAX_CONTEXT {
            return bad(format!(
                "context length {} is beyond the {MAX_CONTEXT} positions this engine supports \
                 (the RoPE tables are built for all of them at load)",
                self.max_ctx
            ));
        }
        Ok(())
    }
}

/// The longest context a model may declare: its RoPE tables (`max_ctx × head_dim` floats)
/// are built at load, 512 MiB at this length and head dimension 128.
pub const MAX_CONTEXT: usize = 1 << 20;

/// One transformer block.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub q: BitLinear,
    pub k: BitLinear,
    pub v: BitLinear,
    pub o: BitLinear,
    pub attn_sub_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub gate: BitLinear,
    pub up: BitLinear,
    pub down: BitLinear,
    pub ffn_sub_norm: Vec<f32>,
}

impl Layer {
    /// Assemble block `i` from a file: `vector(slot, i, len)` reads a norm, `proj(slot, i,
    /// rows, cols)` a projection; both loaders (GGUF, Hugging Face) share this shape table.
    pub fn load(
        c: &Config,
        i: usize,
        vector: &dyn Fn(Slot, usize, usize) -> Result<Vec<f32>>,
        proj: &dyn Fn(Slot, usize, usize, usize) -> Result<BitLinear>,
    ) -> Result<Layer> {
        Ok(Layer {
            attn_norm: vector(Slot::AttnNorm, i, c.hidden)?,
            q: proj(Slot::Q, i, c.q_dim(), c.hidden)?,
            k: proj(Slot::K, i, c.kv_dim(), c.hidden)?,
            v: proj(Slot::V, i, c.kv_dim(), c.hidden)?,
            o: proj(Slot::O, i, c.hidden, c.q_dim())?,
            attn_sub_norm: vector(Slot::AttnSubNorm, i, c.q_dim())?,
            ffn_norm: vector(Slot::FfnNorm, i, c.hidden)?,
            gate: proj(Slot::Gate, i, c.intermediate, c.hidden)?,
            up: proj(Slot::Up, i, c.intermediate, c.hidden)?,
            down: proj(Slot::Down, i, c.hidden, c.intermediate)?,
            ffn_sub_norm: vector(Slot::FfnSubNorm, i, c.intermediate)?,
        })
    }
}

/// The whole model. Ternary weights stay packed (possibly memory-mapped).
pub struct Model {
    pub config: Config,
    pub embed: DenseMatrix,
    /// `None` when the LM head is tied to the embeddings.
    pub lm_head: Option<DenseMatrix>,
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,
    pub rope: Rope,
}

/// Reusable buffers of a forward pass, grown to the largest batch seen.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    acts: QuantizedActs,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    normed: Vec<f32>,
}

impl Scratch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held by the buffers.
    pub fn nbytes(&self) -> usize {
        let f = [
            &self.x,
            &self.q,
            &self.k,
            &self.v,
            &self.attn,
            &self.proj,
            &self.gate,
            &self.up,
            &self.normed,
        ];
        4 * f.iter().map(|v| v.capacity()).sum::<usize>()
            + self.acts.q.capacity()
            + 4 * self.acts.factors.capacity()
    }
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// Which positions' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
}

impl Model {
    /// Build a model from its parts, checking every shape against the config.
    pub fn new(
        config: Config,
        embed: DenseMatrix,
        lm_head: Option<DenseMatrix>,
        layers: Vec<Layer>,
        norm: Vec<f32>,
        rope_style: RopeStyle,
        source: &std::path::Path,
    ) -> Result<Model> {
        config.validate(source)?;
        let c = &config;
        let bad = |m: String| Err(Error::bad_model(source, m));
        if embed.rows() != c.vocab_size || embed.cols() != c.hidden {
            return bad(format!(
                "embedding table is {}×{}, expected {}×{}",
                embed.rows(),
                embed.cols(),
                c.vocab_size,
                c.hidden
            ));
        }
        if let Some(h) = &lm_head {
            if h.rows() != c.vocab_size || h.cols() != c.hidden {
                return bad(format!(
                    "output (LM head) is {}×{}, expected {}×{}",
                    h.rows(),
                    h.cols(),
                    c.vocab_size,
                    c.hidden
                ));
            }
        }
        if layers.len() != c.n_layers {
            return bad(format!("{} blocks, expected {}", layers.len(), c.n_layers));
        }
        if norm.len() != c.hidden {
            return bad(format!(
                "output norm has {} values, expected {}",
                norm.len(),
                c.hidden
            ));
        }
        for (i, l) in layers.iter().enumerate() {
            let shapes = [
                ("attn_q", &l.q, c.q_dim(), c.hidden),
                ("attn_k", &l.k, c.kv_dim(), c.hidden),
                ("attn_v", &l.v, c.kv_dim(), c.hidden),
                ("attn_output", &l.o, c.hidden, c.q_dim()),
                ("ffn_gate", &l.gate, c.intermediate, c.hidden),
                ("ffn_up", &l.up, c.intermediate, c.hidden),
                ("ffn_down", &l.down, c.hidden, c.intermediate),
            ];
            for (name, w, rows, cols) in shapes {
                if w.weight.rows() != rows || w.weight.cols() != cols {
                    return bad(format!(
                        "blk.{i}.{name} is {}×{}, expected {rows}×{cols}",
                        w.weight.rows(),
                        w.weight.cols()
                    ));
                }
            }
            let norms = [
                ("attn_norm", l.attn_norm.len(), c.hidden),
                ("attn_sub_norm", l.attn_sub_norm.len(), c.q_dim()),
                ("ffn_norm", l.ffn_norm.len(), c.hidden),
                ("ffn_sub_norm", l.ffn_sub_norm.len(), c.intermediate),
            ];
            for (name, got, want) in norms {
                if got != want {
                    return bad(format!("blk.{i}.{name} has {got} values, expected {want}"));
                }
            }
        }
        let rope = Rope::new(c.head_dim, c.max_ctx, c.rope_theta, rope_style)?;
        Ok(Model {
            config,
            embed,
            lm_head,
            layers,
            norm,
            rope,
        })
    }

    /// The LM head (the embeddings when tied).
    pub fn head(&self) -> &DenseMatrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of all weights as held in memory.
    pub fn weight_bytes(&self) -> usize {
        let mut n = self.embed.nbytes()
            + self.lm_head.as_ref().map_or(0, |h| h.nbytes())
            + 4 * self.norm.len();
        for l in &self.layers {
            for w in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
                n += w.weight.nbytes();
            }
            n += 4
                * (l.attn_norm.len()
                    + l.attn_sub_norm.len()
                    + l.ffn_norm.len()
                    + l.ffn_sub_norm.len());
        }
        n
    }

    /// Bytes read per generated token: every projection, the head and one embedding row.
    pub fn bytes_per_token(&self) -> usize {
        let c = &self.config;
        let mut n = self.head().nbytes() + self.embed.nbytes() / c.vocab_size.max(1);
        for l in &self.layers {
            for w in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
                n += w.weight.nbytes();
            }
        }
        n
    }

    /// Run `tokens` at the cache's next positions, append their keys and values, and
    /// return logits (`vocab` floats per returned position).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        s: &mut Scratch,
        which: Logits,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let m = tokens.len();
        if m == 0 {
            return Err(Error::InvalidArgument("forward: no tokens".into()));
        }
        if cache.len() + m > cache.max_ctx().min(c.max_ctx) {
            return Err(Error::ContextFull {
                needed: cache.len() + m,
                limit: cache.max_ctx().min(c.max_ctx),
            });
        }
        let (h, qd, kvd, ff) = (c.hidden, c.q_dim(), c.kv_dim(), c.intermediate);
        grow(&mut s.x, m * h);
        grow(&mut s.q, m * qd);
        grow(&mut s.k, m * kvd);
        grow(&mut s.v, m * kvd);
        grow(&mut s.attn, m * qd);
        grow(&mut s.proj, m * h);
        grow(&mut s.gate, m * ff);
        grow(&mut s.up, m * ff);
        let x = &mut s.x[..m * h];
        for (i, &t) in tokens.iter().enumerate() {
            if t as usize >= c.vocab_size {
                return Err(Error::InvalidArgument(format!(
                    "token id {t} is outside the vocabulary (size {})",
                    c.vocab_size
                )));
            }
            self.embed.row_f32(t as usize, &mut x[i * h..(i + 1) * h])?;
        }
        let pos0 = cache.len();
        for (li, l) in self.layers.iter().enumerate() {
            // Attention.
            norm_quantize_rows(x, h, &l.attn_norm, c.rms_eps, &mut s.acts);
            // q, k and v in one parallel region (one fork/join instead of three).
            BitLinear::forward_multi(
                &[&l.q, &l.k, &l.v],
                &s.acts,
                &mut [&mut s.q[..m * qd], &mut s.k[..m * kvd], &mut s.v[..m * kvd]],
            )?;
            for i in 0..m {
                self.rope.apply(&mut s.q[i * qd..(i + 1) * qd], pos0 + i)?;
                self.rope
                    .apply(&mut s.k[i * kvd..(i + 1) * kvd], pos0 + i)?;
            }
            cache.write(li, &s.k[..m * kvd], &s.v[..m * kvd], m)?;
            cache.attend(li, &s.q[..m * qd], m, c.n_heads, &mut s.attn[..m * qd])?;
            norm_quantize_rows(
                &s.attn[..m * qd],
                qd,
                &l.attn_sub_norm,
                c.rms_eps,
                &mut s.acts,
            );
            l.o.forward(&s.acts, &mut s.proj[..m * h])?;
            add_assign(x, &s.proj[..m * h]);

            // Feed-forward: relu(gate)² · up.
            norm_quantize_rows(x, h, &l.ffn_norm, c.rms_eps, &mut s.acts);
            BitLinear::forward_multi(
                &[&l.gate, &l.up],
                &s.acts,
                &mut [&mut s.gate[..m * ff], &mut s.up[..m * ff]],
            )?;
            for (g, &u) in s.gate[..m * ff].iter_mut().zip(&s.up[..m * ff]) {
                let r = g.max(0.0);
                *g = r * r * u;
            }
            norm_quantize_rows(
                &s.gate[..m * ff],
                ff,
                &l.ffn_sub_norm,
                c.rms_eps,
                &mut s.acts,
            );
            l.down.forward(&s.acts, &mut s.proj[..m * h])?;
            add_assign(x, &s.proj[..m * h]);
        }
        cache.advance(m);

        let rows: Vec<usize> = match which {
            Logits::Last => vec![m - 1],
            Logits::All => (0..m).collect(),
        };
        grow(&mut s.normed, rows.len() * h);
        for (j, &i) in rows.iter().enumerate() {
            rmsnorm(
                &x[i * h..(i + 1) * h],
                &self.norm,
                c.rms_eps,
                &mut s.normed[j * h..(j + 1) * h],
            );
        }
        let mut logits = vec![0.0f32; rows.len() * c.vocab_size];
        if rows.len() == 1 {
            self.head().matvec(&s.normed[..h], &mut logits)?;
        } else {
            self.head()
                .matmul(&s.normed[..rows.len() * h], rows.len(), &mut logits)?;
        }
        Ok(logits)
    }
}

/// RMSNorm each row of `x` (`k` wide) and quantize it to int8 in one pass (rows in
/// parallel for a prompt).
fn norm_quantize_rows(x: &[f32], k: usize, w: &[f32], eps: f32, acts: &mut QuantizedActs) {
    let m = x.len() / k;
    acts.k = k;
    acts.q.resize(m * k, 0);
    acts.factors.resize(m, 0.0);
    let one =
        |((xr, qr), f): ((&[f32], &mut [i8]), &mut f32)| *f = rmsnorm_quantize(xr, w, eps, qr);
    if m < 16 {
        // A few rows (decode): not worth waking the pool.
        x.chunks_exact(k)
            .zip(acts.q.chunks_exact_mut(k))
            .zip(acts.factors.iter_mut())
            .for_each(one);
    } else {
        x.par_chunks_exact(k)
            .zip(acts.q.par_chunks_exact_mut(k))
            .zip(acts.factors.par_iter_mut())
            .with_min_len(8)
            .for_each(one);
    }
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
