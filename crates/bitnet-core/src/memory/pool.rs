//! [`HybridMemoryPool`]: size-class free lists for small blocks, a best-fit cache for large
//! ones.
//!
//! Concurrency design. Each small size class is a `Mutex<Vec<block>>` padded to its own
//! cache line: an uncontended lock/unlock is two atomic operations, cheaper than a
//! lock-free stack made ABA-safe, and trimming/statistics need no extra protocol because
//! everything about a class (its free list and its counters) changes under its lock. The
//! only pool-wide atomics touched on the hot path are `in_use` (one add on allocate, one
//! subtract on free) and a plain load of `peak`. `reserved` (bytes obtained from the system
//! and not released) changes only on misses and releases, so it is off the hit path.

use super::buffer::PoolBuffer;
use crate::error::{Error, Result};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Alignment of every block: a cache line, and enough for any AVX2/AVX-512 load.
pub const BLOCK_ALIGN: usize = 64;
/// The smallest size class; smaller requests get a block of this size.
pub const MIN_BLOCK: usize = 64;
/// The largest size class; larger requests go to the large-block cache.
pub const MAX_SMALL_BLOCK: usize = 1 << 20;
/// Power-of-two classes 64 B, 128 B, ..., 1 MiB.
pub const NUM_SMALL_CLASSES: usize =
    (MAX_SMALL_BLOCK.trailing_zeros() - MIN_BLOCK.trailing_zeros() + 1) as usize;
/// A cached large block is reused for a request only if it is at most this many times the
/// (rounded) request, so reuse never wastes more than half of a block.
pub const LARGE_REUSE_FACTOR: usize = 2;
/// Large requests are rounded up to whole pages, so that slightly different sizes (e.g. a
/// KV cache growing by one token) map to the same cached block size.
const LARGE_GRANULE: usize = 4096;

/// A block pointer in a free list.
struct Block(NonNull<u8>);
// SAFETY: a cached block is plain memory owned by the pool, not tied to any thread.
unsafe impl Send for Block {}

/// Event counters of one free list, updated under its lock.
#[derive(Clone, Copy)]
struct Counters {
    allocations: u64,
    hits: u64,
    misses: u64,
    frees: u64,
    released: u64,
}

impl Counters {
    const ZERO: Counters = Counters {
        allocations: 0,
        hits: 0,
        misses: 0,
        frees: 0,
        released: 0,
    };
}

struct SmallClass {
    free: Vec<Block>,
    counters: Counters,
}

struct LargeCache {
    /// Cached blocks by size; several blocks of one size share an entry. Entries may be
    /// empty (kept for reuse of their Vec).
    free: BTreeMap<usize, Vec<Block>>,
    cached_bytes: usize,
    counters: Counters,
}

/// Keeps each lock and the hot atomics on their own cache line, so that threads using
/// different size classes do not slow each other down through false sharing.
#[repr(align(64))]
struct CachePadded<T>(T);

/// A zero-size buffer's pointer: non-null and 64-byte aligned, never dereferenced.
#[repr(align(64))]
struct Align64;

/// Statistics of a pool. Counts are events since the pool was created; byte figures are
/// the current state, in block bytes (a 100-byte request holds a 128-byte block).
///
/// Read while other threads use the pool, the fields are each accurate but not one atomic
/// snapshot; once the pool is quiescent, `allocations == hits + misses` and
/// `allocations - frees` is the number of live buffers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Successful allocations (zero-size ones included).
    pub allocations: u64,
    /// Buffers returned (dropped).
    pub frees: u64,
    /// Allocations served from a cached block (zero-size allocations count as hits: they
    /// need no memory).
    pub hits: u64,
    /// Allocations that went to the system allocator.
    pub misses: u64,
    /// Blocks given back to the system (by `trim`, the soft limit, or dropping the pool).
    pub released: u64,
    /// Block bytes currently held by live buffers.
    pub bytes_in_use: usize,
    /// Highest `bytes_in_use` since creation or the last [`HybridMemoryPool::reset_peak`].
    pub peak_bytes_in_use: usize,
    /// Block bytes held in the free lists, ready for reuse.
    pub bytes_cached: usize,
    /// Bytes currently obtained from the system (in use plus cached).
    pub bytes_reserved: usize,
}

