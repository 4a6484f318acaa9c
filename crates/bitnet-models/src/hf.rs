//! Hugging Face model directories: `config.json`, `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), `tokenizer.json`.
//!
//! Two weight layouts are read:
//! - bf16/f16/f32 master weights: the projections are ternarized at load (absmean, as
//!   transformers' online `AutoBitLinear` does);
//! - the packed layout of microsoft/bitnet-b1.58-2B-4T: `uint8 [out/4, in]` plus a
//!   `weight_scale` holding mean|W| (`quantization_config.quant_method == "bitnet"`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitnet_core::nn::bitlinear::BitLinear;
use bitnet_core::nn::rope::RopeStyle;
use bitnet_core::quant::dense::{DenseKind, DenseMatrix};
use bitnet_core::quant::ternary::{TernaryLayout, TernaryMatrix};
use bitnet_core::quant::{absmean, hf_packed};
use bitnet_core::SharedBytes;
use half::{bf16, f16};
use serde::Deserialize;

use crate::bitnet::{Config, Layer, Model};
use crate::names::Slot;
use crate::{Error, Result};

/// The fields of `config.json` we use.
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub quantization_config: Option<serde_json::Value>,
}

fn default_eps() -> f32 {
    1e-5
}
fn default_theta() -> f32 {
    10000.0
}
fn default_ctx() -> usize {
    2048
}
fn default_true() -> bool {
    true
}

/// First id of a `bos_token_id`/`eos_token_id` that may be a number or a list.
fn first_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v.as_ref()? {
        serde_json::Value::Number(n) => n.as_u64().map(|x| x as u32),
        serde_json::Value::Array(a) => a.first()?.as_u64().map(|x| x as u32),
        _ => None,
    }
}

impl HfConfig {
    pub fn read(path: &Path) -> Result<HfConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(path, format!("invalid config.json: {e}")))
    }

    pub fn to_config(&self, path: &Path) -> Result<Config> {
        if let Some(t) = &self.model_type {
            if t != "bitnet" && t != "llama" {
                return Err(Error::bad_model(
                    path,
                    format!("model_type `{t}` is not a BitNet b1.58 model (expected `bitnet`)"),
                ));
            }
        }
        if let Some(act) = &self.hidden_act {
            if act != "relu2" {
                return Err(Error::bad_model(
                    path,
                    format!("hidden_act `{act}` is not supported (BitNet b1.58 uses relu2)"),
                ));
            }
        }
        if self.num_attention_heads == 0 {
            return Err(Error::bad_model(path, "num_attention_heads is 0"));
        }
        Ok(Config {
            vocab_size: self.vocab_size,
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            n_layers: self.num_hidden_layers,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads),
            rms_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            max_ctx: self.max_position_embeddings,
            bos: first_id(&self.bos_token_id),
            eos: first_id(&self.eos_token_id),
        })
    }

    /// Whether the checkpoint holds packed ternary weights.
    pub fn is_packed(&self) -> bool {
        self.quantization_config
            .as_ref()
            .and_then(|q| q.get("quant_method"))
            .and_then(|m| m.as_str())
            == Some("bitnet")
    }
}

/// One tensor of a safetensors file, still in the mapped file.
#[derive(Debug, Clone)]
pub struct StTensor {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: SharedBytes,
    pub file: PathBuf,
}

/// All tensors of a (possibly sharded) safetensors checkpoint, memory-mapped.
pub struct SafetensorsIndex {
    pub tensors: BTreeMap<String, StTensor>,
}

impl SafetensorsIndex {
    /// Open `model.safetensors`, or the shards named by `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::bad_file(&index, format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::bad_file(&index, "no `weight_map` object"))?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(String::from))
                .collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            return Err(Error::bad_model(
                dir,
                "no model.safetensors or model.safetensors.index.json in this directory",
            ));
        };
        let mut tensors = BTreeMap::new();
        for f in files {
            Self::read_file(&f, &mut tensors)?;
        }
        Ok(SafetensorsIndex { tensors })
    }

    fn read_file(path: &Path, out: &mut BTreeMap<String, StTensor>) -> Result<()> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a file changed underneath us by another process is
        // outside what any memory-mapping reader can defend against (as in llama.cpp).
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&mmap[..])
            .map_err(|e| Error::bad_file(path, format!("invalid safetensors header: {e}")))?;
        let bytes = SharedBytes::new(Arc::new(mmap));
        let base = 8 + header_len;
        for (name, info) in meta.tensors() {
            let (start, end) = info.data_offsets;
            let data = bytes.slice(base + start..base + end).ok_or_else(|| {
                Error::bad_file(
                    path,
                    format!("tensor {name}: data past the end of the file"),
                )
            })?;
            out.insert(
                name.clone(),
                StTensor {
                    dtype: format!("{:?}", info.dtype),
                    shape: info.shape.clone(),
                    data,
                    file: path.to_path_buf(),
                },
            );
        }
        Ok(())
    }

    pub fn get(&self, name: &str, dir: &Path) -> Result<&StTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::bad_model(dir, format!("missing tensor `{name}`")))
    }
}

