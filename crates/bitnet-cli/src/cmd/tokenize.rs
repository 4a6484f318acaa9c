//! `bitnet tokenize`: token ids of a text, like llama-tokenize (no BOS unless `--bos`).

use clap::Args;

use bitnet_models::load;

use super::CliResult;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// A GGUF file, a Hugging Face directory, a directory with only tokenizer.json, or a
    /// tokenizer.json file.
    #[arg(short = 'm', long = "model")]
    pub model: std::path::PathBuf,
    /// Text to tokenize.
    #[arg(
        short = 'p',
        long = "prompt",
        conflicts_with = "file",
        required_unless_present = "file"
    )]
    pub prompt: Option<String>,
    /// File whose contents to tokenize.
    #[arg(short = 'f', long = "file")]
    pub file: Option<std::path::PathBuf>,
    /// Add the BOS token in front.
    #[arg(long = "bos")]
    pub bos: bool,
    /// Print `{"ids":[..]}`.
    #[arg(long = "json")]
    pub json: bool,
}

pub fn run(a: TokenizeArgs) -> CliResult {
    let text = match (&a.prompt, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?
        }
        (None, None) => return Err("give -p TEXT or -f FILE".into()),
    };
    let tok = load::load_tokenizer(&a.model)?;
    let ids = tok.encode(&text, a.bos)?;
    if a.json {
        println!("{}", serde_json::json!({ "ids": ids }));
    } else {
        let s: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("[{}]", s.join(", "));
    }
    Ok(())
}
