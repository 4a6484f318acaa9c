//! The whole tiny model on the GPU against the CPU path (f16 KV cache on both sides).
//! Tolerance: relative L2 error of the logits ≤ 2e-2 per position (the GPU LM head runs on
//! f16 weights, and attention sums in another order, which can move an int8 activation
//! code by one); the measured errors are printed. Greedy tokens chosen on the GPU must be
//! within 1e-2·(logit spread) of the CPU's best logit. Skipped without a CUDA device.
#![cfg(feature = "cuda")]

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use bitnet_core::cuda::CudaDevice;
use bitnet_models::bitnet::{Logits, Scratch};
use bitnet_models::cuda_model::{CudaModel, CudaOptions};
use bitnet_models::kv_cache::{KvCache, KvDType};

/// The tests share one device and its memory pool (the process keeps one `CudaDevice` per
/// GPU), and one of them counts the pool's driver allocations: they run one at a time.
fn gpu_lock() -> MutexGuard<'static, ()> {
    static GPU: Mutex<()> = Mutex::new(());
    GPU.lock().unwrap_or_else(|e| e.into_inner())
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut n, mut d) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        assert!(x.is_finite(), "non-finite GPU logit");
        n += ((x - y) as f64).powi(2);
        d += (y as f64).powi(2);
    }
    (n / d.max(1e-30)).sqrt()
}

