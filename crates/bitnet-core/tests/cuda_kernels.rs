//! Backend parity: every CUDA kernel against the CPU reference on fresh random inputs.
//! Integer results (ternary products, int8 codes, KV-cache bits, embedding rows, arg-max)
//! must match exactly; float results within the tolerances stated at each check. Outputs
//! are poisoned (0xFF bytes = NaN) before each launch so an unwritten element fails.
//! Without a CUDA device the tests print "skipped: no CUDA device" and pass.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use bitnet_core::cuda::attention::{attention, attention_decode, DecodeScratch};
use bitnet_core::cuda::head::{self, DevHead, HeadInput};
use bitnet_core::cuda::ops::{self, AttnDims, RopeTables};
use bitnet_core::cuda::ternary::{matmul, DevActs, DevTernary, Epilogue};
use bitnet_core::cuda::{CudaDevice, DevBuf, Stream};
use bitnet_core::nn::attention::{causal_attention, AttnShape};
use bitnet_core::nn::bitlinear::{BitLinear, QuantizedActs};
use bitnet_core::nn::norm::{rmsnorm, rmsnorm_quantize};
use bitnet_core::nn::rope::{Rope, RopeStyle};
use bitnet_core::quant::dense::{DenseKind, DenseMatrix};
use bitnet_core::quant::q6_k;
use bitnet_core::quant::ternary::{TernaryLayout, TernaryMatrix};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn device() -> Option<(Arc<CudaDevice>, Stream)> {
    if !CudaDevice::is_available() {
        eprintln!("skipped: no CUDA device");
        return None;
    }
    let dev = CudaDevice::new(0).expect("CUDA device 0");
    let s = dev.new_stream().expect("stream");
    eprintln!("running on {} ({})", dev.name(), dev.arch());
    Some((dev, s))
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        assert!(x.is_finite(), "non-finite GPU value {x}");
        num += ((x - y) as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

fn random_acts(rng: &mut StdRng, m: usize, k: usize) -> QuantizedActs {
    let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let mut a = QuantizedActs::new();
    a.quantize(&x, k);
    a
}

fn random_bitlinear(rng: &mut StdRng, n: usize, k: usize, bias: bool) -> BitLinear {
    let t: Vec<i8> = (0..n * k).map(|_| rng.random_range(-1i8..=1)).collect();
    let scale = rng.random_range(0.01f32..0.1);
    let w = TernaryMatrix::from_trits(&t, n, k, scale, TernaryLayout::I2S).unwrap();
    let b = bias.then(|| (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect());
    BitLinear::new(w, b)
}

fn assert_bits_eq(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    let bad = gpu
        .iter()
        .zip(cpu)
        .enumerate()
        .find(|(_, (g, c))| g.to_bits() != c.to_bits());
    if let Some((i, (g, c))) = bad {
        panic!("{what}: element {i}: GPU {g} vs CPU {c} (exact match required)");
    }
}

#[test]
fn ternary_products_match_cpu_exactly() {
    let Some((dev, s)) = device() else { return };
    let mut rng = StdRng::seed_from_u64(0xB17);
    // 2B-4T shapes, plus odd ones: rows not a multiple of the tiles, K not a multiple of 64.
    let shapes = [
        (2560, 2560),
        (640, 2560),
        (6912, 2560),
        (2560, 6912),
        (250, 200),
        (3, 64),
        (7, 64),
        (5, 2560),
        (9, 13000),
    ];
    for &(n, k) in &shapes {
        let bias = n == 250;
        let w = random_bitlinear(&mut rng, n, k, bias);
        let dw = DevTernary::from_bitlinear(&dev, &s, &[&w], false).unwrap();
        for &m in &[1usize, 2, 37, 130] {
            let a = random_acts(&mut rng, m, k);
            let mut cpu = vec![0.0f32; m * n];
            w.forward(&a, &mut cpu).unwrap();
            let da = DevActs::upload(&dev, &s, &a.q, &a.factors, k).unwrap();
            let paths: &[bool] = if m == 1 { &[false, true] } else { &[false] };
            for &force_gemm in paths {
                let mut out = dev.alloc::<f32>(m * n).unwrap();
                out.fill_bytes(&s, 0xFF).unwrap();
                matmul(&dev, &s, &dw, &da, m, &mut out, Epilogue::Store, force_gemm).unwrap();
                let gpu = out.read(&s, m * n).unwrap();
                let path = if m == 1 && !force_gemm {
                    "gemv"
                } else {
                    "gemm"
                };
                assert_bits_eq(&format!("{path} {n}×{k} m={m}"), &gpu, &cpu);
            }
            // Residual add fused into the epilogue.
            let init: Vec<f32> = (0..m * n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            let mut out = dev.upload(&s, &init).unwrap();
            matmul(&dev, &s, &dw, &da, m, &mut out, Epilogue::Add, false).unwrap();
            let gpu = out.read(&s, m * n).unwrap();
            let want: Vec<f32> = init.iter().zip(&cpu).map(|(a, b)| a + b).collect();
            assert_bits_eq(&format!("add {n}×{k} m={m}"), &gpu, &want);
        }
        eprintln!("ternary {n}×{k}: gemv, gemm and residual add exact");
    }
}

#[test]
fn fused_gate_up_relu2_matches_cpu_exactly() {
    let Some((dev, s)) = device() else { return };
    let mut rng = StdRng::seed_from_u64(0x6A7E);
    for &(n, k, m) in &[
        (6912usize, 2560usize, 1usize),
        (6912, 2560, 70),
        (100, 192, 1),
        (100, 192, 9),
        (50, 6912, 1),
        (3, 64, 1),
    ] {
        let g = random_bitlinear(&mut rng, n, k, false);
        let u = random_bitlinear(&mut rng, n, k, false);
        let a = random_acts(&mut rng, m, k);
        let mut cg = vec![0.0f32; m * n];
        let mut cu = vec![0.0f32; m * n];
        g.forward(&a, &mut cg).unwrap();
        u.forward(&a, &mut cu).unwrap();
        let want: Vec<f32> = cg
            .iter()
            .zip(&cu)
            .map(|(&g, &u)| {
                let r = g.max(0.0);
                r * r * u
            })
            .collect();
        let dw = DevTernary::from_bitlinear(&dev, &s, &[&g, &u], true).unwrap();
        let da = DevActs::upload(&dev, &s, &a.q, &a.factors, k).unwrap();
        let mut out = dev.alloc::<f32>(m * n).unwrap();
        out.fill_bytes(&s, 0xFF).unwrap();
        matmul(&dev, &s, &dw, &da, m, &mut out, Epilogue::Relu2, false).unwrap();
        assert_bits_eq(
            &format!("relu² {n}×{k} m={m}"),
            &out.read(&s, m * n).unwrap(),
            &want,
        );
    }
    eprintln!("gate/up relu²·up fusion exact");
}

#[test]
fn fused_qkv_rope_decode_equals_gemv_then_rope_kv() {
    // The decode q|k|v product with RoPE and the cache append in its epilogue gives exactly
    // what the product followed by rope_kv gives (both checked against the CPU elsewhere).
    let Some((dev, s)) = device() else { return };
    let mut rng = StdRng::seed_from_u64(0x9E0);
    // K = 2560: two pairs per warp; 6912: one pair, rows longer than the preloaded words;
    // 100: several pairs' words per lane.
    for (nh, nkv, hd, style, bias, k) in [
        (20usize, 5usize, 128usize, RopeStyle::Neox, false, 2560usize),
        (4, 2, 64, RopeStyle::Interleaved, true, 6912),
        (2, 1, 32, RopeStyle::Neox, false, 100),
    ] {
        let max_ctx = 300;
        let d = AttnDims {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            max_ctx,
        };
        let parts = [nh * hd, nkv * hd, nkv * hd].map(|n| random_bitlinear(&mut rng, n, k, bias));
        let w = DevTernary::from_bitlinear(&dev, &s, &[&parts[0], &parts[1], &parts[2]], false)
            .unwrap();
        let q: Vec<i8> = (0..k).map(|_| rng.random_range(-127i8..=127)).collect();
        let acts = DevActs::upload(&dev, &s, &q, &[0.013], k).unwrap();
        let rope = RopeTables::new(&dev, &s, hd, max_ctx, 10000.0, style).unwrap();
        let pos = 211i32;
        let ctl = dev.upload(&s, &[pos, 1, 0]).unwrap();
        let mut out = Vec::new();
        for fused in [false, true] {
            let mut kc = dev.alloc::<u16>(d.cache_len()).unwrap();
            let mut vc = dev.alloc::<u16>(d.cache_len()).unwrap();
            kc.fill_bytes(&s, 0).unwrap();
            vc.fill_bytes(&s, 0).unwrap();
            let mut qkv = dev.alloc::<f32>(d.qkv_width()).unwrap();
            if fused {
                ops::qkv_rope_decode(
                    &dev, &s, &w, &acts, &mut qkv, &mut kc, &mut vc, &rope, &ctl, d,
                )
                .unwrap();
            } else {
                matmul(&dev, &s, &w, &acts, 1, &mut qkv, Epilogue::Store, false).unwrap();
                ops::rope_kv(&dev, &s, &mut qkv, 1, &mut kc, &mut vc, &rope, &ctl, d).unwrap();
            }
            let qv = qkv.read(&s, nh * hd).unwrap();
            out.push((qv, kc.to_vec(&s).unwrap(), vc.to_vec(&s).unwrap()));
        }
        assert_bits_eq("rotated q", &out[1].0, &out[0].0);
        assert_eq!(out[1].1, out[0].1, "k cache");
        assert_eq!(out[1].2, out[0].2, "v cache");
        eprintln!("q|k|v + rope + kv fused, heads {nh}/{nkv} hd {hd} {style:?} K {k}: exact");
    }
}

#[test]
fn rmsnorm_quant_and_rmsnorm_match_cpu() {
    let Some((dev, s)) = device() else { return };
    let mut rng = StdRng::seed_from_u64(0x4E0);
    for &(m, k) in &[
        (1usize, 2560usize),
        (33, 2560),
        (5, 6912),
        (1, 6912),
        (4, 200),
        (2, 3000),
        (2, 10000),
        (3, 13),
        (2, 1002),
        (1, 20000),
    ] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-4.0f32..4.0)).collect();
        let w: Vec<f32> = (0..k).map(|_| rng.random_range(0.2f32..2.0)).collect();
        let eps = 1e-5;
        let mut cq = vec![0i8; m * k];
        let mut cf = vec![0.0f32; m];
        for r in 0..m {
            cf[r] = rmsnorm_quantize(&x[r * k..(r + 1) * k], &w, eps, &mut cq[r * k..(r + 1) * k]);
        }
        let dx = dev.upload(&s, &x).unwrap();
        let dw = dev.upload(&s, &w).unwrap();
        let mut acts = DevActs::new(&dev, m, k).unwrap();
        ops::rmsnorm_quant(&dev, &s, &dx, 0, m, k, &dw, eps, &mut acts).unwrap();
        let (gq, gf, gs) = acts.read(&s).unwrap();
        // Integer codes: exact, except that a product landing within rounding of a .5
        // boundary may round the other way when the f64 sum of squares is added in a
        // different order; we allow at most 1 in 10⁴ codes off by one, none by more.
        let off1 = gq
            .iter()
            .zip(&cq)
            .filter(|(a, b)| (**a as i32 - **b as i32).abs() == 1)
            .count();
        let off2 = gq
            .iter()
            .zip(&cq)
            .filter(|(a, b)| (**a as i32 - **b as i32).abs() > 1)
            .count();
        assert_eq!(off2, 0, "codes off by more than one");
        assert!(
            off1 * 10_000 <= m * k,
            "{off1} codes off by one of {}",
            m * k
        );
        for r in 0..m {
            let rel = ((gf[r] - cf[r]) / cf[r]).abs();
            assert!(rel <= 1e-6, "factor row {r}: {} vs {}", gf[r], cf[r]);
            // Σq is written for the tensor-core products only (more than one row); the
            // one-token products sum the token themselves.
            if m > 1 {
                let sum: i32 = gq[r * k..(r + 1) * k].iter().map(|&v| v as i32).sum();
                assert_eq!(gs[r], sum, "Σq row {r}");
            }
        }
        // f32 RMSNorm (final norm): within 1e-6 relative (same formula, f64 sum of squares).
        let mut out = dev.alloc::<f32>(m * k).unwrap();
        out.fill_bytes(&s, 0xFF).unwrap();
        ops::rmsnorm(&dev, &s, &dx, 0, m, k, &dw, eps, &mut out).unwrap();
        let g = out.read(&s, m * k).unwrap();
        let mut c = vec![0.0f32; m * k];
        for r in 0..m {
            rmsnorm(&x[r * k..(r + 1) * k], &w, eps, &mut c[r * k..(r + 1) * k]);
        }
        let e = rel_err(&g, &c);
        assert!(e <= 1e-6, "rmsnorm rel err {e}");
        eprintln!("rmsnorm→int8 {m}×{k}: {off1} codes off by one; rmsnorm rel err {e:.1e}");
    }
}

#[test]
fn rope_kv_append_and_attention_match_cpu() {
    let Some((dev, s)) = device() else { return };
    let mut rng = StdRng::seed_from_u64(0xA77);
    for &(nh, nkv, hd, style) in &[
        (4usize, 2usize, 128usize, RopeStyle::Neox),
        (20, 5, 128, RopeStyle::Neox),
        (2, 1, 64, RopeStyle::Interleaved),
        (6, 3, 96, RopeStyle::Neox),
        (8, 1, 64, RopeStyle::Neox),
        (3, 3, 32, RopeStyle::Neox),
        (16, 2, 256, RopeStyle::Neox),
    ] {
        let max_ctx = 300;
        let d = AttnDims {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            max_ctx,
        };
        let width = d.qkv_width();
        let rope = Rope::new(hd, max_ctx, 500000.0, style).unwrap();
        let drope = RopeTables::new(&dev, &s, hd, max_ctx, 500000.0, style).unwrap();
        let mut kc = dev.alloc::<u16>(d.cache_len()).unwrap();
        let mut vc = dev.alloc::<u16>(d.cache_len()).unwrap();
        kc.fill_bytes(&s, 0).unwrap();
        vc.fill_bytes(&s, 0).unwrap();
        let mut ck = vec![f16::ZERO; d.cache_len()];
        let mut cv = vec![f16::ZERO; d.cache_len()];
        let mut pos = 0;
        // A prefill, single-token decodes, then another batch.
        let mut scratch = DecodeScratch::new(&dev, &s, d, max_ctx).unwrap();
        for &m in &[37usize, 1, 1, 5, 200, 1] {
            let qkv: Vec<f32> = (0..m * width)
                .map(|_| rng.random_range(-2.0f32..2.0))
                .collect();
            // CPU: rope on q and k, k and v into the f16 cache, attention.
            let (qd, kvd) = (nh * hd, nkv * hd);
            let mut q = vec![0.0f32; m * qd];
            for i in 0..m {
                let row = &qkv[i * width..(i + 1) * width];
                q[i * qd..(i + 1) * qd].copy_from_slice(&row[..qd]);
                rope.apply(&mut q[i * qd..(i + 1) * qd], pos + i).unwrap();
                let mut k = row[qd..qd + kvd].to_vec();
                rope.apply(&mut k, pos + i).unwrap();
                for h in 0..nkv {
                    let at = (h * max_ctx + pos + i) * hd;
                    for j in 0..hd {
                        ck[at + j] = f16::from_f32(k[h * hd + j]);
                        cv[at + j] = f16::from_f32(row[qd + kvd + h * hd + j]);
                    }
                }
            }
            let shape = AttnShape {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                max_ctx,
            };
            let mut co = vec![0.0f32; m * qd];
            causal_attention(&q, &ck, &cv, m, pos, shape, &mut co).unwrap();

            let mut ctl = vec![pos as i32, m as i32];
            ctl.extend(std::iter::repeat_n(0, m));
            let dctl = dev.upload(&s, &ctl).unwrap();
            let mut dqkv = dev.upload(&s, &qkv).unwrap();
            ops::rope_kv(&dev, &s, &mut dqkv, m, &mut kc, &mut vc, &drope, &dctl, d).unwrap();
            let mut out = dev.alloc::<f32>(m * qd).unwrap();
            out.fill_bytes(&s, 0xFF).unwrap();
            attention(&dev, &s, &dqkv, m, &kc, &vc, &mut out, &dctl, d, pos + m).unwrap();
            let g_qkv = dqkv.read(&s, m * width).unwrap();
            let mut gq = vec![0.0f32; m * qd];
            for i in 0..m {
                gq[i * qd..(i + 1) * qd].copy_from_slice(&g_qkv[i * width..i * width + qd]);
            }
            assert_bits_eq("rope(q)", &gq, &q);
            let gk = kc.to_vec(&s).unwrap();
            let gv = vc.to_vec(&s).unwrap();
            let upto = |c: &[f16]| -> Vec<u16> {
                let mut v = Vec::new();
                for h in 0..nkv {
                    v.extend(
                        c[h * max_ctx * hd..(h * max_ctx + pos + m) * hd]
                            .iter()
                            .map(|x| x.to_bits()),
                    );
                }
                v
            };
            let gk_used: Vec<u16> = (0..nkv)
                .flat_map(|h| gk[h * max_ctx * hd..(h * max_ctx + pos + m) * hd].to_vec())
                .collect();
            let gv_used: Vec<u16> = (0..nkv)
                .flat_map(|h| gv[h * max_ctx * hd..(h * max_ctx + pos + m) * hd].to_vec())
                .collect();
            assert_eq!(gk_used, upto(&ck), "key cache bits");
            assert_eq!(gv_used, upto(&cv), "value cache bits");
            // Attention: only the q·k dot products are summed in another order; ≤ 1e-5.
            let e = rel_err(&out.read(&s, m * qd).unwrap(), &co);
            assert!(
                e <= 1e-5,
                "attention rel err {e} (heads {nh}/{nkv}, m {m}, pos {pos})"
            );
            eprintln!("rope+kv exact, attention rel err {e:.1e}: heads {nh}/{nkv} hd {hd} m {m} pos {pos}");
            if m == 1 {
                // The split-over-positions decode kernel (twice: before sm_90 its per-head
                // counters must be back at zero after each launch; then the wide form).
                for rep in 0..3 {
                    let io = DecodeIo {
                        qkv: &dqkv,
                        kc: &kc,
                        vc: &vc,
                        ctl: &dctl,
                    };
                    check_decode_attention(
                        &dev,
                        &s,
                        io,
                        &mut out,
                        d,
                        &mut scratch,
                        rep == 2,
                        &co,
                        pos,
                    );
                }
            }
            pos += m;
        }
    }
}

/// The device inputs of one decode attention launch.
#[derive(Clone, Copy)]
struct DecodeIo<'a> {
    qkv: &'a DevBuf<f32>,
    kc: &'a DevBuf<u16>,
    vc: &'a DevBuf<u16>,
    ctl: &'a DevBuf<i32>,
}

