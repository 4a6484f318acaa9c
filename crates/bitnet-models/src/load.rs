//! Open a model from a path: a GGUF file or a Hugging Face directory. GGUF tensors stay in
//! the memory map where the engine can run them as stored (I2_S); other ternary types are
//! repacked once into the engine's layout.

use std::path::Path;

use bitnet_core::nn::bitlinear::BitLinear;
use bitnet_core::nn::rope::RopeStyle;
use bitnet_core::quant::dense::{DenseKind, DenseMatrix};
use bitnet_core::quant::ternary::{TernaryLayout, TernaryMatrix};
use bitnet_core::quant::{absmean, i2s, tq1_0, tq2_0};
use half::{bf16, f16};

use crate::bitnet::{Config, Layer, Model};
use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use crate::names::{gguf_keys as keys, Slot, GGUF_ARCHS};
use crate::tokenizer::{GgufVocab, Tokenizer};
use crate::{Error, Result};

pub use crate::hf::LoadOptions;

/// A loaded model with its tokenizer and what the loader noticed.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
    /// "GGUF (I2_S)", "Hugging Face directory (packed)", ...
    pub kind: String,
    /// Things worth telling the user (workarounds applied, missing optional parts).
    pub notes: Vec<String>,
}

/// Load a GGUF file or a Hugging Face directory, then apply `opts.head`.
pub fn load(path: &Path, opts: LoadOptions) -> Result<Loaded> {
    let mut loaded = load_as_stored(path, opts)?;
    if let Some(kind) = opts.head {
        let note = quantize_head(&mut loaded.model, kind, path)?;
        loaded.notes.push(note);
    }
    Ok(loaded)
}

/// Quantize a float LM head to `kind` (a tied head gets its own copy; the embeddings stay
/// as stored). Returns what was done, for the user.
pub fn quantize_head(model: &mut Model, kind: DenseKind, path: &Path) -> Result<String> {
    let head = model.head();
    let from = head.kind();
    if !from.is_float() {
        return Ok(format!(
            "the LM head is already {from:?}; kept as stored (the head type applies to float heads)"
        ));
    }
    let t0 = std::time::Instant::now();
    let q = head.requantize(kind).map_err(|e| {
        Error::bad_model(
            path,
            format!("cannot quantize the LM head to {kind:?}: {e}"),
        )
    })?;
    let note = format!(
        "LM head quantized at load: {from:?} {:.0} MiB → {kind:?} {:.0} MiB in {:.1} s",
        head.nbytes() as f64 / (1 << 20) as f64,
        q.nbytes() as f64 / (1 << 20) as f64,
        t0.elapsed().as_secs_f64()
    );
    model.lm_head = Some(q);
    Ok(note)
}

fn load_as_stored(path: &Path, opts: LoadOptions) -> Result<Loaded> {
    if path.is_dir() {
        let model = crate::hf::load(path, opts)?;
        let mut notes = Vec::new();
        let tokenizer = if path.join("tokenizer.json").exists() {
            Some(Tokenizer::from_dir(path)?)
        } else {
            notes.push("no tokenizer.json: pass prompts as token ids".into());
            None
        };
        let packed = crate::hf::HfConfig::read(&path.join("config.json"))?.is_packed();
        let kind = format!(
            "Hugging Face directory ({})",
            if packed {
                "packed ternary"
            } else {
                "master weights, ternarized at load"
            }
        );
        return Ok(Loaded {
            model,
            tokenizer,
            kind,
            notes,
        });
    }
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    if is_gguf(path)? {
        return load_gguf(path, opts);
    }
    Err(Error::bad_file(
        path,
        "not a GGUF file (bad magic) and not a directory: expected a .gguf file or a Hugging Face model directory",
    ))
}

fn is_gguf(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"GGUF"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// The tokenizer of a model path: a GGUF file (from its metadata), a directory with
/// tokenizer.json, or a tokenizer.json file.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        if !path.join("tokenizer.json").exists() {
            return Err(Error::bad_model(
                path,
                "no tokenizer.json in this directory",
            ));
        }
        return Tokenizer::from_dir(path);
    }
    if is_gguf(path)? {
        let g = GgufFile::open(path)?;
        return Tokenizer::from_gguf_vocab(&gguf_vocab(&g)?)
            .map_err(|e| Error::bad_file(path, e.to_string()));
    }
    Tokenizer::from_file(path)
}

