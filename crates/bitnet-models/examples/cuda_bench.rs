//! CUDA benchmark: copy bandwidth, the ternary matrix-vector kernel on the 2B-4T shapes
//! (achieved GB/s against the copy bandwidth measured in the same run), the prefill
//! product, and end-to-end prefill-512 / decode tok/s of the synthetic 2B-4T model.
//!
//! `cargo run --release --features cuda --example cuda_bench [-- --quick]`

use std::time::Instant;

use bitnet_core::cuda::attention::{attention_decode, DecodeScratch};
use bitnet_core::cuda::ops::{self, AttnDims};
use bitnet_core::cuda::ternary::{matmul, DevActs, DevTernary, Epilogue};
use bitnet_core::cuda::{CudaDevice, Stream};
use bitnet_core::quant::ternary::TernaryLayout;
use bitnet_models::bitnet::{Config, Logits};
use bitnet_models::cuda_model::CudaModel;

type R<T> = Result<T, Box<dyn std::error::Error>>;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn time_graph(s: &Stream, reps: usize, launch: &mut dyn FnMut() -> R<()>) -> R<f64> {
    // Capture `launch` once, replay: warm up, then median of `reps` timed replays (ms).
    s.begin_capture()?;
    let r = launch();
    let g = s.end_capture()?;
    r?;
    for _ in 0..3 {
        g.launch()?;
    }
    s.sync()?;
    let mut t = Vec::new();
    for _ in 0..reps {
        let a = s.record()?;
        g.launch()?;
        let b = s.record()?;
        b.synchronize()?;
        t.push(a.elapsed_ms(&b)? as f64);
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[t.len() / 2])
}

