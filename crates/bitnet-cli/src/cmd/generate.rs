//! `bitnet generate`: prompt in, text streamed out, timings on stderr.

use std::io::Write;

use clap::Args;

use bitnet_models::generate::generate;
use bitnet_models::sampler::Sampler;
use bitnet_models::tokenizer::DecodeStream;

use super::{ctx_size, kv_type, load_model, make_runner, parse_ids, sampler_config, CliResult};
use crate::{ModelArgs, SamplingArgs};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text.
    #[arg(
        short = 'p',
        long = "prompt",
        conflicts_with = "ids",
        required_unless_present = "ids"
    )]
    pub prompt: Option<String>,
    /// Prompt as token ids, e.g. 1016,47,412 (used as given: no BOS is added).
    #[arg(long = "ids")]
    pub ids: Option<String>,
    /// Number of tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Keep generating past end-of-generation tokens.
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
    /// Do not add the BOS token in front of a text prompt.
    #[arg(long = "no-bos")]
    pub no_bos: bool,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long = "json")]
    pub json: bool,
}

pub fn run(a: GenerateArgs) -> CliResult {
    let loaded = load_model(&a.model)?;
    let model = &loaded.model;
    let tok = loaded.tokenizer.as_ref();
    let prompt: Vec<u32> = match (&a.prompt, &a.ids) {
        (_, Some(ids)) => parse_ids(ids)?,
        (Some(p), None) => {
            let t = tok.ok_or("this model has no tokenizer: pass the prompt as --ids")?;
            let ids = t.encode(p, !a.no_bos)?;
            if ids.is_empty() {
                return Err(
                    "the prompt is empty and the model has no BOS token: nothing to start from"
                        .into(),
                );
            }
            ids
        }
        (None, None) => return Err("give a prompt with -p TEXT or --ids 1,2,3".into()),
    };
    let ctx = ctx_size(&a.model, model.config.max_ctx)?;
    let needed = prompt.len() + a.n.saturating_sub(1);
    if needed > ctx {
        return Err(format!(
            "context length exceeded: the prompt ({} tokens) plus {} new tokens need {needed} positions, the context holds {ctx} (see --ctx-size)",
            prompt.len(),
            a.n
        )
        .into());
    }
    // The cache only needs room for this generation; that keeps memory near the minimum.
    let mut runner = make_runner(model, &a.model.device, needed.max(1), kv_type(&a.model)?)?;
    let mut sampler = Sampler::new(sampler_config(&a.sampling))?;
    let stop =
        |id: u32| !a.ignore_eos && tok.map_or(model.config.eos == Some(id), |t| t.is_eog(id));

    let stdout = std::io::stdout();
    let mut stream = tok.map(DecodeStream::new);
    let mut out = stdout.lock();
    if !a.json {
        if let (Some(t), true) = (tok, a.prompt.is_some()) {
            // Echo the prompt as the model sees it, like llama-cli.
            let shown = t.decode(&prompt)?;
            let bos = t.bos_id().and_then(|b| t.id_to_token(b));
            let shown = match bos {
                Some(b) if shown.starts_with(&b) => shown[b.len()..].to_string(),
                _ => shown,
            };
            write!(out, "{shown}")?;
            out.flush()?;
        }
    }
    let mut write_err: Option<std::io::Error> = None;
    let mut on_token = |id: u32| -> bool {
        if a.json {
            return true;
        }
        let piece = match stream.as_mut() {
            Some(s) => match s.push(id) {
                Ok(p) => p.unwrap_or_default(),
                Err(_) => String::new(),
            },
            None => format!("{id} "),
        };
        if let Err(e) = write!(out, "{piece}").and_then(|_| out.flush()) {
            write_err = Some(e);
            return false;
        }
        true
    };
    let g = generate(
        runner.as_mut(),
        &prompt,
        a.n,
        &mut sampler,
        &stop,
        &mut on_token,
    )?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    if a.json {
        let text = match tok {
            Some(t) => t.decode(&g.ids)?,
            None => String::new(),
        };
        let v = serde_json::json!({
            "prompt_ids": prompt,
            "ids": g.ids,
            "text": text,
            "prefill_tok_s": g.prefill_tok_s(),
            "decode_tok_s": g.decode_tok_s(),
        });
        writeln!(out, "{v}")?;
    } else {
        if let Some(s) = stream {
            write!(out, "{}", s.finish()?)?;
        }
        writeln!(out)?;
    }
    eprintln!(
        "prompt: {} tokens in {:.1} ms ({:.2} tok/s); generation: {} tokens in {:.1} ms ({:.2} tok/s){}",
        g.prompt_tokens,
        g.prefill_time.as_secs_f64() * 1e3,
        g.prefill_tok_s(),
        g.ids.len(),
        g.decode_time.as_secs_f64() * 1e3,
        g.decode_tok_s(),
        if g.stopped_at_eog { "; stopped at end of generation" } else { "" }
    );
    Ok(())
}
