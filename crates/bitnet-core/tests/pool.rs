//! HybridMemoryPool: reuse, alignment, statistics, trimming, soft limit, threads.

use bitnet_core::memory::{
    self, HybridMemoryPool, PoolBuffer, BLOCK_ALIGN, MAX_SMALL_BLOCK, MIN_BLOCK,
};
use bitnet_core::Error;

const MIB: usize = 1 << 20;

#[test]
fn free_then_alloc_same_class_is_a_hit_with_the_same_pointer() {
    let pool = HybridMemoryPool::new();
    let a = pool.allocate(1000).unwrap();
    assert_eq!((a.len(), a.capacity()), (1000, 1024));
    let p = a.as_ptr();
    drop(a);
    let s = pool.stats();
    assert_eq!((s.allocations, s.frees, s.hits, s.misses), (1, 1, 0, 1));
    assert_eq!(s.bytes_cached, 1024);
    // 600 bytes falls into the same 1 KiB class.
    let b = pool.allocate(600).unwrap();
    assert_eq!(b.as_ptr(), p);
    let s = pool.stats();
    assert_eq!((s.allocations, s.hits, s.misses), (2, 1, 1));
    assert_eq!((s.bytes_in_use, s.bytes_cached), (1024, 0));
    // A different class does not take it.
    let c = pool.allocate(2000).unwrap();
    assert_ne!(c.as_ptr(), p);
}

#[test]
fn every_class_is_aligned_and_sized() {
    let pool = HybridMemoryPool::new();
    let mut size = MIN_BLOCK;
    let mut bufs = Vec::new();
    while size <= MAX_SMALL_BLOCK {
        for req in [size / 2 + 1, size] {
            let mut b = pool.allocate(req).unwrap();
            assert_eq!(b.as_ptr() as usize % BLOCK_ALIGN, 0, "size {req}");
            assert_eq!(b.len(), req);
            assert_eq!(b.capacity(), size.max(MIN_BLOCK));
            // The whole buffer is writable and readable.
            b.fill(0xAB);
            assert!(b.iter().all(|&x| x == 0xAB));
            bufs.push(b);
        }
        size *= 2;
    }
    for req in [1, 3, 63] {
        let b = pool.allocate(req).unwrap();
        assert_eq!(b.capacity(), MIN_BLOCK);
        assert_eq!(b.as_ptr() as usize % BLOCK_ALIGN, 0);
    }
    let big = pool.allocate(3 * MIB + 5).unwrap();
    assert_eq!(big.as_ptr() as usize % BLOCK_ALIGN, 0);
}

#[test]
fn zero_size_allocations_work() {
    let pool = HybridMemoryPool::new();
    let mut z = pool.allocate(0).unwrap();
    assert!(z.is_empty());
    assert_eq!(z.as_ptr() as usize % BLOCK_ALIGN, 0);
    assert!(z.typed_mut::<f32>().unwrap().is_empty());
    assert_eq!(&z[..], &[] as &[u8]);
    drop(z);
    let s = pool.stats();
    assert_eq!((s.allocations, s.frees, s.hits, s.misses), (1, 1, 1, 0));
    assert_eq!((s.bytes_in_use, s.bytes_reserved), (0, 0));
}

