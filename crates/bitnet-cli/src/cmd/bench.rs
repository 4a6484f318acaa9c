//! `bitnet bench`: llama-bench's two tests. `pp<N>` times a forward pass over N prompt
//! tokens from an empty cache; `tg<N>` times N single-token decode steps from an empty
//! cache. Each runs once to warm up, then `-r` times; mean ± sd of tokens per second.

use std::time::Instant;

use clap::Args;

use bitnet_models::bitnet::Logits;
use bitnet_models::generate::Runner;
use bitnet_models::kv_cache::KvDType;
use bitnet_models::{load, synthetic};

use super::{float_head_hint, load_options, make_runner, CliResult};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model: a GGUF file or a Hugging Face directory.
    #[arg(
        short = 'm',
        long = "model",
        conflicts_with = "synthetic",
        required_unless_present = "synthetic"
    )]
    pub model: Option<std::path::PathBuf>,
    /// Build a random model with real shapes in memory instead (known: 2b4t).
    #[arg(long = "synthetic")]
    pub synthetic: Option<String>,
    /// Prompt tokens for the prompt-processing test (0 = skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    pub n_prompt: usize,
    /// Tokens for the generation test (0 = skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Thread counts to test, comma-separated.
    #[arg(short = 't', long = "threads", default_value = "2")]
    pub threads: String,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    pub reps: usize,
    /// In-memory layout of the ternary weights: i2s or t1.
    #[arg(long = "layout", value_parser = ["i2s", "t1"])]
    pub layout: Option<String>,
    /// Quantize a float LM head at load: q6_k or q8_0 (default: as stored).
    #[arg(long = "lm-head-type", value_parser = ["q6_k", "q8_0"])]
    pub lm_head_type: Option<String>,
    /// KV cache element type.
    #[arg(long = "kv-type", default_value = "f16", value_parser = ["f16", "f32"])]
    pub kv_type: String,
    /// Where to run: cpu, cuda, cuda:N or auto.
    #[arg(long = "device", default_value = "auto")]
    pub device: String,
    /// Print one JSON object instead of a table.
    #[arg(long = "json")]
    pub json: bool,
}

struct Row {
    test: String,
    threads: usize,
    mean: f64,
    sd: f64,
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Tokens per second of `reps` runs of one test (after one warm-up run). `pp` feeds all
/// tokens at once; `tg` decodes them one by one (greedy steps, as generation does).
fn bench_one(
    r: &mut dyn Runner,
    pp: bool,
    n: usize,
    reps: usize,
    vocab: usize,
) -> CliResult<Vec<f64>> {
    // Varied but reproducible token ids.
    let tokens: Vec<u32> = (0..n as u64)
        .map(|i| ((i * 2654435761 + 17) % vocab as u64) as u32)
        .collect();
    let mut rates = Vec::with_capacity(reps);
    for rep in 0..=reps {
        r.reset();
        let t0 = Instant::now();
        if pp {
            r.feed(&tokens, Logits::Last)?;
        } else {
            for &t in &tokens {
                r.greedy_step(t)?;
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        if rep > 0 {
            rates.push(n as f64 / dt);
        }
    }
    Ok(rates)
}

pub fn run(a: BenchArgs) -> CliResult {
    let threads: Vec<usize> = a
        .threads
        .split(',')
        .map(|t| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("--threads: `{t}` is not a number"))
        })
        .collect::<Result<_, _>>()?;
    if threads.is_empty() || threads.contains(&0) {
        return Err("--threads: give one or more counts of at least 1".into());
    }
    if a.reps == 0 {
        return Err("--repetitions must be at least 1".into());
    }
    let kv: KvDType = a.kv_type.parse()?;
    let opts = load_options(a.layout.as_deref(), a.lm_head_type.as_deref())?;
    let t0 = Instant::now();
    let (model, name) = match (&a.model, &a.synthetic) {
        (Some(p), _) => {
            let l = load::load(p, opts)?;
            for n in &l.notes {
                eprintln!("note: {n}");
            }
            if let Some(h) = float_head_hint(&l.model) {
                eprintln!("note: {h}");
            }
            (l.model, p.display().to_string())
        }
        (None, Some(s)) => {
            if opts.head.is_some() {
                return Err(
                    "--lm-head-type applies to -m models (the synthetic head is Q6_K)".into(),
                );
            }
            let cfg = synthetic::config_by_name(s)?;
            eprintln!(
                "building synthetic {s} model ({:?} ternary weights, Q6_K embeddings) ...",
                opts.layout
            );
            (
                synthetic::build(cfg, opts.layout, 42)?,
                format!("synthetic {s}"),
            )
        }
        (None, None) => return Err("give -m MODEL or --synthetic NAME".into()),
    };
    let model_s = t0.elapsed().as_secs_f64();
    if a.n_prompt + 1 > model.config.max_ctx || a.n_gen + 1 > model.config.max_ctx {
        return Err(format!(
            "-p/-n must stay below the context length {}",
            model.config.max_ctx
        )
        .into());
    }
    eprintln!(
        "{name}: {:.1} MiB of weights, {:.1} MiB read per generated token; ready in {model_s:.2} s",
        model.weight_bytes() as f64 / (1 << 20) as f64,
        model.bytes_per_token() as f64 / (1 << 20) as f64
    );
    let mut rows = Vec::new();
    let mut max_runtime = 0usize;
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .map_err(|e| format!("could not start {t} threads: {e}"))?;
        for (pp, n) in [(true, a.n_prompt), (false, a.n_gen)] {
            if n == 0 {
                continue;
            }
            let ctx = n + 1;
            let (rates, runtime) = pool.install(|| -> CliResult<(Vec<f64>, usize)> {
                let mut r = make_runner(&model, &a.device, ctx, kv)?;
                let rates = bench_one(r.as_mut(), pp, n, a.reps, model.config.vocab_size)?;
                Ok((rates, r.state_bytes()))
            })?;
            max_runtime = max_runtime.max(runtime);
            let (mean, sd) = mean_sd(&rates);
            let test = format!("{}{n}", if pp { "pp" } else { "tg" });
            if !a.json {
                eprintln!("  {test} t={t}: {mean:.2} ± {sd:.2} tok/s");
            }
            rows.push(Row {
                test,
                threads: t,
                mean,
                sd,
            });
        }
    }
    let peak = peak_rss_bytes().unwrap_or(0);
    let min_bytes = model.weight_bytes() + max_runtime;
    if a.json {
        let results: Vec<_> = rows
            .iter()
            .map(|r| serde_json::json!({"test": r.test, "threads": r.threads, "tok_s": r.mean, "tok_s_sd": r.sd}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"model": name, "results": results, "peak_rss_bytes": peak, "min_bytes": min_bytes})
        );
    } else {
        println!("| model | test | threads | t/s |");
        println!("| --- | --- | ---: | ---: |");
        for r in &rows {
            println!(
                "| {name} | {} | {} | {:.2} ± {:.2} |",
                r.test, r.threads, r.mean, r.sd
            );
        }
        if max_runtime == 0 {
            // The KV cache and scratch live on the GPU: a host minimum means nothing here.
            println!(
                "peak host RSS {:.1} MiB (KV cache and scratch are on the GPU)",
                peak as f64 / (1 << 20) as f64
            );
        } else {
            println!(
                "peak RSS {:.1} MiB; minimum (weights + KV cache + scratch) {:.1} MiB; ratio {:.3}",
                peak as f64 / (1 << 20) as f64,
                min_bytes as f64 / (1 << 20) as f64,
                peak as f64 / min_bytes.max(1) as f64
            );
        }
    }
    Ok(())
}
