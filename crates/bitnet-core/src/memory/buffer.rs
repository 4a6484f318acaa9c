//! [`PoolBuffer`]: an RAII handle to one pool block.

use super::pool::HybridMemoryPool;
use crate::dtype::{cast_slice, cast_slice_mut, WithDType};
use crate::error::{Error, Result};
use crate::storage::SharedBytes;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// A block borrowed from a [`HybridMemoryPool`]; it goes back to the pool when dropped.
///
/// Derefs to `len()` bytes. The start is 64-byte aligned, so [`PoolBuffer::typed`] views
/// never fail on alignment. Contents are unspecified after [`HybridMemoryPool::allocate`]
/// (they may hold a previous user's bytes, never uninitialized memory: fresh blocks are
/// zeroed by the system allocator); use [`HybridMemoryPool::allocate_zeroed`] for zeros.
pub struct PoolBuffer<'a> {
    ptr: NonNull<u8>,
    len: usize,
    /// Block size (its size class, or the large block's size); 0 for a zero-size buffer,
    /// which owns no memory.
    capacity: usize,
    pool: &'a HybridMemoryPool,
}

// SAFETY: a PoolBuffer uniquely owns its block (like a Box<[u8]>), and the pool it returns
// the block to is Sync, so moving or sharing the handle between threads is sound.
unsafe impl Send for PoolBuffer<'_> {}
// SAFETY: shared access only hands out `&[u8]`, which is Sync.
unsafe impl Sync for PoolBuffer<'_> {}

impl<'a> PoolBuffer<'a> {
    /// # Safety
    /// `ptr` must be a block of `capacity` bytes (or dangling with `capacity == 0`) owned
    /// by `pool`, fully initialized, 64-byte aligned, with `len <= capacity`.
    pub(super) unsafe fn from_raw(
        ptr: NonNull<u8>,
        len: usize,
        capacity: usize,
        pool: &'a HybridMemoryPool,
    ) -> Self {
        PoolBuffer {
            ptr,
            len,
            capacity,
            pool,
        }
    }

    /// Requested size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size of the underlying block (≥ `len()`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The pool this block returns to.
    pub fn pool(&self) -> &'a HybridMemoryPool {
        self.pool
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the block holds at least `len` initialized bytes (see `from_raw`) and we
        // own it uniquely; a zero-size buffer's pointer is non-null and aligned.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes as elements of `T`. Fails only if `len()` is not a multiple of
    /// `size_of::<T>()` (alignment is guaranteed by the pool).
    pub fn typed<T: WithDType>(&self) -> Result<&[T]> {
        cast_slice(self.as_slice()).ok_or_else(|| self.typed_error::<T>())
    }

    /// Mutable version of [`PoolBuffer::typed`].
    pub fn typed_mut<T: WithDType>(&mut self) -> Result<&mut [T]> {
        let err = self.typed_error::<T>();
        cast_slice_mut(self.as_mut_slice()).ok_or(err)
    }

    fn typed_error<T: WithDType>(&self) -> Error {
        Error::shape(
            "PoolBuffer::typed",
            format!(
                "{} bytes is not a whole number of {} elements",
                self.len,
                T::DTYPE
            ),
        )
    }
}

impl PoolBuffer<'static> {
    /// Freeze into cheaply clonable shared bytes (the block returns to the pool when the
    /// last clone is dropped). Only for `'static` pools such as [`super::global`], since
    /// `SharedBytes` owners must be `'static`.
    pub fn into_shared(self) -> SharedBytes {
        SharedBytes::new(Arc::new(self))
    }
}

impl Drop for PoolBuffer<'_> {
    fn drop(&mut self) {
        // SAFETY: the block came from this pool with this capacity and is not used again.
        unsafe { self.pool.release(self.ptr, self.capacity) };
    }
}

impl std::ops::Deref for PoolBuffer<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for PoolBuffer<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl AsRef<[u8]> for PoolBuffer<'_> {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsMut<[u8]> for PoolBuffer<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl fmt::Debug for PoolBuffer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PoolBuffer({} bytes in a {} byte block at {:p})",
            self.len, self.capacity, self.ptr
        )
    }
}