#[test]
fn typed_views_and_zeroing() {
    let pool = HybridMemoryPool::new();
    let mut b = pool.allocate(16).unwrap();
    b.typed_mut::<f32>()
        .unwrap()
        .copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(b.typed::<f32>().unwrap(), &[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(b.typed::<half::f16>().unwrap().len(), 8);
    drop(b);
    // Reused block: allocate_zeroed clears what the previous user left.
    let z = pool.allocate_zeroed(16).unwrap();
    assert!(z.iter().all(|&x| x == 0));
    let odd = pool.allocate(6).unwrap();
    assert!(matches!(odd.typed::<f32>(), Err(Error::Shape { .. })));
}

#[test]
fn large_blocks_reuse_within_factor_two() {
    let pool = HybridMemoryPool::new();
    let a = pool.allocate(4 * MIB).unwrap();
    let pa = a.as_ptr();
    assert_eq!(a.capacity(), 4 * MIB);
    drop(a);
    // 3 MiB fits the cached 4 MiB block (within 2x): reused, capacity stays 4 MiB.
    let b = pool.allocate(3 * MIB).unwrap();
    assert_eq!(b.as_ptr(), pa);
    assert_eq!((b.len(), b.capacity()), (3 * MIB, 4 * MIB));
    drop(b);
    // 1.5 MiB would waste more than half of it: a new block.
    let c = pool.allocate(3 * MIB / 2).unwrap();
    assert_ne!(c.as_ptr(), pa);
    // 5 MiB does not fit.
    let d = pool.allocate(5 * MIB).unwrap();
    assert_ne!(d.as_ptr(), pa);
    let s = pool.stats();
    assert_eq!((s.allocations, s.hits, s.misses), (4, 1, 3));
    assert_eq!(s.bytes_cached, 4 * MIB);
    assert_eq!(s.bytes_in_use, 3 * MIB / 2 + 5 * MIB);
    // The smallest fitting block is chosen.
    drop(d);
    let e = pool.allocate(4 * MIB + 1).unwrap();
    assert_eq!(e.capacity(), 5 * MIB);
    // Non-page-multiple sizes are rounded to pages.
    let f = pool.allocate(MIB + 1).unwrap();
    assert_eq!(f.capacity(), MIB + 4096);
}

#[test]
fn peak_tracking() {
    let pool = HybridMemoryPool::new();
    {
        let _a = pool.allocate(4096).unwrap();
        let _b = pool.allocate(2 * MIB).unwrap();
        assert_eq!(pool.stats().peak_bytes_in_use, 4096 + 2 * MIB);
    }
    let s = pool.stats();
    assert_eq!(s.bytes_in_use, 0);
    assert_eq!(s.peak_bytes_in_use, 4096 + 2 * MIB);
    let _c = pool.allocate(64).unwrap();
    pool.reset_peak();
    assert_eq!(pool.stats().peak_bytes_in_use, 64);
}

#[test]
fn trim_releases_until_limit() {
    let pool = HybridMemoryPool::new();
    {
        let _bufs: Vec<PoolBuffer<'_>> = [64, 4096, 65536, 2 * MIB, 8 * MIB]
            .iter()
            .map(|&n| pool.allocate(n).unwrap())
            .collect();
    }
    let total = 64 + 4096 + 65536 + 2 * MIB + 8 * MIB;
    let s = pool.stats();
    assert_eq!((s.bytes_cached, s.bytes_reserved), (total, total));
    // Trimming to 3 MiB frees the 8 MiB block only (largest first).
    assert_eq!(pool.trim(3 * MIB), 8 * MIB);
    assert_eq!(pool.bytes_cached(), total - 8 * MIB);
    // Nothing to do when already under the limit.
    assert_eq!(pool.trim(3 * MIB), 0);
    // To 5000 bytes: 2 MiB and 64 KiB go, 4 KiB + 64 B stay.
    assert_eq!(pool.trim(5000), 2 * MIB + 65536);
    assert_eq!(pool.bytes_cached(), 4096 + 64);
    assert_eq!(pool.trim(0), 4096 + 64);
    let s = pool.stats();
    assert_eq!((s.bytes_cached, s.bytes_reserved, s.released), (0, 0, 5));
    // After trimming, an allocation is a miss again.
    let _a = pool.allocate(4096).unwrap();
    assert_eq!(pool.stats().misses, 6);
}

#[test]
fn trim_keeps_live_buffers() {
    let pool = HybridMemoryPool::new();
    let mut live = pool.allocate(MIB).unwrap();
    live.fill(7);
    drop(pool.allocate(MIB).unwrap()); // different block (the first is live), now cached
    assert_eq!(pool.trim(0), MIB);
    assert!(live.iter().all(|&x| x == 7));
    assert_eq!(pool.stats().bytes_in_use, MIB);
}

#[test]
fn soft_limit_trims_on_allocation() {
    let pool = HybridMemoryPool::with_soft_limit(10 * MIB);
    assert_eq!(pool.soft_limit(), Some(10 * MIB));
    drop(pool.allocate(8 * MIB).unwrap());
    assert_eq!(pool.stats().bytes_cached, 8 * MIB);
    // 3 MiB cannot reuse the 8 MiB block (more than 2x), so it is a miss, and 8 + 3 MiB
    // would exceed the 10 MiB limit: the cache is trimmed before allocating.
    let a = pool.allocate(3 * MIB).unwrap();
    let s = pool.stats();
    assert_eq!((s.misses, s.released), (2, 1));
    assert_eq!((s.bytes_cached, s.bytes_reserved), (0, 3 * MIB));
    drop(a);
    // Without a limit the same sequence keeps the cache.
    pool.set_soft_limit(None);
    assert_eq!(pool.soft_limit(), None);
    drop(pool.allocate(8 * MIB).unwrap());
    assert_eq!(pool.stats().bytes_cached, 3 * MIB + 8 * MIB);
}

#[test]
fn soft_limit_exact_accounting() {
    let pool = HybridMemoryPool::with_soft_limit(5 * MIB);
    drop(pool.allocate(4 * MIB).unwrap());
    // 1.25 MiB cannot reuse the 4 MiB block (more than 2x): a miss.
    let a = pool.allocate(MIB + MIB / 4).unwrap();
    // Reservation would be 4 + 1.25 = 5.25 MiB > 5 MiB: the cached 4 MiB block was released.
    let s = pool.stats();
    assert_eq!(s.bytes_cached, 0);
    assert_eq!(s.bytes_reserved, MIB + MIB / 4);
    assert_eq!(s.released, 1);
    // Over the limit by live memory alone: frees are released, not cached.
    let b = pool.allocate(4 * MIB + MIB / 2).unwrap();
    assert!(pool.stats().bytes_reserved > 5 * MIB);
    drop(b);
    let s = pool.stats();
    assert_eq!(s.bytes_cached, 0);
    assert_eq!(s.released, 2);
    // Back under the limit: frees are cached again.
    drop(a);
    assert_eq!(pool.stats().bytes_cached, MIB + MIB / 4);
}

#[test]
fn concurrent_use_keeps_stats_consistent() {
    let pool = HybridMemoryPool::new();
    let threads = 4;
    let iters = 5000;
    std::thread::scope(|s| {
        for t in 0..threads {
            let pool = &pool;
            s.spawn(move || {
                let mut held: Vec<PoolBuffer<'_>> = Vec::new();
                for i in 0..iters {
                    let size = [64, 100, 4096, 65536, 3000, 2 * MIB][(i + t) % 6];
                    let mut b = pool.allocate(size).unwrap();
                    assert_eq!(b.as_ptr() as usize % BLOCK_ALIGN, 0);
                    // Tag the block and check nobody else writes it while we hold it.
                    let tag = (t * 31 + i) as u8;
                    b[0] = tag;
                    let last = b.len() - 1;
                    b[last] = tag;
                    held.push(b);
                    if held.len() > 8 {
                        let old = held.remove(i % 8);
                        assert_eq!(old[0], old[old.len() - 1]);
                    }
                }
                for b in &held {
                    assert_eq!(b[0], b[b.len() - 1]);
                }
            });
        }
    });
    let s = pool.stats();
    let n = (threads * iters) as u64;
    assert_eq!(s.allocations, n);
    assert_eq!(s.frees, n);
    assert_eq!(s.hits + s.misses, n);
    assert!(s.hits > n / 2, "{s:?}");
    assert_eq!(s.bytes_in_use, 0);
    assert_eq!(s.bytes_cached, s.bytes_reserved);
    assert!(s.peak_bytes_in_use >= 2 * MIB);
    assert_eq!(pool.trim(0), s.bytes_reserved);
}

#[test]
fn buffers_are_send_and_sync_and_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PoolBuffer<'static>>();
    assert_send_sync::<HybridMemoryPool>();
    let pool = HybridMemoryPool::new();
    let b = pool.allocate(256).unwrap();
    let p = b.as_ptr() as usize;
    std::thread::scope(|s| {
        s.spawn(move || drop(b));
    });
    // Freed on another thread, reused here.
    assert_eq!(pool.allocate(256).unwrap().as_ptr() as usize, p);
}

#[test]
fn global_pool_is_shared() {
    let g = memory::global();
    assert!(std::ptr::eq(g, memory::global()));
    let b = g.allocate(128).unwrap();
    let shared = b.into_shared();
    assert_eq!(shared.len(), 128);
    assert_eq!(shared.as_ptr() as usize % BLOCK_ALIGN, 0);
}

#[test]
fn huge_requests_fail_with_out_of_memory() {
    let pool = HybridMemoryPool::new();
    assert!(matches!(
        pool.allocate(usize::MAX - 10),
        Err(Error::OutOfMemory { .. })
    ));
    assert!(matches!(
        pool.allocate(isize::MAX as usize),
        Err(Error::OutOfMemory { .. })
    ));
    let s = pool.stats();
    assert_eq!((s.allocations, s.misses), (0, 0));
}
