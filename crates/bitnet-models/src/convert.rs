//! Write a loaded model as a GGUF file that bitnet.cpp and llama.cpp can read: arch
//! `bitnet-25`, hyper-parameters and tokenizer as bitnet.cpp's converter writes them (plus
//! `tokenizer.ggml.pre = "llama-bpe"` when the tokenizer uses the Llama-3 split, which
//! bitnet.cpp's converter forgets), ternary projections in I2_S, TQ2_0 or TQ1_0.

use std::path::Path;

use bitnet_core::quant::dense::DenseMatrix;
use bitnet_core::quant::{i2s, q6_k, q8_0, tq1_0, tq2_0};
use half::f16;

use crate::bitnet::Model;
use crate::gguf::{GgmlType, Value, ValueType};
use crate::gguf_write::GgufWriter;
use crate::names::{gguf_keys as keys, Slot, GGUF_ARCH_WRITE};
use crate::tokenizer::{GgufVocab, Tokenizer};
use crate::{Error, Result};

/// The Llama-3 pre-tokenizer split regex (as in Meta's tokenizer.json).
pub const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Storage type of the ternary projections in the output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TernaryType {
    I2S,
    TQ2_0,
    TQ1_0,
}

impl std::str::FromStr for TernaryType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "i2_s" | "i2s" => Ok(TernaryType::I2S),
            "tq2_0" => Ok(TernaryType::TQ2_0),
            "tq1_0" => Ok(TernaryType::TQ1_0),
            _ => Err(Error::InvalidArgument(format!(
                "unknown ternary type `{s}` (expected i2_s, tq2_0 or tq1_0)"
            ))),
        }
    }
}

/// Storage type of the embeddings and an untied LM head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseType {
    F32,
    F16,
    Q8_0,
    Q6K,
}

impl std::str::FromStr for DenseType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(DenseType::F32),
            "f16" => Ok(DenseType::F16),
            "q8_0" => Ok(DenseType::Q8_0),
            "q6_k" | "q6k" => Ok(DenseType::Q6K),
            _ => Err(Error::InvalidArgument(format!(
                "unknown embedding type `{s}` (expected f32, f16, q8_0 or q6_k)"
            ))),
        }
    }
}

fn strings(v: &[String]) -> Value {
    Value::Array(
        ValueType::String,
        v.iter().map(|s| Value::String(s.clone())).collect(),
    )
}

/// The tokenizer.ggml.* view of a Hugging Face tokenizer.json: tokens by id, token types
/// (3 = control for special added tokens, 4 = user-defined for other added tokens),
/// merges as "a b", and whether the split regex is Llama-3's.
pub fn vocab_from_tokenizer_json(path: &Path) -> Result<(GgufVocab, bool)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let j: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))?;
    let bad = |m: &str| Error::bad_file(path, m.to_string());
    let model = &j["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(bad("only BPE tokenizers can be written to GGUF"));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object"))?;
    let mut entries: Vec<(u32, String, i32)> = vocab
        .iter()
        .filter_map(|(t, id)| id.as_u64().map(|id| (id as u32, t.clone(), 1)))
        .collect();
    if let Some(added) = j["added_tokens"].as_array() {
        for a in added {
            let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
                return Err(bad("added_tokens entry without id or content"));
            };
            let ty = if a["special"].as_bool().unwrap_or(false) {
                3
            } else {
                4
            };
            entries.retain(|e| e.0 != id as u32);
            entries.push((id as u32, content.to_string(), ty));
        }
    }
    entries.sort_by_key(|e| e.0);
    let n = entries.last().map_or(0, |e| e.0 as usize + 1);
    let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
    let mut types = vec![5i32; n]; // 5 = unused
    for (id, t, ty) in entries {
        tokens[id as usize] = t;
        types[id as usize] = ty;
    }
    let merges: Vec<String> = match model["merges"].as_array() {
        Some(m) => m
            .iter()
            .map(|x| match x {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Array(p) if p.len() == 2 => Ok(format!(
                    "{} {}",
                    p[0].as_str().unwrap_or_default(),
                    p[1].as_str().unwrap_or_default()
                )),
                _ => Err(bad("a merge is neither \"a b\" nor [a, b]")),
            })
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let llama3 = split_regex(&j["pre_tokenizer"]).as_deref() == Some(LLAMA3_SPLIT);
    Ok((
        GgufVocab {
            model: "gpt2".into(),
            pre: llama3.then(|| "llama-bpe".to_string()),
            tokens,
            token_types: types,
            merges,
            ..Default::default()
        },
        llama3,
    ))
}

/// The GGUF vocabulary of a Hugging Face tokenizer: `path` is a tokenizer.json file or a
/// directory holding one. Special ids, `add_bos_token` and the chat template come from the
/// configs beside it, as [`Tokenizer::from_file`] reads them.
pub fn vocab_from_hf(path: &Path) -> Result<GgufVocab> {
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    };
    if !file.is_file() {
        return Err(Error::bad_file(path, "no tokenizer.json here"));
    }
    let mut v = vocab_from_tokenizer_json(&file)?.0;
    let t = Tokenizer::from_file(&file)?;
    v.bos = t.bos_id();
    v.eos = t.eos_id();
    v.eot = t.eot_id();
    v.add_bos = Some(t.add_bos());
    v.chat_template = t.chat_template().map(String::from);
    Ok(v)
}

