//! `bitnet convert`: a Hugging Face directory or GGUF file in, a GGUF file out, with the
//! ternary projections in I2_S (bitnet.cpp), TQ2_0 or TQ1_0 (llama.cpp).

use std::time::Instant;

use clap::Args;

use bitnet_models::convert::{to_gguf, vocab_from_tokenizer_json, DenseType, TernaryType};
use bitnet_models::gguf::GgufFile;
use bitnet_models::load::{self, LoadOptions};

use super::CliResult;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Input: a Hugging Face directory or a GGUF file.
    pub input: std::path::PathBuf,
    /// Output GGUF file.
    #[arg(short = 'o', long = "output")]
    pub output: std::path::PathBuf,
    /// Storage type of the ternary projections.
    #[arg(long = "type", default_value = "i2_s", value_parser = ["i2_s", "tq2_0", "tq1_0"])]
    pub ty: String,
    /// Storage type of the embeddings (and an untied LM head).
    #[arg(long = "embed-type", default_value = "q6_k", value_parser = ["f32", "f16", "q8_0", "q6_k"])]
    pub embed_type: String,
    /// Model name written to general.name (default: the input's file name).
    #[arg(long = "name")]
    pub name: Option<String>,
}

pub fn run(a: ConvertArgs) -> CliResult {
    let tern: TernaryType = a.ty.parse()?;
    let dense: DenseType = a.embed_type.parse()?;
    if a.output.exists() && a.output.canonicalize().ok() == a.input.canonicalize().ok() {
        return Err(format!("{}: refusing to overwrite the input", a.output.display()).into());
    }
    let t0 = Instant::now();
    eprintln!("reading {} ...", a.input.display());
    let loaded = load::load(&a.input, LoadOptions::default())?;
    let mut vocab = if a.input.is_dir() {
        let tj = a.input.join("tokenizer.json");
        if tj.exists() {
            Some(vocab_from_tokenizer_json(&tj)?.0)
        } else {
            None
        }
    } else {
        Some(load::gguf_vocab(&GgufFile::open(&a.input)?)?)
    };
    if let (Some(v), Some(t)) = (vocab.as_mut(), loaded.tokenizer.as_ref()) {
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
    let name = a.name.clone().unwrap_or_else(|| {
        a.input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bitnet".into())
    });
    eprintln!(
        "writing {} ({} ternary, {} embeddings) ...",
        a.output.display(),
        a.ty,
        a.embed_type
    );
    let w = to_gguf(&loaded.model, &name, vocab.as_ref(), tern, dense)?;
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