/// One decode attention launch (the 16-block form with `wide`) against the CPU's output
/// `want`: within 1e-5 relative.
#[allow(clippy::too_many_arguments)]
fn check_decode_attention(
    dev: &CudaDevice,
    s: &Stream,
    io: DecodeIo,
    out: &mut DevBuf<f32>,
    d: AttnDims,
    scratch: &mut DecodeScratch,
    wide: bool,
    want: &[f32],
    pos: usize,
) {
    out.fill_bytes(s, 0xFF).unwrap();
    attention_decode(dev, s, io.qkv, io.kc, io.vc, out, io.ctl, d, scratch, wide).unwrap();
    let e = rel_err(&out.read(s, want.len()).unwrap(), want);
    let (nh, nkv, hd) = (d.n_heads, d.n_kv_heads, d.head_dim);
    assert!(
        e <= 1e-5,
        "decode attention rel err {e} (heads {nh}/{nkv}, hd {hd}, pos {pos}, wide {wide})"
    );
    eprintln!(
        "decode attention rel err {e:.1e}: heads {nh}/{nkv} hd {hd} pos {pos}{}",
        if wide { " (wide)" } else { "" }
    );
}

/// One-token decode attention at long contexts (hundreds of positions per block), the
/// 8-block and the 16-block forms, against the CPU.
#[test]
fn decode_attention_at_long_contexts_matches_cpu() {
    let Some((dev, s)) = device() else { return };
    let mut rng = StdRng::seed_from_u64(0x57A6);
    for &(nh, nkv, hd) in &[(20usize, 5usize, 128usize), (8, 2, 64)] {
        let max_ctx = 1200;
        let d = AttnDims {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            max_ctx,
        };
        let ck: Vec<f16> = (0..d.cache_len())
            .map(|_| f16::from_f32(rng.random_range(-2.0f32..2.0)))
            .collect();
        let cv: Vec<f16> = (0..d.cache_len())
            .map(|_| f16::from_f32(rng.random_range(-2.0f32..2.0)))
            .collect();
        let bits = |c: &[f16]| c.iter().map(|x| x.to_bits()).collect::<Vec<u16>>();
        let kc = dev.upload(&s, &bits(&ck)).unwrap();
        let vc = dev.upload(&s, &bits(&cv)).unwrap();
        let mut scratch = DecodeScratch::new(&dev, &s, d, max_ctx).unwrap();
        let shape = AttnShape {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            max_ctx,
        };
        for pos in [511usize, 700, 1199] {
            let qkv: Vec<f32> = (0..d.qkv_width())
                .map(|_| rng.random_range(-2.0f32..2.0))
                .collect();
            let mut co = vec![0.0f32; nh * hd];
            causal_attention(&qkv[..nh * hd], &ck, &cv, 1, pos, shape, &mut co).unwrap();
            let dctl = dev.upload(&s, &[pos as i32, 1, 0]).unwrap();
            let dqkv = dev.upload(&s, &qkv).unwrap();
            let mut out = dev.alloc::<f32>(nh * hd).unwrap();
            for wide in [false, true] {
                let io = DecodeIo {
                    qkv: &dqkv,
                    kc: &kc,
                    vc: &vc,
                    ctl: &dctl,
                };
                check_decode_attention(&dev, &s, io, &mut out, d, &mut scratch, wide, &co, pos);
            }
        }
    }
}