impl StTensor {
    fn check_shape(&self, name: &str, want: &[usize]) -> Result<()> {
        if self.shape != want {
            return Err(Error::bad_model(
                &self.file,
                format!(
                    "tensor `{name}` has shape {:?}, expected {want:?}",
                    self.shape
                ),
            ));
        }
        Ok(())
    }

    /// The values as f32 (bf16, f16 or f32 tensors).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let b = self.data.as_slice();
        let v = match self.dtype.as_str() {
            "F32" => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            "BF16" => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            "F16" => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::bad_model(
                    &self.file,
                    format!("tensor `{name}` has dtype {other}, expected a float type"),
                ))
            }
        };
        Ok(v)
    }

    /// A dense matrix over the mapped bytes (no copy for bf16/f16/f32).
    fn to_dense(&self, name: &str, rows: usize, cols: usize) -> Result<DenseMatrix> {
        self.check_shape(name, &[rows, cols])?;
        let m = match self.dtype.as_str() {
            "BF16" => DenseMatrix::from_bf16_bytes(self.data.clone(), rows, cols),
            "F16" => DenseMatrix::from_f16_bytes(self.data.clone(), rows, cols),
            "F32" => DenseMatrix::from_f32_bytes(self.data.clone(), rows, cols),
            other => {
                return Err(Error::bad_model(
                    &self.file,
                    format!("tensor `{name}` has dtype {other}, expected bf16, f16 or f32"),
                ))
            }
        };
        m.map_err(Error::from)
    }
}

/// Options for turning files into an in-memory model.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// In-memory layout of the ternary weights.
    pub layout: TernaryLayout,
    /// Quantize a float (F32/F16/BF16) LM head to this kind at load (`None`: keep the
    /// file's). Applied by [`crate::load::load`]; a head already quantized is kept.
    pub head: Option<DenseKind>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            layout: TernaryLayout::I2S,
            head: None,
        }
    }
}

/// Load a Hugging Face BitNet directory.
pub fn load(dir: &Path, opts: LoadOptions) -> Result<Model> {
    let cfg_path = dir.join("config.json");
    let hf = HfConfig::read(&cfg_path)?;
    let config = hf.to_config(&cfg_path)?;
    config.validate(&cfg_path)?;
    let st = SafetensorsIndex::open_dir(dir)?;
    let packed = hf.is_packed();
    let c = &config;

    let embed = st.get(&Slot::Embed.hf_name(0), dir)?.to_dense(
        &Slot::Embed.hf_name(0),
        c.vocab_size,
        c.hidden,
    )?;
    let lm_head = match st.tensors.get(&Slot::Output.hf_name(0)) {
        Some(t) if !hf.tie_word_embeddings => {
            Some(t.to_dense(&Slot::Output.hf_name(0), c.vocab_size, c.hidden)?)
        }
        Some(_) | None if hf.tie_word_embeddings => None,
        _ => {
            return Err(Error::bad_model(
                dir,
                "tie_word_embeddings is false but there is no lm_head.weight",
            ))
        }
    };
    let vector = |slot: Slot, layer: usize, len: usize| -> Result<Vec<f32>> {
        let name = slot.hf_name(layer);
        let t = st.get(&name, dir)?;
        t.check_shape(&name, &[len])?;
        t.to_f32(&name)
    };
    let proj = |slot: Slot, layer: usize, rows: usize, cols: usize| -> Result<BitLinear> {
        let name = slot.hf_name(layer);
        let t = st.get(&name, dir)?;
        let weight = if packed {
            if t.dtype != "U8" {
                return Err(Error::bad_model(
                    &t.file,
                    format!("packed tensor `{name}` has dtype {}, expected U8", t.dtype),
                ));
            }
            t.check_shape(&name, &[rows / 4, cols])?;
            let trits = hf_packed::unpack(t.data.as_slice(), rows, cols)?;
            let sname = slot.hf_scale_name(layer);
            let s = st.get(&sname, dir)?.to_f32(&sname)?;
            if s.len() != 1 {
                return Err(Error::bad_model(
                    dir,
                    format!("`{sname}` must hold one value"),
                ));
            }
            TernaryMatrix::from_trits(&trits, rows, cols, s[0], opts.layout)?
        } else {
            t.check_shape(&name, &[rows, cols])?;
            let w = t.to_f32(&name)?;
            let mut q = vec![0i8; w.len()];
            let scale = absmean::ternarize(&w, &mut q);
            TernaryMatrix::from_trits(&q, rows, cols, scale, opts.layout)?
        };
        Ok(BitLinear { weight, bias: None })
    };

    let layers = (0..c.n_layers)
        .map(|i| Layer::load(c, i, &vector, &proj))
        .collect::<Result<Vec<_>>>()?;
    let norm = vector(Slot::OutputNorm, 0, c.hidden)?;
    Model::new(config, embed, lm_head, layers, norm, RopeStyle::Neox, dir)
}
