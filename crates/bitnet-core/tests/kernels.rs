//! Ternary kernels: every available path equals the scalar reference exactly, and the
//! scalar reference equals a naive dot over unpacked trits.

use bitnet_core::cpu::{self, KernelPath};
use bitnet_core::nn::bitlinear::{BitLinear, QuantizedActs};
use bitnet_core::nn::norm::{rmsnorm, rmsnorm_quantize};
use bitnet_core::quant::act;
use bitnet_core::quant::ternary::{gemm_multi, TernaryLayout, TernaryMatrix};
use bitnet_core::{Error, SharedBytes};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use std::sync::Mutex;

const LAYOUTS: [TernaryLayout; 2] = [TernaryLayout::I2S, TernaryLayout::T1];

/// The SIMD paths (every path but the scalar one: AVX2, AVX-512 VNNI, AMX) to compare with
/// the scalar reference; unavailable ones are reported.
fn simd_paths(test: &'static str) -> Vec<KernelPath> {
    let mut v = Vec::new();
    for p in KernelPath::ALL {
        if p == KernelPath::Scalar {
            continue;
        }
        if p.is_available() {
            v.push(p);
        } else {
            skipped(test, p);
        }
    }
    v
}

/// Report an unavailable path on stderr directly: the test harness captures `println!`
/// and `eprintln!` of passing tests, but not writes to the stderr handle itself, so the
/// line shows in a plain `cargo test` run. Once per test and path (proptest calls the
/// test body many times).
fn skipped(test: &'static str, p: KernelPath) {
    use std::io::Write;
    static SEEN: Mutex<Vec<(&str, KernelPath)>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.contains(&(test, p)) {
        seen.push((test, p));
        let _ = writeln!(std::io::stderr(), "skipped: {p} not available ({test})");
    }
}

/// Naive Σ q·x over unpacked trits, independent of any packing.
fn naive_gemm(q: &[i8], n: usize, k: usize, x: &[i8], m: usize) -> Vec<i32> {
    let mut out = vec![0i32; m * n];
    for i in 0..m {
        for r in 0..n {
            out[i * n + r] = (0..k)
                .map(|c| q[r * k + c] as i32 * x[i * k + c] as i32)
                .sum();
        }
    }
    out
}

fn check_all_paths(q: &[i8], n: usize, k: usize, x: &[i8], m: usize, paths: &[KernelPath]) {
    let want = naive_gemm(q, n, k, x, m);
    for layout in LAYOUTS {
        let w = TernaryMatrix::from_trits(q, n, k, 0.5, layout).unwrap();
        for &p in std::iter::once(&KernelPath::Scalar).chain(paths) {
            let mut out = vec![0i32; m * n];
            w.gemm_with(p, x, m, &mut out).unwrap();
            assert_eq!(out, want, "gemm {layout:?} {p} n={n} k={k} m={m}");
            for i in 0..m {
                let mut o = vec![0i32; n];
                w.gemv_with(p, &x[i * k..(i + 1) * k], &mut o).unwrap();
                assert_eq!(
                    o,
                    want[i * n..(i + 1) * n],
                    "gemv {layout:?} {p} n={n} k={k} row {i}"
                );
            }
        }
    }
}

fn trits(len: usize) -> impl Strategy<Value = Vec<i8>> {
    prop::collection::vec(-1i8..=1, len)
}

