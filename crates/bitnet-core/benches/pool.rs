//! Allocate+free of one block through the pool vs the system allocator with the same
//! 64-byte alignment, in the same run (the machines are noisy, so only the ratio is
//! meaningful across runs).
//!
//! Run: `cargo bench -p bitnet-core --bench pool`. Kept to about a minute.

use bitnet_core::memory::{self, HybridMemoryPool, BLOCK_ALIGN};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::alloc::{alloc, dealloc, Layout};
use std::hint::black_box;
use std::time::Duration;

const SIZES: [(usize, &str); 4] = [
    (64, "64B"),
    (4 << 10, "4KiB"),
    (64 << 10, "64KiB"),
    (4 << 20, "4MiB"),
];

fn alloc_free(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc_free");
    let local = HybridMemoryPool::new();
    for (size, name) in SIZES {
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("pool", name), &size, |b, &size| {
            // Warm the class so the measured path is the steady-state hit.
            drop(local.allocate(size).unwrap());
            b.iter(|| {
                let buf = local.allocate(black_box(size)).unwrap();
                black_box(buf.as_ptr());
            })
        });
        group.bench_with_input(BenchmarkId::new("global_pool", name), &size, |b, &size| {
            drop(memory::global().allocate(size).unwrap());
            b.iter(|| {
                let buf = memory::global().allocate(black_box(size)).unwrap();
                black_box(buf.as_ptr());
            })
        });
        group.bench_with_input(BenchmarkId::new("std_alloc", name), &size, |b, &size| {
            let layout = Layout::from_size_align(size, BLOCK_ALIGN).unwrap();
            b.iter(|| {
                // SAFETY: non-zero size; the pointer is freed with the same layout.
                unsafe {
                    let p = alloc(black_box(layout));
                    assert!(!p.is_null());
                    black_box(p);
                    dealloc(p, layout);
                }
            })
        });
    }
    group.finish();
}

/// Two threads hammering the same small class: the lock is contended.
fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc_free_2threads");
    let pool = HybridMemoryPool::new();
    const N: u64 = 10_000;
    group.throughput(Throughput::Elements(2 * N));
    group.bench_function("pool/4KiB", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..N {
                            black_box(pool.allocate(black_box(4096)).unwrap().as_ptr());
                        }
                    });
                }
            })
        })
    });
    group.bench_function("std_alloc/4KiB", |b| {
        let layout = Layout::from_size_align(4096, BLOCK_ALIGN).unwrap();
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..N {
                            // SAFETY: as above.
                            unsafe {
                                let p = alloc(black_box(layout));
                                assert!(!p.is_null());
                                black_box(p);
                                dealloc(p, layout);
                            }
                        }
                    });
                }
            })
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = alloc_free, contended
}
criterion_main!(benches);