/// The fused arg-max slot names the first largest GPU logit.
fn check_fused_argmax(best: &[u64], logits: &[f32]) {
    let gi = head::argmax_index(best[0]).unwrap() as usize;
    let gmax = logits.iter().cloned().fold(f32::MIN, f32::max);
    let first = logits.iter().position(|&x| x == gmax).unwrap();
    assert_eq!(gi, first, "fused arg-max vs the GPU logits");
}

#[test]
fn embedding_head_and_argmax_match_cpu() {
    let Some((dev, s)) = device() else { return };
    let mut rng = StdRng::seed_from_u64(0xE4B);
    let (v, h) = (5003usize, 256usize);
    let table: Vec<f32> = (0..v * h).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let dt = dev.upload(&s, &table).unwrap();
    let toks = [0u32, 4999, 17, 17, 5002];
    let mut ctl = vec![0i32, toks.len() as i32];
    ctl.extend(toks.iter().map(|&t| t as i32));
    let dctl = dev.upload(&s, &ctl).unwrap();
    let mut x = dev.alloc::<f32>(toks.len() * h).unwrap();
    x.fill_bytes(&s, 0xFF).unwrap();
    ops::embed(&dev, &s, &dt, h, &dctl, toks.len(), &mut x, None).unwrap();
    let gx = x.read(&s, toks.len() * h).unwrap();
    let want: Vec<f32> = toks
        .iter()
        .flat_map(|&t| table[t as usize * h..(t as usize + 1) * h].to_vec())
        .collect();
    assert_bits_eq("embedding rows", &gx, &want);

    // LM head, f16 (from f32 weights) and int8 + scales (from Q8_0 weights, exact): reference
    // in f64 over the values the device holds; ≤ 1e-5 relative.
    for kind in [DenseKind::F32, DenseKind::Q8_0] {
        let m = DenseMatrix::from_f32(&table, v, h, kind).unwrap();
        let dw = DevHead::upload(&dev, &s, &m).unwrap();
        let mut held = m.to_f32().unwrap();
        if kind == DenseKind::F32 {
            assert!(matches!(dw, DevHead::F16(_)));
            held.iter_mut()
                .for_each(|x| *x = f16::from_f32(*x).to_f32());
        } else {
            assert!(matches!(dw, DevHead::I8 { .. }));
        }
        for rows in [1usize, 11] {
            let xs: Vec<f32> = (0..rows * h)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let dx = HeadInput::F32(dev.upload(&s, &xs).unwrap());
            let mut logits = dev.alloc::<f32>(rows * v).unwrap();
            logits.fill_bytes(&s, 0xFF).unwrap();
            let mut best = dev.alloc::<u64>(1).unwrap();
            best.fill_bytes(&s, 0).unwrap();
            let with_best = if rows == 1 { Some(&best) } else { None };
            head::head(&dev, &s, &dw, v, h, &dx, rows, &mut logits, with_best).unwrap();
            let g = logits.read(&s, rows * v).unwrap();
            let mut c = vec![0.0f32; rows * v];
            for r in 0..rows {
                for j in 0..v {
                    let mut acc = 0.0f64;
                    for k in 0..h {
                        acc += held[j * h + k] as f64 * xs[r * h + k] as f64;
                    }
                    c[r * v + j] = acc as f32;
                }
            }
            let e = rel_err(&g, &c);
            assert!(e <= 1e-5, "{kind:?} head rel err {e}");
            if rows == 1 {
                check_fused_argmax(&best.read(&s, 1).unwrap(), &g);
            }
            eprintln!("LM head {} rows={rows}: rel err {e:.1e}", dw.describe());
        }
    }

    // Q6_K head: the final norm quantized like Q8_K on the device (codes, scales and 16-sums
    // equal to the CPU's rmsnorm + quantize_act_q8k) and logits bit-identical to the CPU's
    // DenseMatrix::matvec of the normalized rows; 256 and 2560 wide (one and ten blocks per
    // row, 5 rounds of tasks), 1 and 11 rows (passes of 8 and 3), and a row with ties of
    // opposite sign for the Q8_K maximum.
    for (v, h) in [(5003usize, 256usize), (1029, 2560)] {
        let w: Vec<f32> = (0..v * h).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let m = DenseMatrix::from_f32(&w, v, h, DenseKind::Q6K).unwrap();
        let dw = DevHead::upload(&dev, &s, &m).unwrap();
        assert!(matches!(dw, DevHead::Q6 { .. }));
        let mut g: Vec<f32> = (0..h).map(|_| rng.random_range(0.5f32..1.5)).collect();
        g[9] = g[7];
        let dg = dev.upload(&s, &g).unwrap();
        let eps = 1e-5f32;
        for rows in [1usize, 11] {
            let mut xs: Vec<f32> = (0..rows * h)
                .map(|_| rng.random_range(-3.0f32..3.0))
                .collect();
            if rows > 1 {
                // equal magnitudes, the negative one first: the maximum keeps its sign
                xs[h + 7] = -20.0;
                xs[h + 9] = 20.0;
                xs[2 * h..3 * h].fill(0.0);
            }
            let dx = dev.upload(&s, &xs).unwrap();
            let mut xin = HeadInput::alloc(&dev, &dw, rows, h).unwrap();
            if let HeadInput::Q8K { q, d, sums } = &mut xin {
                q.fill_bytes(&s, 0xFF).unwrap();
                d.fill_bytes(&s, 0xFF).unwrap();
                sums.fill_bytes(&s, 0xFF).unwrap();
            }
            head::head_norm(&dev, &s, &dx, 0, rows, h, &dg, eps, &mut xin).unwrap();
            let mut logits = dev.alloc::<f32>(rows * v).unwrap();
            logits.fill_bytes(&s, 0xFF).unwrap();
            let mut best = dev.alloc::<u64>(1).unwrap();
            best.fill_bytes(&s, 0).unwrap();
            let with_best = if rows == 1 { Some(&best) } else { None };
            head::head(&dev, &s, &dw, v, h, &xin, rows, &mut logits, with_best).unwrap();
            let gl = logits.read(&s, rows * v).unwrap();

            let mut xn = vec![0f32; rows * h];
            for r in 0..rows {
                rmsnorm(
                    &xs[r * h..(r + 1) * h],
                    &g,
                    eps,
                    &mut xn[r * h..(r + 1) * h],
                );
            }
            let mut cq = vec![0i8; rows * h];
            let mut cd = vec![0f32; rows * h / 256];
            q6_k::quantize_act_q8k(&xn, &mut cq, &mut cd);
            let mut cs = vec![0i16; rows * h / 16];
            q6_k::q8k_bsums(&cq, &mut cs);
            let HeadInput::Q8K { q, d, sums } = &xin else {
                unreachable!()
            };
            let gq: Vec<i8> = q
                .read(&s, rows * h / 4)
                .unwrap()
                .iter()
                .flat_map(|w| w.to_le_bytes().map(|b| b as i8))
                .collect();
            assert_eq!(gq, cq, "Q8_K codes ({h} wide, {rows} rows)");
            assert_bits_eq("Q8_K scales", &d.read(&s, rows * h / 256).unwrap(), &cd);
            let gs = sums.read(&s, rows * h / 16).unwrap();
            assert!(
                gs.iter().zip(&cs).all(|(&a, &b)| a == b as i32),
                "Q8_K sums"
            );

            let mut cl = vec![0f32; rows * v];
            m.matmul(&xn, rows, &mut cl).unwrap();
            assert_bits_eq("Q6_K head logits", &gl, &cl);
            if rows == 1 {
                check_fused_argmax(&best.read(&s, 1).unwrap(), &gl);
            }
            eprintln!(
                "LM head {} {v}×{h} rows={rows}: bit-identical",
                dw.describe()
            );
        }
    }

    // Stand-alone arg-max with planted ties: the smallest index wins, as the CPU sampler's.
    for n in [1usize, 1000, 128256] {
        let mut xs: Vec<f32> = (0..n).map(|_| rng.random_range(-5.0f32..5.0)).collect();
        if n > 10 {
            xs[n / 3] = 9.0;
            xs[n / 2] = 9.0;
        }
        let dx = dev.upload(&s, &xs).unwrap();
        let mut best = dev.alloc::<u64>(1).unwrap();
        head::argmax(&dev, &s, &dx, n, &mut best).unwrap();
        let gi = head::argmax_index(best.read(&s, 1).unwrap()[0]).unwrap() as usize;
        let mut ci = 0;
        for i in 0..n {
            if xs[i] > xs[ci] {
                ci = i;
            }
        }
        assert_eq!(gi, ci, "arg-max of {n}");
    }
    eprintln!("embedding exact; arg-max exact");
}

