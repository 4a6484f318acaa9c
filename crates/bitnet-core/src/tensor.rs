//! Tensors: a dtype, a strided [`Layout`] and shared, immutable [`Storage`].
//!
//! Views (transpose, permute, narrow, broadcast, reshape of contiguous data) share the
//! storage and only build a new layout, so they cost an allocation of a few `usize`s, never
//! a copy. Data is copied only by [`Tensor::contiguous`] (when the view is strided),
//! [`Tensor::to_vec`] and dtype conversion. Storage is immutable, so any number of views
//! can coexist without aliasing hazards; kernels write their outputs into a fresh
//! [`PoolBuffer`] and wrap it with [`Tensor::from_pool_buffer`].

use crate::device::Device;
use crate::dtype::{as_bytes, as_bytes_mut, cast_slice, DType, WithDType};
use crate::error::{Error, Result};
use crate::memory::{self, PoolBuffer};
use crate::shape::{Layout, Shape};
use crate::storage::{SharedBytes, Storage};
use std::fmt;

/// An n-dimensional array. Cloning is cheap (the storage is shared).
#[derive(Clone)]
pub struct Tensor {
    storage: Storage,
    layout: Layout,
    dtype: DType,
}

/// Byte size of `shape` elements of `dtype`, or a shape error if it overflows.
fn byte_len(op: &'static str, shape: &Shape, dtype: DType) -> Result<usize> {
    shape
        .checked_elem_count()
        .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
        .ok_or_else(|| {
            Error::shape(
                op,
                format!("{shape} of {dtype} overflows the address space"),
            )
        })
}

/// Apply `$body` with `$T` bound to the Rust type of `$dtype`.
macro_rules! with_rust_type {
    ($dtype:expr, $T:ident, $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F16 => {
                type $T = half::f16;
                $body
            }
            DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            DType::I8 => {
                type $T = i8;
                $body
            }
            DType::I32 => {
                type $T = i32;
                $body
            }
            DType::U8 => {
                type $T = u8;
                $body
            }
        }
    };
}

impl Tensor {
    // ---------------------------------------------------------------- construction

