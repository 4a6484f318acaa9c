//! Matrix products through the `gemm` crate: `[.., m, k] × [.., k, n] → [.., m, n]` with
//! NumPy-broadcast batch dimensions (and NumPy's rules for 1-D operands).
//!
//! Operands are passed to gemm with their own row and column strides, so transposed,
//! narrowed or batch-broadcast views (`b.t()`, a weight shared by every batch entry) are
//! multiplied in place, without a copy. gemm picks its own SIMD micro-kernels (AVX2/FMA,
//! AVX-512 where present) at run time. f16/bf16 operands are widened to f32, multiplied,
//! and the result rounded back once.

use rayon::prelude::*;

use super::dispatch::{self, OpClass};
use super::iter;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;

/// Matrix product with broadcasting batch dimensions. 1-D operands follow NumPy: a 1-D
/// `a` is a row vector and a 1-D `b` a column vector, and that dimension is removed from
/// the result.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let op = "matmul";
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            op,
            expected: a.dtype(),
            got: b.dtype(),
        });
    }
    if !a.dtype().is_float() {
        return Err(Error::UnsupportedDType {
            op,
            dtype: a.dtype(),
        });
    }
    if a.rank() == 0 || b.rank() == 0 {
        return Err(Error::shape(op, "operands must have rank >= 1"));
    }
    if a.dtype() != DType::F32 {
        let r = matmul(&a.to_dtype(DType::F32)?, &b.to_dtype(DType::F32)?)?;
        return r.to_dtype(a.dtype());
    }
    let a_vec = a.rank() == 1;
    let b_vec = b.rank() == 1;
    let a2 = if a_vec { a.unsqueeze(0)? } else { a.clone() };
    let b2 = if b_vec { b.unsqueeze(1)? } else { b.clone() };
    let out = matmul_nd(&a2, &b2)?;
    let out = if b_vec {
        out.squeeze(out.rank() - 1)?
    } else {
        out
    };
    if a_vec {
        out.squeeze(out.rank() - 2)
    } else {
        Ok(out)
    }
}

/// Both operands f32 with rank ≥ 2.
fn matmul_nd(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let op = "matmul";
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k) = (a.dims()[ra - 2], a.dims()[ra - 1]);
    let (k2, n) = (b.dims()[rb - 2], b.dims()[rb - 1]);
    if k != k2 {
        return Err(Error::shape(
            op,
            format!(
                "inner dimensions differ: {} × {} ({k} vs {k2})",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let batch = Shape::from(&a.dims()[..ra - 2])
        .broadcast_shape_binary_op(&Shape::from(&b.dims()[..rb - 2]), op)?;
    let nb = batch.elem_count();
    let mut a_dims = batch.dims().to_vec();
    a_dims.extend([m, k]);
    let mut b_dims = batch.dims().to_vec();
    b_dims.extend([k, n]);
    let mut out_dims = batch.dims().to_vec();
    out_dims.extend([m, n]);
    let work = nb.saturating_mul(m).saturating_mul(n).saturating_mul(k);
    let plan = dispatch::plan(op, OpClass::Matmul, &[a, b], DType::F32, work)?;

    let (a, b) = (iter::aligned(a)?, iter::aligned(b)?);
    let la = a.layout().broadcast_as(a_dims)?;
    let lb = b.layout().broadcast_as(b_dims)?;
    let da = iter::storage::<f32>(&a)?;
    let db = iter::storage::<f32>(&b)?;
    let br = batch.rank();
    let (sa, sb) = (la.strides(), lb.strides());
    // Offsets of batch entry `i` in each operand's storage.
    let batch_offsets = |i: usize| {
        let (mut oa, mut ob, mut rem) = (la.start_offset(), lb.start_offset(), i);
        for d in (0..br).rev() {
            let idx = rem % batch.dims()[d];
            rem /= batch.dims()[d];
            oa += idx * sa[d];
            ob += idx * sb[d];
        }
        (oa, ob)
    };
    let (a_rs, a_cs) = (sa[br] as isize, sa[br + 1] as isize);
    let (b_rs, b_cs) = (sb[br] as isize, sb[br + 1] as isize);

    iter::build::<f32>(op, out_dims, |out| {
        if out.is_empty() {
            return Ok(());
        }
        if k == 0 {
            // An empty sum: gemm would not touch dst with read_dst = false and k = 0.
            out.fill(0.0);
            return Ok(());
        }
        let one = |i: usize, dst: &mut [f32], par: gemm::Parallelism| {
            let (oa, ob) = batch_offsets(i);
            // SAFETY: the layouts were checked against their storage when the tensors
            // were built (every element of every view is inside `da`/`db`), so gemm's
            // reads at `offset + r*rs + c*cs` for r < m, c < k (resp. k, n) are in bounds;
            // `dst` holds exactly m*n elements written at r*n + c. With read_dst = false
            // gemm computes dst = beta · lhs × rhs (alpha is ignored).
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    da.as_ptr().add(oa),
                    a_cs,
                    a_rs,
                    db.as_ptr().add(ob),
                    b_cs,
                    b_rs,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    par,
                )
            }
        };
        let threads = rayon::current_num_threads();
        if plan.parallel && nb >= threads {
            // Many matrices: one per task, each single-threaded (better than splitting
            // each small product).
            out.par_chunks_mut(m * n)
                .enumerate()
                .for_each(|(i, dst)| one(i, dst, gemm::Parallelism::None));
        } else {
            let par = if plan.parallel {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            };
            for (i, dst) in out.chunks_mut(m * n).enumerate() {
                one(i, dst, par);
            }
        }
        Ok(())
    })
}
