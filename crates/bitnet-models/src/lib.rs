//! bitnet-models: model files (GGUF, Hugging Face safetensors), the BitNet b1.58
//! architecture, KV cache, tokenizer, chat template, sampling and the generation loop.

pub mod bitnet;
pub mod chat;
pub mod convert;
#[cfg(feature = "cuda")]
pub mod cuda_model;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gguf_write;
pub mod hf;
pub mod kv_cache;
pub mod load;
pub mod names;
pub mod sampler;
pub mod synthetic;
pub mod tokenizer;

pub use error::{Error, Result};
