//! `bitnet`: run BitNet b1.58 models from GGUF files or Hugging Face directories.
//!
//! Flags follow llama.cpp's tools where they exist (`-m`, `-p`, `-n`, `-t`, `-c`,
//! `--temp`, `--top-k`, ...). Every error is printed as one line naming the file and the
//! problem, with a non-zero exit status.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod cmd;

/// Bounds the memory a model file's chat template may take (see `TEMPLATE_MEMORY`).
#[global_allocator]
static ALLOCATOR: bitnet_models::chat::TemplateAllocator = bitnet_models::chat::TemplateAllocator;

#[derive(Parser)]
#[command(
    name = "bitnet",
    version,
    about = "BitNet b1.58 inference: generate, chat, bench, perplexity, logits, tokenize, inspect, convert"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every command that runs a model.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: a GGUF file or a Hugging Face directory (config.json + safetensors).
    #[arg(short = 'm', long = "model")]
    pub model: std::path::PathBuf,
    /// Threads for the kernels (default: all cores).
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// Context size in tokens (default: the model's, capped at 4096).
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx: Option<usize>,
    /// KV cache element type.
    #[arg(long = "kv-type", default_value = "f16", value_parser = ["f16", "f32"])]
    pub kv_type: String,
    /// In-memory layout of the ternary weights: i2s (2 bits/weight) or t1 (1.6 bits/weight).
    #[arg(long = "layout", value_parser = ["i2s", "t1"])]
    pub layout: Option<String>,
    /// Quantize a float (F32/F16/BF16) LM head at load: q6_k (as bitnet.cpp's converter
    /// writes it, 0.82 bytes per weight) or q8_0 (1.06). Default: as stored in the file.
    #[arg(long = "lm-head-type", value_parser = ["q6_k", "q8_0"])]
    pub lm_head_type: Option<String>,
    /// Where to run: cpu, cuda, cuda:N, or auto (CUDA when this build has it and a GPU is
    /// usable, else the CPU).
    #[arg(long = "device", default_value = "auto")]
    pub device: String,
}

/// Sampling options (llama.cpp's names and defaults).
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Temperature; 0 means greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temp: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens below this fraction of the top probability (0 = off).
    #[arg(long = "min-p", default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalty for repeating recent tokens (1 = off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed (default: from the clock, printed).
    #[arg(short = 's', long = "seed")]
    pub seed: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it as it is produced.
    Generate(cmd::generate::GenerateArgs),
    /// Interactive chat with the model's chat template.
    Chat(cmd::chat::ChatArgs),
    /// Write the logits of every position of a token sequence as JSON.
    Logits(cmd::logits::LogitsArgs),
    /// Perplexity of a text file, like llama-perplexity.
    Perplexity(cmd::perplexity::PerplexityArgs),
    /// Prompt-processing and generation speed, like llama-bench.
    Bench(cmd::bench::BenchArgs),
    /// Print the token ids of a text, like llama-tokenize.
    Tokenize(cmd::tokenize::TokenizeArgs),
    /// Show a model's metadata and tensors.
    Inspect(cmd::inspect::InspectArgs),
    /// Convert a Hugging Face directory or GGUF file to a GGUF file.
    Convert(cmd::convert::ConvertArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => cmd::generate::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Logits(a) => cmd::logits::run(a),
        Command::Perplexity(a) => cmd::perplexity::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Convert(a) => cmd::convert::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