/// The pool. See the [module documentation](super) for the design.
pub struct HybridMemoryPool {
    small: [CachePadded<Mutex<SmallClass>>; NUM_SMALL_CLASSES],
    large: CachePadded<Mutex<LargeCache>>,
    in_use: CachePadded<AtomicUsize>,
    peak: AtomicUsize,
    reserved: CachePadded<AtomicUsize>,
    /// `usize::MAX` means no limit.
    soft_limit: AtomicUsize,
    zero_size_allocations: AtomicU64,
    zero_size_frees: AtomicU64,
}

#[inline]
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code path panics while holding a pool lock, but if a caller's panic ever poisons
    // one, the free list itself is still consistent: keep using it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Size class index of a small request (`size <= MAX_SMALL_BLOCK`).
#[inline]
fn class_index(size: usize) -> usize {
    let cap = size.max(MIN_BLOCK).next_power_of_two();
    (cap.trailing_zeros() - MIN_BLOCK.trailing_zeros()) as usize
}

impl Default for HybridMemoryPool {
    fn default() -> Self {
        Self::new()
    }
}

impl HybridMemoryPool {
    /// An empty pool without a soft limit. `const`, so it can be a `static`.
    pub const fn new() -> Self {
        Self::with_soft_limit(usize::MAX)
    }

    /// An empty pool with a soft limit on reserved bytes (see
    /// [`HybridMemoryPool::set_soft_limit`]); `usize::MAX` means none.
    pub const fn with_soft_limit(limit_bytes: usize) -> Self {
        HybridMemoryPool {
            small: [const {
                CachePadded(Mutex::new(SmallClass {
                    free: Vec::new(),
                    counters: Counters::ZERO,
                }))
            }; NUM_SMALL_CLASSES],
            large: CachePadded(Mutex::new(LargeCache {
                free: BTreeMap::new(),
                cached_bytes: 0,
                counters: Counters::ZERO,
            })),
            in_use: CachePadded(AtomicUsize::new(0)),
            peak: AtomicUsize::new(0),
            reserved: CachePadded(AtomicUsize::new(0)),
            soft_limit: AtomicUsize::new(limit_bytes),
            zero_size_allocations: AtomicU64::new(0),
            zero_size_frees: AtomicU64::new(0),
        }
    }

    /// Set or clear the soft limit on bytes reserved from the system (in use + cached).
    ///
    /// When an allocation must go to the system and would push the reservation over the
    /// limit, cached blocks are trimmed first; and while the reservation is over the limit,
    /// freed blocks are released instead of cached. Live buffers are never affected, so the
    /// limit can be exceeded by memory actually in use (hence "soft").
    pub fn set_soft_limit(&self, limit_bytes: Option<usize>) {
        self.soft_limit
            .store(limit_bytes.unwrap_or(usize::MAX), Relaxed);
    }

    /// The current soft limit, if any.
    pub fn soft_limit(&self) -> Option<usize> {
        Some(self.soft_limit.load(Relaxed)).filter(|&l| l != usize::MAX)
    }

