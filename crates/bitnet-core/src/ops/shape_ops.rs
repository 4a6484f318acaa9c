//! Shape ops: concat, stack, split/chunk (zero-copy views), index_select (embedding
//! lookup), gather, and a contiguous copy of any view. All dtypes; these ops move bytes
//! and never look at values, except the integer indices.

use rayon::prelude::*;

use super::dispatch::{self, OpClass};
use super::iter;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;

/// Copy the elements of any view, row-major, into `dst` (exactly its byte size): one
/// memcpy per contiguous run of the view.
pub(crate) fn copy_into(t: &Tensor, dst: &mut [u8]) -> Result<()> {
    let t = iter::aligned(t)?;
    let es = t.dtype().size_in_bytes();
    let src = t
        .storage()
        .cpu_bytes()
        .ok_or_else(|| Error::Unsupported(format!("tensor on {} is not on the cpu", t.device())))?
        .as_slice();
    let mut pos = 0;
    t.layout().for_each_run(|off, len| {
        let n = len * es;
        dst[pos..pos + n].copy_from_slice(&src[off * es..off * es + n]);
        pos += n;
    });
    Ok(())
}

/// A fresh contiguous copy of any view (unlike [`Tensor::contiguous`], which shares an
/// already contiguous tensor): for callers that need storage nobody else references.
pub fn contiguous_copy(t: &Tensor) -> Result<Tensor> {
    dispatch::plan(
        "contiguous_copy",
        OpClass::Copy,
        &[t],
        t.dtype(),
        t.elem_count(),
    )?;
    let mut buf = iter::alloc("contiguous_copy", t.elem_count(), t.dtype())?;
    copy_into(t, &mut buf)?;
    iter::finish(buf, t.shape().clone(), t.dtype())
}

/// Concatenate along `dim` (negative counts from the end). Every tensor must have the
/// same dtype, rank and sizes except along `dim`.
pub fn concat(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
    let op = "concat";
    let first = tensors
        .first()
        .ok_or_else(|| Error::shape(op, "no tensors to concatenate"))?;
    let rank = first.rank();
    let d = iter::axis(op, dim, rank)?;
    let mut total = 0usize;
    for (i, t) in tensors.iter().enumerate() {
        if t.dtype() != first.dtype() {
            return Err(Error::DType {
                op,
                expected: first.dtype(),
                got: t.dtype(),
            });
        }
        let same = t.rank() == rank && (0..rank).all(|k| k == d || t.dims()[k] == first.dims()[k]);
        if !same {
            return Err(Error::shape(
                op,
                format!(
                    "tensor {i} has shape {}, incompatible with {} along dim {d}",
                    t.shape(),
                    first.shape()
                ),
            ));
        }
        total += t.dims()[d];
    }
    let refs: Vec<&Tensor> = tensors.to_vec();
    let mut out_dims = first.dims().to_vec();
    out_dims[d] = total;
    let shape = Shape::from(out_dims);
    dispatch::plan(op, OpClass::Copy, &refs, first.dtype(), shape.elem_count())?;
    let es = first.dtype().size_in_bytes();
    let outer: usize = first.dims()[..d].iter().product();
    let inner: usize = first.dims()[d + 1..].iter().product();
    let mut buf = iter::alloc(op, shape.elem_count(), first.dtype())?;
    let row_out = total * inner * es;
    let mut col = 0usize;
    for t in tensors {
        let block = t.dims()[d] * inner * es;
        if block > 0 {
            let tc = t.contiguous()?;
            let src = tc.contiguous_bytes()?;
            for o in 0..outer {
                let dst = o * row_out + col;
                buf[dst..dst + block].copy_from_slice(&src[o * block..(o + 1) * block]);
            }
        }
        col += block;
    }
    iter::finish(buf, shape, first.dtype())
}

/// Stack tensors of one shape along a new dimension `dim` (0 ..= rank).
pub fn stack(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
    let first = tensors
        .first()
        .ok_or_else(|| Error::shape("stack", "no tensors to stack"))?;
    if let Some(t) = tensors.iter().find(|t| t.shape() != first.shape()) {
        return Err(Error::shape(
            "stack",
            format!("shapes differ: {} and {}", first.shape(), t.shape()),
        ));
    }
    let expanded = tensors
        .iter()
        .map(|t| t.unsqueeze(dim))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&Tensor> = expanded.iter().collect();
    concat(&refs, dim as isize)
}

/// Split along `dim` into pieces of `size` (the last may be smaller): zero-copy views.
pub fn split(t: &Tensor, size: usize, dim: isize) -> Result<Vec<Tensor>> {
    let d = iter::axis("split", dim, t.rank())?;
    if size == 0 {
        return Err(Error::shape("split", "split size must be positive"));
    }
    let n = t.dims()[d];
    (0..n)
        .step_by(size)
        .map(|s| t.narrow(d, s, size.min(n - s)))
        .collect()
}

/// Split along `dim` into pieces of the given sizes, which must add up to the dimension.
pub fn split_sizes(t: &Tensor, sizes: &[usize], dim: isize) -> Result<Vec<Tensor>> {
    let d = iter::axis("split_sizes", dim, t.rank())?;
    let n = t.dims()[d];
    if sizes.iter().sum::<usize>() != n {
        return Err(Error::shape(
            "split_sizes",
            format!("sizes {sizes:?} do not add up to dimension {d} of size {n}"),
        ));
    }
    let mut start = 0;
    sizes
        .iter()
        .map(|&s| {
            let v = t.narrow(d, start, s);
            start += s;
            v
        })
        .collect()
}

