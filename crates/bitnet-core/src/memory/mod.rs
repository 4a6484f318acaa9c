//! The memory pool CPU tensors allocate from ([`HybridMemoryPool`]).
//!
//! Inference allocates the same few buffer sizes over and over (activations, attention
//! scores, logits, one set per token). Going to the system allocator each time costs tens
//! to hundreds of nanoseconds and, for large buffers, page faults on freshly mapped memory.
//! The pool keeps freed blocks and hands them out again:
//!
//! * small blocks (≤ 1 MiB) in power-of-two size classes from 64 B, one free list each;
//! * large blocks (> 1 MiB) in a size-ordered cache, reused when a cached block fits the
//!   request within 2×, so a long-lived cache cannot waste more than half of a block.
//!
//! Every block is 64-byte aligned (one cache line, and enough for any SIMD load).
//! [`HybridMemoryPool::trim`] and an optional soft limit give memory back to the system.
//!
//! [`global()`] is the process-wide pool; [`crate::Tensor`] storage comes from it.

mod buffer;
mod pool;

pub use buffer::PoolBuffer;
pub use pool::{
    HybridMemoryPool, PoolStats, BLOCK_ALIGN, LARGE_REUSE_FACTOR, MAX_SMALL_BLOCK, MIN_BLOCK,
    NUM_SMALL_CLASSES,
};

static GLOBAL: HybridMemoryPool = HybridMemoryPool::new();

/// The process-wide pool. CPU tensors allocate from it; it lives for the whole process.
pub fn global() -> &'static HybridMemoryPool {
    &GLOBAL
}

/// A zeroed byte buffer for weights that are streamed once per token, advised for 2 MiB
/// pages before anything is written (so the pages come in huge at first touch, with no
/// copy and no extra resident memory: only the 2 MiB-aligned interior is advised).
/// BENCHMARKS.md, thirteenth session: with 4 KiB pages generation ran slower (8–11 % for
/// a mapped file, which `gguf.rs` advises the same way).
pub fn weight_buffer(len: usize) -> Vec<u8> {
    let v = vec![0u8; len];
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + len) / HUGE * HUGE;
        if end > start {
            // SAFETY: [start, end) lies inside the vector's allocation; MADV_HUGEPAGE only
            // changes how the kernel backs those pages, never their contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    v
}
