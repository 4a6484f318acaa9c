//! Ternary kernel benchmarks on the BitNet b1.58 2B-4T shapes, 1 and 2 threads.
//!
//! (a) gemv per layout and path, in weight bytes per second, next to a streaming-read
//!     baseline measured in the same run: the I2S copies' own bytes, read the same way
//!     (rayon tasks of 64 rows' worth of bytes, cycling over distinct copies totalling
//!     256 MiB so that neither the baseline nor the kernels run from cache: with 72 MiB,
//!     2.25× this machine's 32 MiB L3, the baseline read 35–43 GB/s against 32–34 from
//!     DRAM, partly served from L3).
//! (b) gemm with m = 128 in int8 ops per second (2·m·N·K per call) per available path
//!     (scalar, AVX2, AVX-512 VNNI, AMX), next to an f32 GEMM on pre-dequantized weights
//!     (rayon over 64-row tiles, 2 × 4 register-blocked AVX2+FMA dot-product kernel;
//!     dequantization not timed).
//!
//! `cargo bench -p bitnet-core --bench kernels` runs everything (about 6 minutes);
//! `BITNET_BENCH_QUICK=1` runs only the 2560×2560 shape. A summary table with the
//! ratios is printed at the end (read back from criterion's estimates). On a shared
//! machine the baseline and the kernel, measured seconds apart by criterion, can see
//! different loads; so the gemv table also gives a paired ratio: nine rounds of one
//! baseline pass and one gemv pass (default path, I2S) over all copies, the median of
//! the nine ratios.

use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bitnet_core::cpu::{self, KernelPath};
use bitnet_core::quant::ternary::{TernaryLayout, TernaryMatrix};
use bitnet_core::SharedBytes;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

const SHAPES: [(usize, usize); 4] = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)];
const THREADS: [usize; 2] = [1, 2];
/// Total bytes cycled over per gemv benchmark: 8× the EPYC's 32 MiB L3 (AMD's L3 keeps part
/// of a cyclic stream only 2–3× its size, so a smaller set inflates the read baseline most).
/// On the Xeon VM (504 MiB of L3 shared with the host) 256 MiB reads at the rate of 1–4 GiB.
const COLD_BYTES: usize = 256 << 20;
const GEMM_M: usize = 128;

fn out_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/criterion").to_string()
}

/// Distinct copies of `w` (separate allocations) totalling at least COLD_BYTES.
fn cold_copies(w: &TernaryMatrix) -> Vec<TernaryMatrix> {
    let n = COLD_BYTES.div_ceil(w.nbytes()).max(2);
    (0..n)
        .map(|_| {
            let bytes = SharedBytes::from_vec(w.data().as_slice().to_vec());
            TernaryMatrix::from_packed(bytes, w.rows(), w.cols(), w.scale(), w.layout()).unwrap()
        })
        .collect()
}

/// Sum of u64 over one task's bytes, four AVX2 accumulators (one load per add, so the
/// loop is bound by memory, not by the adds).
#[target_feature(enable = "avx2")]
fn sum_avx2(b: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    let chunks = b.chunks_exact(128);
    let rest = chunks.remainder();
    for c in chunks {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: c is 128 bytes long, so offset j·32 + 32 ≤ 128 is in bounds.
            let v = unsafe { _mm256_loadu_si256(c.as_ptr().add(j * 32) as *const __m256i) };
            *a = _mm256_add_epi64(*a, v);
        }
    }
    let mut lanes = [0u64; 4];
    let s = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    // SAFETY: lanes is 32 bytes.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, s) };
    lanes.iter().sum::<u64>() + rest.iter().map(|&v| v as u64).sum::<u64>()
}

/// Streaming read of a matrix-sized buffer, split like the gemv (64 rows per task).
fn stream_read(buf: &[u8], task_bytes: usize) -> u64 {
    let has_avx2 = KernelPath::Avx2.is_available();
    buf.par_chunks(task_bytes)
        .map(|c| {
            if has_avx2 {
                // SAFETY: AVX2 availability checked above.
                unsafe { sum_avx2(c) }
            } else {
                c.iter().map(|&v| v as u64).sum()
            }
        })
        .sum()
}