#[test]
fn tiny_model_logits_and_greedy_match_cpu() {
    let _gpu = gpu_lock();
    if !CudaDevice::is_available() {
        eprintln!("skipped: no CUDA device");
        return;
    }
    // The build tree's path, or (binary carried to another machine) the working directory's.
    let mut root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-bitnet");
    if !root.exists() {
        root = Path::new("fixtures/tiny-bitnet").to_path_buf();
    }
    let loaded = bitnet_models::load::load(&root, Default::default()).expect("tiny model");
    let model = loaded.model;
    let c = model.config.clone();
    let v = c.vocab_size;
    let prompt: Vec<u32> = (0..23u32).map(|i| (i * 37 + 5) % v as u32).collect();

    // CPU reference: prefill with all logits, then greedy decode one token at a time.
    let mut cache = KvCache::new(
        c.n_layers,
        c.n_kv_heads,
        c.head_dim,
        c.max_ctx,
        KvDType::F16,
    );
    let mut scratch = Scratch::new();
    let cpu_pre = model
        .forward(&prompt, &mut cache, &mut scratch, Logits::All)
        .unwrap();

    let mut gpu = CudaModel::new(&model, 0).expect("upload");
    eprintln!("device: {}", gpu.device_name());
    let gpu_pre = gpu.forward(&prompt, Logits::All).unwrap();
    let mut worst = 0.0f64;
    for i in 0..prompt.len() {
        let e = rel_err(&gpu_pre[i * v..(i + 1) * v], &cpu_pre[i * v..(i + 1) * v]);
        worst = worst.max(e);
    }
    eprintln!(
        "prefill of {} tokens: worst per-position logits rel err {worst:.2e}",
        prompt.len()
    );
    assert!(worst <= 2e-2, "prefill logits rel err {worst}");

    // Chunked prefill (4 tokens per chunk) gives bit-identical logits to one batch.
    let mut chunked = CudaModel::with_options(
        &model,
        0,
        CudaOptions {
            max_batch: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let ch = chunked.forward(&prompt, Logits::All).unwrap();
    assert_eq!(ch.len(), gpu_pre.len());
    assert!(
        ch.iter()
            .zip(&gpu_pre)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "chunked prefill differs"
    );
    let last = chunked.forward(&[7], Logits::Last).unwrap();

    // Decode: GPU graph-replayed greedy steps vs the CPU, teacher-forced on the CPU's tokens.
    let mut tok = (0..v)
        .max_by(|&a, &b| {
            cpu_pre[(prompt.len() - 1) * v + a].total_cmp(&cpu_pre[(prompt.len() - 1) * v + b])
        })
        .unwrap() as u32;
    let mut agree = 0;
    let steps = 24;
    let mut worst_step = 0.0f64;
    for step in 0..steps {
        let cpu = model
            .forward(&[tok], &mut cache, &mut scratch, Logits::Last)
            .unwrap();
        let g = gpu.greedy_next(tok).unwrap();
        let glog = gpu.last_logits().unwrap();
        let e = rel_err(&glog, &cpu);
        worst_step = worst_step.max(e);
        let cmax = cpu.iter().cloned().fold(f32::MIN, f32::max);
        let cmin = cpu.iter().cloned().fold(f32::MAX, f32::min);
        let cbest = cpu.iter().position(|&x| x == cmax).unwrap() as u32;
        assert!(
            cmax - cpu[g as usize] <= 1e-2 * (cmax - cmin),
            "step {step}: GPU chose {g} (CPU logit {}), CPU best {cbest} ({cmax})",
            cpu[g as usize]
        );
        // The on-GPU arg-max is the arg-max of the GPU's own logits.
        let gbest = glog.iter().cloned().fold(f32::MIN, f32::max);
        assert_eq!(glog[g as usize], gbest, "step {step}: fused arg-max");
        if g == cbest {
            agree += 1;
        }
        tok = cbest;
    }
    eprintln!(
        "decode: {agree}/{steps} greedy tokens identical, worst logits rel err {worst_step:.2e}, {}",
        gpu.graph_status()
    );
    assert!(worst_step <= 2e-2, "decode logits rel err {worst_step}");
    assert_eq!(gpu.position(), prompt.len() + steps);

    // The single-token forward path (matrix-vector kernels, no graph) agrees as well.
    let mut cache2 = KvCache::new(
        c.n_layers,
        c.n_kv_heads,
        c.head_dim,
        c.max_ctx,
        KvDType::F16,
    );
    let _ = model
        .forward(&prompt, &mut cache2, &mut scratch, Logits::Last)
        .unwrap();
    let cpu7 = model
        .forward(&[7], &mut cache2, &mut scratch, Logits::Last)
        .unwrap();
    let e = rel_err(&last, &cpu7);
    eprintln!("forward(1 token) after chunked prefill: rel err {e:.2e}");
    assert!(e <= 2e-2);

    // A sampling step returns the k largest of its own logits (ties to lower ids), selected
    // on the GPU.
    for k in [1usize, 40, 1024] {
        let mut c = gpu.top_next(tok, k, &[]).unwrap();
        let glog = gpu.last_logits().unwrap();
        let mut want: Vec<(f32, u32)> = glog
            .iter()
            .enumerate()
            .map(|(i, &l)| (l, i as u32))
            .collect();
        let desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        want.sort_by(desc);
        want.truncate(k.min(glog.len()));
        c.sort_by(desc);
        let bits = |v: &[(f32, u32)]| v.iter().map(|&(l, i)| (l.to_bits(), i)).collect::<Vec<_>>();
        assert_eq!(bits(&c), bits(&want), "top-{k} candidates");
        tok = c[0].1;
    }
    // With extra ids (a repetition penalty's recent tokens), their logits follow.
    let extra = [5u32, 900, 5];
    let c = gpu.top_next(tok, 40, &extra).unwrap();
    let glog = gpu.last_logits().unwrap();
    assert_eq!(c.len(), 43);
    for (&(l, i), &e) in c[40..].iter().zip(&extra) {
        assert_eq!(
            (l.to_bits(), i),
            (glog[e as usize].to_bits(), e),
            "extra id {e}"
        );
    }
    tok = c[0].1;
    eprintln!("top-k candidates on the GPU: exact for k = 1, 40, 1024, and extra ids");

    // No device allocation in the decode loop.
    let before = gpu.device().pool().driver_allocations();
    for _ in 0..8 {
        tok = gpu.greedy_next(tok).unwrap();
        tok = gpu.top_next(tok, 40, &[1, 2]).unwrap()[0].1;
    }
    assert_eq!(
        gpu.device().pool().driver_allocations(),
        before,
        "decode allocated"
    );

    // Graph replay with programmatic dependent launch (the default on sm_90) and eager
    // launches without it give bit-identical decode logits: every kernel waits for its
    // predecessor before reading what it wrote.
    let pdl = gpu.device().pdl_enabled();
    let mut runs: Vec<Vec<f32>> = Vec::new();
    for eager in [false, true] {
        gpu.reset();
        gpu.forward(&prompt, Logits::Last).unwrap();
        if eager {
            gpu.device().set_pdl(false);
            gpu.set_use_graph(false);
        }
        let mut t = 3u32;
        let mut all = Vec::new();
        for _ in 0..6 {
            t = gpu.greedy_next(t).unwrap();
            all.extend(gpu.last_logits().unwrap());
        }
        runs.push(all);
    }
    gpu.device().set_pdl(pdl);
    gpu.set_use_graph(true);
    assert!(
        runs[0]
            .iter()
            .zip(&runs[1])
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "graph/PDL decode differs from eager decode"
    );
    eprintln!("decode: graph replay (PDL {pdl}) and eager launches bit-identical over 6 steps");

    // The persistent decode kernel (opt-in) against ten launches per layer: the same
    // integer products; attention and the norms' f64 sums run in another order, so the
    // logits agree closely, not bit for bit.
    gpu.set_decode_blocks_per_sm(1);
    eprintln!("decode path: {}", gpu.decode_status());
    assert!(
        gpu.decode_status().starts_with("persistent kernel"),
        "{}",
        gpu.decode_status()
    );
    {
        // The same six tokens (not each path's own choices) through both paths.
        let feed = [3u32, 17, 99, 5, 250, 8];
        let mut logits = Vec::new();
        for persistent in [true, false] {
            gpu.set_persistent_decode(persistent);
            gpu.reset();
            gpu.forward(&prompt, Logits::Last).unwrap();
            let mut all = Vec::new();
            for &t in &feed {
                gpu.greedy_next(t).unwrap();
                all.push(gpu.last_logits().unwrap());
            }
            logits.push(all);
        }
        gpu.set_persistent_decode(true);
        let mut worst = 0.0f64;
        for (a, b) in logits[0].iter().zip(&logits[1]) {
            worst = worst.max(rel_err(a, b));
        }
        eprintln!(
            "decode: persistent kernel vs separate kernels, worst logits rel err {worst:.2e}"
        );
        assert!(worst <= 2e-2, "persistent decode differs: {worst}");
    }

    // Reset restarts at position 0 and reproduces the first prefill.
    gpu.reset();
    let again = gpu.forward(&prompt, Logits::Last).unwrap();
    let n = prompt.len();
    assert!(again
        .iter()
        .zip(&gpu_pre[(n - 1) * v..])
        .all(|(a, b)| a.to_bits() == b.to_bits()));

    // Errors, not panics.
    assert!(gpu.forward(&[], Logits::Last).is_err());
    assert!(gpu.forward(&[v as u32], Logits::Last).is_err());
}

/// `steps` greedy GPU decode steps from token `tok`, teacher-forced on the CPU's tokens:
/// returns the worst relative error of the GPU's logits against the CPU's, and the next
/// token.
fn greedy_against_cpu(
    model: &bitnet_models::bitnet::Model,
    cache: &mut KvCache,
    scratch: &mut Scratch,
    gpu: &mut CudaModel,
    mut tok: u32,
    steps: usize,
) -> (f64, u32) {
    let mut worst = 0.0f64;
    for _ in 0..steps {
        let cpu = model.forward(&[tok], cache, scratch, Logits::Last).unwrap();
        gpu.greedy_next(tok).unwrap();
        worst = worst.max(rel_err(&gpu.last_logits().unwrap(), &cpu));
        tok = (0..cpu.len())
            .max_by(|&a, &b| cpu[a].total_cmp(&cpu[b]))
            .unwrap() as u32;
    }
    (worst, tok)
}

/// The persistent decode kernel for every head dimension it is built for (32, 64, 128,
/// 256), on small random models, against the CPU: greedy steps teacher-forced on the CPU's
/// tokens, logits within the tolerance of the test above.
#[test]
fn persistent_decode_matches_cpu_for_each_head_dim() {
    let _gpu = gpu_lock();
    if !CudaDevice::is_available() {
        eprintln!("skipped: no CUDA device");
        return;
    }
    use bitnet_core::quant::ternary::TernaryLayout;
    use bitnet_models::bitnet::Config;
    for (hd, nh, nkv) in [
        (32usize, 8usize, 2usize),
        (64, 4, 4),
        (128, 2, 1),
        (256, 2, 2),
    ] {
        let c = Config {
            vocab_size: 512,
            hidden: 256,
            intermediate: 384,
            n_layers: 2,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            rms_eps: 1e-5,
            rope_theta: 10000.0,
            max_ctx: 96,
            bos: None,
            eos: None,
        };
        let model = bitnet_models::synthetic::build(c.clone(), TernaryLayout::I2S, 7).unwrap();
        let mut cache = KvCache::new(c.n_layers, nkv, hd, c.max_ctx, KvDType::F16);
        let mut scratch = Scratch::new();
        let opts = CudaOptions {
            persistent_decode: true,
            ..Default::default()
        };
        let mut gpu = CudaModel::with_options(&model, 0, opts).unwrap();
        assert!(
            gpu.decode_status().starts_with("persistent kernel"),
            "hd {hd}: {}",
            gpu.decode_status()
        );
        let prompt = [5u32, 77, 300, 12, 9];
        model
            .forward(&prompt, &mut cache, &mut scratch, Logits::Last)
            .unwrap();
        gpu.forward(&prompt, Logits::Last).unwrap();
        let (worst, _) = greedy_against_cpu(&model, &mut cache, &mut scratch, &mut gpu, 42, 40);
        eprintln!(
            "head_dim {hd} ({nh} heads, {nkv} kv): {}, worst logits rel err {worst:.2e}",
            gpu.decode_status()
        );
        assert!(worst <= 2e-2, "head_dim {hd}: rel err {worst}");
    }
}

/// Greedy decode on the separate kernels across 512 attended positions, where the step
/// switches from its first captured graph to a second one whose decode attention runs 16
/// blocks per KV head: logits against the CPU at every step, teacher-forced on the CPU's
/// tokens (also after a second prompt, at 2,040..2,056).
#[test]
fn decode_across_the_wide_attention_graph_matches_cpu() {
    let _gpu = gpu_lock();
    if !CudaDevice::is_available() {
        eprintln!("skipped: no CUDA device");
        return;
    }
    use bitnet_core::quant::ternary::TernaryLayout;
    use bitnet_models::bitnet::Config;
    let c = Config {
        vocab_size: 512,
        hidden: 256,
        intermediate: 384,
        n_layers: 2,
        n_heads: 8,
        n_kv_heads: 2,
        head_dim: 128,
        rms_eps: 1e-5,
        rope_theta: 10000.0,
        max_ctx: 2100,
        bos: None,
        eos: None,
    };
    let model = bitnet_models::synthetic::build(c.clone(), TernaryLayout::I2S, 11).unwrap();
    let (nkv, hd) = (c.n_kv_heads, c.head_dim);
    let mut cache = KvCache::new(c.n_layers, nkv, hd, c.max_ctx, KvDType::F16);
    let mut scratch = Scratch::new();
    let mut gpu = CudaModel::new(&model, 0).unwrap();
    let mut worst = 0.0f64;
    let mut tok = 42u32;
    // (prompt length, then greedy steps): positions 0..500, 500..524, 524..2040, 2040..2056.
    for (plen, steps) in [(500u32, 24), (1516, 16)] {
        let prompt: Vec<u32> = (0..plen).map(|i| (i * 37 + 5) % 512).collect();
        model
            .forward(&prompt, &mut cache, &mut scratch, Logits::Last)
            .unwrap();
        gpu.forward(&prompt, Logits::Last).unwrap();
        let (w, next) = greedy_against_cpu(&model, &mut cache, &mut scratch, &mut gpu, tok, steps);
        worst = worst.max(w);
        tok = next;
    }
    assert_eq!(gpu.position(), 2056);
    assert_eq!(gpu.graph_status(), "CUDA graph replay");
    eprintln!("decode at positions 500..524 and 2040..2056: worst logits rel err {worst:.2e}");
    assert!(worst <= 2e-2, "rel err {worst}");
}
