//! Token sampling, following llama.cpp's default sampler chain:
//!
//! `penalties → top-k → top-p → min-p → temperature → draw`
//!
//! - NaN logits count as `-inf` (never sampled); `+inf` counts as the largest finite value, so
//!   several `+inf` logits share the probability mass.
//! - Repetition penalty has llama.cpp's semantics: for every *distinct* id among the last
//!   `repeat_last_n` ids of the history, a positive logit is divided by the penalty and a
//!   non-positive one multiplied by it. It is applied in place to the caller's logits, also
//!   in greedy mode (llama.cpp's chain with `--temp 0` is `penalties → greedy`).
//! - `temperature <= 0` is greedy: the arg-max, ties going to the lowest id.
//! - top-p and min-p are computed on the temperature-1 distribution of the candidates left by
//!   top-k, and temperature only shapes the final draw, as in llama.cpp (its default sampler
//!   order puts temperature last). Each keeps at least one candidate.
//! - The draw uses [`Pcg32`], a PCG-XSH-RR generator implemented here, so a seed gives the
//!   same tokens on every platform and independently of the `rand` crate's version. The
//!   sampler is single-threaded and orders candidates by a total order (logit descending, id
//!   ascending), so results never depend on thread counts or on unstable-sort details.

use std::cmp::Ordering;

use crate::error::{Error, Result};

