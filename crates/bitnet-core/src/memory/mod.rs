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
