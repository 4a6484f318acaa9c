//! Golden tests of the whole model against transformers' reference (fixtures/tiny-bitnet,
//! see fixtures/README.md §4–6 for how the numbers were made).
//!
//! Tolerances, and why:
//! - W1.58A8 is discontinuous: a faithful f32 implementation with another summation order
//!   matches to ~1e-6, but an activation that lands on a rounding boundary can flip by one
//!   int8 step and move that position's and later positions' logits by up to ~1e-2. So
//!   every prompt must be within 3e-2 (max) and 1e-2 (median per position), and all prompts
//!   but one within 1e-4 everywhere (measured: HF bf16 ≤ 1.3e-6 on all three; I2_S and the
//!   packed directory ≤ 1.2e-6 on two, with one flip in `text_16`).
//! - Sources with another weight scale carry a systematic error: the packed checkpoint's
//!   bf16 `weight_scale` (0.036 in the fixture's own measurement) and TQ1_0/TQ2_0's f16 block
//!   scales. Those compare against their own reference (`packed_offline_f32`) or get a
//!   wider bound, stated at each call.
//! - Argmax must agree wherever the reference's top-1/top-2 gap exceeds twice the max bound.

use std::path::{Path, PathBuf};

use bitnet_core::quant::dense::DenseKind;
use bitnet_models::bitnet::{Logits, Model};
use bitnet_models::generate::{perplexity, Session};
use bitnet_models::kv_cache::KvDType;
use bitnet_models::load::{self, LoadOptions};
use bitnet_models::sampler::{Sampler, SamplerConfig};
use bitnet_models::tokenizer::Tokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

struct Prompt {
    name: String,
    ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    margins: Vec<f32>,
    packed_logits: Vec<f32>,
    /// Teacher-forced ids (prompt + greedy[..31]) and reference logits.
    tf_ids: Vec<u32>,
    tf_logits: Vec<f32>,
}

fn golden() -> Vec<Prompt> {
    let dir = fixtures().join("tiny-bitnet");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let tf = std::fs::read(dir.join("golden_teacher_forced.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&tf).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        let mut out = Vec::new();
        for r in v.as_array().unwrap() {
            match r.as_array() {
                Some(row) => out.extend(row.iter().map(|x| x.as_f64().unwrap() as f32)),
                None => out.push(r.as_f64().unwrap() as f32),
            }
        }
        out
    };
    g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let name = p["name"].as_str().unwrap().to_string();
            let tids = st.tensor(&format!("{name}.ids")).unwrap();
            let tf_ids = tids
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
                .collect();
            let tl = st.tensor(&format!("{name}.logits")).unwrap();
            let tf_logits = tl
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            Prompt {
                ids: ids(&p["ids"]),
                greedy_ids: ids(&p["greedy_ids"]),
                margins: floats(&p["greedy_margin_top1_top2"]),
                packed_logits: floats(&p["packed_offline_f32"]["logits"]),
                tf_ids,
                tf_logits,
                name,
            }
        })
        .collect()
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

fn top2_gap(x: &[f32]) -> f32 {
    let a = argmax(x);
    let second = x
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != a)
        .map(|(_, &v)| v)
        .fold(f32::NEG_INFINITY, f32::max);
    x[a] - second
}

/// Compare logits row by row against loose bounds (max and per-position median |Δ|)
/// and argmax wherever the reference margin is clear; returns the overall max |Δ|.
fn compare(
    what: &str,
    got: &[f32],
    want: &[f32],
    vocab: usize,
    median_tol: f32,
    max_tol: f32,
) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: logits length");
    let mut worst_max = 0.0f32;
    let mut worst_median = 0.0f32;
    for (pos, (g, w)) in got
        .chunks_exact(vocab)
        .zip(want.chunks_exact(vocab))
        .enumerate()
    {
        let mut d: Vec<f32> = g.iter().zip(w).map(|(a, b)| (a - b).abs()).collect();
        let max = d.iter().cloned().fold(0.0, f32::max);
        d.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = d[d.len() / 2];
        worst_max = worst_max.max(max);
        worst_median = worst_median.max(median);
        assert!(
            max <= max_tol,
            "{what}: position {pos}: max |Δlogit| {max} > {max_tol}"
        );
        assert!(
            median <= median_tol,
            "{what}: position {pos}: median |Δlogit| {median} > {median_tol}"
        );
        if top2_gap(w) > 2.0 * max_tol {
            assert_eq!(
                argmax(g),
                argmax(w),
                "{what}: position {pos}: argmax differs with a clear reference margin"
            );
        }
    }
    eprintln!("{what}: max |Δ| {worst_max:.3e}, worst median |Δ| {worst_median:.3e}");
    worst_max
}