    /// Allocate `size` bytes (contents unspecified, see [`PoolBuffer`]).
    ///
    /// Sizes up to 1 MiB come from a power-of-two size class; larger ones reuse the
    /// smallest cached large block that fits within [`LARGE_REUSE_FACTOR`]×, or allocate.
    /// `size == 0` succeeds without touching memory. Fails with [`Error::OutOfMemory`] if
    /// the system allocator fails even after the cache was emptied.
    pub fn allocate(&self, size: usize) -> Result<PoolBuffer<'_>> {
        if size == 0 {
            self.zero_size_allocations.fetch_add(1, Relaxed);
            let dangling = NonNull::<Align64>::dangling().cast::<u8>();
            // SAFETY: a zero-capacity buffer owns no memory; the pointer is non-null and
            // aligned, which is all a zero-length slice needs.
            return Ok(unsafe { PoolBuffer::from_raw(dangling, 0, 0, self) });
        }
        let (ptr, capacity) = if size <= MAX_SMALL_BLOCK {
            self.allocate_small(size)?
        } else {
            self.allocate_large(size)?
        };
        let now = self.in_use.0.fetch_add(capacity, Relaxed) + capacity;
        // A load first: in steady state the peak is not exceeded and the line stays shared.
        if now > self.peak.load(Relaxed) {
            self.peak.fetch_max(now, Relaxed);
        }
        // SAFETY: `ptr` is a block of `capacity >= size` bytes from this pool, 64-byte
        // aligned, zeroed when it came from the system and only ever written through
        // `&mut [u8]` since, so fully initialized.
        Ok(unsafe { PoolBuffer::from_raw(ptr, size, capacity, self) })
    }

    /// Allocate `size` bytes set to zero.
    pub fn allocate_zeroed(&self, size: usize) -> Result<PoolBuffer<'_>> {
        let mut buf = self.allocate(size)?;
        buf.fill(0);
        Ok(buf)
    }

    fn allocate_small(&self, size: usize) -> Result<(NonNull<u8>, usize)> {
        let idx = class_index(size);
        let capacity = MIN_BLOCK << idx;
        let slot = &self.small[idx].0;
        {
            let mut class = lock(slot);
            class.counters.allocations += 1;
            if let Some(block) = class.free.pop() {
                class.counters.hits += 1;
                return Ok((block.0, capacity));
            }
            class.counters.misses += 1;
        }
        match self.system_alloc(capacity) {
            Ok(ptr) => Ok((ptr, capacity)),
            Err(e) => {
                let mut class = lock(slot);
                class.counters.allocations -= 1;
                class.counters.misses -= 1;
                Err(e)
            }
        }
    }

    fn allocate_large(&self, size: usize) -> Result<(NonNull<u8>, usize)> {
        let rounded = size
            .checked_next_multiple_of(LARGE_GRANULE)
            .ok_or(Error::OutOfMemory { bytes: size })?;
        {
            let mut large = lock(&self.large.0);
            large.counters.allocations += 1;
            let max = rounded.saturating_mul(LARGE_REUSE_FACTOR);
            // Emptied entries are kept (until `trim`), so that a steady alloc/free cycle of
            // one size does not allocate a fresh Vec for its entry every time.
            let fit = large
                .free
                .range_mut(rounded..=max)
                .find_map(|(&k, v)| v.pop().map(|b| (k, b)));
            if let Some((block_size, block)) = fit {
                large.cached_bytes -= block_size;
                large.counters.hits += 1;
                return Ok((block.0, block_size));
            }
            large.counters.misses += 1;
        }
        match self.system_alloc(rounded) {
            Ok(ptr) => Ok((ptr, rounded)),
            Err(e) => {
                let mut large = lock(&self.large.0);
                large.counters.allocations -= 1;
                large.counters.misses -= 1;
                Err(e)
            }
        }
    }

    /// Get a zeroed, 64-byte aligned block from the system, trimming the cache first if the
    /// soft limit requires it, and once more (fully) if the system is out of memory.
    fn system_alloc(&self, capacity: usize) -> Result<NonNull<u8>> {
        let oom = Error::OutOfMemory { bytes: capacity };
        let layout = Layout::from_size_align(capacity, BLOCK_ALIGN).map_err(|_| oom)?;
        let limit = self.soft_limit.load(Relaxed);
        if limit != usize::MAX && self.reserved.0.load(Relaxed).saturating_add(capacity) > limit {
            let in_use = self.in_use.0.load(Relaxed);
            self.trim(limit.saturating_sub(in_use.saturating_add(capacity)));
        }
        // Zeroed so every pool block is initialized memory (see `PoolBuffer`); for large
        // blocks this is calloc's fresh mmap, which costs nothing extra.
        // SAFETY: `layout` has non-zero size (capacity >= MIN_BLOCK).
        let mut ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            self.trim(0);
            // SAFETY: as above.
            ptr = unsafe { alloc_zeroed(layout) };
        }
        let ptr = NonNull::new(ptr).ok_or(Error::OutOfMemory { bytes: capacity })?;
        self.reserved.0.fetch_add(capacity, Relaxed);
        Ok(ptr)
    }

    /// # Safety
    /// `ptr` must be a block of exactly `capacity` bytes obtained by `system_alloc`.
    unsafe fn system_free(&self, ptr: NonNull<u8>, capacity: usize) {
        // SAFETY: the caller guarantees ptr/capacity came from `alloc_zeroed` with this
        // layout, which was valid then.
        unsafe {
            dealloc(
                ptr.as_ptr(),
                Layout::from_size_align_unchecked(capacity, BLOCK_ALIGN),
            )
        };
        self.reserved.0.fetch_sub(capacity, Relaxed);
    }

    /// Return a block (called by `PoolBuffer::drop`).
    ///
    /// # Safety
    /// `ptr` must be a live block of this pool with this `capacity` (0: a zero-size buffer)
    /// that is not used afterwards.
    pub(super) unsafe fn release(&self, ptr: NonNull<u8>, capacity: usize) {
        if capacity == 0 {
            self.zero_size_frees.fetch_add(1, Relaxed);
            return;
        }
        self.in_use.0.fetch_sub(capacity, Relaxed);
        let limit = self.soft_limit.load(Relaxed);
        let over_limit = limit != usize::MAX && self.reserved.0.load(Relaxed) > limit;
        if capacity <= MAX_SMALL_BLOCK {
            let mut class = lock(&self.small[class_index(capacity)].0);
            class.counters.frees += 1;
            if !over_limit {
                class.free.push(Block(ptr));
                return;
            }
            class.counters.released += 1;
        } else {
            let mut large = lock(&self.large.0);
            large.counters.frees += 1;
            if !over_limit {
                large.free.entry(capacity).or_default().push(Block(ptr));
                large.cached_bytes += capacity;
                return;
            }
            large.counters.released += 1;
        }
        // Over the soft limit: give the block back instead of caching it.
        // SAFETY: forwarded from the caller.
        unsafe { self.system_free(ptr, capacity) };
    }

    /// Release cached blocks to the system until at most `limit_bytes` stay cached.
    /// Large blocks go first (largest first), then small classes from the largest down, so
    /// that the fewest blocks are freed and the cheap-to-refill small classes stay warm.
    /// Returns the number of bytes released. Live buffers are not affected.
    pub fn trim(&self, limit_bytes: usize) -> usize {
        let mut cached = self.bytes_cached();
        if cached <= limit_bytes {
            return 0;
        }
        let mut released = 0usize;
        let mut victims: Vec<(Block, usize)> = Vec::new();
        {
            let mut large = lock(&self.large.0);
            while cached > limit_bytes {
                let Some(mut entry) = large.free.last_entry() else {
                    break;
                };
                let size = *entry.key();
                let block = entry.get_mut().pop();
                if entry.get().is_empty() {
                    entry.remove();
                }
                if let Some(block) = block {
                    large.cached_bytes -= size;
                    large.counters.released += 1;
                    cached = cached.saturating_sub(size);
                    victims.push((block, size));
                }
            }
        }
        for idx in (0..NUM_SMALL_CLASSES).rev() {
            if cached <= limit_bytes {
                break;
            }
            let capacity = MIN_BLOCK << idx;
            let mut class = lock(&self.small[idx].0);
            while cached > limit_bytes {
                let Some(block) = class.free.pop() else {
                    break;
                };
                class.counters.released += 1;
                cached = cached.saturating_sub(capacity);
                victims.push((block, capacity));
            }
        }
        // Free outside the locks: the system allocator may take a while (munmap).
        for (block, size) in victims {
            // SAFETY: cached blocks are system blocks of exactly this size, now removed
            // from every free list.
            unsafe { self.system_free(block.0, size) };
            released += size;
        }
        released
    }

    /// Bytes currently cached in the free lists.
    pub fn bytes_cached(&self) -> usize {
        let small: usize = self
            .small
            .iter()
            .enumerate()
            .map(|(idx, slot)| lock(&slot.0).free.len() * (MIN_BLOCK << idx))
            .sum();
        small + lock(&self.large.0).cached_bytes
    }

    /// Block bytes currently held by live buffers.
    pub fn bytes_in_use(&self) -> usize {
        self.in_use.0.load(Relaxed)
    }

    /// Start peak tracking afresh from the current usage (e.g. per generated token).
    pub fn reset_peak(&self) {
        self.peak.store(self.in_use.0.load(Relaxed), Relaxed);
    }

    /// A statistics snapshot (see [`PoolStats`] on consistency under concurrency).
    pub fn stats(&self) -> PoolStats {
        let zero_allocs = self.zero_size_allocations.load(Relaxed);
        let mut total = Counters {
            allocations: zero_allocs,
            hits: zero_allocs,
            frees: self.zero_size_frees.load(Relaxed),
            ..Counters::ZERO
        };
        let mut cached = 0usize;
        let mut add = |c: &Counters| {
            total.allocations += c.allocations;
            total.hits += c.hits;
            total.misses += c.misses;
            total.frees += c.frees;
            total.released += c.released;
        };
        for (idx, slot) in self.small.iter().enumerate() {
            let class = lock(&slot.0);
            add(&class.counters);
            cached += class.free.len() * (MIN_BLOCK << idx);
        }
        {
            let large = lock(&self.large.0);
            add(&large.counters);
            cached += large.cached_bytes;
        }
        PoolStats {
            allocations: total.allocations,
            frees: total.frees,
            hits: total.hits,
            misses: total.misses,
            released: total.released,
            bytes_in_use: self.in_use.0.load(Relaxed),
            peak_bytes_in_use: self.peak.load(Relaxed),
            bytes_cached: cached,
            bytes_reserved: self.reserved.0.load(Relaxed),
        }
    }

    /// The block size a request of `size` bytes occupies (0 for 0).
    pub fn block_size_for(size: usize) -> Option<usize> {
        match size {
            0 => Some(0),
            s if s <= MAX_SMALL_BLOCK => Some(MIN_BLOCK << class_index(s)),
            s => s.checked_next_multiple_of(LARGE_GRANULE),
        }
    }
}