/// The regex of the first `Split` pre-tokenizer (possibly inside a `Sequence`).
fn split_regex(v: &serde_json::Value) -> Option<String> {
    match v["type"].as_str()? {
        "Split" => v["pattern"]["Regex"].as_str().map(String::from),
        "Sequence" => v["pretokenizers"].as_array()?.iter().find_map(split_regex),
        _ => None,
    }
}

/// Rows of a dense matrix as f32 (to re-quantize into another type).
fn dense_f32(m: &DenseMatrix) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; m.rows() * m.cols()];
    for (r, row) in out.chunks_exact_mut(m.cols()).enumerate() {
        m.row_f32(r, row)?;
    }
    Ok(out)
}

fn dense_tensor(w: &mut GgufWriter, name: &str, m: &DenseMatrix, ty: DenseType) -> Result<()> {
    let (rows, cols) = (m.rows(), m.cols());
    let x = dense_f32(m)?;
    // K-quants need rows that are a multiple of 256 (Q8_0: 32); fall back to F16 otherwise.
    let ty = match ty {
        DenseType::Q6K if cols % 256 != 0 => DenseType::F16,
        DenseType::Q8_0 if cols % 32 != 0 => DenseType::F16,
        t => t,
    };
    let dims = [cols as u64, rows as u64];
    match ty {
        DenseType::F32 => w.add_tensor(
            name,
            &dims,
            GgmlType::F32,
            x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        )?,
        DenseType::F16 => w.add_tensor(
            name,
            &dims,
            GgmlType::F16,
            x.iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect::<Vec<u8>>(),
        )?,
        DenseType::Q8_0 => {
            w.add_tensor(name, &dims, GgmlType::Q8_0, q8_0::quantize(&x, rows, cols)?)?
        }
        DenseType::Q6K => {
            w.add_tensor(name, &dims, GgmlType::Q6_K, q6_k::quantize(&x, rows, cols)?)?
        }
    };
    Ok(())
}

/// `v` with as many tokens as the model has embedding rows: llama.cpp takes the vocabulary
/// size from the token list. Missing ids (a vocabulary padded for the embedding's shape)
/// become unused `[PADi]` tokens, as llama.cpp's converter writes them; more tokens than
/// rows is an error.
fn fit_vocab(v: &GgufVocab, rows: usize) -> Result<std::borrow::Cow<'_, GgufVocab>> {
    use std::borrow::Cow;
    let n = v.tokens.len();
    if n > rows {
        return Err(Error::InvalidArgument(format!(
            "the tokenizer has {n} tokens but the model's embeddings have {rows} rows"
        )));
    }
    if n == rows {
        return Ok(Cow::Borrowed(v));
    }
    let mut p = v.clone();
    p.tokens.extend((n..rows).map(|i| format!("[PAD{i}]")));
    if !p.token_types.is_empty() {
        p.token_types.resize(rows, 5);
    }
    Ok(Cow::Owned(p))
}