/// The `tokenizer.ggml.*` metadata of a GGUF file.
pub fn gguf_vocab(g: &GgufFile) -> Result<GgufVocab> {
    let opt_u32 = |k: &str| g.get(k).and_then(|v| v.as_u32());
    Ok(GgufVocab {
        model: g.get_str("tokenizer.ggml.model")?.to_string(),
        pre: g
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .map(String::from),
        tokens: g
            .get_str_array("tokenizer.ggml.tokens")?
            .into_iter()
            .map(String::from)
            .collect(),
        token_types: if g.get("tokenizer.ggml.token_type").is_some() {
            g.get_i32_array("tokenizer.ggml.token_type")?
        } else {
            Vec::new()
        },
        merges: if g.get("tokenizer.ggml.merges").is_some() {
            g.get_str_array("tokenizer.ggml.merges")?
                .into_iter()
                .map(String::from)
                .collect()
        } else {
            Vec::new()
        },
        bos: opt_u32("tokenizer.ggml.bos_token_id"),
        eos: opt_u32("tokenizer.ggml.eos_token_id"),
        eot: opt_u32("tokenizer.ggml.eot_token_id"),
        add_bos: g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool()),
        chat_template: g
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .map(String::from),
    })
}

/// Hyper-parameters from GGUF metadata.
pub fn gguf_config(g: &GgufFile) -> Result<Config> {
    let arch = g.architecture()?;
    if !GGUF_ARCHS.contains(&arch) {
        return Err(Error::bad_model(
            &g.path,
            format!("architecture `{arch}` is not supported (expected one of {GGUF_ARCHS:?})"),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = g.get_u32(&key(keys::EMBEDDING_LENGTH))? as usize;
    let n_heads = g.get_u32(&key(keys::HEAD_COUNT))? as usize;
    if n_heads == 0 {
        return Err(Error::bad_model(&g.path, "attention.head_count is 0"));
    }
    let n_kv_heads = match g.get(&key(keys::HEAD_COUNT_KV)) {
        Some(_) => g.get_u32(&key(keys::HEAD_COUNT_KV))? as usize,
        None => n_heads,
    };
    let embed = g
        .tensor(&Slot::Embed.gguf_name(0))
        .ok_or_else(|| Error::bad_model(&g.path, "missing tensor token_embd.weight"))?;
    let vocab_size = match g.get(&key(keys::VOCAB_SIZE)) {
        Some(_) => g.get_u32(&key(keys::VOCAB_SIZE))? as usize,
        None => embed.rows_cols().0,
    };
    let opt_f32 = |k: &str, d: f32| -> Result<f32> {
        match g.get(&key(k)) {
            Some(_) => g.get_f32(&key(k)),
            None => Ok(d),
        }
    };
    let opt = |k: &str| g.get(k).and_then(|v| v.as_u32());
    Ok(Config {
        vocab_size,
        hidden,
        intermediate: g.get_u32(&key(keys::FEED_FORWARD_LENGTH))? as usize,
        n_layers: g.get_u32(&key(keys::BLOCK_COUNT))? as usize,
        n_heads,
        n_kv_heads,
        head_dim: hidden / n_heads,
        rms_eps: opt_f32(keys::RMS_EPS, 1e-5)?,
        rope_theta: opt_f32(keys::ROPE_FREQ_BASE, 10000.0)?,
        max_ctx: match g.get(&key(keys::CONTEXT_LENGTH)) {
            Some(_) => g.get_u32(&key(keys::CONTEXT_LENGTH))? as usize,
            None => 2048,
        },
        bos: opt("tokenizer.ggml.bos_token_id"),
        eos: opt("tokenizer.ggml.eos_token_id"),
    })
}

fn tensor<'g>(g: &'g GgufFile, name: &str) -> Result<&'g TensorInfo> {
    g.tensor(name)
        .ok_or_else(|| Error::bad_model(&g.path, format!("missing tensor `{name}`")))
}

fn check_dims(g: &GgufFile, t: &TensorInfo, rows: usize, cols: usize) -> Result<()> {
    let want: Vec<u64> = if rows == 1 {
        vec![cols as u64]
    } else {
        vec![cols as u64, rows as u64]
    };
    if t.dims != want {
        return Err(Error::bad_model(
            &g.path,
            format!(
                "tensor `{}` has dims {:?}, expected {want:?}",
                t.name, t.dims
            ),
        ));
    }
    Ok(())
}

/// Float values of an F32/F16/BF16 tensor.
fn floats(g: &GgufFile, t: &TensorInfo) -> Result<Vec<f32>> {
    let b = g.tensor_data(t)?;
    Ok(match t.ggml_type {
        GgmlType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        GgmlType::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        GgmlType::BF16 => b
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::bad_model(
                &g.path,
                format!(
                    "tensor `{}` has type {other}, expected F32, F16 or BF16",
                    t.name
                ),
            ))
        }
    })
}

