//! Internal helpers every op family shares: typed access to a tensor's storage, output
//! allocation from the pool, and a strided walker that visits an n-d index space as rows
//! (so kernels see contiguous or stride-0 inner runs and can use SIMD), optionally split
//! over rayon threads.

use std::ops::Range;

use rayon::prelude::*;

use crate::dtype::{cast_slice, DType, WithDType};
use crate::error::{Error, Result};
use crate::memory::{self, PoolBuffer};
use crate::shape::{Layout, Shape};
use crate::tensor::Tensor;

/// `t` itself if its whole storage can be viewed as `&[T]` (aligned), else an aligned
/// contiguous copy. Only tensors made by `Tensor::from_bytes` over unaligned bytes (e.g.
/// a memory map at an odd offset) ever need the copy; pool storage is 64-byte aligned.
pub(crate) fn aligned(t: &Tensor) -> Result<Tensor> {
    let es = t.dtype().size_in_bytes();
    let bytes = cpu_bytes(t)?;
    let ok = bytes.is_empty() || (bytes.as_ptr() as usize).is_multiple_of(es);
    if ok {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

fn cpu_bytes(t: &Tensor) -> Result<&[u8]> {
    t.storage()
        .cpu_bytes()
        .map(|b| b.as_slice())
        .ok_or_else(|| Error::Unsupported(format!("tensor on {} is not on the cpu", t.device())))
}

/// The whole storage of an [`aligned`] tensor as elements (index it with layout offsets).
pub(crate) fn storage<T: WithDType>(t: &Tensor) -> Result<&[T]> {
    if t.dtype() != T::DTYPE {
        return Err(Error::DType {
            op: "storage",
            expected: T::DTYPE,
            got: t.dtype(),
        });
    }
    let bytes = cpu_bytes(t)?;
    // A storage may end in a partial element (bytes shared with something else); only
    // whole elements are addressable.
    let whole = bytes.len() - bytes.len() % T::DTYPE.size_in_bytes();
    cast_slice(&bytes[..whole]).ok_or_else(|| {
        Error::Unsupported("internal: storage not aligned; call ops::iter::aligned".into())
    })
}

/// A pool buffer for `n` elements of `dtype` (contents unspecified).
pub(crate) fn alloc(op: &'static str, n: usize, dtype: DType) -> Result<PoolBuffer<'static>> {
    let bytes = n
        .checked_mul(dtype.size_in_bytes())
        .ok_or_else(|| Error::shape(op, format!("{n} elements of {dtype} overflow")))?;
    memory::global().allocate(bytes)
}

/// Wrap a filled buffer as a contiguous tensor.
pub(crate) fn finish(
    buf: PoolBuffer<'static>,
    shape: impl Into<Shape>,
    dtype: DType,
) -> Result<Tensor> {
    Tensor::from_pool_buffer(buf, shape, dtype)
}

/// Allocate, fill through `f` and wrap: the common tail of every op.
pub(crate) fn build<T: WithDType>(
    op: &'static str,
    shape: impl Into<Shape>,
    f: impl FnOnce(&mut [T]) -> Result<()>,
) -> Result<Tensor> {
    let shape = shape.into();
    let n = shape
        .checked_elem_count()
        .ok_or_else(|| Error::shape(op, format!("{shape} overflows")))?;
    let mut buf = alloc(op, n, T::DTYPE)?;
    f(buf.typed_mut::<T>()?)?;
    finish(buf, shape, T::DTYPE)
}

/// N operands walked together over one index space (all already broadcast to it).
pub(crate) struct Walk<const N: usize> {
    dims: Vec<usize>,
    strides: [Vec<usize>; N],
    starts: [usize; N],
}

impl<const N: usize> Walk<N> {
    /// Operands' layouts must all have the same dims. Dimensions are coalesced where every
    /// operand is contiguous across them, so a contiguous tensor becomes one long row.
    pub(crate) fn new(layouts: [&Layout; N]) -> Walk<N> {
        let dims0 = layouts[0].dims();
        let mut dims: Vec<usize> = Vec::new();
        let mut strides: [Vec<usize>; N] = std::array::from_fn(|_| Vec::new());
        for d in 0..dims0.len() {
            let size = dims0[d];
            if size == 1 {
                continue;
            }
            let can_merge = !dims.is_empty()
                && (0..N).all(|k| {
                    let last = *strides[k].last().unwrap();
                    last == layouts[k].strides()[d] * size
                });
            if can_merge {
                *dims.last_mut().unwrap() *= size;
                for k in 0..N {
                    *strides[k].last_mut().unwrap() = layouts[k].strides()[d];
                }
            } else {
                dims.push(size);
                for k in 0..N {
                    strides[k].push(layouts[k].strides()[d]);
                }
            }
        }
        if dims.is_empty() {
            dims.push(1);
            for s in strides.iter_mut() {
                s.push(0);
            }
        }
        Walk {
            dims,
            strides,
            starts: std::array::from_fn(|k| layouts[k].start_offset()),
        }
    }

    /// Call `f(offsets, inner_strides, out_pos, len)` for each row piece of the row-major
    /// element range `range`: operand `k`'s elements are at `offsets[k] + i *
    /// inner_strides[k]` for `i < len`, and `out_pos` counts from `range.start`.
    pub(crate) fn rows(
        &self,
        range: Range<usize>,
        mut f: impl FnMut([usize; N], [usize; N], usize, usize),
    ) {
        if range.is_empty() {
            return;
        }
        let r = self.dims.len();
        let inner = self.dims[r - 1];
        let inner_strides: [usize; N] = std::array::from_fn(|k| self.strides[k][r - 1]);
        // Unravel the start position.
        let mut idx = vec![0usize; r];
        let mut rem = range.start;
        for d in (0..r).rev() {
            idx[d] = rem % self.dims[d];
            rem /= self.dims[d];
        }
        let mut base: [usize; N] = std::array::from_fn(|k| {
            self.starts[k]
                + (0..r - 1)
                    .map(|d| idx[d] * self.strides[k][d])
                    .sum::<usize>()
        });
        let mut col = idx[r - 1];
        let mut p = range.start;
        while p < range.end {
            let len = (inner - col).min(range.end - p);
            let offs: [usize; N] = std::array::from_fn(|k| base[k] + col * inner_strides[k]);
            f(offs, inner_strides, p - range.start, len);
            p += len;
            col = 0;
            // Odometer over the outer dimensions.
            let mut d = r - 1;
            while d > 0 {
                d -= 1;
                idx[d] += 1;
                for k in 0..N {
                    base[k] += self.strides[k][d];
                }
                if idx[d] < self.dims[d] {
                    break;
                }
                for k in 0..N {
                    base[k] -= self.strides[k][d] * self.dims[d];
                }
                idx[d] = 0;
            }
        }
    }
}

/// Run `f(start, chunk)` over `out` split into chunks: one chunk when `!parallel`, else
/// about four per rayon thread (at least `min_chunk` elements each) for load balance.
pub(crate) fn fill<O: Send>(
    out: &mut [O],
    parallel: bool,
    min_chunk: usize,
    f: impl Fn(usize, &mut [O]) + Sync,
) {
    if !parallel || out.len() <= min_chunk {
        f(0, out);
        return;
    }
    let chunk = (out.len() / (4 * rayon::current_num_threads()))
        .max(min_chunk)
        .max(1);
    out.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, c)| f(i * chunk, c));
}

/// Normalise a possibly negative axis (−1 = last) against `rank`.
pub(crate) fn axis(op: &'static str, axis: isize, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as isize } else { axis };
    if a < 0 || a as usize >= rank {
        return Err(Error::OutOfRange {
            op,
            index: axis.unsigned_abs(),
            size: rank,
        });
    }
    Ok(a as usize)
}