/// The small kernels of a decode step, each chained 30 times in one graph as in a step (one
/// buffer set per layer, so the KV caches come from DRAM): decode attention of the 2B-4T
/// shape at position 576, norm→int8 of 2560 and 6912 values, an empty one-thread kernel (the
/// cost of a dependent launch itself) and a 16-byte copy spread over 8 blocks per SM (the
/// same with a grid to schedule).
fn latency_kernels(dev: &CudaDevice, s: &Stream, table: &mut Vec<String>) -> R<()> {
    let layers = 30;
    let d = AttnDims {
        n_heads: 20,
        n_kv_heads: 5,
        head_dim: 128,
        max_ctx: 4096,
    };
    let mut rng = Rng(0x5EED);
    let mut f16s = |n: usize| -> Vec<u16> {
        // Values in ±1 as f16 bits (sign, exponent 0x3800 ≈ 0.5 .. 1).
        (0..n)
            .map(|_| (0x3800 | (rng.next() & 0x3ff) | ((rng.next() & 1) << 15)) as u16)
            .collect()
    };
    let mut kvs = Vec::new();
    for _ in 0..layers {
        let k = dev.upload(s, &f16s(d.cache_len()))?;
        let v = dev.upload(s, &f16s(d.cache_len()))?;
        kvs.push((k, v));
    }
    let qkv: Vec<f32> = (0..d.qkv_width())
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let dq = dev.upload(s, &qkv)?;
    let mut out = dev.alloc::<f32>(d.n_heads * d.head_dim)?;
    let mut scratch = DecodeScratch::new(dev, s, d, d.max_ctx)?;
    for (pos, wide) in [
        (64i32, false),
        (576, false),
        (576, true),
        (3500, false),
        (3500, true),
    ] {
        let dctl = dev.upload(s, &[pos, 1, 0])?;
        let ms = time_graph(s, 7, &mut || {
            for (k, v) in &kvs {
                attention_decode(dev, s, &dq, k, v, &mut out, &dctl, d, &mut scratch, wide)?;
            }
            Ok(())
        })?;
        let per = ms * 1e3 / layers as f64;
        let w = if wide { ", wide" } else { "" };
        println!("decode attention 20/5 heads × 128 at position {pos}{w}: {per:.2} µs/launch (chain of {layers})");
        table.push(format!(
            "| decode attention (20/5 heads, hd 128, position {pos}{w}) | {per:.2} µs | |"
        ));
    }
    for k in [2560usize, 6912] {
        // activation-like rows and norm weights (distinct values)
        let mut seed = 0x9E37_79B9u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32
        };
        let xs: Vec<Vec<f32>> = (0..layers)
            .map(|_| (0..k).map(|_| 8.0 * next() - 4.0).collect())
            .collect();
        let dx: Vec<_> = xs
            .iter()
            .map(|x| dev.upload(s, x))
            .collect::<Result<_, _>>()?;
        let g = dev.upload(s, &(0..k).map(|_| 0.5 + next()).collect::<Vec<f32>>())?;
        let mut acts = bitnet_core::cuda::ternary::DevActs::new(dev, 1, k)?;
        let ms = time_graph(s, 7, &mut || {
            for x in &dx {
                ops::rmsnorm_quant(dev, s, x, 0, 1, k, &g, 1e-5, &mut acts)?;
            }
            Ok(())
        })?;
        let per = ms * 1e3 / layers as f64;
        println!("norm→int8 of {k}: {per:.2} µs/launch (chain of {layers})");
        table.push(format!("| norm→int8 of {k} values | {per:.2} µs | |"));
    }
    let ms = time_graph(s, 7, &mut || {
        for _ in 0..layers {
            ops::gpu_sleep(dev, s, 0)?;
        }
        Ok(())
    })?;
    let per = ms * 1e3 / layers as f64;
    println!(
        "empty one-thread kernel: {per:.2} µs/launch (chain of {layers}; dependent-launch floor)"
    );
    table.push(format!(
        "| empty one-thread kernel (dependent-launch floor) | {per:.2} µs | |"
    ));
    let src = dev.alloc_exact::<u8>(16)?;
    let mut dst = dev.alloc_exact::<u8>(16)?;
    let ms = time_graph(s, 7, &mut || {
        for _ in 0..layers {
            ops::copy(dev, s, &src, &mut dst, 16)?;
        }
        Ok(())
    })?;
    let per = ms * 1e3 / layers as f64;
    let blocks = 8 * dev.sm_count();
    println!("16-byte copy over {blocks} blocks: {per:.2} µs/launch (chain of {layers})");
    table.push(format!(
        "| 16-byte copy over {blocks} blocks | {per:.2} µs | |"
    ));
    Ok(())
}