/// An exact-scale source: every prompt within the loose bounds, and all but at most one
/// prompt (an int8 rounding flip moves one prompt's later positions by ~1e-2) within 1e-4
/// everywhere — a faithful f32 implementation lands at ~1e-6.
fn assert_faithful(what: &str, maxima: &[f32]) {
    let tight = maxima.iter().filter(|&&m| m <= 1e-4).count();
    assert!(
        tight + 1 >= maxima.len(),
        "{what}: only {tight} of {} prompts within 1e-4: {maxima:?}",
        maxima.len()
    );
}

fn logits_all(model: &Model, ids: &[u32], kv: KvDType) -> Vec<f32> {
    let mut s = Session::new(model, ids.len(), kv);
    s.feed(ids, Logits::All).unwrap()
}

fn load_model(rel: &str) -> Model {
    load::load(&fixtures().join(rel), LoadOptions::default())
        .unwrap()
        .model
}

#[test]
fn hf_bf16_directory_matches_reference_logits() {
    let model = load_model("tiny-bitnet");
    let maxima: Vec<f32> = golden()
        .iter()
        .map(|p| {
            let got = logits_all(&model, &p.tf_ids, KvDType::F32);
            compare(
                &format!("hf bf16 {}", p.name),
                &got,
                &p.tf_logits,
                1024,
                1e-2,
                3e-2,
            )
        })
        .collect();
    assert_faithful("hf bf16", &maxima);
}

#[test]
fn hf_bf16_directory_with_f16_kv_cache() {
    // The f16 cache rounds keys and values to 11 bits; after the next int8 quantization
    // that is a systematic error, measured at median ~8e-3 and max ~4e-2 per position.
    let model = load_model("tiny-bitnet");
    for p in golden() {
        let got = logits_all(&model, &p.tf_ids, KvDType::F16);
        compare(
            &format!("hf bf16, f16 KV {}", p.name),
            &got,
            &p.tf_logits,
            1024,
            1.5e-2,
            6e-2,
        );
    }
}

#[test]
fn hf_packed_directory_matches_packed_reference() {
    let model = load_model("tiny-bitnet-packed");
    let maxima: Vec<f32> = golden()
        .iter()
        .map(|p| {
            let got = logits_all(&model, &p.ids, KvDType::F32);
            compare(
                &format!("hf packed {}", p.name),
                &got,
                &p.packed_logits,
                1024,
                1e-2,
                3e-2,
            )
        })
        .collect();
    assert_faithful("hf packed", &maxima);
}

#[test]
fn gguf_files_match_reference_logits() {
    // I2_S keeps the f32 scale mean|W| and the f16 embeddings hold the bf16 values
    // exactly: the same model as the reference, so it must be faithful.
    // TQ2_0/TQ1_0 round the scale to f16 (relative error ≤ 2^-11): a systematic error,
    // measured at median ~7e-3 and max ~3.4e-2 (amplified by int8 rounding flips).
    for (file, median, max, faithful) in [
        ("tiny-bitnet/gguf/tiny-bitnet-i2_s.gguf", 1e-2, 3e-2, true),
        ("tiny-bitnet/gguf/tiny-bitnet-tq2_0.gguf", 1e-2, 6e-2, false),
        ("tiny-bitnet/gguf/tiny-bitnet-tq1_0.gguf", 1e-2, 6e-2, false),
    ] {
        let model = load_model(file);
        let maxima: Vec<f32> = golden()
            .iter()
            .map(|p| {
                let got = logits_all(&model, &p.tf_ids, KvDType::F32);
                compare(
                    &format!("{file} {}", p.name),
                    &got,
                    &p.tf_logits,
                    1024,
                    median,
                    max,
                )
            })
            .collect();
        if faithful {
            assert_faithful(file, &maxima);
        }
    }
}

