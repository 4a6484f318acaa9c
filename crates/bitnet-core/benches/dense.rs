//! Dense LM-head matvec throughput per storage kind (logits = W·x).
//!
//! `cargo bench -p bitnet-core --bench dense`. Shape: 16384 × 2560 (a slice of the
//! 2B-4T LM head, 128256 × 2560), so every kind's weights exceed the CPU caches.

use bitnet_core::quant::dense::{DenseKind, DenseMatrix};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

const ROWS: usize = 16384;
const COLS: usize = 2560;

fn data(n: usize, seed: u32, amp: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2.0 * amp
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let w = data(ROWS * COLS, 1, 0.02);
    let x = data(COLS, 2, 1.0);
    let mut out = vec![0f32; ROWS];
    let mut g = c.benchmark_group("dense_matvec_16384x2560");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(3));
    for kind in [
        DenseKind::F32,
        DenseKind::F16,
        DenseKind::BF16,
        DenseKind::Q8_0,
        DenseKind::Q6K,
        DenseKind::I8Row,
    ] {
        let m = DenseMatrix::from_f32(&w, ROWS, COLS, kind).unwrap();
        g.throughput(Throughput::Bytes(m.nbytes() as u64));
        g.bench_function(format!("{kind:?}"), |b| {
            b.iter(|| m.matvec(black_box(&x), &mut out).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