    /// A CPU tensor holding `data` (row-major) with the given shape. The data is copied
    /// into a block of the global pool, so every CPU tensor is 64-byte aligned.
    pub fn from_vec<T: WithDType>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
        Self::from_slice_on(&data, shape, &Device::Cpu)
    }

    /// A CPU tensor holding a copy of `data` (row-major).
    pub fn from_slice<T: WithDType>(data: &[T], shape: impl Into<Shape>) -> Result<Tensor> {
        Self::from_slice_on(data, shape, &Device::Cpu)
    }

    /// A tensor holding a copy of `data` on `device`.
    pub fn from_slice_on<T: WithDType>(
        data: &[T],
        shape: impl Into<Shape>,
        device: &Device,
    ) -> Result<Tensor> {
        device.ensure_available()?;
        let shape = shape.into();
        let n = byte_len("from_slice", &shape, T::DTYPE)? / T::DTYPE.size_in_bytes();
        if data.len() != n {
            return Err(Error::shape(
                "from_slice",
                format!(
                    "{} elements given for shape {shape} ({n} elements)",
                    data.len()
                ),
            ));
        }
        let mut buf = memory::global().allocate(std::mem::size_of_val(data))?;
        buf.copy_from_slice(as_bytes(data));
        Self::from_pool_buffer(buf, shape, T::DTYPE)
    }

    /// A CPU tensor of zeros.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        Self::zeros_on(shape, dtype, &Device::Cpu)
    }

    /// A tensor of zeros on `device`.
    pub fn zeros_on(shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
        device.ensure_available()?;
        let shape = shape.into();
        let len = byte_len("zeros", &shape, dtype)?;
        let buf = memory::global().allocate_zeroed(len)?;
        Self::from_pool_buffer(buf, shape, dtype)
    }

    /// A CPU tensor with every element equal to `value`.
    pub fn full<T: WithDType>(value: T, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        let len = byte_len("full", &shape, T::DTYPE)?;
        let mut buf = memory::global().allocate(len)?;
        buf.typed_mut::<T>()?.fill(value);
        Self::from_pool_buffer(buf, shape, T::DTYPE)
    }

    /// A contiguous CPU tensor over a pool buffer, e.g. a kernel's output. The buffer's
    /// length must be exactly the tensor's byte size.
    pub fn from_pool_buffer(
        buf: PoolBuffer<'static>,
        shape: impl Into<Shape>,
        dtype: DType,
    ) -> Result<Tensor> {
        Self::from_bytes(buf.into_shared(), shape, dtype)
    }

    /// A contiguous CPU tensor over existing bytes without copying (e.g. a memory-mapped
    /// weight). The length must be exactly the tensor's byte size. The bytes need not be
    /// aligned; [`Tensor::as_slice`] reports misaligned data and [`Tensor::contiguous`]
    /// makes an aligned copy.
    pub fn from_bytes(bytes: SharedBytes, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        let shape = shape.into();
        let len = byte_len("from_bytes", &shape, dtype)?;
        if bytes.len() != len {
            return Err(Error::shape(
                "from_bytes",
                format!(
                    "{} bytes given for {shape} of {dtype} ({len} bytes)",
                    bytes.len()
                ),
            ));
        }
        Ok(Tensor {
            storage: Storage::Cpu(bytes),
            layout: Layout::contiguous(shape),
            dtype,
        })
    }

    /// A tensor over any storage with any layout; checks that the layout stays inside the
    /// storage. This is how code outside this module builds strided views of raw data.
    pub fn from_storage(storage: Storage, layout: Layout, dtype: DType) -> Result<Tensor> {
        let need = layout
            .required_storage_elems()
            .checked_mul(dtype.size_in_bytes());
        if need.is_none_or(|n| n > storage.len_bytes()) {
            return Err(Error::shape(
                "from_storage",
                format!(
                    "layout {:?} (start {}, strides {:?}) of {dtype} reaches past the {} \
                     bytes of storage",
                    layout.dims(),
                    layout.start_offset(),
                    layout.strides(),
                    storage.len_bytes()
                ),
            ));
        }
        Ok(Tensor {
            storage,
            layout,
            dtype,
        })
    }

    // ---------------------------------------------------------------- accessors

    pub fn shape(&self) -> &Shape {
        self.layout.shape()
    }

    pub fn dims(&self) -> &[usize] {
        self.layout.dims()
    }

    pub fn rank(&self) -> usize {
        self.layout.rank()
    }

    pub fn elem_count(&self) -> usize {
        self.layout.elem_count()
    }

    /// Size of dimension `dim`, or [`Error::OutOfRange`].
    pub fn dim(&self, dim: usize) -> Result<usize> {
        self.shape().dim(dim)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> Device {
        self.storage.device()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor {
            storage: self.storage.clone(),
            layout,
            dtype: self.dtype,
        }
    }

    fn cpu_bytes(&self, op: &'static str) -> Result<&SharedBytes> {
        self.storage.cpu_bytes().ok_or_else(|| {
            Error::Unsupported(format!(
                "{op}: tensor on {} is not on the cpu",
                self.device()
            ))
        })
    }

    fn check_dtype<T: WithDType>(&self, op: &'static str) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(Error::DType {
                op,
                expected: T::DTYPE,
                got: self.dtype,
            });
        }
        Ok(())
    }

    // ---------------------------------------------------------------- views

    /// Swap dimensions `d0` and `d1` (zero-copy).
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.transpose(d0, d1)?))
    }

    /// Swap the last two dimensions (zero-copy); needs rank ≥ 2.
    pub fn t(&self) -> Result<Tensor> {
        let r = self.rank();
        if r < 2 {
            return Err(Error::shape(
                "t",
                format!("needs rank >= 2, got shape {}", self.shape()),
            ));
        }
        self.transpose(r - 2, r - 1)
    }

    /// Reorder dimensions: dimension `i` of the result is dimension `perm[i]` (zero-copy).
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.permute(perm)?))
    }

    /// Keep `len` entries of dimension `dim` from `start` (zero-copy).
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.narrow(dim, start, len)?))
    }

    /// Same elements in a new shape (zero-copy). Only contiguous tensors can be reshaped;
    /// for a strided view this fails with an error telling to call [`Tensor::contiguous`].
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.reshape(shape)?))
    }

    /// Broadcast to `shape` (NumPy rules) by repeating with stride 0 (zero-copy).
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.broadcast_as(shape)?))
    }

    /// Insert a size-1 dimension at `dim` (zero-copy).
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.unsqueeze(dim)?))
    }

    /// Remove size-1 dimension `dim` (zero-copy).
    pub fn squeeze(&self, dim: usize) -> Result<Tensor> {
        Ok(self.with_layout(self.layout.squeeze(dim)?))
    }

    /// Whether the view's first element is aligned for its dtype in memory.
    fn is_aligned(&self) -> bool {
        match self.storage.cpu_bytes() {
            Some(b) => {
                let addr =
                    b.as_ptr() as usize + self.layout.start_offset() * self.dtype.size_in_bytes();
                self.elem_count() == 0 || addr.is_multiple_of(self.dtype.size_in_bytes())
            }
            None => true,
        }
    }

    /// A contiguous, aligned tensor with the same values: `self` (shared) if it already is
    /// one, else a row-major copy into a fresh pool buffer.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() && self.is_aligned() {
            return Ok(self.clone());
        }
        let len = byte_len("contiguous", self.shape(), self.dtype)?;
        let mut buf = memory::global().allocate(len)?;
        self.copy_to_bytes("contiguous", &mut buf)?;
        Self::from_pool_buffer(buf, self.shape().clone(), self.dtype)
    }

    /// Copy the view's elements, row-major, into `dst` (exactly its byte size).
    fn copy_to_bytes(&self, op: &'static str, dst: &mut [u8]) -> Result<()> {
        let src = self.cpu_bytes(op)?.as_slice();
        let es = self.dtype.size_in_bytes();
        debug_assert_eq!(dst.len(), self.elem_count() * es);
        let mut pos = 0usize;
        // Constructors guarantee the layout lies inside the storage, so slicing is in
        // bounds; a run is copied with one memcpy.
        self.layout.for_each_run(|offset, len| {
            let n = len * es;
            dst[pos..pos + n].copy_from_slice(&src[offset * es..offset * es + n]);
            pos += n;
        });
        Ok(())
    }

    // ---------------------------------------------------------------- data access

    /// The elements in row-major order, for any view (strided or broadcast).
    /// Fails with [`Error::DType`] if `T` is not the tensor's dtype.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        self.check_dtype::<T>("to_vec")?;
        let mut out = vec![T::default(); self.elem_count()];
        self.copy_to_bytes("to_vec", as_bytes_mut(&mut out))?;
        Ok(out)
    }

    /// The single element of a tensor with one element (any rank).
    pub fn to_scalar<T: WithDType>(&self) -> Result<T> {
        self.check_dtype::<T>("to_scalar")?;
        if self.elem_count() != 1 {
            return Err(Error::shape(
                "to_scalar",
                format!("tensor of shape {} is not a single element", self.shape()),
            ));
        }
        Ok(self.to_vec::<T>()?[0])
    }

    /// Borrow the elements of a contiguous tensor without copying.
    ///
    /// Fails for a strided view (call [`Tensor::contiguous`] first), for a dtype other than
    /// the tensor's, and for storage not aligned for `T` (possible only for tensors made by
    /// [`Tensor::from_bytes`] over unaligned bytes; `contiguous()` fixes that too).
    pub fn as_slice<T: WithDType>(&self) -> Result<&[T]> {
        self.check_dtype::<T>("as_slice")?;
        let bytes = self.contiguous_bytes()?;
        cast_slice(bytes).ok_or_else(|| {
            Error::Unsupported(format!(
                "as_slice: the storage is not aligned for {}; call .contiguous() for an \
                 aligned copy",
                self.dtype
            ))
        })
    }

    /// The raw bytes of a contiguous tensor (native endianness).
    pub fn contiguous_bytes(&self) -> Result<&[u8]> {
        let Some(range) = self.layout.contiguous_range() else {
            return Err(Error::Unsupported(format!(
                "the tensor is a non-contiguous view (shape {}, strides {:?}); call \
                 .contiguous() first",
                self.shape(),
                self.layout.strides()
            )));
        };
        let es = self.dtype.size_in_bytes();
        let bytes = self.cpu_bytes("contiguous_bytes")?.as_slice();
        Ok(&bytes[range.start * es..range.end * es])
    }

    /// Convert to another dtype (through f64: exact widening; float narrowing rounds to
    /// nearest; integer narrowing saturates and truncates toward zero).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        with_rust_type!(self.dtype, S, {
            let src = self.to_vec::<S>()?;
            with_rust_type!(dtype, D, {
                let dst: Vec<D> = src.iter().map(|&x| D::from_f64(x.to_f64())).collect();
                Tensor::from_slice(&dst, self.shape().clone())
            })
        })
    }

    /// Move to `device`. Only CPU storage exists in this build, so anything but a
    /// same-device move fails with the device's error ([`Device::ensure_available`]).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if *device == self.device() {
            return Ok(self.clone());
        }
        device.ensure_available()?;
        Err(Error::Unsupported(format!(
            "copying a tensor from {} to {device} is not implemented",
            self.device()
        )))
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor[{}, {}, {}",
            self.shape(),
            self.dtype,
            self.device()
        )?;
        if !self.is_contiguous() || self.layout.start_offset() != 0 {
            write!(
                f,
                ", strides {:?}, offset {}",
                self.layout.strides(),
                self.layout.start_offset()
            )?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_share_storage() {
        let t = Tensor::from_vec((0..6).map(|x| x as f32).collect(), (2, 3)).unwrap();
        let tt = t.t().unwrap();
        assert_eq!(tt.to_vec::<f32>().unwrap(), vec![0., 3., 1., 4., 2., 5.]);
        let p1 = t.contiguous_bytes().unwrap().as_ptr();
        let p2 = tt.storage().cpu_bytes().unwrap().as_ptr();
        assert_eq!(p1, p2);
        assert!(tt.as_slice::<f32>().is_err());
        let c = tt.contiguous().unwrap();
        assert_eq!(c.as_slice::<f32>().unwrap(), &[0., 3., 1., 4., 2., 5.]);
        assert_eq!(c.as_slice::<f32>().unwrap().as_ptr() as usize % 64, 0);
    }

    #[test]
    fn dtype_conversion() {
        let t = Tensor::from_vec(vec![1.5f32, -2.0, 300.0], 3).unwrap();
        let h = t.to_dtype(DType::F16).unwrap();
        assert_eq!(h.dtype(), DType::F16);
        let back = h.to_dtype(DType::F32).unwrap();
        assert_eq!(back.to_vec::<f32>().unwrap(), vec![1.5, -2.0, 300.0]);
        let i = t.to_dtype(DType::I8).unwrap();
        assert_eq!(i.to_vec::<i8>().unwrap(), vec![1, -2, 127]);
    }
}