/// Split along `dim` into `chunks` nearly equal views (ceil-sized, like PyTorch; fewer
/// pieces when the dimension is small).
pub fn chunk(t: &Tensor, chunks: usize, dim: isize) -> Result<Vec<Tensor>> {
    let d = iter::axis("chunk", dim, t.rank())?;
    if chunks == 0 {
        return Err(Error::shape("chunk", "number of chunks must be positive"));
    }
    let n = t.dims()[d];
    split(t, n.div_ceil(chunks).max(1), dim)
}

/// Indices as i32, checked against `size`.
fn indices(op: &'static str, idx: &Tensor, size: usize) -> Result<Vec<usize>> {
    if !matches!(idx.dtype(), DType::I32 | DType::U8 | DType::I8) {
        return Err(Error::UnsupportedDType {
            op,
            dtype: idx.dtype(),
        });
    }
    let v = idx.to_dtype(DType::I32)?.to_vec::<i32>()?;
    v.iter()
        .map(|&i| {
            usize::try_from(i)
                .ok()
                .filter(|&u| u < size)
                .ok_or(Error::OutOfRange {
                    op,
                    index: i as usize,
                    size,
                })
        })
        .collect()
}

/// Select entries `idx` (I32/U8/I8 of any shape) along `dim`: the result has shape
/// `dims[..dim] ++ idx.dims ++ dims[dim+1..]` (NumPy `take`). With `dim = 0` and a weight
/// of shape `[vocab, hidden]` this is an embedding lookup: `[batch, seq]` ids give
/// `[batch, seq, hidden]`. Negative or too large indices are [`Error::OutOfRange`].
pub fn index_select(t: &Tensor, idx: &Tensor, dim: isize) -> Result<Tensor> {
    let op = "index_select";
    let d = iter::axis(op, dim, t.rank())?;
    let size = t.dims()[d];
    let ix = indices(op, idx, size)?;
    let mut out_dims = t.dims()[..d].to_vec();
    out_dims.extend_from_slice(idx.dims());
    out_dims.extend_from_slice(&t.dims()[d + 1..]);
    let shape = Shape::from(out_dims);
    let plan = dispatch::plan(op, OpClass::Copy, &[t, idx], t.dtype(), shape.elem_count())?;
    let es = t.dtype().size_in_bytes();
    let outer: usize = t.dims()[..d].iter().product();
    let inner: usize = t.dims()[d + 1..].iter().product();
    let row = inner * es;
    let mut buf = iter::alloc(op, shape.elem_count(), t.dtype())?;
    if row > 0 && !ix.is_empty() {
        let tc = t.contiguous()?;
        let src = tc.contiguous_bytes()?;
        let j = ix.len();
        let copy_row = |r: usize, dst: &mut [u8]| {
            let (o, k) = (r / j, r % j);
            let s = (o * size + ix[k]) * row;
            dst.copy_from_slice(&src[s..s + row]);
        };
        if plan.parallel {
            buf.par_chunks_mut(row)
                .enumerate()
                .for_each(|(r, dst)| copy_row(r, dst));
        } else {
            for (r, dst) in buf.chunks_mut(row).enumerate() {
                copy_row(r, dst);
            }
        }
        debug_assert_eq!(buf.len(), outer * j * row);
    }
    iter::finish(buf, shape, t.dtype())
}

/// PyTorch `gather`: `out[i][j][k] = t[i][idx[i][j][k]][k]` for `dim = 1` (likewise for
/// any dim). `idx` has `t`'s rank, and sizes no larger than `t`'s except along `dim`;
/// the result has `idx`'s shape and `t`'s dtype.
pub fn gather(t: &Tensor, dim: isize, idx: &Tensor) -> Result<Tensor> {
    let op = "gather";
    let d = iter::axis(op, dim, t.rank())?;
    if idx.rank() != t.rank() || (0..t.rank()).any(|k| k != d && idx.dims()[k] > t.dims()[k]) {
        return Err(Error::shape(
            op,
            format!(
                "index shape {} does not fit input shape {} (dim {d})",
                idx.shape(),
                t.shape()
            ),
        ));
    }
    let ix = indices(op, idx, t.dims()[d])?;
    dispatch::plan(op, OpClass::Copy, &[t, idx], t.dtype(), idx.elem_count())?;
    let tc = t.contiguous()?;
    let src = tc.contiguous_bytes()?;
    let es = t.dtype().size_in_bytes();
    let tstrides = t.shape().stride_contiguous();
    let dims = idx.dims().to_vec();
    let mut buf = iter::alloc(op, idx.elem_count(), t.dtype())?;
    let mut pos = vec![0usize; dims.len()];
    for (p, &i) in ix.iter().enumerate() {
        let off: usize = (0..dims.len())
            .map(|k| if k == d { i } else { pos[k] } * tstrides[k])
            .sum();
        buf[p * es..(p + 1) * es].copy_from_slice(&src[off * es..(off + 1) * es]);
        // Odometer over the index shape.
        for k in (0..dims.len()).rev() {
            pos[k] += 1;
            if pos[k] < dims[k] {
                break;
            }
            pos[k] = 0;
        }
    }
    iter::finish(buf, idx.shape().clone(), t.dtype())
}
