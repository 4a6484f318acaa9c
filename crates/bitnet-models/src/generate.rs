//! The generation loop: prefill the prompt in batches, then decode one token at a time,
//! sampling each from the logits, with timings for prompt processing and generation.

use std::time::{Duration, Instant};

use crate::bitnet::{Logits, Model, Scratch};
use crate::kv_cache::{KvCache, KvDType};
use crate::sampler::{argmax, Sampler};
use crate::{Error, Result};

/// Rows per prefill batch: bounds scratch memory; the kernels' matrix-matrix products
/// are tuned up to this size.
pub const PREFILL_BATCH: usize = 512;

/// Runs the model over its own KV cache, one conversation: the CPU [`Session`] or a GPU
/// model. The generation loop and perplexity are written against this.
pub trait Runner {
    /// Feed tokens at the next positions; the last position's logits, or every position's.
    fn feed(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>>;
    /// Feed one token and return the arg-max of the next logits (ties to the lowest id).
    /// A GPU runner overrides this so that only the token id crosses the bus.
    fn greedy_step(&mut self, token: u32) -> Result<u32> {
        Ok(argmax(&self.feed(&[token], Logits::Last)?))
    }
    /// The most candidates [`Runner::top_step`] selects where the logits are (0: the runner
    /// has no such path; the CPU, whose logits are at hand).
    fn top_step_max(&self) -> usize {
        0
    }
    /// Feed one token and return the `k` largest next logits as (logit, id), in any order,
    /// ties to lower ids, then the logits of the `extra` ids (`k`, `extra.len()` ≤
    /// `top_step_max()`); a GPU runner selects them on the device.
    fn top_step(&mut self, token: u32, k: usize, extra: &[u32]) -> Result<Vec<(f32, u32)>> {
        let _ = (token, k, extra);
        Err(Error::InvalidArgument(
            "top_step: this runner selects no candidates (top_step_max is 0)".into(),
        ))
    }
    /// Positions used so far.
    fn position(&self) -> usize;
    /// Positions the cache holds.
    fn capacity(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// Forget every position.
    fn reset(&mut self);
    /// Drop positions from `len` on (to reuse a shared prefix).
    fn truncate(&mut self, len: usize);
    /// Host bytes held besides the weights (KV cache, scratch); 0 when they live on a GPU.
    fn state_bytes(&self) -> usize;
}

/// A model with its own KV cache and scratch buffers: one conversation.
pub struct Session<'m> {
    pub model: &'m Model,
    pub cache: KvCache,
    scratch: Scratch,
}

/// What a generation produced and how fast.
#[derive(Debug, Clone, Default)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    /// Whether an end-of-generation token stopped it.
    pub stopped_at_eog: bool,
}

impl Generation {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Decode speed over the tokens produced by decode steps (the first new token comes
    /// from the prefill's logits and is not counted).
    pub fn decode_tok_s(&self) -> f64 {
        let steps = self.ids.len().saturating_sub(1);
        steps as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

impl<'m> Session<'m> {
    /// A session whose context holds `ctx` positions (at most the model's).
    pub fn new(model: &'m Model, ctx: usize, kv: KvDType) -> Self {
        let c = &model.config;
        let ctx = ctx.min(c.max_ctx).max(1);
        Session {
            model,
            cache: KvCache::new(c.n_layers, c.n_kv_heads, c.head_dim, ctx, kv),
            scratch: Scratch::new(),
        }
    }

    /// Positions used so far.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    pub fn reset(&mut self) {
        self.cache.clear();
    }

    /// Feed tokens (in batches of [`PREFILL_BATCH`]); returns the last position's logits,
    /// or every position's with [`Logits::All`].
    pub fn feed(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens to feed".into()));
        }
        let needed = self.cache.len() + tokens.len();
        if needed > self.cache.max_ctx() {
            return Err(Error::ContextFull {
                needed,
                limit: self.cache.max_ctx(),
            });
        }
        let mut out = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(PREFILL_BATCH).collect();
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let w = if which == Logits::All {
                Logits::All
            } else {
                Logits::Last
            };
            let logits = self
                .model
                .forward(chunk, &mut self.cache, &mut self.scratch, w)?;
            if which == Logits::All || i == last {
                out.extend_from_slice(&logits);
            }
        }
        Ok(out)
    }

    /// [`generate`] on this session.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        n: usize,
        sampler: &mut Sampler,
        stop: &dyn Fn(u32) -> bool,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Generation> {
        generate(self, prompt, n, sampler, stop, on_token)
    }
}

impl Runner for Session<'_> {
    fn feed(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        Session::feed(self, tokens, which)
    }
    fn position(&self) -> usize {
        self.cache.len()
    }
    fn capacity(&self) -> usize {
        self.cache.max_ctx()
    }
    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }
    fn reset(&mut self) {
        self.cache.clear();
    }
    fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
    }
    fn state_bytes(&self) -> usize {
        self.cache.nbytes() + self.scratch.nbytes()
    }
}