fn dense(g: &GgufFile, t: &TensorInfo, rows: usize, cols: usize) -> Result<DenseMatrix> {
    check_dims(g, t, rows, cols)?;
    let b = g.tensor_data(t)?;
    let m = match t.ggml_type {
        GgmlType::F32 => DenseMatrix::from_f32_bytes(b, rows, cols),
        GgmlType::F16 => DenseMatrix::from_f16_bytes(b, rows, cols),
        GgmlType::BF16 => DenseMatrix::from_bf16_bytes(b, rows, cols),
        GgmlType::Q8_0 => DenseMatrix::from_q8_0_bytes(b, rows, cols),
        GgmlType::Q6_K => DenseMatrix::from_q6k_bytes(b, rows, cols),
        other => {
            return Err(Error::bad_model(
                &g.path,
                format!("tensor `{}` has type {other}, which is not supported for embeddings or the LM head", t.name),
            ))
        }
    };
    m.map_err(|e| Error::bad_model(&g.path, format!("tensor `{}`: {e}", t.name)))
}

/// One scale for a tensor whose blocks carry their own (TQ1_0/TQ2_0): BitNet weights have
/// one scale per tensor, so every non-zero block must agree.
fn uniform_scale(
    g: &GgufFile,
    name: &str,
    trits: &[i8],
    scales: &[f32],
    block: usize,
) -> Result<f32> {
    let mut scale = None;
    for (b, &s) in scales.iter().enumerate() {
        if trits[b * block..(b + 1) * block].iter().all(|&q| q == 0) {
            continue;
        }
        match scale {
            None => scale = Some(s),
            Some(s0) if s0 == s => {}
            Some(s0) => {
                return Err(Error::bad_model(
                    &g.path,
                    format!(
                        "tensor `{name}`: block scales differ ({s0} and {s}); BitNet b1.58 weights have one scale per tensor"
                    ),
                ))
            }
        }
    }
    Ok(scale.unwrap_or(absmean::EPS))
}

/// Trits and scale of a float tensor that should already be ternary ({-a, 0, a}, as
/// bitnet.cpp's F32/F16 conversions store it); otherwise ternarize with absmean.
fn ternarize_floats(w: &[f32]) -> (Vec<i8>, f32) {
    let a = w.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
    if a > 0.0 && w.iter().all(|&x| x == 0.0 || x.abs() == a) {
        let q = w
            .iter()
            .map(|&x| {
                if x == 0.0 {
                    0
                } else if x > 0.0 {
                    1
                } else {
                    -1
                }
            })
            .collect();
        return (q, a);
    }
    let mut q = vec![0i8; w.len()];
    let s = absmean::ternarize(w, &mut q);
    (q, s)
}

