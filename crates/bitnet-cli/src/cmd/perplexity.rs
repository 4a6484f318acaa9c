//! `bitnet perplexity`: llama-perplexity's procedure (see
//! [`bitnet_models::generate::perplexity`]); the text is tokenized with BOS.

use clap::Args;

use bitnet_models::generate::perplexity;

use super::{kv_type, load_model, make_runner, CliResult};
use crate::ModelArgs;

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to score.
    #[arg(short = 'f', long = "file")]
    pub file: std::path::PathBuf,
    /// Stop after this many chunks.
    #[arg(long = "chunks")]
    pub chunks: Option<usize>,
}

pub fn run(a: PerplexityArgs) -> CliResult {
    let text =
        std::fs::read_to_string(&a.file).map_err(|e| format!("{}: {e}", a.file.display()))?;
    let loaded = load_model(&a.model)?;
    let model = &loaded.model;
    let tok = loaded
        .tokenizer
        .as_ref()
        .ok_or("this model has no tokenizer")?;
    let ctx = a.model.ctx.unwrap_or(512).min(model.config.max_ctx);
    let tokens = tok.encode(&text, true)?;
    eprintln!(
        "{}: {} tokens, chunks of {ctx}",
        a.file.display(),
        tokens.len()
    );
    let mut runner = make_runner(model, &a.model.device, ctx, kv_type(&a.model)?)?;
    let t0 = std::time::Instant::now();
    let r = perplexity(
        runner.as_mut(),
        &tokens,
        ctx,
        tok.bos_id(),
        a.chunks,
        &mut |c, p| eprint!("[{}]{p:.4} ", c + 1),
    )
    .map_err(|e| format!("{}: {e}", a.file.display()))?;
    eprintln!();
    eprintln!(
        "{} chunks, {} tokens scored in {:.2} s",
        r.chunks,
        r.scored,
        t0.elapsed().as_secs_f64()
    );
    println!("Final estimate: PPL = {:.4}", r.ppl);
    Ok(())
}
