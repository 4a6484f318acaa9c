//! Sampler tests: greedy, truncation on hand examples, penalty semantics, statistics,
//! reproducibility.

use bitnet_models::sampler::{argmax, Pcg32, Sampler, SamplerConfig};
use proptest::prelude::*;

fn cfg(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplerConfig {
    SamplerConfig {
        temperature,
        top_k,
        top_p,
        min_p,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 1,
    }
}

fn softmax(logits: &[f32], t: f64) -> Vec<f64> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = logits
        .iter()
        .map(|&l| (f64::from(l - m) / t).exp())
        .collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

/// Logits whose temperature-1 probabilities are exactly `p` (up to rounding).
fn logits_of(p: &[f64]) -> Vec<f32> {
    p.iter().map(|x| x.ln() as f32).collect()
}

fn kept_ids(s: &mut Sampler, logits: &[f32]) -> Vec<u32> {
    s.distribution(&mut logits.to_vec(), &[])
        .iter()
        .map(|x| x.0)
        .collect()
}

#[test]
fn defaults_are_llama_cpp() {
    let d = SamplerConfig::default();
    assert_eq!(
        (
            d.temperature,
            d.top_k,
            d.top_p,
            d.min_p,
            d.repeat_penalty,
            d.repeat_last_n
        ),
        (0.8, 40, 0.95, 0.05, 1.0, 64)
    );
    d.validate().unwrap();
    SamplerConfig::greedy().validate().unwrap();
}

#[test]
fn validate_rejects_nonsense() {
    let base = SamplerConfig::default();
    let bad = [
        SamplerConfig {
            temperature: -0.1,
            ..base.clone()
        },
        SamplerConfig {
            temperature: f32::NAN,
            ..base.clone()
        },
        SamplerConfig {
            temperature: f32::INFINITY,
            ..base.clone()
        },
        SamplerConfig {
            top_p: 0.0,
            ..base.clone()
        },
        SamplerConfig {
            top_p: 1.5,
            ..base.clone()
        },
        SamplerConfig {
            top_p: f32::NAN,
            ..base.clone()
        },
        SamplerConfig {
            min_p: -0.1,
            ..base.clone()
        },
        SamplerConfig {
            min_p: 1.1,
            ..base.clone()
        },
        SamplerConfig {
            min_p: f32::NAN,
            ..base.clone()
        },
        SamplerConfig {
            repeat_penalty: 0.0,
            ..base.clone()
        },
        SamplerConfig {
            repeat_penalty: -1.0,
            ..base.clone()
        },
        SamplerConfig {
            repeat_penalty: f32::NAN,
            ..base.clone()
        },
    ];
    for c in bad {
        assert!(c.validate().is_err(), "{c:?}");
        assert!(Sampler::new(c).is_err());
    }
    for ok in [
        SamplerConfig {
            top_p: 1.0,
            min_p: 0.0,
            top_k: 0,
            ..base.clone()
        },
        SamplerConfig {
            min_p: 1.0,
            ..base.clone()
        },
        SamplerConfig {
            repeat_penalty: 0.5,
            repeat_last_n: 0,
            ..base.clone()
        },
    ] {
        ok.validate().unwrap();
    }
}

#[test]
fn greedy_is_argmax_with_lowest_id_ties() {
    let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
    assert_eq!(s.sample(&mut [0.1, 2.0, -1.0, 1.9], &[]), 1);
    assert_eq!(s.sample(&mut [1.0, 3.0, 3.0, 2.0], &[]), 1);
    assert_eq!(s.sample(&mut [5.0, 5.0], &[]), 0);
    assert_eq!(s.sample(&mut [f32::NAN, 1.0, f32::NAN], &[]), 1);
    assert_eq!(s.sample(&mut [f32::NAN, f32::NAN], &[]), 0);
    assert_eq!(s.sample(&mut [f32::NEG_INFINITY, -1e30], &[]), 1);
    assert_eq!(argmax(&[-3.0, -2.0, -2.0]), 1);
}

#[test]
fn top_k_one_is_greedy() {
    let mut rng = Pcg32::new(99, 3);
    let mut s = Sampler::new(cfg(1.5, 1, 1.0, 0.0)).unwrap();
    for _ in 0..200 {
        let mut logits: Vec<f32> = (0..50).map(|_| (rng.next_f64() * 4.0) as f32).collect();
        // Force some ties.
        logits[7] = logits[3];
        let want = argmax(&logits);
        assert_eq!(s.sample(&mut logits, &[]), want);
    }
    let mut s = Sampler::new(cfg(1.0, 1, 1.0, 0.0)).unwrap();
    assert_eq!(s.sample(&mut [1.0, 3.0, 3.0, 2.0], &[]), 1);
}

/// Frequencies over many draws match the softmax at the given temperature.
#[test]
fn frequencies_match_softmax() {
    let logits = [1.0f32, 2.0, 0.5, -1.0, 3.0, 2.0];
    const N: usize = 200_000;
    for t in [1.0f32, 0.5, 2.0] {
        let want = softmax(&logits, f64::from(t));
        let mut s = Sampler::new(SamplerConfig {
            seed: 7,
            ..cfg(t, 0, 1.0, 0.0)
        })
        .unwrap();
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..N {
            counts[s.sample(&mut logits.to_vec(), &[]) as usize] += 1;
        }
        let mut chi2 = 0.0;
        for (i, &c) in counts.iter().enumerate() {
            let f = c as f64 / N as f64;
            let sd = (want[i] * (1.0 - want[i]) / N as f64).sqrt();
            assert!(
                (f - want[i]).abs() < 5.0 * sd + 1e-9,
                "t={t} id={i}: {f} vs {}",
                want[i]
            );
            chi2 += (c as f64 - want[i] * N as f64).powi(2) / (want[i] * N as f64);
        }
        // 5 degrees of freedom: P(chi2 > 25) < 2e-4.
        assert!(chi2 < 25.0, "t={t}: chi2 {chi2}");
    }
}

/// After top-k the draw is the softmax renormalized over the survivors.
#[test]
fn frequencies_after_top_k() {
    let logits = [1.0f32, 2.0, 0.5, -1.0, 3.0, 2.0];
    let mut s = Sampler::new(cfg(1.0, 3, 1.0, 0.0)).unwrap();
    // Top 3: id 4 (3.0), then ids 1 and 5 tie at 2.0: both kept.
    let kept = [4usize, 1, 5];
    let full = softmax(&logits, 1.0);
    let z: f64 = kept.iter().map(|&i| full[i]).sum();
    const N: usize = 100_000;
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..N {
        counts[s.sample(&mut logits.to_vec(), &[]) as usize] += 1;
    }
    for (i, &c) in counts.iter().enumerate() {
        let want = if kept.contains(&i) { full[i] / z } else { 0.0 };
        let f = c as f64 / N as f64;
        assert!((f - want).abs() < 0.006, "id {i}: {f} vs {want}");
    }
    // Tie at the cut: the lower id wins the last place.
    let mut s = Sampler::new(cfg(1.0, 2, 1.0, 0.0)).unwrap();
    assert_eq!(kept_ids(&mut s, &logits), [4, 1]);
}

#[test]
fn top_p_hand_examples() {
    let l = logits_of(&[0.5, 0.3, 0.15, 0.05]);
    let mut s = Sampler::new(cfg(1.0, 0, 0.75, 0.0)).unwrap();
    assert_eq!(kept_ids(&mut s, &l), [0, 1]);
    let mut s = Sampler::new(cfg(1.0, 0, 0.5, 0.0)).unwrap();
    assert_eq!(kept_ids(&mut s, &l), [0]);
    let mut s = Sampler::new(cfg(1.0, 0, 0.81, 0.0)).unwrap();
    assert_eq!(kept_ids(&mut s, &l), [0, 1, 2]);
    let mut s = Sampler::new(cfg(1.0, 0, 0.1, 0.0)).unwrap();
    assert_eq!(kept_ids(&mut s, &l), [0], "at least one is kept");
    let mut s = Sampler::new(cfg(1.0, 0, 1.0, 0.0)).unwrap();
    assert_eq!(kept_ids(&mut s, &l), [0, 1, 2, 3]);
    // Renormalized probabilities of the kept pair.
    let mut s = Sampler::new(cfg(1.0, 0, 0.75, 0.0)).unwrap();
    let d = s.distribution(&mut l.clone(), &[]);
    assert!(
        (d[0].1 - 0.625).abs() < 1e-6 && (d[1].1 - 0.375).abs() < 1e-6,
        "{d:?}"
    );
    // Top-p is measured at temperature 1, not at the sampling temperature (llama.cpp order):
    // a high temperature flattens the draw but not the cut.
    let mut s = Sampler::new(cfg(5.0, 0, 0.75, 0.0)).unwrap();
    assert_eq!(kept_ids(&mut s, &l), [0, 1]);
    // Top-p over the top-k survivors: with k=3 the mass is renormalized to 0.95, so 0.8 needs
    // 0.5/0.95 + 0.3/0.95 = 0.842 -> two tokens.
    let mut s = Sampler::new(cfg(1.0, 3, 0.8, 0.0)).unwrap();
    assert_eq!(kept_ids(&mut s, &l), [0, 1]);
}

#[test]
fn min_p_hand_examples() {
    let l = logits_of(&[0.5, 0.3, 0.15, 0.05]);
    // Threshold 0.2 * 0.5 = 0.1 keeps 0.5, 0.3, 0.15.
    let mut s = Sampler::new(cfg(1.0, 0, 1.0, 0.2)).unwrap();
    assert_eq!(kept_ids(&mut s, &l), [0, 1, 2]);
    // Threshold 0.35 * 0.5 = 0.175 keeps 0.5, 0.3.
    let mut s = Sampler::new(cfg(1.0, 0, 1.0, 0.35)).unwrap();
    assert_eq!(kept_ids(&mut s, &l), [0, 1]);
    let mut s = Sampler::new(cfg(1.0, 0, 1.0, 1.0)).unwrap();
    assert_eq!(kept_ids(&mut s, &l), [0]);
    // Combined with top-p: the stricter cut wins, whichever it is.
    let mut s = Sampler::new(cfg(1.0, 0, 0.75, 0.2)).unwrap();
    assert_eq!(kept_ids(&mut s, &l), [0, 1]);
    let mut s = Sampler::new(cfg(1.0, 0, 0.9, 0.35)).unwrap();
    assert_eq!(kept_ids(&mut s, &l), [0, 1]);
    let mut s = Sampler::new(cfg(1.0, 0, 0.99, 0.2)).unwrap();
    assert_eq!(kept_ids(&mut s, &l), [0, 1, 2]);
    // Temperature reshapes the final distribution over the kept tokens.
    let mut s = Sampler::new(cfg(0.5, 0, 1.0, 0.35)).unwrap();
    let d = s.distribution(&mut l.clone(), &[]);
    let (a, b) = (0.5f64.powi(2), 0.3f64.powi(2));
    assert!((d[0].1 - a / (a + b)).abs() < 1e-6, "{d:?}");
}

#[test]
fn repetition_penalty_semantics() {
    let c = SamplerConfig {
        repeat_penalty: 2.0,
        repeat_last_n: 64,
        ..SamplerConfig::greedy()
    };
    let mut s = Sampler::new(c.clone()).unwrap();
    let mut l = [2.0f32, -2.0, 1.0, 0.5, 0.0];
    // id 0 appears twice but is penalized once; id 4 (logit 0) stays 0; unknown id 99 ignored.
    s.sample(&mut l, &[0, 1, 0, 4, 99]);
    assert_eq!(l, [1.0, -4.0, 1.0, 0.5, 0.0]);

    // Only the last `repeat_last_n` ids count.
    let mut s = Sampler::new(SamplerConfig {
        repeat_last_n: 1,
        ..c.clone()
    })
    .unwrap();
    let mut l = [2.0f32, -2.0];
    s.sample(&mut l, &[0, 1]);
    assert_eq!(l, [2.0, -4.0]);

    // The penalty changes the greedy choice.
    let mut s = Sampler::new(c.clone()).unwrap();
    assert_eq!(s.sample(&mut [2.0, 1.5], &[0]), 1);
    assert_eq!(s.sample(&mut [2.0, 1.5], &[]), 0);

    // Off when repeat_penalty == 1 or repeat_last_n == 0.
    for c in [
        SamplerConfig {
            repeat_penalty: 1.0,
            ..c.clone()
        },
        SamplerConfig {
            repeat_last_n: 0,
            ..c.clone()
        },
    ] {
        let mut s = Sampler::new(c).unwrap();
        let mut l = [2.0f32, -2.0];
        s.sample(&mut l, &[0, 1]);
        assert_eq!(l, [2.0, -2.0]);
    }
}

#[test]
fn nan_and_inf_logits() {
    let mut s = Sampler::new(cfg(1.0, 0, 1.0, 0.0)).unwrap();
    for _ in 0..2000 {
        let id = s.sample(&mut [f32::NAN, 0.0, f32::NAN, 0.5], &[]);
        assert!(id == 1 || id == 3);
    }
    let mut l = [f32::NAN, 1.0];
    s.sample(&mut l, &[]);
    assert_eq!(l[0], f32::NEG_INFINITY);
    // All NaN: no distribution; falls back to id 0 instead of panicking.
    assert_eq!(s.sample(&mut [f32::NAN, f32::NAN], &[]), 0);
    // +inf dominates.
    for _ in 0..100 {
        assert_eq!(s.sample(&mut [0.0, f32::INFINITY, 3.0], &[]), 1);
    }
}

fn run(seed: u64, steps: usize) -> Vec<u32> {
    let mut s = Sampler::new(SamplerConfig {
        seed,
        repeat_penalty: 1.1,
        ..SamplerConfig::default()
    })
    .unwrap();
    let mut rng = Pcg32::new(5, 5);
    let mut hist = vec![];
    for _ in 0..steps {
        let mut logits: Vec<f32> = (0..1000)
            .map(|_| (rng.next_f64() * 6.0 - 3.0) as f32)
            .collect();
        let id = s.sample(&mut logits, &hist);
        hist.push(id);
    }
    hist
}

#[test]
fn seed_reproducibility() {
    let a = run(42, 300);
    assert_eq!(a, run(42, 300));
    assert_ne!(a, run(43, 300));
    // Thread pools play no part: the same run inside 1- and 2-thread rayon pools.
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| run(42, 300)), a);
    }
    // reseed restarts the sequence.
    let mut s = Sampler::new(cfg(1.0, 0, 1.0, 0.0)).unwrap();
    let l = [0.0f32; 16];
    let first: Vec<u32> = (0..20).map(|_| s.sample(&mut l.clone(), &[])).collect();
    s.reseed(1);
    let again: Vec<u32> = (0..20).map(|_| s.sample(&mut l.clone(), &[])).collect();
    assert_eq!(first, again);
}