#[test]
fn greedy_continuations_match_where_the_margin_is_clear() {
    let model = load_model("tiny-bitnet");
    for p in golden() {
        let mut s = Session::new(&model, 512, KvDType::F32);
        let mut sampler = Sampler::new(SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        })
        .unwrap();
        let g = s
            .generate(&p.ids, 32, &mut sampler, &|_| false, &mut |_| true)
            .unwrap();
        // Up to the first step whose reference margin is below 2e-3, every token must agree:
        // on this path the teacher-forced logits are within 1.3e-6 of the reference at every
        // position (test above), so such a margin is > 1000× the observed error. The
        // fixture's smallest margins (2.4e-3, 9.8e-3, 5.7e-3) are above it: all 32 steps count.
        let clear = p.margins.iter().position(|&m| m < 2e-3).unwrap_or(32);
        assert_eq!(
            g.ids[..clear],
            p.greedy_ids[..clear],
            "{}: greedy ids",
            p.name
        );
        eprintln!(
            "{}: {clear} clear steps agree; all 32 equal: {}",
            p.name,
            g.ids == p.greedy_ids
        );
    }
}

#[test]
fn perplexity_is_within_one_percent_of_reference() {
    // bitnetcpp.json: hf_reference_ppl.ppl_on_hf_tokens = 1076.2471 (n_ctx 128, HF tokens).
    let dir = fixtures().join("tiny-bitnet");
    let model = load_model("tiny-bitnet");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let text = std::fs::read_to_string(dir.join("gguf/ppl.txt")).unwrap();
    let tokens = tok.encode(&text, true).unwrap();
    let mut s = Session::new(&model, 128, KvDType::F32);
    let r = perplexity(&mut s, &tokens, 128, tok.bos_id(), None, &mut |_, _| {}).unwrap();
    let want = 1076.2471;
    assert!(
        (r.ppl - want).abs() / want < 0.01,
        "ppl {} vs {want}",
        r.ppl
    );
    assert_eq!(r.chunks, 15);
    eprintln!(
        "perplexity {:.4} (reference {want}), {} tokens scored",
        r.ppl, r.scored
    );
}

#[test]
fn every_kernel_layout_gives_the_same_logits() {
    // The engine's two ternary layouts hold the same trits: logits must be identical.
    let p = &golden()[2];
    let dir = fixtures().join("tiny-bitnet");
    let a = load::load(
        &dir,
        LoadOptions {
            layout: bitnet_core::quant::ternary::TernaryLayout::I2S,
            ..LoadOptions::default()
        },
    )
    .unwrap()
    .model;
    let b = load::load(
        &dir,
        LoadOptions {
            layout: bitnet_core::quant::ternary::TernaryLayout::T1,
            ..LoadOptions::default()
        },
    )
    .unwrap()
    .model;
    assert_eq!(
        logits_all(&a, &p.tf_ids, KvDType::F32),
        logits_all(&b, &p.tf_ids, KvDType::F32)
    );
}

#[test]
fn lm_head_quantized_at_load_stays_close_to_the_reference() {
    // The I2_S file's f16 head quantized at load (`--lm-head-type`): the head's weights move
    // by up to half a quantization step (Q8_0: max|w|/254 per 32, Q6_K: ~1/64 of a group's
    // range) and the activations are quantized for the integer dot products, so the logits
    // carry a systematic error: measured max |Δ| 1.1–1.4e-2 and median ≤ 2.8e-3 (Q8_0),
    // 2.7–2.9e-2 and ≤ 5.1e-3 (Q6_K) over the three prompts; the bounds are twice that.
    let path = fixtures().join("tiny-bitnet/gguf/tiny-bitnet-i2_s.gguf");
    for (kind, median, max) in [
        (DenseKind::Q8_0, 6e-3, 3e-2),
        (DenseKind::Q6K, 1.2e-2, 6e-2),
    ] {
        let opts = LoadOptions {
            head: Some(kind),
            ..LoadOptions::default()
        };
        let loaded = load::load(&path, opts).unwrap();
        assert_eq!(loaded.model.head().kind(), kind);
        assert_eq!(loaded.model.embed.kind(), DenseKind::F16, "embeddings kept");
        assert!(
            loaded.notes.iter().any(|n| n.contains("LM head quantized")),
            "{:?}",
            loaded.notes
        );
        for p in golden() {
            let got = logits_all(&loaded.model, &p.tf_ids, KvDType::F32);
            compare(
                &format!("{kind:?} head {}", p.name),
                &got,
                &p.tf_logits,
                1024,
                median,
                max,
            );
        }
    }
}