/// Sampling parameters. Defaults are llama.cpp's (`--temp 0.8 --top-k 40 --top-p 0.95
/// --min-p 0.05 --repeat-penalty 1.0 --repeat-last-n 64`), except the seed, which is fixed at
/// 0 so that runs are reproducible unless a caller picks another.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// `<= 0` (only 0 passes [`validate`](Self::validate)) means greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = off.
    pub top_k: usize,
    /// Nucleus sampling threshold in (0, 1]; 1 = off.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the best one's, in [0, 1]; 0 = off.
    pub min_p: f32,
    /// Repetition penalty > 0; 1 = off.
    pub repeat_penalty: f32,
    /// How many of the most recent history ids the penalty looks at; 0 = off.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding with no penalty (what `--temp 0` gives in llama.cpp).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Rejects values that have no meaning (negative temperature, `top_p` outside (0, 1],
    /// `min_p` outside [0, 1], a non-positive penalty, NaN or infinity anywhere).
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidArgument(msg));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad(format!(
                "repeat_penalty must be a finite number > 0, got {}",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

/// PCG32 (O'Neill's PCG-XSH-RR, 64-bit state, 32-bit output), seeded like the reference
/// `pcg32_srandom_r(seed, stream)`. Small, fast, statistically good, and fully specified here,
/// so sampled sequences stay the same across platforms and dependency upgrades.
#[derive(Clone, Debug)]
pub struct Pcg32 {
    state: u64,
    inc: u64,
}

impl Pcg32 {
    const MULT: u64 = 6_364_136_223_846_793_005;

    pub fn new(seed: u64, stream: u64) -> Self {
        let mut r = Self {
            state: 0,
            inc: (stream << 1) | 1,
        };
        r.next_u32();
        r.state = r.state.wrapping_add(seed);
        r.next_u32();
        r
    }

    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(Self::MULT).wrapping_add(self.inc);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    /// Uniform in [0, 1) with 53 random bits (from two outputs).
    pub fn next_f64(&mut self) -> f64 {
        let hi = u64::from(self.next_u32() >> 5); // 27 bits
        let lo = u64::from(self.next_u32() >> 6); // 26 bits
        ((hi << 26) | lo) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The fixed PCG stream the sampler uses; only the seed varies.
const SAMPLER_STREAM: u64 = 0x5EED_B17E;

/// Candidate order: higher logit first, then lower id. A total order (logits are never NaN
/// here), so sorting and selection give the same result whatever the algorithm.
fn by_logit_desc(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Stateful sampler: the configuration plus the random generator and scratch buffers.
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Pcg32,
    /// (logit, id) of the tokens still in the running.
    cand: Vec<(f32, u32)>,
    /// Unnormalized final weights, parallel to `cand`.
    weights: Vec<f64>,
    recent: Vec<u32>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            rng: Pcg32::new(cfg.seed, SAMPLER_STREAM),
            cfg,
            cand: vec![],
            weights: vec![],
            recent: vec![],
        })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Restarts the random sequence as if newly created with `seed`.
    pub fn reseed(&mut self, seed: u64) {
        self.cfg.seed = seed;
        self.rng = Pcg32::new(seed, SAMPLER_STREAM);
    }

    /// Picks the next token. `logits` is modified in place (NaN → -inf, penalties);
    /// `history` is the context so far (prompt and generated ids), newest last.
    ///
    /// # Panics
    /// If `logits` is empty.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        assert!(!logits.is_empty(), "sample: empty logits");
        self.prepare(logits, history);
        self.draw()
    }

    /// What [`sample_top`](Self::sample_top) needs to give what [`sample`](Self::sample)
    /// gives, when a runner can select at most `max` candidates: the number of largest
    /// logits, and the ids whose logits must come too (the repetition penalty's recent
    /// tokens). With a top-k cut of k and r distinct recent tokens, the k + r largest logits
    /// and the recent tokens' own logits hold every token the cut can keep after the penalty
    /// (a penalty lowers or lifts only recent tokens, so at most r of the k + r can fall
    /// below a token outside them). `None` without a top-k cut, at temperature 0, or when
    /// that is more than `max`.
    pub fn top_request(&mut self, history: &[u32], max: usize) -> Option<(usize, Vec<u32>)> {
        if self.cfg.temperature <= 0.0 || self.cfg.top_k == 0 || self.cfg.top_k > max {
            return None; // (a runner without candidates, max 0, costs nothing per step)
        }
        self.recent_ids(history);
        let k = self.cfg.top_k + self.recent.len();
        (k <= max).then(|| (k, self.recent.clone()))
    }

    /// [`sample`](Self::sample) from candidates only: (logit, id) pairs in any order, as
    /// many as [`top_request`](Self::top_request) asked for (the largest logits, then the
    /// recent tokens'; an id may come twice). The same draw as from the whole logits: the
    /// chain after the top-k cut sees only its survivors, so a GPU sends back a few
    /// candidates instead of the logits.
    pub fn sample_top(&mut self, cands: &[(f32, u32)], history: &[u32]) -> u32 {
        self.recent_ids(history);
        let p = self.cfg.repeat_penalty;
        self.cand.clear();
        self.weights.clear();
        self.cand.extend(cands.iter().map(|&(l, id)| {
            let l = finite_order(l);
            if p != 1.0 && self.recent.binary_search(&id).is_ok() {
                (penalize(l, p), id)
            } else {
                (l, id)
            }
        }));
        self.cand.sort_unstable_by_key(|c| c.1);
        self.cand.dedup_by_key(|c| c.1);
        self.cand.retain(|c| c.0 > f32::NEG_INFINITY);
        if self.cand.is_empty() {
            // Every logit is -inf or NaN: as the dense path, greedy on the first id.
            self.cand.push((0.0, 0));
        } else {
            self.cut_and_weigh();
        }
        self.draw()
    }

    /// Draws from `cand`/`weights` as left by `prepare`.
    fn draw(&mut self) -> u32 {
        if self.weights.is_empty() {
            // Greedy, or nothing has a finite logit: the single remaining candidate.
            return self.cand[0].1;
        }
        let total: f64 = self.weights.iter().sum();
        let u = self.rng.next_f64() * total;
        let mut acc = 0.0;
        for (w, c) in self.weights.iter().zip(&self.cand) {
            acc += w;
            if u < acc {
                return c.1;
            }
        }
        // Only reachable through rounding when u lands on the very top of the total.
        self.cand[self.cand.len() - 1].1
    }

    /// The distribution [`sample`](Self::sample) would draw from, as (id, probability)
    /// sorted by probability (ties by id), without consuming randomness. For greedy decoding
    /// it is the arg-max with probability 1.
    pub fn distribution(&mut self, logits: &mut [f32], history: &[u32]) -> Vec<(u32, f64)> {
        assert!(!logits.is_empty(), "distribution: empty logits");
        self.prepare(logits, history);
        if self.weights.is_empty() {
            return vec![(self.cand[0].1, 1.0)];
        }
        let total: f64 = self.weights.iter().sum();
        self.cand
            .iter()
            .zip(&self.weights)
            .map(|(c, w)| (c.1, w / total))
            .collect()
    }

    /// Applies the chain up to the draw. Leaves the candidates in `cand` (sorted) with their
    /// weights in `weights`; `weights` empty means "take `cand[0]`".
    fn prepare(&mut self, logits: &mut [f32], history: &[u32]) {
        for l in logits.iter_mut() {
            *l = finite_order(*l);
        }
        self.apply_penalty(logits, history);
        self.cand.clear();
        self.weights.clear();

        if self.cfg.temperature <= 0.0 {
            self.cand.push((0.0, argmax(logits)));
            return;
        }

        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| **l > f32::NEG_INFINITY)
                .map(|(i, &l)| (l, i as u32)),
        );
        if self.cand.is_empty() {
            // Every logit is -inf or NaN: no distribution; fall back to greedy (id 0).
            self.cand.push((0.0, argmax(logits)));
            return;
        }
        self.cut_and_weigh();
    }

    /// The chain from the top-k cut on, over the finite candidates in `cand`.
    fn cut_and_weigh(&mut self) {
        let k = self.cfg.top_k;
        if k > 0 && k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_logit_desc);
            self.cand.truncate(k);
        }

        let max = self
            .cand
            .iter()
            .map(|c| c.0)
            .fold(f32::NEG_INFINITY, f32::max);
        // Softmax normalizer of the top-k survivors at temperature 1, for top-p.
        let z: f64 = self.cand.iter().map(|c| f64::from(c.0 - max).exp()).sum();

        // min-p needs only the maximum, which later truncations keep, so it can run before
        // sorting and shrink what has to be sorted. Top-p and min-p both keep a prefix of the
        // sorted list, so the result is the shorter prefix in either order, as long as top-p
        // uses the normalizer of the full top-k set (z), which it does below.
        let min_p = f64::from(self.cfg.min_p);
        if min_p > 0.0 {
            self.cand.retain(|c| f64::from(c.0 - max).exp() >= min_p);
        }
        self.cand.sort_unstable_by(by_logit_desc);

        let top_p = f64::from(self.cfg.top_p);
        if top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = self.cand.len();
            for (i, c) in self.cand.iter().enumerate() {
                cum += f64::from(c.0 - max).exp() / z;
                if cum >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep);
        }

        let inv_t = 1.0 / f64::from(self.cfg.temperature);
        self.weights.extend(
            self.cand
                .iter()
                .map(|c| (f64::from(c.0 - max) * inv_t).exp()),
        );
    }

    /// The distinct ids (sorted) the repetition penalty applies to; none without a penalty.
    fn recent_ids(&mut self, history: &[u32]) {
        self.recent.clear();
        let n = self.cfg.repeat_last_n.min(history.len());
        if self.cfg.repeat_penalty == 1.0 || n == 0 {
            return;
        }
        self.recent.extend_from_slice(&history[history.len() - n..]);
        self.recent.sort_unstable();
        self.recent.dedup();
    }

    fn apply_penalty(&mut self, logits: &mut [f32], history: &[u32]) {
        self.recent_ids(history);
        let p = self.cfg.repeat_penalty;
        for &id in &self.recent {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = penalize(*l, p);
            }
        }
    }
}