/// Pins the exact sequence for one seed so that a change of generator or chain is noticed.
#[test]
fn pinned_sequence() {
    let got = run(1234, 16);
    assert_eq!(got, PINNED);
}

// Recorded from this implementation (PCG32 stream 0x5EEDB17E, llama.cpp chain); a regression guard.
const PINNED: [u32; 16] = [
    646, 323, 590, 0, 380, 384, 671, 986, 135, 164, 803, 727, 282, 6, 245, 328,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sample_respects_truncation(
        logits in prop::collection::vec(-10.0f32..10.0, 1..64),
        top_k in 0usize..8,
        top_p in 0.05f32..=1.0,
        min_p in 0.0f32..=1.0,
        temperature in 0.0f32..3.0,
        seed in any::<u64>(),
    ) {
        let c = SamplerConfig { temperature, top_k, top_p, min_p, repeat_penalty: 1.0, repeat_last_n: 0, seed };
        let mut s = Sampler::new(c).unwrap();
        let dist = s.distribution(&mut logits.clone(), &[]);
        let id = s.sample(&mut logits.clone(), &[]);
        prop_assert!(dist.iter().any(|d| d.0 == id));
        let total: f64 = dist.iter().map(|d| d.1).sum();
        prop_assert!((total - 1.0).abs() < 1e-9);
        // The best token is always a candidate, and every candidate ranks within top-k and
        // has at least min_p of the best probability.
        let best = argmax(&logits);
        prop_assert!(dist.iter().any(|d| d.0 == best));
        if top_k > 0 {
            prop_assert!(dist.len() <= top_k);
        }
        let max = logits[best as usize];
        for d in &dist {
            let l = logits[d.0 as usize];
            let rank = logits.iter().enumerate().filter(|(j, &x)| x > l || (x == l && (*j as u32) < d.0)).count();
            if top_k > 0 {
                prop_assert!(rank < top_k);
            }
            if temperature > 0.0 {
                prop_assert!(f64::from(l - max).exp() >= f64::from(min_p) * (1.0 - 1e-6));
            }
        }
    }

    #[test]
    fn top_k_one_equals_greedy(logits in prop::collection::vec(-5.0f32..5.0, 1..40), t in 0.01f32..4.0, seed in any::<u64>()) {
        let mut a = Sampler::new(SamplerConfig { seed, ..cfg(t, 1, 1.0, 0.0) }).unwrap();
        let mut g = Sampler::new(SamplerConfig::greedy()).unwrap();
        prop_assert_eq!(a.sample(&mut logits.clone(), &[]), g.sample(&mut logits.clone(), &[]));
    }
}
