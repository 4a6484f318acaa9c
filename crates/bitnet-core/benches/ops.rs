//! Tensor-op benchmarks: add, GELU, softmax and sum over 10M f32 elements, scalar against
//! AVX2 in the same run, and f32 matmul at 1024² and 4096² (reported as GFLOP/s:
//! criterion's "elem/s" throughput is set to 2·n³ flops per product).
//!
//! Two views of each element-wise op:
//! * `kernel/*`: the raw `ops::simd` kernel on one thread into a preallocated buffer —
//!   what SIMD alone buys;
//! * `op/*`: the public op (`ops::add`, ...) with dispatch forced to that kernel: output
//!   allocation from the pool and rayon threads included — what a caller sees.
//!
//! Run: `cargo bench -p bitnet-core --bench ops` (about 1.5 minutes on 2 cores). The
//! 4096² product takes seconds per call, so it is timed by hand (2 runs, after one
//! warm-up) instead of criterion's minimum of 10 samples.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bitnet_core::ops::dispatch::{self, avx2_available, Kernel};
use bitnet_core::ops::simd::{self, BinOp, UnOp};
use bitnet_core::ops::{self};
use bitnet_core::Tensor;
use criterion::{criterion_group, Criterion, Throughput};

const N: usize = 10_000_000;
const ROW: usize = 1000;

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 20_000) as f32 / 2_000.0 - 5.0
        })
        .collect()
}

fn kernels() -> Vec<Kernel> {
    let mut k = vec![Kernel::Scalar];
    if avx2_available() {
        k.push(Kernel::Avx2);
    } else {
        eprintln!("no AVX2/FMA on this CPU: only the scalar path is measured");
    }
    k
}

fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500));
    g
}

fn elementwise(c: &mut Criterion) {
    let a = data(N, 1);
    let b = data(N, 2);
    let ta = Tensor::from_slice(&a, N).unwrap();
    let tb = Tensor::from_slice(&b, N).unwrap();
    let rows = ta.reshape((N / ROW, ROW)).unwrap();
    let mut out = vec![0f32; N];

    for (name, bytes) in [
        ("add_10M", 12 * N),
        ("gelu_10M", 8 * N),
        ("softmax_10M", 8 * N),
        ("sum_10M", 4 * N),
    ] {
        let mut g = configure(c, name);
        // Bytes moved per call (reads + writes), so criterion prints GB/s.
        g.throughput(Throughput::Bytes(bytes as u64));
        for k in kernels() {
            let kn = k.name();
            g.bench_function(format!("kernel/{kn}"), |bch| {
                bch.iter(|| match name {
                    "add_10M" => simd::binary_vv(k, BinOp::Add, &a, &b, &mut out),
                    "gelu_10M" => simd::unary(k, UnOp::GeluErf, &a, &mut out),
                    "softmax_10M" => {
                        for (x, o) in a.chunks(ROW).zip(out.chunks_mut(ROW)) {
                            let m = simd::max(k, x);
                            let s = simd::exp_sub_sum(k, x, m, o);
                            simd::binary_assign_vs(k, BinOp::Mul, o, (1.0 / s) as f32);
                        }
                    }
                    _ => {
                        black_box(simd::sum(k, &a));
                    }
                });
                black_box(&out);
            });
            dispatch::set_forced_kernel(Some(k)).unwrap();
            g.bench_function(format!("op/{kn}"), |bch| {
                bch.iter(|| {
                    black_box(match name {
                        "add_10M" => ops::add(&ta, &tb).unwrap(),
                        "gelu_10M" => ops::gelu(&ta).unwrap(),
                        "softmax_10M" => ops::softmax(&rows, -1).unwrap(),
                        _ => ops::sum_all(&ta).unwrap(),
                    })
                })
            });
            dispatch::set_forced_kernel(None).unwrap();
        }
        g.finish();
    }
}

fn matmul_1024(c: &mut Criterion) {
    let n = 1024;
    let a = Tensor::from_slice(&data(n * n, 3), (n, n)).unwrap();
    let b = Tensor::from_slice(&data(n * n, 4), (n, n)).unwrap();
    let bt = b.t().unwrap();
    let mut g = configure(c, "matmul_1024");
    g.measurement_time(Duration::from_secs(3));
    // "elem/s" below is FLOP/s: 2·n³ per product.
    g.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
    g.bench_function("gemm", |bch| {
        bch.iter(|| black_box(ops::matmul(&a, &b).unwrap()))
    });
    g.bench_function("gemm_transposed_view", |bch| {
        bch.iter(|| black_box(ops::matmul(&a, &bt).unwrap()))
    });
    g.finish();
}

/// 4096²: two timed runs after a warm-up, printed as GFLOP/s.
fn matmul_4096() {
    let n = 4096;
    let a = Tensor::from_slice(&data(n * n, 5), (n, n)).unwrap();
    let b = Tensor::from_slice(&data(n * n, 6), (n, n)).unwrap();
    black_box(ops::matmul(&a, &b).unwrap());
    let flops = 2.0 * (n as f64).powi(3);
    for run in 1..=2 {
        let t = Instant::now();
        black_box(ops::matmul(&a, &b).unwrap());
        let s = t.elapsed().as_secs_f64();
        println!(
            "matmul_4096/gemm run {run}: {:.3} s, {:.1} GFLOP/s",
            s,
            flops / s / 1e9
        );
    }
}

criterion_group!(benches, elementwise, matmul_1024);

fn main() {
    benches();
    // Only under `cargo bench` (which passes --bench), not in `cargo test --benches`'
    // quick run, and only when no filter excludes it.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let filter = args.iter().find(|a| !a.starts_with('-'));
    if bench_mode && filter.is_none_or(|f| "matmul_4096".contains(f.as_str())) {
        matmul_4096();
    }
    Criterion::default().configure_from_args().final_summary();
}