/// A logit as the chain orders it: NaN as −∞ (never drawn), +∞ as the largest finite value.
fn finite_order(l: f32) -> f32 {
    if l.is_nan() {
        f32::NEG_INFINITY
    } else if l == f32::INFINITY {
        f32::MAX
    } else {
        l
    }
}

/// A recent token's logit under repetition penalty `p` (llama.cpp's rule: further from
/// likely either way).
fn penalize(l: f32, p: f32) -> f32 {
    if l <= 0.0 {
        l * p
    } else {
        l / p
    }
}

/// Index of the largest logit, the lowest index among equals. NaN must already be gone.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference outputs of the PCG32 demo (`pcg32-global-demo`, seed 42, stream 54).
    #[test]
    fn pcg32_reference_vector() {
        let mut r = Pcg32::new(42, 54);
        let got: Vec<u32> = (0..6).map(|_| r.next_u32()).collect();
        assert_eq!(
            got,
            [0xa15c02b7, 0x7b47f409, 0xba1d3330, 0x83d2f293, 0xbfa4784b, 0xcbed606e]
        );
    }

    #[test]
    fn next_f64_range() {
        let mut r = Pcg32::new(7, 1);
        for _ in 0..10_000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }
}

#[cfg(test)]
mod top_tests {
    use super::*;