#[test]
fn copy_kernel_and_pool_reuse() {
    let Some((dev, s)) = device() else { return };
    let n = 1 << 20;
    let src: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
    let dsrc = dev.upload(&s, &src).unwrap();
    let mut dst = dev.alloc::<u8>(n).unwrap();
    ops::copy(&dev, &s, &dsrc, &mut dst, n).unwrap();
    assert_eq!(dst.read(&s, n).unwrap(), src);
    // A freed buffer of the same size class comes back without a driver allocation.
    let a = dev.alloc::<f32>(12345).unwrap();
    drop(a);
    let before = dev.pool().driver_allocations();
    let b = dev.alloc::<f32>(12000).unwrap();
    assert_eq!(
        dev.pool().driver_allocations(),
        before,
        "pool did not reuse the buffer"
    );
    drop(b);
    eprintln!("copy exact; pool reuses freed buffers");
}

#[test]
fn errors_not_panics_on_bad_shapes() {
    let Some((dev, s)) = device() else { return };
    let mut rng = StdRng::seed_from_u64(1);
    let w = random_bitlinear(&mut rng, 64, 128, false);
    let dw = DevTernary::from_bitlinear(&dev, &s, &[&w], false).unwrap();
    let a = random_acts(&mut rng, 2, 64);
    let da = DevActs::upload(&dev, &s, &a.q, &a.factors, 64).unwrap();
    let mut out = dev.alloc::<f32>(128).unwrap();
    assert!(matmul(&dev, &s, &dw, &da, 2, &mut out, Epilogue::Store, false).is_err());
}

