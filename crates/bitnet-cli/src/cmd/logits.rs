//! `bitnet logits`: the logits of every position of a token sequence, as JSON.

use std::io::Write;

use clap::Args;

use bitnet_models::bitnet::Logits;

use super::{kv_type, load_model, make_runner, parse_ids, CliResult};
use crate::ModelArgs;

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Token ids, e.g. 1016,47,412 (used as given).
    #[arg(long = "ids")]
    pub ids: String,
    /// Output file (default: stdout).
    #[arg(short = 'o', long = "output")]
    pub output: Option<std::path::PathBuf>,
}

pub fn run(a: LogitsArgs) -> CliResult {
    let ids = parse_ids(&a.ids)?;
    let loaded = load_model(&a.model)?;
    let model = &loaded.model;
    if ids.len() > model.config.max_ctx {
        return Err(format!(
            "{} ids exceed the model's context length {}",
            ids.len(),
            model.config.max_ctx
        )
        .into());
    }
    let mut runner = make_runner(model, &a.model.device, ids.len(), kv_type(&a.model)?)?;
    let logits = runner.feed(&ids, Logits::All)?;
    let rows: Vec<&[f32]> = logits.chunks_exact(model.config.vocab_size).collect();
    let v = serde_json::json!({ "ids": ids, "logits": rows });
    match &a.output {
        Some(path) => {
            let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut w = std::io::BufWriter::new(f);
            serde_json::to_writer(&mut w, &v)?;
            w.flush().map_err(|e| format!("{}: {e}", path.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &v)?;
            writeln!(out)?;
        }
    }
    Ok(())
}
