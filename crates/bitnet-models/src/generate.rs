//! The generation loop: prefill the prompt in batches, then decode one token at a time,
//! sampling each from the logits, with timings for prompt processing and generation.

use std::time::{Duration, Instant};

use crate::bitnet::{Logits, Model, Scratch};
use crate::kv_cache::{KvCache, KvDType};
use crate::sampler::Sampler;
use crate::{Error, Result};

/// Rows per prefill batch: bounds scratch memory; the kernels' matrix-matrix products
/// are tuned up to this size.
pub const PREFILL_BATCH: usize = 512;

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

    /// Bytes of the scratch buffers (for memory reports).
    pub fn scratch_bytes(&self) -> usize {
        self.scratch.nbytes()
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

    /// Generate up to `n` tokens after `prompt`, calling `on_token` with each id as soon
    /// as it is sampled (return `false` from it to stop). Stops early at an
    /// end-of-generation id when `stop` says so.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        n: usize,
        sampler: &mut Sampler,
        stop: &dyn Fn(u32) -> bool,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Generation> {
        let needed = self.cache.len() + prompt.len() + n.saturating_sub(1);
        if needed > self.cache.max_ctx() {
            return Err(Error::ContextFull {
                needed,
                limit: self.cache.max_ctx(),
            });
        }
        let mut g = Generation {
            prompt_tokens: prompt.len(),
            ..Default::default()
        };
        if n == 0 {
            return Ok(g);
        }
        let mut history: Vec<u32> = prompt.to_vec();
        let t0 = Instant::now();
        let mut logits = self.feed(prompt, Logits::Last)?;
        g.prefill_time = t0.elapsed();
        let t1 = Instant::now();
        loop {
            let id = sampler.sample(&mut logits, &history);
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
            logits = self.feed(&[id], Logits::Last)?;
        }
        g.decode_time = t1.elapsed();
        Ok(g)
    }
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
    session: &mut Session<'_>,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    max_chunks: Option<usize>,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<Perplexity> {
    if ctx < 4 || ctx > session.cache.max_ctx() {
        return Err(Error::InvalidArgument(format!(
            "perplexity context must be between 4 and {} tokens, got {ctx}",
            session.cache.max_ctx()
        )));
    }
    let chunks = (tokens.len() / ctx).min(max_chunks.unwrap_or(usize::MAX));
    if chunks == 0 {
        return Err(Error::InvalidArgument(format!(
            "{} tokens are fewer than one chunk of {ctx}",
            tokens.len()
        )));
    }
    let v = session.model.config.vocab_size;
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