#[cfg(feature = "cuda")]
impl Runner for crate::cuda_model::CudaModel {
    fn feed(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        self.forward(tokens, which)
    }
    fn greedy_step(&mut self, token: u32) -> Result<u32> {
        self.greedy_next(token)
    }
    fn top_step_max(&self) -> usize {
        bitnet_core::cuda::head::TOPK_MAX
    }
    fn top_step(&mut self, token: u32, k: usize, extra: &[u32]) -> Result<Vec<(f32, u32)>> {
        self.top_next(token, k, extra)
    }
    fn position(&self) -> usize {
        crate::cuda_model::CudaModel::position(self)
    }
    fn capacity(&self) -> usize {
        self.max_ctx()
    }
    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }
    fn reset(&mut self) {
        crate::cuda_model::CudaModel::reset(self)
    }
    fn truncate(&mut self, len: usize) {
        crate::cuda_model::CudaModel::truncate(self, len)
    }
    fn state_bytes(&self) -> usize {
        0
    }
}

/// Generate up to `n` tokens after `prompt`, calling `on_token` with each id as soon as it
/// is sampled (return `false` from it to stop). Stops early at an id for which `stop` says
/// so. Pure greedy sampling (temperature 0, no repetition penalty) decodes with
/// [`Runner::greedy_step`], and top-k sampling with [`Runner::top_step`] where the runner
/// selects candidates itself, so a GPU runner never copies logits back.
pub fn generate(
    r: &mut dyn Runner,
    prompt: &[u32],
    n: usize,
    sampler: &mut Sampler,
    stop: &dyn Fn(u32) -> bool,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Generation> {
    let needed = r.position() + prompt.len() + n.saturating_sub(1);
    if needed > r.capacity() {
        return Err(Error::ContextFull {
            needed,
            limit: r.capacity(),
        });
    }
    let mut g = Generation {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    if n == 0 {
        return Ok(g);
    }
    let cfg = sampler.config();
    let greedy = cfg.temperature == 0.0 && cfg.repeat_penalty == 1.0;
    let top_max = r.top_step_max();
    let mut history: Vec<u32> = prompt.to_vec();
    let t0 = Instant::now();
    let mut logits = r.feed(prompt, Logits::Last)?;
    g.prefill_time = t0.elapsed();
    let t1 = Instant::now();
    let mut id = sampler.sample(&mut logits, &history);
    loop {
        g.ids.push(id);
        history.push(id);
        let go_on = on_token(id);
        if stop(id) {
            g.stopped_at_eog = true;
            break;
        }
        if !go_on || g.ids.len() == n {
            break;
        }
        id = if greedy {
            r.greedy_step(id)?
        } else if let Some((k, extra)) = sampler.top_request(&history, top_max) {
            let c = r.top_step(id, k, &extra)?;
            sampler.sample_top(&c, &history)
        } else {
            logits = r.feed(&[id], Logits::Last)?;
            sampler.sample(&mut logits, &history)
        };
    }
    g.decode_time = t1.elapsed();
    Ok(g)
}

/// Result of [`perplexity`].
#[derive(Debug, Clone, Copy)]
pub struct Perplexity {
    pub ppl: f64,
    pub chunks: usize,
    pub scored: usize,
}

/// llama-perplexity's procedure over already tokenized text: cut `tokens` into chunks of
/// `ctx`, put `bos` (if any) in each chunk's first slot, and score only the second half of
/// each chunk, so every scored token sees at least `ctx/2` tokens of context.
/// `progress` is called after each chunk with (chunk index, running perplexity).
pub fn perplexity(
    session: &mut dyn Runner,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    max_chunks: Option<usize>,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<Perplexity> {
    if ctx < 4 || ctx > session.capacity() {
        return Err(Error::InvalidArgument(format!(
            "perplexity context must be between 4 and {} tokens, got {ctx}",
            session.capacity()
        )));
    }
    let chunks = (tokens.len() / ctx).min(max_chunks.unwrap_or(usize::MAX));
    if chunks == 0 {
        return Err(Error::InvalidArgument(format!(
            "{} tokens are fewer than one chunk of {ctx}",
            tokens.len()
        )));
    }
    let v = session.vocab_size();
    let first = ctx / 2;
    let (mut nll, mut scored) = (0.0f64, 0usize);
    let mut chunk = vec![0u32; ctx];
    for c in 0..chunks {
        chunk.copy_from_slice(&tokens[c * ctx..(c + 1) * ctx]);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        session.reset();
        let logits = session.feed(&chunk, Logits::All)?;
        for j in first..ctx - 1 {
            nll -= log_softmax_at(&logits[j * v..(j + 1) * v], chunk[j + 1] as usize);
            scored += 1;
        }
        progress(c, (nll / scored as f64).exp());
    }
    Ok(Perplexity {
        ppl: (nll / scored as f64).exp(),
        chunks,
        scored,
    })
}

/// log softmax(logits)[target], in f64.
fn log_softmax_at(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[target] as f64 - max - sum.ln()
}