fn ternary(
    g: &GgufFile,
    t: &TensorInfo,
    rows: usize,
    cols: usize,
    layout: TernaryLayout,
) -> Result<BitLinear> {
    check_dims(g, t, rows, cols)?;
    let ctx =
        |e: bitnet_core::Error| Error::bad_model(&g.path, format!("tensor `{}`: {e}", t.name));
    let weight = match t.ggml_type {
        GgmlType::I2_S => {
            let data = g.tensor_data(t)?;
            let scale = i2s::read_scale(&data, rows, cols).map_err(ctx)?;
            let packed = data
                .slice(0..i2s::packed_bytes(rows, cols))
                .ok_or_else(|| {
                    Error::bad_model(
                        &g.path,
                        format!("tensor `{}` is shorter than its I2_S data", t.name),
                    )
                })?;
            let m = TernaryMatrix::from_i2s(packed, rows, cols, scale).map_err(ctx)?;
            if layout == TernaryLayout::I2S {
                m
            } else {
                m.to_layout(layout)
            }
        }
        GgmlType::TQ2_0 | GgmlType::TQ1_0 => {
            let data = g.tensor_data(t)?;
            let (trits, scales) = if t.ggml_type == GgmlType::TQ2_0 {
                tq2_0::to_trits_and_scales(&data, rows, cols)
            } else {
                tq1_0::to_trits_and_scales(&data, rows, cols)
            }
            .map_err(ctx)?;
            let scale = uniform_scale(g, &t.name, &trits, &scales, 256)?;
            TernaryMatrix::from_trits(&trits, rows, cols, scale, layout).map_err(ctx)?
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let (q, scale) = ternarize_floats(&floats(g, t)?);
            TernaryMatrix::from_trits(&q, rows, cols, scale, layout).map_err(ctx)?
        }
        other => {
            return Err(Error::bad_model(
                &g.path,
                format!(
                    "tensor `{}` has type {other}, which is not a ternary or float type",
                    t.name
                ),
            ))
        }
    };
    Ok(BitLinear { weight, bias: None })
}

/// Load a GGUF model.
pub fn load_gguf(path: &Path, opts: LoadOptions) -> Result<Loaded> {
    let g = GgufFile::open(path)?;
    let config = gguf_config(&g)?;
    config.validate(path)?;
    let c = &config;
    let mut notes = Vec::new();

    let embed = dense(
        &g,
        tensor(&g, &Slot::Embed.gguf_name(0))?,
        c.vocab_size,
        c.hidden,
    )?;
    // bitnet.cpp ignores an untied `output.weight`; we use it when present.
    let lm_head = match g.tensor(&Slot::Output.gguf_name(0)) {
        Some(t) => Some(dense(&g, t, c.vocab_size, c.hidden)?),
        None => None,
    };
    let vector = |slot: Slot, layer: usize, len: usize| -> Result<Vec<f32>> {
        let t = tensor(&g, &slot.gguf_name(layer))?;
        check_dims(&g, t, 1, len)?;
        floats(&g, t)
    };
    let proj = |slot: Slot, layer: usize, rows: usize, cols: usize| -> Result<BitLinear> {
        ternary(
            &g,
            tensor(&g, &slot.gguf_name(layer))?,
            rows,
            cols,
            opts.layout,
        )
    };
    let layers = (0..c.n_layers)
        .map(|i| Layer::load(c, i, &vector, &proj))
        .collect::<Result<Vec<_>>>()?;
    let norm = vector(Slot::OutputNorm, 0, c.hidden)?;
    let ternary_type = g
        .tensor(&Slot::Q.gguf_name(0))
        .map(|t| t.ggml_type.name())
        .unwrap_or("?");
    let tokenizer = match gguf_vocab(&g) {
        Ok(v) => {
            let t =
                Tokenizer::from_gguf_vocab(&v).map_err(|e| Error::bad_file(path, e.to_string()))?;
            if let Some(n) = t.pre_tokenizer_note() {
                notes.push(n);
            }
            Some(t)
        }
        Err(e) => {
            notes.push(format!(
                "no usable tokenizer in the file ({e}): pass prompts as token ids"
            ));
            None
        }
    };
    if lm_head.is_some() {
        notes.push("using the file's untied output.weight as the LM head".into());
    }
    // bitnet.cpp's converter keeps the HF row order of q/k (see gguf.rs), so rotate-half.
    let model = Model::new(config, embed, lm_head, layers, norm, RopeStyle::Neox, path)?;
    Ok(Loaded {
        model,
        tokenizer,
        kind: format!("GGUF ({ternary_type} ternary weights)"),
        notes,
    })
}