#[test]
fn topk_matches_a_sort_on_the_cpu() {
    let Some((dev, s)) = device() else { return };
    let mut rng = StdRng::seed_from_u64(0x70B);
    // Modes: 0 distinct values, 1 values on a coarse grid (ties), 2 nearly all equal (more
    // than the kernel's shared-memory candidates in the top bin: its radix-select path).
    for &(n, mode) in &[(128_256usize, 0), (1000, 1), (37, 0), (20_000, 2)] {
        let mut x: Vec<f32> = (0..n)
            .map(|i| {
                let v = rng.random_range(-8.0f32..8.0);
                match mode {
                    1 => (v * 4.0).round() / 4.0,
                    2 if i % 97 != 0 => 0.5,
                    _ => v,
                }
            })
            .collect();
        x[n / 2] = f32::NAN;
        x[n / 3] = f32::INFINITY;
        x[n / 5] = f32::NEG_INFINITY;
        let dx = dev.upload(&s, &x).unwrap();
        let mut vals = dev.alloc::<f32>(2 * head::TOPK_MAX).unwrap();
        let mut idx = dev.alloc::<u32>(2 * head::TOPK_MAX).unwrap();
        // Extra ids whose values follow the selection (one past the end: NaN).
        let extra: Vec<u32> = vec![0, (n / 2) as u32, (n - 1) as u32, n as u32, 3];
        let dextra = dev.upload(&s, &extra).unwrap();
        // The CPU order: larger first (NaN lowest), then lower index.
        let key = |i: usize| {
            if x[i].is_nan() {
                f32::NEG_INFINITY
            } else {
                x[i]
            }
        };
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
        for k in [1usize, 40, 104, 1024] {
            let ex = (k == 40).then_some((&dextra, extra.len()));
            head::topk(&dev, &s, &dx, n, k, ex, &mut vals, &mut idx).unwrap();
            let kk = k.min(n);
            if ex.is_some() {
                let (ev, ei) = (
                    vals.read(&s, kk + extra.len()).unwrap(),
                    idx.read(&s, kk + extra.len()).unwrap(),
                );
                assert_eq!(ei[kk..], extra[..], "extra ids");
                for (v, &i) in ev[kk..].iter().zip(&extra) {
                    let want = x.get(i as usize).copied().unwrap_or(f32::NAN);
                    assert!(v.to_bits() == want.to_bits() || (v.is_nan() && want.is_nan()));
                }
            }
            let (gv, gi) = (vals.read(&s, kk).unwrap(), idx.read(&s, kk).unwrap());
            let mut got: Vec<usize> = gi.iter().map(|&i| i as usize).collect();
            got.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
            let mut want = order[..kk].to_vec();
            // A NaN (lowest) may only be taken when k reaches it; -inf ties with it there.
            want.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
            assert_eq!(got, want, "top-{k} of {n}");
            for (v, &i) in gv.iter().zip(&gi) {
                assert_eq!(v.to_bits(), x[i as usize].to_bits(), "value of {i}");
            }
        }
        eprintln!("top-k of {n} values (mode {mode}): exact for k = 1, 40, 104, 1024");
    }
}
