//! `bitnet chat`: an interactive conversation rendered with the model's chat template.
//! The KV cache keeps the conversation; each turn only feeds the tokens that differ from
//! what the cache already holds.

use std::io::{BufRead, Write};

use clap::Args;

use bitnet_models::chat::{ChatTemplate, Message};
use bitnet_models::generate::generate;
use bitnet_models::sampler::Sampler;
use bitnet_models::tokenizer::DecodeStream;

use super::{ctx_size, kv_type, load_model, make_runner, sampler_config, CliResult};
use crate::{ModelArgs, SamplingArgs};

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Most tokens per reply.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    pub n: usize,
    /// System prompt.
    #[arg(long = "system")]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: ChatArgs) -> CliResult {
    let loaded = load_model(&a.model)?;
    let model = &loaded.model;
    let tok = loaded
        .tokenizer
        .as_ref()
        .ok_or("this model has no tokenizer: chat needs one")?;
    if tok.chat_template().is_none() {
        eprintln!("note: the model has no chat template; using the Llama-3 template");
    }
    let template = ChatTemplate::from_tokenizer(tok)?;
    let ctx = ctx_size(&a.model, model.config.max_ctx)?;
    let mut runner = make_runner(model, &a.model.device, ctx, kv_type(&a.model)?)?;
    let mut sampler = Sampler::new(sampler_config(&a.sampling))?;
    let mut messages: Vec<Message> = Vec::new();
    if let Some(s) = &a.system {
        messages.push(Message::system(s.clone()));
    }
    // Tokens the cache holds, to reuse the common prefix of the next rendering.
    let mut cached: Vec<u32> = Vec::new();
    eprintln!("chat with the model; an empty line or end of input quits");
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        messages.push(Message::user(line.trim_end_matches(['\n', '\r'])));
        let text = template.render(&messages, true)?;
        let ids = tok.encode(&text, false)?;
        let common = cached
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len() - 1);
        runner.truncate(common);
        cached.truncate(common);
        let room = ctx.saturating_sub(ids.len());
        if room == 0 {
            return Err(format!("the conversation ({} tokens) fills the context of {ctx}; start a new chat or raise --ctx-size", ids.len()).into());
        }
        let mut stream = DecodeStream::new(tok);
        let mut reply = String::new();
        let mut on_token = |id: u32| -> bool {
            if tok.is_eog(id) {
                return false;
            }
            if let Ok(Some(p)) = stream.push(id) {
                reply.push_str(&p);
                print!("{p}");
                let _ = std::io::stdout().flush();
            }
            true
        };
        let g = generate(
            runner.as_mut(),
            &ids[common..],
            a.n.min(room),
            &mut sampler,
            &|id| tok.is_eog(id),
            &mut on_token,
        )?;
        let rest = stream.finish()?;
        print!("{rest}");
        reply.push_str(&rest);
        println!();
        cached.extend_from_slice(&ids[common..]);
        // The cache holds every generated token except the last one sampled.
        cached.extend_from_slice(&g.ids[..g.ids.len().saturating_sub(1)]);
        messages.push(Message::assistant(reply));
        eprintln!("[{:.2} tok/s]", g.decode_tok_s());
    }
    Ok(())
}