    #[test]
    fn sampling_from_the_requested_candidates_equals_sampling_from_all_logits() {
        let mut rng = Pcg32::new(3, 9);
        let n = 5000;
        for (temp, top_k, top_p, min_p, penalty) in [
            (0.8, 40, 0.95, 0.05, 1.0),
            (1.0, 1, 1.0, 0.0, 1.0),
            (1.3, 5, 0.5, 0.0, 1.0),
            (0.7, 64, 1.0, 0.2, 1.0),
            (0.8, 40, 0.95, 0.05, 1.3),
            (1.0, 3, 1.0, 0.0, 0.7),
        ] {
            let cfg = SamplerConfig {
                temperature: temp,
                top_k,
                top_p,
                min_p,
                repeat_penalty: penalty,
                repeat_last_n: 16,
                seed: 77,
            };
            let mut dense = Sampler::new(cfg.clone()).unwrap();
            let mut top = Sampler::new(cfg.clone()).unwrap();
            let mut history: Vec<u32> = vec![];
            for step in 0..300 {
                // Logits on a coarse grid (many ties), one NaN, one +inf now and then.
                let mut logits: Vec<f32> = (0..n)
                    .map(|_| ((rng.next_f64() * 16.0 - 8.0) * 2.0).round() as f32 / 2.0)
                    .collect();
                logits[step % n] = f32::NAN;
                if step % 7 == 0 {
                    logits[(step * 13) % n] = f32::INFINITY;
                }
                let (k, extra) = top.top_request(&history, 1024).unwrap();
                assert_eq!(extra.len() + top_k, k);
                // What a device returns: the k largest (NaN lowest, ties to lower ids) and
                // the extra ids' logits, in no particular order.
                let key = |l: f32| if l.is_nan() { f32::NEG_INFINITY } else { l };
                let mut order: Vec<u32> = (0..n as u32).collect();
                order.sort_by(|&a, &b| {
                    key(logits[b as usize])
                        .total_cmp(&key(logits[a as usize]))
                        .then(a.cmp(&b))
                });
                let mut cands: Vec<(f32, u32)> = order[..k]
                    .iter()
                    .chain(&extra)
                    .map(|&i| (logits[i as usize], i))
                    .collect();
                cands.reverse();
                let a = dense.sample(&mut logits.clone(), &history);
                let b = top.sample_top(&cands, &history);
                assert_eq!(a, b, "step {step}, config {cfg:?}");
                // Penalized runs repeat a few tokens often, so the penalty matters.
                history.push(if step % 3 == 0 { a } else { (step % 11) as u32 });
            }
        }
        let mut greedy = Sampler::new(SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        })
        .unwrap();
        assert_eq!(greedy.top_request(&[], 1024), None);
        let mut wide = Sampler::new(SamplerConfig {
            top_k: 1000,
            repeat_penalty: 1.1,
            ..SamplerConfig::default()
        })
        .unwrap();
        assert_eq!(wide.top_request(&(0..64).collect::<Vec<_>>(), 1024), None);
    }
}
