//! One module per subcommand, plus what they share: loading a model with progress,
//! thread pools, parsing id lists.

pub mod bench;
pub mod chat;
pub mod convert;
pub mod generate;
pub mod inspect;
pub mod logits;
pub mod perplexity;
pub mod tokenize;

use std::time::Instant;

use bitnet_core::quant::dense::DenseKind;
use bitnet_core::quant::ternary::TernaryLayout;
use bitnet_models::bitnet::Model;
use bitnet_models::generate::{Runner, Session};
use bitnet_models::kv_cache::KvDType;
use bitnet_models::load::{self, LoadOptions, Loaded};
use bitnet_models::sampler::SamplerConfig;

use crate::{ModelArgs, SamplingArgs};

pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Set the number of kernel threads for the whole process.
pub fn init_threads(threads: Option<usize>) -> CliResult {
    if let Some(t) = threads {
        if t == 0 {
            return Err("--threads must be at least 1".into());
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| format!("could not start {t} threads: {e}"))?;
    }
    Ok(())
}

fn parse_layout(s: Option<&str>) -> CliResult<Option<TernaryLayout>> {
    Ok(match s {
        None => None,
        Some("i2s") => Some(TernaryLayout::I2S),
        Some("t1") => Some(TernaryLayout::T1),
        Some(o) => return Err(format!("unknown layout `{o}` (expected i2s or t1)").into()),
    })
}

fn parse_head_type(s: Option<&str>) -> CliResult<Option<DenseKind>> {
    Ok(match s {
        None => None,
        Some("q6_k") => Some(DenseKind::Q6K),
        Some("q8_0") => Some(DenseKind::Q8_0),
        Some(o) => {
            return Err(format!("unknown LM head type `{o}` (expected q6_k or q8_0)").into())
        }
    })
}

/// Load options from the command line's `--layout` and `--lm-head-type`.
pub fn load_options(layout: Option<&str>, head: Option<&str>) -> CliResult<LoadOptions> {
    let mut opts = LoadOptions::default();
    if let Some(l) = parse_layout(layout)? {
        opts.layout = l;
    }
    opts.head = parse_head_type(head)?;
    Ok(opts)
}

/// A hint for a float LM head that was kept: it is most of what a token reads.
pub fn float_head_hint(model: &Model) -> Option<String> {
    let h = model.head();
    h.kind().is_float().then(|| {
        format!(
            "the LM head is {:?} ({:.0} MiB read per generated token); --lm-head-type q6_k quantizes it at load to {:.0} MiB",
            h.kind(),
            h.nbytes() as f64 / (1 << 20) as f64,
            (h.rows() * h.cols()) as f64 * 210.0 / 256.0 / (1 << 20) as f64
        )
    })
}

/// Load the model named by `-m`, reporting the time it took on stderr.
pub fn load_model(args: &ModelArgs) -> CliResult<Loaded> {
    init_threads(args.threads)?;
    let opts = load_options(args.layout.as_deref(), args.lm_head_type.as_deref())?;
    let t0 = Instant::now();
    eprintln!("loading {} ...", args.model.display());
    let loaded = load::load(&args.model, opts)?;
    let c = &loaded.model.config;
    eprintln!(
        "loaded {} in {:.2} s: {} layers, hidden {}, vocab {}, {:.1} MiB of weights, {} threads",
        loaded.kind,
        t0.elapsed().as_secs_f64(),
        c.n_layers,
        c.hidden,
        c.vocab_size,
        loaded.model.weight_bytes() as f64 / (1 << 20) as f64,
        rayon::current_num_threads()
    );
    for n in &loaded.notes {
        eprintln!("note: {n}");
    }
    if let Some(h) = float_head_hint(&loaded.model) {
        eprintln!("note: {h}");
    }
    Ok(loaded)
}

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
    Auto,
}

pub fn parse_device(s: &str) -> CliResult<DeviceChoice> {
    match s {
        "cpu" => Ok(DeviceChoice::Cpu),
        "auto" => Ok(DeviceChoice::Auto),
        "cuda" => Ok(DeviceChoice::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
            _ => Err(format!("--device: `{s}` is not one of cpu, cuda, cuda:N, auto").into()),
        },
    }
}

/// The model runner for `--device`, with room for `ctx` positions. `auto` picks CUDA when
/// it is compiled in and usable and says so; an explicit `cuda` that cannot be used falls
/// back to the CPU with the reason.
pub fn make_runner<'m>(
    model: &'m Model,
    device: &str,
    ctx: usize,
    kv: KvDType,
) -> CliResult<Box<dyn Runner + 'm>> {
    let choice = parse_device(device)?;
    #[cfg(feature = "cuda")]
    {
        use bitnet_models::cuda_model::{CudaModel, CudaOptions};
        let ordinal = match choice {
            DeviceChoice::Cuda(n) => Some(n),
            DeviceChoice::Auto if bitnet_core::cuda::CudaDevice::is_available() => Some(0),
            _ => None,
        };
        if let Some(n) = ordinal {
            let opts = CudaOptions {
                max_ctx: Some(ctx),
                ..CudaOptions::default()
            };
            match CudaModel::with_options(model, n, opts) {
                Ok(m) => {
                    eprintln!(
                        "device: {} (cuda:{n}); {:.0} MiB of weights on the GPU, LM head {}",
                        m.device_name(),
                        m.weight_bytes() as f64 / (1 << 20) as f64,
                        m.head_format()
                    );
                    if kv == KvDType::F32 {
                        eprintln!(
                            "note: the CUDA KV cache is f16; --kv-type f32 applies to the CPU only"
                        );
                    }
                    return Ok(Box::new(m));
                }
                Err(e) => eprintln!("note: cuda:{n} cannot be used ({e}); running on the CPU"),
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    if let DeviceChoice::Cuda(_) = choice {
        eprintln!("note: this build has no CUDA backend (rebuild with `--features cuda`); running on the CPU");
    }
    Ok(Box::new(Session::new(model, ctx, kv)))
}

pub fn kv_type(args: &ModelArgs) -> CliResult<KvDType> {
    Ok(args.kv_type.parse()?)
}

/// The context size to use: `-c`, else the model's, capped at 4096 to bound memory.
pub fn ctx_size(args: &ModelArgs, model_max: usize) -> CliResult<usize> {
    match args.ctx {
        Some(0) => Err("--ctx-size must be at least 1".into()),
        Some(c) if c > model_max => {
            Err(format!("--ctx-size {c} exceeds the model's context length {model_max}").into())
        }
        Some(c) => Ok(c),
        None => Ok(model_max.min(4096)),
    }
}

pub fn sampler_config(s: &SamplingArgs) -> SamplerConfig {
    let seed = s.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        if s.temp > 0.0 {
            eprintln!("seed: {t}");
        }
        t
    });
    SamplerConfig {
        temperature: s.temp,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n,
        seed,
    }
}

/// Parse `1,2,3` into token ids.
pub fn parse_ids(s: &str) -> CliResult<Vec<u32>> {
    let ids: Result<Vec<u32>, _> = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| format!("--ids: `{t}` is not a token id"))
        })
        .collect();
    let ids = ids?;
    if ids.is_empty() {
        return Err("--ids: no token ids given".into());
    }
    Ok(ids)
}
