//! `bitnet convert`: a Hugging Face directory or GGUF file in, a GGUF file out, with the
//! ternary projections in I2_S (bitnet.cpp), TQ2_0 or TQ1_0 (llama.cpp).

use std::time::Instant;

use clap::Args;

use bitnet_core::quant::ternary::TernaryLayout;
use bitnet_models::bitnet::Model;
use bitnet_models::convert::{to_gguf, vocab_from_hf, DenseType, TernaryType};
use bitnet_models::gguf::GgufFile;
use bitnet_models::load::{self, LoadOptions};
use bitnet_models::synthetic;
use bitnet_models::tokenizer::GgufVocab;

use super::CliResult;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Input: a Hugging Face directory or a GGUF file.
    #[arg(required_unless_present = "synthetic", conflicts_with = "synthetic")]
    pub input: Option<std::path::PathBuf>,
    /// Write a random model with real shapes instead (known: 2b4t; as `bench --synthetic`):
    /// a file of the released model's size and layout, with no download.
    #[arg(long = "synthetic")]
    pub synthetic: Option<String>,
    /// Take the vocabulary from this Hugging Face tokenizer (a tokenizer.json file or a
    /// directory holding one) instead of the input's; with `--synthetic`, the file then has a
    /// tokenizer, so llama.cpp and bitnet.cpp can run it too.
    #[arg(long = "tokenizer")]
    pub tokenizer: Option<std::path::PathBuf>,
    /// Output GGUF file.
    #[arg(short = 'o', long = "output")]
    pub output: std::path::PathBuf,
    /// Storage type of the ternary projections.
    #[arg(long = "type", default_value = "i2_s", value_parser = ["i2_s", "tq2_0", "tq1_0"])]
    pub ty: String,
    /// Storage type of the embeddings (and an untied LM head).
    #[arg(long = "embed-type", default_value = "q6_k", value_parser = ["f32", "f16", "q8_0", "q6_k"])]
    pub embed_type: String,
    /// Model name written to general.name (default: the input's file name, or "synthetic NAME").
    #[arg(long = "name")]
    pub name: Option<String>,
}

pub fn run(a: ConvertArgs) -> CliResult {
    let t0 = Instant::now();
    let input = match (&a.input, &a.synthetic) {
        (Some(p), _) => p,
        (None, Some(s)) => {
            let cfg = synthetic::config_by_name(s)?;
            eprintln!("building synthetic {s} model ...");
            let vocab = a.tokenizer.as_deref().map(vocab_from_hf).transpose()?;
            let model = synthetic::build(cfg, TernaryLayout::I2S, 42)?;
            return write(&a, &model, vocab.as_ref(), &format!("synthetic {s}"), t0);
        }
        (None, None) => return Err("give an INPUT or --synthetic NAME".into()),
    };
    if a.output.exists() && a.output.canonicalize().ok() == input.canonicalize().ok() {
        return Err(format!("{}: refusing to overwrite the input", a.output.display()).into());
    }
    eprintln!("reading {} ...", input.display());
    let loaded = load::load(input, LoadOptions::default())?;
    let mut vocab = if let Some(t) = &a.tokenizer {
        Some(vocab_from_hf(t)?)
    } else if input.is_dir() {
        let tj = input.join("tokenizer.json");
        tj.exists().then(|| vocab_from_hf(&tj)).transpose()?
    } else {
        Some(load::gguf_vocab(&GgufFile::open(input)?)?)
    };
    // The input's own tokenizer fills ids its metadata left out (not for --tokenizer's
    // vocabulary, whose ids may mean other tokens).
    let own = if a.tokenizer.is_none() {
        loaded.tokenizer.as_ref()
    } else {
        None
    };
    if let (Some(v), Some(t)) = (vocab.as_mut(), own) {
        v.bos = v.bos.or(t.bos_id());
        v.eos = v.eos.or(t.eos_id());
        v.eot = v.eot.or(t.eot_id());
        v.add_bos = v.add_bos.or(Some(t.add_bos()));
        if v.chat_template.is_none() {
            v.chat_template = t.chat_template().map(String::from);
        }
    }
    if vocab.is_none() {
        eprintln!("note: no tokenizer found; the output will have no tokenizer metadata");
    }
    let name = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bitnet".into());
    write(&a, &loaded.model, vocab.as_ref(), &name, t0)
}

/// Write `model` as `a.output` (`default_name` unless `--name`).
fn write(
    a: &ConvertArgs,
    model: &Model,
    vocab: Option<&GgufVocab>,
    default_name: &str,
    t0: Instant,
) -> CliResult {
    let tern: TernaryType = a.ty.parse()?;
    let dense: DenseType = a.embed_type.parse()?;
    let name = a.name.clone().unwrap_or_else(|| default_name.into());
    eprintln!(
        "writing {} ({} ternary, {} embeddings) ...",
        a.output.display(),
        a.ty,
        a.embed_type
    );
    let w = to_gguf(model, &name, vocab, tern, dense)?;
    // Write to a temporary name first so a failure never leaves a truncated output file.
    let tmp = a.output.with_extension("gguf.partial");
    w.write_file(&tmp)?;
    std::fs::rename(&tmp, &a.output).map_err(|e| format!("{}: {e}", a.output.display()))?;
    let size = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({:.2} MiB) in {:.2} s",
        a.output.display(),
        size as f64 / (1 << 20) as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
