//! `bitnet inspect`: what a model file holds — metadata, tensors, types and sizes — and
//! how this engine will read it.

use clap::Args;

use bitnet_models::gguf::{GgufFile, Value};
use bitnet_models::hf::{HfConfig, SafetensorsIndex};
use bitnet_models::load;

use super::CliResult;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A GGUF file or a Hugging Face directory.
    pub model: std::path::PathBuf,
}

/// A metadata value in one line; long arrays are abbreviated.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() > 120 => format!(
            "{:?}… ({} bytes)",
            s.chars().take(100).collect::<String>(),
            s.len()
        ),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_, a) if a.len() > 8 => {
            let head: Vec<String> = a.iter().take(4).map(show).collect();
            format!("[{}, …] ({} items)", head.join(", "), a.len())
        }
        Value::Array(_, a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(", ")),
        other => format!("{other:?}"),
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

pub fn run(a: InspectArgs) -> CliResult {
    let path = &a.model;
    if path.is_dir() {
        let cfg = HfConfig::read(&path.join("config.json"))?;
        println!("Hugging Face directory {}", path.display());
        println!("  config: {cfg:?}");
        println!(
            "  layout: {}",
            if cfg.is_packed() {
                "packed ternary (uint8 + weight_scale)"
            } else {
                "master weights (ternarized at load)"
            }
        );
        let st = SafetensorsIndex::open_dir(path)?;
        let total: u64 = st.tensors.values().map(|t| t.data.len() as u64).sum();
        println!("  {} tensors, {}", st.tensors.len(), human(total));
        for (name, t) in &st.tensors {
            println!(
                "  {name:<56} {:<5} {:?} {}",
                t.dtype,
                t.shape,
                human(t.data.len() as u64)
            );
        }
    } else {
        let g = GgufFile::open(path)?;
        println!("GGUF v{} {}", g.version, path.display());
        println!(
            "  alignment {}, {} metadata entries, {} tensors",
            g.alignment,
            g.metadata.len(),
            g.tensors.len()
        );
        for (k, v) in &g.metadata {
            println!("  {k} = {}", show(v));
        }
        let mut total = 0u64;
        for t in &g.tensors {
            total += t.nbytes;
            println!(
                "  {:<32} {:<6} {:?} {}",
                t.name,
                t.ggml_type.name(),
                t.dims,
                human(t.nbytes)
            );
        }
        println!("  tensor data: {}", human(total));
        if g.tensor("output.weight").is_some() {
            println!("  note: untied output.weight present: used as the LM head (bitnet.cpp would ignore it)");
        }
    }
    match load::load_tokenizer(path) {
        Ok(t) => {
            println!(
                "tokenizer: {} tokens, bos {:?}, eos {:?}, chat template: {}",
                t.vocab_size(),
                t.bos_id(),
                t.eos_id(),
                if t.chat_template().is_some() {
                    "yes"
                } else {
                    "no"
                }
            );
            if let Some(n) = t.pre_tokenizer_note() {
                println!("  note: {n}");
            }
        }
        Err(e) => println!("tokenizer: none usable ({e})"),
    }
    Ok(())
}