/// Build the GGUF image of `model` (with the tokenizer vocabulary, if any).
pub fn to_gguf(
    model: &Model,
    name: &str,
    vocab: Option<&GgufVocab>,
    tern: TernaryType,
    embed: DenseType,
) -> Result<GgufWriter> {
    let c = &model.config;
    let mut w = GgufWriter::new();
    let a = GGUF_ARCH_WRITE;
    let key = |k: &str| format!("{a}.{k}");
    w.add_kv("general.architecture", Value::String(a.into()))?;
    w.add_kv("general.name", Value::String(name.into()))?;
    w.add_kv(key(keys::VOCAB_SIZE), Value::U32(c.vocab_size as u32))?;
    w.add_kv(key(keys::CONTEXT_LENGTH), Value::U32(c.max_ctx as u32))?;
    w.add_kv(key(keys::EMBEDDING_LENGTH), Value::U32(c.hidden as u32))?;
    w.add_kv(key(keys::BLOCK_COUNT), Value::U32(c.n_layers as u32))?;
    w.add_kv(
        key(keys::FEED_FORWARD_LENGTH),
        Value::U32(c.intermediate as u32),
    )?;
    w.add_kv(key(keys::ROPE_DIMS), Value::U32(c.head_dim as u32))?;
    w.add_kv(key(keys::HEAD_COUNT), Value::U32(c.n_heads as u32))?;
    w.add_kv(key(keys::HEAD_COUNT_KV), Value::U32(c.n_kv_heads as u32))?;
    w.add_kv(key(keys::RMS_EPS), Value::F32(c.rms_eps))?;
    w.add_kv(key(keys::ROPE_FREQ_BASE), Value::F32(c.rope_theta))?;
    if let Some(v) = vocab {
        let v = &fit_vocab(v, c.vocab_size)?;
        w.add_kv("tokenizer.ggml.model", Value::String(v.model.clone()))?;
        if let Some(p) = &v.pre {
            w.add_kv("tokenizer.ggml.pre", Value::String(p.clone()))?;
        }
        w.add_kv("tokenizer.ggml.tokens", strings(&v.tokens))?;
        if !v.token_types.is_empty() {
            w.add_kv(
                "tokenizer.ggml.token_type",
                Value::Array(
                    ValueType::I32,
                    v.token_types.iter().map(|&t| Value::I32(t)).collect(),
                ),
            )?;
        }
        w.add_kv("tokenizer.ggml.merges", strings(&v.merges))?;
        for (k, id) in [
            ("tokenizer.ggml.bos_token_id", v.bos),
            ("tokenizer.ggml.eos_token_id", v.eos),
            ("tokenizer.ggml.eot_token_id", v.eot),
        ] {
            if let Some(id) = id {
                w.add_kv(k, Value::U32(id))?;
            }
        }
        if let Some(b) = v.add_bos {
            w.add_kv("tokenizer.ggml.add_bos_token", Value::Bool(b))?;
        }
        if let Some(t) = &v.chat_template {
            w.add_kv("tokenizer.chat_template", Value::String(t.clone()))?;
        }
    }
    dense_tensor(&mut w, &Slot::Embed.gguf_name(0), &model.embed, embed)?;
    if let Some(h) = &model.lm_head {
        dense_tensor(&mut w, &Slot::Output.gguf_name(0), h, embed)?;
    }
    let f32s = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    for (i, l) in model.layers.iter().enumerate() {
        w.add_tensor(
            Slot::AttnNorm.gguf_name(i),
            &[l.attn_norm.len() as u64],
            GgmlType::F32,
            f32s(&l.attn_norm),
        )?;
        let projs = [
            (Slot::Q, &l.q),
            (Slot::K, &l.k),
            (Slot::V, &l.v),
            (Slot::O, &l.o),
            (Slot::Gate, &l.gate),
            (Slot::Up, &l.up),
            (Slot::Down, &l.down),
        ];
        for (slot, p) in projs {
            let m = &p.weight;
            let (rows, cols) = (m.rows(), m.cols());
            let trits = m.to_trits();
            let dims = [cols as u64, rows as u64];
            let name = slot.gguf_name(i);
            match tern {
                TernaryType::I2S => w.add_tensor(
                    name,
                    &dims,
                    GgmlType::I2_S,
                    i2s::pack_with_scale(&trits, rows, cols, m.scale()),
                )?,
                TernaryType::TQ2_0 | TernaryType::TQ1_0 => {
                    if cols % 256 != 0 {
                        return Err(Error::InvalidArgument(format!(
                            "{name}: rows of {cols} weights do not fit 256-weight {tern:?} blocks"
                        )));
                    }
                    let scales = vec![m.scale(); rows * cols / 256];
                    if tern == TernaryType::TQ2_0 {
                        w.add_tensor(
                            name,
                            &dims,
                            GgmlType::TQ2_0,
                            tq2_0::from_trits_and_scales(&trits, &scales)?,
                        )?
                    } else {
                        w.add_tensor(
                            name,
                            &dims,
                            GgmlType::TQ1_0,
                            tq1_0::from_trits_and_scales(&trits, &scales)?,
                        )?
                    }
                }
            };
        }
        w.add_tensor(
            Slot::AttnSubNorm.gguf_name(i),
            &[l.attn_sub_norm.len() as u64],
            GgmlType::F32,
            f32s(&l.attn_sub_norm),
        )?;
        w.add_tensor(
            Slot::FfnNorm.gguf_name(i),
            &[l.ffn_norm.len() as u64],
            GgmlType::F32,
            f32s(&l.ffn_norm),
        )?;
        w.add_tensor(
            Slot::FfnSubNorm.gguf_name(i),
            &[l.ffn_sub_norm.len() as u64],
            GgmlType::F32,
            f32s(&l.ffn_sub_norm),
        )?;
    }
    w.add_tensor(
        Slot::OutputNorm.gguf_name(0),
        &[model.norm.len() as u64],
        GgmlType::F32,
        f32s(&model.norm),
    )?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_vocabulary_is_padded_and_a_long_one_refused() {
        let v = GgufVocab {
            model: "gpt2".into(),
            tokens: vec!["a".into(), "b".into()],
            token_types: vec![1, 3],
            ..Default::default()
        };
        let p = fit_vocab(&v, 4).unwrap();
        assert_eq!(p.tokens, ["a", "b", "[PAD2]", "[PAD3]"]);
        assert_eq!(p.token_types, [1, 3, 5, 5]);
        assert!(matches!(
            fit_vocab(&v, 2).unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
        let e = fit_vocab(&v, 1).unwrap_err().to_string();
        assert!(e.contains("2 tokens") && e.contains("1 rows"), "{e}");
    }
}