fn problem() -> impl Strategy<Value = (usize, usize, usize, Vec<i8>, Vec<i8>)> {
    (1usize..300, 1usize..700, 1usize..20).prop_flat_map(|(n, k, m)| {
        (
            Just(n),
            Just(k),
            Just(m),
            trits(n * k),
            prop::collection::vec(any::<i8>(), m * k),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_path_matches_reference((n, k, m, q, x) in problem()) {
        let paths = simd_paths("every_path_matches_reference");
        check_all_paths(&q, n, k, &x, m, &paths);
    }

    #[test]
    fn layout_round_trips((n, k, _m, q, _x) in problem()) {
        for layout in LAYOUTS {
            let w = TernaryMatrix::from_trits(&q, n, k, 1.0, layout).unwrap();
            prop_assert_eq!(w.to_trits(), q.clone());
            prop_assert_eq!(w.nbytes(), n * layout.row_bytes(k));
            for other in LAYOUTS {
                let v = w.to_layout(other);
                prop_assert_eq!(v.layout(), other);
                prop_assert_eq!(v.to_trits(), q.clone());
                prop_assert_eq!((v.rows(), v.cols(), v.scale()), (n, k, 1.0));
            }
        }
    }

    #[test]
    fn rmsnorm_quantize_is_rmsnorm_then_quantize(
        x in prop::collection::vec(-100.0f32..100.0, 1..600),
        seed in any::<u64>(),
        eps in prop::sample::select(vec![1e-5f32, 1e-6, 0.0]),
    ) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let w: Vec<f32> = (0..x.len()).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        let mut y = vec![0f32; x.len()];
        rmsnorm(&x, &w, eps, &mut y);
        let mut q1 = vec![0i8; x.len()];
        let f1 = act::quantize(&y, &mut q1);
        let mut q2 = vec![0i8; x.len()];
        let f2 = rmsnorm_quantize(&x, &w, eps, &mut q2);
        prop_assert_eq!(q1, q2);
        prop_assert_eq!(f1.to_bits(), f2.to_bits());
    }
}

#[test]
fn extremes_do_not_overflow() {
    // |Σ| up to 128·K with every maddubs pair at its extreme (±1 weights, x = −128 or 127),
    // at a K large enough that any i16 accumulation across blocks would overflow.
    let paths = simd_paths("extremes_do_not_overflow");
    for &k in &[6912usize, 2560, 1000] {
        let n = 9;
        for &xv in &[-128i8, 127] {
            for &qv in &[-1i8, 1] {
                let q = vec![qv; n * k];
                let x = vec![xv; 3 * k];
                check_all_paths(&q, n, k, &x, 3, &paths);
            }
        }
        // Alternating signs so partial sums swing both ways.
        let q: Vec<i8> = (0..n * k)
            .map(|i| if i % 3 == 0 { -1 } else { 1 })
            .collect();
        let x: Vec<i8> = (0..5 * k)
            .map(|i| if i % 2 == 0 { -128 } else { 127 })
            .collect();
        check_all_paths(&q, n, k, &x, 5, &paths);
    }
    // Two full tiles in each direction and a partial third (AMX: 16 × 16 tiles in 2 × 2
    // blocks) at the largest K, every product at its extreme.
    let (n, m, k) = (33usize, 33usize, 6912usize);
    for (xv, qv) in [(-128i8, -1i8), (-128, 1), (127, -1)] {
        check_all_paths(&vec![qv; n * k], n, k, &vec![xv; m * k], m, &paths);
    }
}

#[test]
fn odd_shapes_around_tile_edges_match_reference() {
    // Rows, tokens and K just below, at and above the AMX tile edges (16 rows or tokens,
    // 2 × 2 tile blocks of 32, 64-wide K tiles) and the 128/160-weight blocks.
    let paths = simd_paths("odd_shapes_around_tile_edges_match_reference");
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for n in [1usize, 15, 16, 17, 31, 32, 33, 40] {
        for m in [1usize, 2, 15, 16, 17, 32, 33, 40] {
            for k in [
                1usize, 4, 63, 64, 65, 127, 129, 160, 161, 191, 193, 320, 699,
            ] {
                let q: Vec<i8> = (0..n * k).map(|_| rng.random_range(-1i8..=1)).collect();
                let x: Vec<i8> = (0..m * k).map(|_| rng.random()).collect();
                check_all_paths(&q, n, k, &x, m, &paths);
            }
        }
    }
}

#[test]
fn big_shapes_multithreaded_match_reference() {
    // Rows above the 64-row task size and m above the 4-row tile, on 1..3 threads.
    let paths = simd_paths("big_shapes_multithreaded_match_reference");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (n, k) = (261usize, 2560usize);
    let q: Vec<i8> = (0..n * k).map(|_| rng.random_range(-1i8..=1)).collect();
    for m in [11usize, 40] {
        let x: Vec<i8> = (0..m * k).map(|_| rng.random()).collect();
        for t in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap();
            pool.install(|| check_all_paths(&q, n, k, &x, m, &paths));
        }
    }
}

#[test]
fn gemv_is_exact_at_every_activation_alignment() {
    // gemv copies activations that do not start on a 64-byte boundary to one that does,
    // up to 32 KiB; longer rows are read where they are. Every offset of a row within a
    // 64-byte line, on both sides of that limit, single and multi-matrix calls.
    let paths = simd_paths("gemv_is_exact_at_every_activation_alignment");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (n, k) in [(70usize, 2560usize), (3, 32 * 1024 + 200)] {
        let q: Vec<i8> = (0..n * k).map(|_| rng.random_range(-1i8..=1)).collect();
        let mut buf = vec![0i8; k + 128];
        let base = buf.as_ptr().align_offset(64);
        for v in buf.iter_mut() {
            *v = rng.random();
        }
        for layout in LAYOUTS {
            let w = TernaryMatrix::from_trits(&q, n, k, 0.5, layout).unwrap();
            for off in (0..64).step_by(if k > 4096 { 16 } else { 1 }) {
                let x = &buf[base + off..base + off + k];
                let want = naive_gemm(&q, n, k, x, 1);
                for &p in std::iter::once(&KernelPath::Scalar).chain(&paths) {
                    let mut o = vec![0i32; n];
                    w.gemv_with(p, x, &mut o).unwrap();
                    assert_eq!(o, want, "gemv {layout:?} {p} k={k} offset {off}");
                }
                // The multi-matrix path (q/k/v, gate/up) with one token, on the active path.
                let (mut a, mut b) = (vec![0i32; n], vec![0i32; n]);
                gemm_multi(&[&w, &w], x, 1, &mut [&mut a, &mut b]).unwrap();
                assert_eq!(a, want, "gemm_multi {layout:?} k={k} offset {off}");
                assert_eq!(b, want, "gemm_multi {layout:?} k={k} offset {off}");
            }
        }
    }
}

#[test]
fn i2s_bit_positions_match_bitnet_cpp() {
    // Block byte j holds weights j, j+32, j+64, j+96 at shifts 6, 4, 2, 0; code = q + 1.
    let mut bytes = vec![0x55u8; 32]; // every code 1 = weight 0
    bytes[3] = 0b10_00_01_10; // w3 = +1, w35 = -1, w67 = 0, w99 = +1
    let w = TernaryMatrix::from_i2s(SharedBytes::from_vec(bytes), 1, 128, 1.0).unwrap();
    let t = w.to_trits();
    let nonzero: Vec<(usize, i8)> = t
        .iter()
        .enumerate()
        .filter(|(_, &v)| v != 0)
        .map(|(i, &v)| (i, v))
        .collect();
    assert_eq!(nonzero, vec![(3, 1), (35, -1), (99, 1)]);
    // And from_trits produces exactly those bytes.
    let w2 = TernaryMatrix::from_trits(&t, 1, 128, 1.0, TernaryLayout::I2S).unwrap();
    assert_eq!(w2.data().as_slice(), w.data().as_slice());
}

#[test]
fn from_i2s_is_zero_copy_and_validates_length() {
    let q: Vec<i8> = (0..4 * 256).map(|i| (i % 3) as i8 - 1).collect();
    let packed = TernaryMatrix::from_trits(&q, 4, 256, 2.0, TernaryLayout::I2S).unwrap();
    let bytes = packed.data().clone();
    let w = TernaryMatrix::from_i2s(bytes.clone(), 4, 256, 2.0).unwrap();
    assert_eq!(w.to_trits(), q);
    assert_eq!(
        w.data().as_slice().as_ptr(),
        bytes.as_slice().as_ptr(),
        "no copy"
    );
    assert_eq!(w.nbytes(), 256);
    let short = bytes.slice(0..255).unwrap();
    assert!(matches!(
        TernaryMatrix::from_i2s(short, 4, 256, 2.0),
        Err(Error::Format { .. })
    ));
    let long = SharedBytes::from_vec(vec![0x55; 257]);
    assert!(matches!(
        TernaryMatrix::from_i2s(long, 4, 256, 2.0),
        Err(Error::Format { .. })
    ));
    // cols must be whole 128-weight blocks for I2_S data from files.
    let odd = SharedBytes::from_vec(vec![0x55; 4 * 25]);
    assert!(matches!(
        TernaryMatrix::from_i2s(odd, 4, 100, 2.0),
        Err(Error::Format { .. })
    ));
}

#[test]
fn from_trits_rejects_bad_input() {
    assert!(matches!(
        TernaryMatrix::from_trits(&[0, 1, 2, 0], 2, 2, 1.0, TernaryLayout::I2S),
        Err(Error::Format { .. })
    ));
    assert!(matches!(
        TernaryMatrix::from_trits(&[0, 1, -1], 2, 2, 1.0, TernaryLayout::T1),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn t1_is_smaller_than_i2s() {
    let q = vec![1i8; 2560];
    let a = TernaryMatrix::from_trits(&q, 1, 2560, 1.0, TernaryLayout::I2S).unwrap();
    let b = TernaryMatrix::from_trits(&q, 1, 2560, 1.0, TernaryLayout::T1).unwrap();
    assert_eq!(a.nbytes(), 640);
    assert_eq!(b.nbytes(), 512);
}

#[test]
fn kernel_shape_errors() {
    let w = TernaryMatrix::from_trits(&[1i8; 6], 2, 3, 1.0, TernaryLayout::I2S).unwrap();
    let mut out = [0i32; 2];
    assert!(matches!(
        w.gemv(&[1, 2], &mut out),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        w.gemv(&[1, 2, 3], &mut [0i32; 3]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        w.gemm(&[1, 2, 3], 2, &mut [0i32; 4]),
        Err(Error::Shape { .. })
    ));
    w.gemv(&[1, 2, 3], &mut out).unwrap();
    assert_eq!(out, [6, 6]);
}

#[test]
fn path_selection() {
    let avail = cpu::available_paths();
    assert_eq!(avail[0], KernelPath::Scalar);
    assert!(avail.contains(&cpu::best_path()));
    assert_eq!(KernelPath::from_name(" AMX "), Some(KernelPath::Amx));
    for p in KernelPath::ALL {
        assert_eq!(KernelPath::from_name(p.name()), Some(p));
        // Only AMX lacks a gemv kernel; its gemv path is another one, available with it.
        let g = p.gemv_path();
        assert_eq!(g == p, p != KernelPath::Amx, "{p} runs gemv on {g}");
        assert!(
            !p.is_available() || g.is_available(),
            "{p} runs gemv on {g}"
        );
        if p.is_available() {
            let w = TernaryMatrix::from_trits(&[1i8; 6], 2, 3, 1.0, TernaryLayout::T1).unwrap();
            let mut out = [0i32; 2];
            w.gemv_with(p, &[1, 2, 3], &mut out).unwrap();
            assert_eq!(out, [6, 6]);
        } else {
            skipped("path_selection", p);
            assert!(matches!(
                cpu::set_forced_path(Some(p)),
                Err(Error::KernelUnavailable(_))
            ));
            let w = TernaryMatrix::from_trits(&[1i8; 6], 2, 3, 1.0, TernaryLayout::T1).unwrap();
            assert!(matches!(
                w.gemv_with(p, &[1, 2, 3], &mut [0; 2]),
                Err(Error::KernelUnavailable(_))
            ));
        }
    }
    // Forcing an available path and clearing it again (results are identical on every
    // path, so concurrently running tests are unaffected).
    cpu::set_forced_path(Some(KernelPath::Scalar)).unwrap();
    assert_eq!(cpu::active_path().unwrap(), KernelPath::Scalar);
    cpu::set_forced_path(None).unwrap();
}

#[test]
fn bitlinear_forward_matches_formula() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (n, k) = (70usize, 300usize);
    let q: Vec<i8> = (0..n * k).map(|_| rng.random_range(-1i8..=1)).collect();
    let scale = 0.037f32;
    let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    for layout in LAYOUTS {
        let w = TernaryMatrix::from_trits(&q, n, k, scale, layout).unwrap();
        for with_bias in [false, true] {
            let lin = BitLinear {
                weight: w.clone(),
                bias: with_bias.then(|| bias.clone()),
            };
            let mut acts = QuantizedActs::new();
            for m in [1usize, 2, 5] {
                let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-4.0f32..4.0)).collect();
                acts.quantize(&x, k);
                assert_eq!(acts.rows(), m);
                let mut out = vec![0f32; m * n];
                lin.forward(&acts, &mut out).unwrap();
                let acc = naive_gemm(&q, n, k, &acts.q, m);
                for i in 0..m {
                    for r in 0..n {
                        let mut want = acc[i * n + r] as f32 * (scale * acts.factors[i]);
                        if with_bias {
                            want += bias[r];
                        }
                        assert_eq!(out[i * n + r].to_bits(), want.to_bits());
                    }
                }
                let mut bad = vec![0f32; m * n + 1];
                assert!(lin.forward(&acts, &mut bad).is_err());
            }
        }
    }
}

#[test]
fn gemm_multi_and_forward_multi_match_single_calls() {
    // Several matrices sharing K in one parallel region (q/k/v, gate/up), including row
    // counts around the 64-row task size, mixed layouts and m = 1 (gemv) and m > 1.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let k = 700usize;
    let ns = [130usize, 64, 5, 200];
    let qs: Vec<Vec<i8>> = ns
        .iter()
        .map(|&n| (0..n * k).map(|_| rng.random_range(-1i8..=1)).collect())
        .collect();
    for t in 1..=3 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap();
        pool.install(|| {
            for layouts in [
                [TernaryLayout::I2S; 4],
                [TernaryLayout::T1; 4],
                [
                    TernaryLayout::I2S,
                    TernaryLayout::T1,
                    TernaryLayout::I2S,
                    TernaryLayout::T1,
                ],
            ] {
                let ws: Vec<TernaryMatrix> = qs
                    .iter()
                    .zip(&ns)
                    .zip(layouts)
                    .enumerate()
                    .map(|(j, ((q, &n), l))| {
                        TernaryMatrix::from_trits(q, n, k, 0.01 * (j + 1) as f32, l).unwrap()
                    })
                    .collect();
                for m in [1usize, 3, 9] {
                    let x: Vec<i8> = (0..m * k).map(|_| rng.random()).collect();
                    let mut outs: Vec<Vec<i32>> = ns.iter().map(|&n| vec![0; m * n]).collect();
                    let mats: Vec<&TernaryMatrix> = ws.iter().collect();
                    let mut refs: Vec<&mut [i32]> =
                        outs.iter_mut().map(|o| o.as_mut_slice()).collect();
                    bitnet_core::quant::ternary::gemm_multi(&mats, &x, m, &mut refs).unwrap();
                    for (j, o) in outs.iter().enumerate() {
                        assert_eq!(*o, naive_gemm(&qs[j], ns[j], k, &x, m), "matrix {j} m={m}");
                    }
                    // BitLinear::forward_multi equals forward per layer, bit for bit.
                    let lins: Vec<BitLinear> = ws
                        .iter()
                        .enumerate()
                        .map(|(j, w)| BitLinear {
                            weight: w.clone(),
                            bias: (j % 2 == 1).then(|| vec![0.25; w.rows()]),
                        })
                        .collect();
                    let xf: Vec<f32> = (0..m * k).map(|_| rng.random_range(-4.0f32..4.0)).collect();
                    let mut acts = QuantizedActs::new();
                    acts.quantize(&xf, k);
                    let mut fo: Vec<Vec<f32>> = ns.iter().map(|&n| vec![0.0; m * n]).collect();
                    let lrefs: Vec<&BitLinear> = lins.iter().collect();
                    let mut frefs: Vec<&mut [f32]> =
                        fo.iter_mut().map(|o| o.as_mut_slice()).collect();
                    BitLinear::forward_multi(&lrefs, &acts, &mut frefs).unwrap();
                    for (j, l) in lins.iter().enumerate() {
                        let mut one = vec![0f32; m * ns[j]];
                        l.forward(&acts, &mut one).unwrap();
                        assert_eq!(
                            fo[j].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            one.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                        );
                    }
                    let mut bad: Vec<&mut [f32]> = Vec::new();
                    assert!(BitLinear::forward_multi(&lrefs, &acts, &mut bad).is_err());
                }
            }
        });
    }
}