fn main() -> R<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    // --model-only: skip the kernel benchmarks (copy bandwidth is still measured).
    let model_only = std::env::args().any(|a| a == "--model-only");
    // --decode-only: the model's decode at positions 513..641 and at a long context only
    // (graph + PDL, separate kernels; for sweeps of environment settings).
    let decode_only = std::env::args().any(|a| a == "--decode-only");
    let model_only = model_only || decode_only;
    let dev = CudaDevice::new(0)?;
    let s = dev.new_stream()?;
    println!(
        "device: {} ({}), {} SMs",
        dev.name(),
        dev.arch(),
        dev.sm_count()
    );
    let mut table: Vec<String> = Vec::new();

    // Copy bandwidth (bytes read + written), 1 GiB.
    let n = 1usize << 30;
    let src = dev.alloc_exact::<u8>(n)?;
    let mut dst = dev.alloc_exact::<u8>(n)?;
    let mut srcm = src;
    srcm.fill_bytes(&s, 0x5A)?;
    let ms = time_graph(&s, 10, &mut || Ok(ops::copy(&dev, &s, &srcm, &mut dst, n)?))?;
    let copy_gbs = 2.0 * n as f64 / (ms * 1e-3) / 1e9;
    println!("copy 1 GiB: {ms:.3} ms, {copy_gbs:.0} GB/s (read + write)");
    table.push(format!(
        "| copy bandwidth (1 GiB, read+write) | {copy_gbs:.0} GB/s | 100 % |"
    ));
    drop(srcm);
    drop(dst);

    // Ternary GEMV on the 2B-4T shapes; many weight copies so L2 (50-60 MB) cannot hold them.
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let shapes: &[(usize, usize)] = if model_only {
        &[]
    } else {
        &[
            (2560usize, 2560usize),
            (640, 2560),
            (6912, 2560),
            (2560, 6912),
            (3840, 2560),
            (13824, 2560),
        ]
    };
    for &(nr, k) in shapes {
        let trits: Vec<i8> = (0..nr * k).map(|_| (rng.next() % 3) as i8 - 1).collect();
        let scales = vec![0.02f32; nr];
        let one = DevTernary::from_trits(&dev, &s, &trits, nr, k, &scales, None)?;
        let wbytes = one.nbytes();
        let copies = (200usize << 20).div_ceil(wbytes).clamp(4, 64);
        let mut ws = vec![one];
        for _ in 1..copies {
            ws.push(DevTernary::from_trits(
                &dev, &s, &trits, nr, k, &scales, None,
            )?);
        }
        let q: Vec<i8> = (0..k).map(|_| (rng.next() % 255) as i8).collect();
        let acts = DevActs::upload(&dev, &s, &q, &[0.01], k)?;
        let mut out = dev.alloc::<f32>(nr)?;
        let rounds = (400 / copies).max(2);
        let launches = rounds * copies;
        let pdl0 = dev.pdl_enabled();
        let mut per_off = None;
        if pdl0 {
            // The same chain without programmatic dependent launch, for comparison.
            dev.set_pdl(false);
            let ms = time_graph(&s, 7, &mut || {
                for _ in 0..rounds {
                    for w in &ws {
                        matmul(&dev, &s, w, &acts, 1, &mut out, Epilogue::Store, false)?;
                    }
                }
                Ok(())
            })?;
            dev.set_pdl(true);
            per_off = Some(ms * 1e3 / launches as f64);
        }
        let ms = time_graph(&s, 7, &mut || {
            for _ in 0..rounds {
                for w in &ws {
                    matmul(&dev, &s, w, &acts, 1, &mut out, Epilogue::Store, false)?;
                }
            }
            Ok(())
        })?;
        let per = ms * 1e3 / launches as f64;
        if let Some(off) = per_off {
            println!("gemv {nr}×{k}: {off:.2} µs/call without PDL");
        }
        let bytes = wbytes + ws[0].kp() + 4 * nr;
        let gbs = bytes as f64 / (per * 1e-6) / 1e9;
        println!(
            "gemv {nr}×{k}: {per:.2} µs/call back-to-back ({copies} weight copies), {gbs:.0} GB/s = {:.0} % of copy",
            100.0 * gbs / copy_gbs
        );
        table.push(format!(
            "| ternary GEMV {nr}×{k} ({:.2} MB) | {per:.2} µs, {gbs:.0} GB/s | {:.0} % |",
            wbytes as f64 / 1e6,
            100.0 * gbs / copy_gbs
        ));
        // The prefill product on 512 tokens of the same shape (tensor cores).
        if nr != 640 {
            let m = 512;
            let qm: Vec<i8> = (0..m * k).map(|_| (rng.next() % 255) as i8).collect();
            let am = DevActs::upload(&dev, &s, &qm, &vec![0.01; m], k)?;
            let mut om = dev.alloc::<f32>(m * nr)?;
            let ms = time_graph(&s, 7, &mut || {
                for w in ws.iter().take(4) {
                    matmul(&dev, &s, w, &am, m, &mut om, Epilogue::Store, false)?;
                }
                Ok(())
            })?;
            let per = ms / 4.0;
            let tops = 2.0 * (m * nr * k) as f64 / (per * 1e-3) / 1e12;
            println!(
                "gemm 512×{nr}×{k}: {:.1} µs, {tops:.0} TOP/s (int8 MMA)",
                per * 1e3
            );
            table.push(format!(
                "| ternary GEMM 512×{nr}×{k} | {:.1} µs, {tops:.0} TOP/s | |",
                per * 1e3
            ));
        }
    }

    if !model_only {
        latency_kernels(&dev, &s, &mut table)?;
    }

    // End to end on the synthetic 2B-4T model.
    let t0 = Instant::now();
    let model = bitnet_models::synthetic::build(Config::b2b4t(), TernaryLayout::I2S, 42)?;
    println!(
        "synthetic 2B-4T built on the CPU in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let mut gm = CudaModel::new(&model, 0)?;
    println!(
        "uploaded in {:.1} s: {:.0} MB of ternary + head weights (head: {})",
        t0.elapsed().as_secs_f64(),
        gm.weight_bytes() as f64 / 1e6,
        gm.head_format()
    );
    drop(model);
    let v = gm.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..512u32).map(|i| (i * 7919 + 13) % v).collect();
    let mut pre = Vec::new();
    for _ in 0..(if quick || decode_only { 2 } else { 4 }) {
        gm.reset();
        let t = Instant::now();
        let l = gm.forward(&prompt, Logits::Last)?;
        pre.push(t.elapsed().as_secs_f64());
        assert!(l.iter().all(|x| x.is_finite()));
    }
    let pre_best = pre[1..].iter().cloned().fold(f64::MAX, f64::min);
    let pre_tps = 512.0 / pre_best;
    println!(
        "prefill 512: {:.2} ms → {pre_tps:.0} tok/s (runs: {pre:?})",
        pre_best * 1e3
    );
    let n_dec = 128;
    let mut dec = Vec::new();
    let pdl_default = dev.pdl_enabled();
    // (persistent kernel blocks per SM (0 = separate kernels), graph, programmatic
    // dependent launch)
    let variants: &[(usize, bool, bool)] = if decode_only {
        &[(0, true, pdl_default)]
    } else {
        &[
            (1, true, pdl_default),
            (2, true, pdl_default),
            (1, false, pdl_default),
            (0, true, pdl_default),
            (0, true, false),
            (0, false, pdl_default),
        ]
    };
    for &(bps, graph, pdl) in variants {
        dev.set_pdl(pdl);
        if bps > 0 {
            gm.set_decode_blocks_per_sm(bps);
        } else {
            gm.set_persistent_decode(false);
        }
        gm.set_use_graph(false);
        gm.set_use_graph(graph);
        gm.reset();
        gm.forward(&prompt, Logits::Last)?;
        let mut tok = gm.greedy_next(1)?; // warm-up (and graph capture)
        let t = Instant::now();
        for _ in 0..n_dec {
            tok = gm.greedy_next(tok)?;
        }
        let dt = t.elapsed().as_secs_f64();
        let tps = n_dec as f64 / dt;
        let label = format!(
            "{}, {}{}",
            gm.decode_status(),
            if graph { "CUDA graph" } else { "eager" },
            if pdl { ", PDL" } else { "" }
        );
        println!(
            "decode {n_dec} tokens at positions 513..641: {:.3} ms/token → {tps:.0} tok/s ({label}; {})",
            dt * 1e3 / n_dec as f64,
            gm.graph_status()
        );
        dec.push((label, tps, dt * 1e3 / n_dec as f64));
    }
    dev.set_pdl(pdl_default);
    gm.set_use_graph(false);
    gm.set_use_graph(true);
    gm.set_persistent_decode(false);
    let ms = gm.time_graph_replays(1, n_dec)?;
    println!(
        "decode step at position {}, {n_dec} graph replays back to back (no host round trip): {ms:.3} ms/token → {:.0} tok/s",
        gm.position(),
        1e3 / ms
    );
    table.push(format!(
        "| decode step, graph replays back to back (position {}, no host round trip) | {:.0} tok/s ({ms:.3} ms/token) | |",
        gm.position(),
        1e3 / ms
    ));
    // The per-kernel profiles (separate kernels, then the persistent kernel).
    let profiled: &[usize] = if decode_only { &[] } else { &[0, 1] };
    for &bps in profiled {
        if bps == 0 {
            gm.set_persistent_decode(false);
        } else {
            gm.set_decode_blocks_per_sm(bps);
        }
        profile(&mut gm)?;
    }
    // Decode at a long context: the attention reads 2·ctx·kv_dim f16 values per layer.
    gm.set_persistent_decode(false);
    let long = 3456usize.min(gm.config().max_ctx.saturating_sub(n_dec + 2));
    let lp: Vec<u32> = (0..long as u32).map(|i| (i * 7919 + 13) % v).collect();
    gm.reset();
    for c in lp.chunks(512) {
        gm.forward(c, Logits::Last)?;
    }
    let mut tok = gm.greedy_next(1)?;
    let t = Instant::now();
    for _ in 0..n_dec {
        tok = gm.greedy_next(tok)?;
    }
    let ms_long = t.elapsed().as_secs_f64() * 1e3 / n_dec as f64;
    println!(
        "decode {n_dec} tokens at positions {}..{}: {ms_long:.3} ms/token → {:.0} tok/s (CUDA graph, PDL)",
        long + 1,
        long + 1 + n_dec,
        1e3 / ms_long
    );
    table.push(format!(
        "| decode at positions {}..{} (graph + PDL) | {:.0} tok/s ({ms_long:.3} ms/token) | |",
        long + 1,
        long + 1 + n_dec,
        1e3 / ms_long
    ));
    if !decode_only {
        profile(&mut gm)?;
    }
    let bytes_tok = gm.weight_bytes() as f64;
    for (label, tps, ms) in &dec {
        table.push(format!(
            "| decode (2B-4T, {label}) | {tps:.0} tok/s ({ms:.3} ms/token; {:.0} GB/s of weights) | {:.0} % |",
            bytes_tok / (ms * 1e-3) / 1e9,
            100.0 * bytes_tok / (ms * 1e-3) / 1e9 / copy_gbs
        ));
    }
    table.push(format!(
        "| prefill 512 (2B-4T) | {pre_tps:.0} tok/s ({:.2} ms) | |",
        pre_best * 1e3
    ));

    println!("\n## {} ({})\n", dev.name(), dev.arch());
    println!("| measure | result | of copy BW |");
    println!("| --- | --- | --- |");
    for l in &table {
        println!("{l}");
    }
    Ok(())
}