impl Drop for HybridMemoryPool {
    fn drop(&mut self) {
        // Every PoolBuffer borrows the pool, so none is alive here: all blocks are cached.
        self.trim(0);
    }
}

impl std::fmt::Debug for HybridMemoryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridMemoryPool")
            .field("soft_limit", &self.soft_limit())
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_sizes() {
        assert_eq!(NUM_SMALL_CLASSES, 15);
        assert_eq!(class_index(1), 0);
        assert_eq!(class_index(64), 0);
        assert_eq!(class_index(65), 1);
        assert_eq!(class_index(MAX_SMALL_BLOCK), NUM_SMALL_CLASSES - 1);
        assert_eq!(HybridMemoryPool::block_size_for(100), Some(128));
        assert_eq!(
            HybridMemoryPool::block_size_for(MAX_SMALL_BLOCK + 1),
            Some(MAX_SMALL_BLOCK + 4096)
        );
    }

    #[test]
    fn reuse_is_lifo() {
        let pool = HybridMemoryPool::new();
        let p = pool.allocate(100).unwrap().as_ptr();
        let b = pool.allocate(128).unwrap();
        assert_eq!(b.as_ptr(), p);
        let s = pool.stats();
        assert_eq!((s.hits, s.misses), (1, 1));
    }
}
