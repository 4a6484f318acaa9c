//! Byte buffers that may be owned, pooled or borrowed from a memory map, shared cheaply.

use std::ops::Range;
use std::sync::Arc;

/// An immutable, cheaply clonable byte range whose owner may be anything that derefs to
/// bytes: a `Vec<u8>`, a memory map (so weights stay mapped, never copied), or a pool block.
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl SharedBytes {
    /// Wrap a whole owner.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Self {
        let len = (*owner).as_ref().len();
        SharedBytes {
            owner,
            range: 0..len,
        }
    }

    /// Take ownership of a vector.
    pub fn from_vec(v: Vec<u8>) -> Self {
        Self::new(Arc::new(v))
    }

    /// A sub-range of these bytes, or `None` if it does not fit.
    pub fn slice(&self, range: Range<usize>) -> Option<SharedBytes> {
        if range.start > range.end || range.end > self.len() {
            return None;
        }
        Some(SharedBytes {
            owner: self.owner.clone(),
            range: self.range.start + range.start..self.range.start + range.end,
        })
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.len())
    }
}

/// The data behind a tensor, per device. Views share one `Storage` (cloning is cheap);
/// storage is immutable once built, which is what makes views safe to hand out freely.
///
/// CPU tensors created by bitnet-core allocate their bytes from [`crate::memory::global`]
/// (64-byte aligned); CPU storage may also wrap any other [`SharedBytes`] owner, such as a
/// memory-mapped weight file, without copying. GPU variants will be added with their
/// backends; until then `Device::Cuda`/`Device::Wgpu` cannot hold storage.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Storage {
    Cpu(SharedBytes),
}

impl Storage {
    /// The device the bytes live on.
    pub fn device(&self) -> crate::Device {
        match self {
            Storage::Cpu(_) => crate::Device::Cpu,
        }
    }

    /// Size of the storage in bytes.
    pub fn len_bytes(&self) -> usize {
        match self {
            Storage::Cpu(b) => b.len(),
        }
    }

    /// The bytes of a CPU storage.
    pub fn cpu_bytes(&self) -> Option<&SharedBytes> {
        match self {
            Storage::Cpu(b) => Some(b),
        }
    }
}