fn pools() -> Vec<(usize, rayon::ThreadPool)> {
    THREADS
        .iter()
        .map(|&t| {
            (
                t,
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap(),
            )
        })
        .collect()
}

fn quick() -> bool {
    std::env::var("BITNET_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn shapes() -> &'static [(usize, usize)] {
    if quick() {
        &SHAPES[..1]
    } else {
        &SHAPES
    }
}

fn random_problem(n: usize, k: usize, m: usize) -> (Vec<i8>, Vec<i8>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64((n * 31 + k) as u64);
    // Real BitNet weights are ~1/3 zeros; the kernels are data-independent anyway.
    let q = (0..n * k).map(|_| rng.random_range(-1i8..=1)).collect();
    let x = (0..m * k).map(|_| rng.random()).collect();
    (q, x)
}

fn paths() -> Vec<KernelPath> {
    cpu::available_paths()
}

fn configure<M: criterion::measurement::Measurement>(g: &mut BenchmarkGroup<'_, M>) {
    g.warm_up_time(Duration::from_millis(150));
    g.measurement_time(Duration::from_millis(600));
    g.sample_size(10);
}

/// A gemv configuration: (N, K, threads).
type Config = (usize, usize, usize);

/// Paired read/gemv ratios: configuration → median % of the baseline.
static PAIRED: Mutex<Vec<(Config, f64)>> = Mutex::new(Vec::new());

/// Median over nine rounds of (baseline pass time / I2S gemv pass time), each pass over
/// every copy once, on the default kernel path.
fn paired_ratio(mats: &[TernaryMatrix], x: &[i8], task_bytes: usize) -> f64 {
    let mut out = vec![0i32; mats[0].rows()];
    let mut ratios: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            for m in mats {
                black_box(stream_read(m.data().as_slice(), task_bytes));
            }
            let read = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for m in mats {
                m.gemv(black_box(x), &mut out).unwrap();
            }
            100.0 * read / t.elapsed().as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

fn bench_gemv(c: &mut Criterion) {
    for &(n, k) in shapes() {
        let (q, x) = random_problem(n, k, 1);
        let i2s = TernaryMatrix::from_trits(&q, n, k, 1.0, TernaryLayout::I2S).unwrap();
        let t1 = i2s.to_layout(TernaryLayout::T1);
        let sets = [
            (TernaryLayout::I2S, cold_copies(&i2s)),
            (TernaryLayout::T1, cold_copies(&t1)),
        ];
        // The baseline reads the I2S copies themselves (same pages, same placement).
        let bufs = &sets[0].1;
        let task_bytes = cpu::ROWS_PER_TASK * i2s.row_bytes();
        for (t, pool) in pools() {
            let mut g = c.benchmark_group(format!("gemv_{n}x{k}_t{t}"));
            configure(&mut g);
            g.throughput(Throughput::Bytes(i2s.nbytes() as u64));
            let mut it = 0usize;
            g.bench_function("read_baseline", |b| {
                pool.install(|| {
                    b.iter(|| {
                        it = (it + 1) % bufs.len();
                        black_box(stream_read(bufs[it].data().as_slice(), task_bytes))
                    })
                })
            });
            for (layout, mats) in &sets {
                g.throughput(Throughput::Bytes(mats[0].nbytes() as u64));
                // AMX's gemv is another path's kernel (`gemv_path`): not measured twice.
                for p in paths().into_iter().filter(|p| p.gemv_path() == *p) {
                    let mut out = vec![0i32; n];
                    let mut it = 0usize;
                    g.bench_function(format!("{}_{}", layout.name(), p.name()), |b| {
                        pool.install(|| {
                            b.iter(|| {
                                it = (it + 1) % mats.len();
                                mats[it].gemv_with(p, black_box(&x), &mut out).unwrap();
                            })
                        })
                    });
                }
            }
            g.finish();
            let r = pool.install(|| paired_ratio(bufs, &x, task_bytes));
            PAIRED.lock().unwrap().push(((n, k, t), r));
        }
    }
}

/// f32 GEMM baseline: out[i][r] = Σ_k x[i][k]·w[r][k], 2 activation rows × 4 weight rows
/// per register tile, eight-lane FMA accumulators.
#[target_feature(enable = "avx2,fma")]
fn f32_tile(w: &[f32], x: &[f32], k: usize, m: usize, nr: usize, out: &mut [f32], ldo: usize) {
    let mut i = 0;
    while i < m {
        let mi = 2.min(m - i);
        let mut r = 0;
        while r < nr {
            let rn = 4.min(nr - r);
            let mut acc = [[[0f32; 8]; 4]; 2];
            for kk in (0..k - k % 8).step_by(8) {
                for a in 0..mi {
                    let xa = &x[(i + a) * k + kk..(i + a) * k + kk + 8];
                    for bq in 0..rn {
                        let wb = &w[(r + bq) * k + kk..(r + bq) * k + kk + 8];
                        for l in 0..8 {
                            acc[a][bq][l] = xa[l].mul_add(wb[l], acc[a][bq][l]);
                        }
                    }
                }
            }
            for a in 0..mi {
                for bq in 0..rn {
                    let mut s: f32 = acc[a][bq].iter().sum();
                    for kk in k - k % 8..k {
                        s += x[(i + a) * k + kk] * w[(r + bq) * k + kk];
                    }
                    out[(i + a) * ldo + r + bq] = s;
                }
            }
            r += 4;
        }
        i += 2;
    }
}

fn f32_gemm(w: &[f32], x: &[f32], n: usize, k: usize, m: usize, out: &mut [f32]) {
    // Each task computes a 64-row slab into its own buffer (rows × m, transposed back by
    // the copy below) so tasks never share output cache lines.
    let slabs: Vec<Vec<f32>> = (0..n.div_ceil(64))
        .into_par_iter()
        .map(|t| {
            let r0 = t * 64;
            let nr = 64.min(n - r0);
            let mut o = vec![0f32; m * nr];
            // SAFETY: the benchmark only runs this when AVX2 and FMA are available.
            unsafe { f32_tile(&w[r0 * k..(r0 + nr) * k], x, k, m, nr, &mut o, nr) };
            o
        })
        .collect();
    for (t, o) in slabs.iter().enumerate() {
        let nr = o.len() / m;
        for i in 0..m {
            out[i * n + t * 64..i * n + t * 64 + nr].copy_from_slice(&o[i * nr..(i + 1) * nr]);
        }
    }
}

fn bench_gemm(c: &mut Criterion) {
    let has_fma = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    for &(n, k) in shapes() {
        let (q, x) = random_problem(n, k, GEMM_M);
        let i2s = TernaryMatrix::from_trits(&q, n, k, 1.0, TernaryLayout::I2S).unwrap();
        let t1 = i2s.to_layout(TernaryLayout::T1);
        let wf: Vec<f32> = q.iter().map(|&v| v as f32).collect();
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        for (t, pool) in pools() {
            let mut g = c.benchmark_group(format!("gemm{GEMM_M}_{n}x{k}_t{t}"));
            configure(&mut g);
            g.sampling_mode(SamplingMode::Flat);
            g.throughput(Throughput::Elements((2 * GEMM_M * n * k) as u64));
            if has_fma {
                let mut out = vec![0f32; GEMM_M * n];
                g.bench_function("f32_baseline", |b| {
                    pool.install(|| {
                        b.iter(|| f32_gemm(&wf, black_box(&xf), n, k, GEMM_M, &mut out))
                    })
                });
            }
            for w in [&i2s, &t1] {
                for p in paths() {
                    // The scalar gemm takes seconds per call on the large shapes: only on
                    // the smallest one, as a reference point.
                    if p == KernelPath::Scalar && (n, k) != (640, 2560) {
                        continue;
                    }
                    let mut out = vec![0i32; GEMM_M * n];
                    g.bench_function(format!("{}_{}", w.layout().name(), p.name()), |b| {
                        pool.install(|| {
                            b.iter(|| w.gemm_with(p, black_box(&x), GEMM_M, &mut out).unwrap())
                        })
                    });
                }
            }
            g.finish();
        }
    }
}

/// Mean time (ns) of one benchmark, from criterion's estimates.json.
fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let path = format!("{}/{group}/{id}/new/estimates.json", out_dir());
    let s = std::fs::read_to_string(path).ok()?;
    let rest = &s[s.find("\"mean\"")?..];
    let rest = &rest[rest.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

fn summary() {
    println!("\n## summary (mean of criterion samples)\n");
    println!("gemv: µs per call, weight GB/s, fraction of the streaming-read baseline; paired: I2S on the default path, median of nine alternating passes");
    println!("| N×K | threads | read baseline GB/s | I2S avx2 µs | I2S GB/s | I2S % | I2S % paired | T1 avx2 µs | T1 GB/s | T1 % | T1/I2S time |");
    let paired = PAIRED.lock().unwrap().clone();
    for &(n, k) in shapes() {
        let i2s_bytes = n * TernaryLayout::I2S.row_bytes(k);
        let t1_bytes = n * TernaryLayout::T1.row_bytes(k);
        for t in THREADS {
            let g = format!("gemv_{n}x{k}_t{t}");
            let (Some(base), Some(a), Some(b)) = (
                mean_ns(&g, "read_baseline"),
                mean_ns(&g, "i2s_avx2"),
                mean_ns(&g, "t1_avx2"),
            ) else {
                continue;
            };
            let bw = i2s_bytes as f64 / base;
            let ga = i2s_bytes as f64 / a;
            let gb = t1_bytes as f64 / b;
            let pr = paired
                .iter()
                .find(|(key, _)| *key == (n, k, t))
                .map_or("–".to_string(), |(_, r)| format!("{r:.0} %"));
            println!(
                "| {n}×{k} | {t} | {bw:.1} | {:.0} | {ga:.1} | {:.0} % | {pr} | {:.0} | {gb:.1} | {:.0} % | {:.2} |",
                a / 1e3,
                100.0 * ga / bw,
                b / 1e3,
                100.0 * gb / bw,
                b / a
            );
        }
    }
    println!("\ngemm m={GEMM_M}: Gop/s (2·m·N·K per call); – = path unavailable (or not run)");
    println!(
        "| N×K | threads | f32 baseline | I2S scalar | I2S avx2 | T1 avx2 | I2S avx512 | T1 avx512 \
         | I2S amx | T1 amx | I2S avx2 / f32 | I2S amx / f32 |"
    );
    for &(n, k) in shapes() {
        let ops = (2 * GEMM_M * n * k) as f64;
        for t in THREADS {
            let g = format!("gemm{GEMM_M}_{n}x{k}_t{t}");
            let f = |id: &str| mean_ns(&g, id).map(|ns| ops / ns);
            let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1}"));
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => format!("{:.1}×", a / b),
                _ => "–".into(),
            };
            let fb = f("f32_baseline");
            let cells: Vec<String> = [
                "i2s_scalar",
                "i2s_avx2",
                "t1_avx2",
                "i2s_avx512",
                "t1_avx512",
                "i2s_amx",
                "t1_amx",
            ]
            .into_iter()
            .map(|id| fmt(f(id)))
            .collect();
            println!(
                "| {n}×{k} | {t} | {} | {} | {} | {} |",
                fmt(fb),
                cells.join(" | "),
                ratio(f("i2s_avx2"), fb),
                ratio(f("i2s_amx"), fb)
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .output_directory(std::path::Path::new(&out_dir()))
        .configure_from_args();
    bench_gemv(&mut c);
    bench_gemm(&mut c);
    c.final_summary();
    summary();
}