/// Per-kernel GPU time of one eager decode step (an event after every kernel; the step is
/// queued in full before it runs). Median over 5 profiled steps per label.
fn profile(gm: &mut CudaModel) -> R<()> {
    let mut runs = Vec::new();
    for _ in 0..6 {
        runs.push(gm.profile_decode(1)?);
    }
    runs.remove(0);
    println!(
        "\n## per-kernel decode profile ({}; eager, events between kernels; µs per token)\n",
        gm.decode_status()
    );
    println!("| kernel | launches | µs/token | µs/launch | share |");
    println!("| --- | --- | --- | --- | --- |");
    let total: f64 = {
        let mut t: Vec<f64> = runs
            .iter()
            .map(|r| {
                r.iter()
                    .filter(|e| !e.0.starts_with("stage: "))
                    .map(|e| e.2)
                    .sum()
            })
            .collect();
        t.sort_by(|a, b| a.total_cmp(b));
        t[t.len() / 2]
    };
    for (i, (name, n, _)) in runs[0].iter().enumerate() {
        let mut v: Vec<f64> = runs.iter().map(|r| r[i].2).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let ms = v[v.len() / 2];
        println!(
            "| {name} | {n} | {:.1} | {:.2} | {:.1} % |",
            ms * 1e3,
            ms * 1e3 / *n as f64,
            100.0 * ms / total
        );
    }
    println!(
        "| **total (eager, with events)** | | {:.1} | | |",
        total * 1e3
    );
    Ok(())
}
