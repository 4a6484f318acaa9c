//! Reductions along one or more axes (with `keepdim`) and over whole tensors: sum, mean,
//! min, max, argmin, argmax, var and std (unbiased or biased).
//!
//! Method: the kept axes are permuted to the front and the reduced axes to the back (a
//! view), made contiguous (a copy only when the reduced axes were not already the
//! innermost contiguous ones), and each output element then reduces one contiguous run —
//! which is what the SIMD kernels want.
//!
//! Dtypes and edge cases:
//! * floats: sums accumulate in f32 within 4096-element blocks and f64 across blocks;
//!   variance is two-pass (mean, then Σ(x−mean)²), stable for data with a large mean;
//!   f16/bf16 are computed in f32 and the result rounded to the input dtype.
//! * integers: `sum` returns I32 (wrapping), `min`/`max` keep the dtype; mean/var/std are
//!   [`Error::UnsupportedDType`].
//! * `argmin`/`argmax` return I32 indices of the first extremum; a NaN counts as the
//!   extremum (the first NaN wins), as in PyTorch. min/max propagate NaN.
//! * empty reductions: sum = 0, mean/var/std = NaN, and min/max/argmin/argmax are an
//!   error (there is no identity to return).

use rayon::prelude::*;

use super::dispatch::{self, Kernel, OpClass};
use super::iter;
use super::simd::{self, SUM_BLOCK};
use crate::dtype::{DType, WithDType};
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;

/// A reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Min,
    Max,
    ArgMin,
    ArgMax,
    /// Variance; `unbiased` divides by n − 1 (Bessel), else by n.
    Var {
        unbiased: bool,
    },
    /// Standard deviation (square root of [`ReduceOp::Var`]).
    Std {
        unbiased: bool,
    },
}

impl ReduceOp {
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Min => "min",
            ReduceOp::Max => "max",
            ReduceOp::ArgMin => "argmin",
            ReduceOp::ArgMax => "argmax",
            ReduceOp::Var { .. } => "var",
            ReduceOp::Std { .. } => "std",
        }
    }
}

/// Reduce `x` over `axes` (negative counts from the end; order and repeats do not
/// matter; empty = no axis, i.e. a copy for most ops) keeping size-1 dims when `keepdim`.
pub fn reduce(x: &Tensor, op: ReduceOp, axes: &[isize], keepdim: bool) -> Result<Tensor> {
    let name = op.name();
    let rank = x.rank();
    let mut red = vec![false; rank];
    for &a in axes {
        red[iter::axis(name, a, rank)?] = true;
    }
    if matches!(op, ReduceOp::ArgMin | ReduceOp::ArgMax) && red.iter().filter(|&&r| r).count() > 1 {
        return Err(Error::Unsupported(format!(
            "{name}: reduces one axis at a time ({} given)",
            axes.len()
        )));
    }
    let dims = x.dims();
    let kept: Vec<usize> = (0..rank).filter(|&d| !red[d]).collect();
    let reduced: Vec<usize> = (0..rank).filter(|&d| red[d]).collect();
    let out_dims: Vec<usize> = if keepdim {
        (0..rank)
            .map(|d| if red[d] { 1 } else { dims[d] })
            .collect()
    } else {
        kept.iter().map(|&d| dims[d]).collect()
    };
    let r: usize = reduced.iter().map(|&d| dims[d]).product();
    let outer: usize = kept.iter().map(|&d| dims[d]).product();
    if r == 0
        && outer > 0
        && matches!(
            op,
            ReduceOp::Min | ReduceOp::Max | ReduceOp::ArgMin | ReduceOp::ArgMax
        )
    {
        return Err(Error::shape(
            name,
            format!("reduction over zero elements (shape {})", x.shape()),
        ));
    }
    let perm: Vec<usize> = kept.iter().chain(&reduced).copied().collect();
    let xp = x.permute(&perm)?.contiguous()?;
    let out_shape = Shape::from(out_dims);
    let dtype = x.dtype();
    let float = dtype.is_float();
    let compute = if float { DType::F32 } else { dtype };
    let class = OpClass::Reduce;
    let plan = dispatch::plan(name, class, &[x], compute, x.elem_count())?;

    match (float, op) {
        (true, _) => {
            let x32 = if dtype == DType::F32 {
                xp
            } else {
                xp.to_dtype(DType::F32)?
            };
            let src = x32.as_slice::<f32>()?;
            let is_arg = matches!(op, ReduceOp::ArgMin | ReduceOp::ArgMax);
            if is_arg {
                return iter::build::<i32>(name, out_shape, |out| {
                    for_rows(out, src, r, plan.parallel, |row| arg_row(op, row) as i32);
                    Ok(())
                });
            }
            let res = iter::build::<f32>(name, out_shape, |out| {
                // One huge row (whole-tensor reduction) is split inside the row instead.
                let inner_par = plan.parallel && outer < rayon::current_num_threads();
                for_rows(out, src, r, plan.parallel && !inner_par, |row| {
                    float_row(plan.kernel, op, row, inner_par)
                });
                Ok(())
            })?;
            if dtype == DType::F32 {
                Ok(res)
            } else {
                res.to_dtype(dtype)
            }
        }
        (false, ReduceOp::Sum) => {
            let xi = xp.to_dtype(DType::I32)?;
            let src = xi.as_slice::<i32>()?;
            iter::build::<i32>(name, out_shape, |out| {
                for_rows(out, src, r, plan.parallel, |row| {
                    row.iter().fold(0i32, |a, &v| a.wrapping_add(v))
                });
                Ok(())
            })
        }
        (false, ReduceOp::Min | ReduceOp::Max | ReduceOp::ArgMin | ReduceOp::ArgMax) => match dtype
        {
            DType::I8 => int_minmax::<i8>(&xp, op, out_shape, r, plan.parallel),
            DType::I32 => int_minmax::<i32>(&xp, op, out_shape, r, plan.parallel),
            _ => int_minmax::<u8>(&xp, op, out_shape, r, plan.parallel),
        },
        (false, _) => Err(Error::UnsupportedDType { op: name, dtype }),
    }
}

/// Fill `out[i]` with `f(row i)` where rows are consecutive runs of `r` in `src`.
fn for_rows<S: Sync, O: Send>(
    out: &mut [O],
    src: &[S],
    r: usize,
    parallel: bool,
    f: impl Fn(&[S]) -> O + Sync,
) {
    let row = |i: usize| &src[i * r..(i + 1) * r];
    if parallel && out.len() > 1 {
        out.par_iter_mut()
            .enumerate()
            .with_min_len((OpClass::Reduce.parallel_threshold() / r.max(1)).max(1))
            .for_each(|(i, o)| *o = f(row(i)));
    } else {
        for (i, o) in out.iter_mut().enumerate() {
            *o = f(row(i));
        }
    }
}

/// Sum of a row, split over threads in whole [`SUM_BLOCK`]s when `parallel`, so the
/// result does not depend on the thread count.
fn par_sum(k: Kernel, row: &[f32], parallel: bool, f: impl Fn(&[f32]) -> f64 + Sync) -> f64 {
    if parallel {
        row.par_chunks(SUM_BLOCK * 64).map(&f).sum()
    } else {
        let _ = k;
        f(row)
    }
}

fn float_row(k: Kernel, op: ReduceOp, row: &[f32], parallel: bool) -> f32 {
    let n = row.len();
    match op {
        ReduceOp::Sum => par_sum(k, row, parallel, |c| simd::sum(k, c)) as f32,
        ReduceOp::Mean => (par_sum(k, row, parallel, |c| simd::sum(k, c)) / n as f64) as f32,
        ReduceOp::Max | ReduceOp::Min => {
            let f = |c: &[f32]| {
                if op == ReduceOp::Max {
                    simd::max(k, c)
                } else {
                    simd::min(k, c)
                }
            };
            let sop = if op == ReduceOp::Max {
                simd::BinOp::Max
            } else {
                simd::BinOp::Min
            };
            if parallel {
                row.par_chunks(SUM_BLOCK * 64)
                    .map(f)
                    .reduce_with(|a, b| simd::bin_scalar(sop, a, b))
                    .unwrap_or(f32::NAN)
            } else {
                f(row)
            }
        }
        ReduceOp::Var { unbiased } | ReduceOp::Std { unbiased } => {
            let ddof = usize::from(unbiased);
            if n <= ddof {
                return f32::NAN;
            }
            let mean = (par_sum(k, row, parallel, |c| simd::sum(k, c)) / n as f64) as f32;
            let ssd = par_sum(k, row, parallel, |c| simd::sum_sq_dev(k, c, mean));
            let var = ssd / (n - ddof) as f64;
            if matches!(op, ReduceOp::Std { .. }) {
                var.sqrt() as f32
            } else {
                var as f32
            }
        }
        ReduceOp::ArgMin | ReduceOp::ArgMax => unreachable!("handled by arg_row"),
    }
}

/// Index of the first maximum (or minimum); the first NaN wins.
fn arg_row<T: WithDType + PartialOrd>(op: ReduceOp, row: &[T]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        #[allow(clippy::eq_op)]
        if v != v {
            return i;
        }
        let better = if op == ReduceOp::ArgMax {
            *v > row[best]
        } else {
            *v < row[best]
        };
        if better {
            best = i;
        }
    }
    best
}

fn int_minmax<T: WithDType + PartialOrd + Ord>(
    xp: &Tensor,
    op: ReduceOp,
    out_shape: Shape,
    r: usize,
    parallel: bool,
) -> Result<Tensor> {
    let name = op.name();
    let src = xp.as_slice::<T>()?;
    match op {
        ReduceOp::ArgMin | ReduceOp::ArgMax => iter::build::<i32>(name, out_shape, |out| {
            for_rows(out, src, r, parallel, |row| arg_row(op, row) as i32);
            Ok(())
        }),
        _ => iter::build::<T>(name, out_shape, |out| {
            for_rows(out, src, r, parallel, |row| {
                let it = row.iter().copied();
                if op == ReduceOp::Max {
                    it.max()
                } else {
                    it.min()
                }
                .unwrap_or_default()
            });
            Ok(())
        }),
    }
}

/// Sum over `axes`.
pub fn sum(x: &Tensor, axes: &[isize], keepdim: bool) -> Result<Tensor> {
    reduce(x, ReduceOp::Sum, axes, keepdim)
}
/// Mean over `axes` (floats).
pub fn mean(x: &Tensor, axes: &[isize], keepdim: bool) -> Result<Tensor> {
    reduce(x, ReduceOp::Mean, axes, keepdim)
}
/// NaN-propagating minimum over `axes`.
pub fn min(x: &Tensor, axes: &[isize], keepdim: bool) -> Result<Tensor> {
    reduce(x, ReduceOp::Min, axes, keepdim)
}
/// NaN-propagating maximum over `axes`.
pub fn max(x: &Tensor, axes: &[isize], keepdim: bool) -> Result<Tensor> {
    reduce(x, ReduceOp::Max, axes, keepdim)
}
/// I32 index of the first minimum along `axis`.
pub fn argmin(x: &Tensor, axis: isize, keepdim: bool) -> Result<Tensor> {
    reduce(x, ReduceOp::ArgMin, &[axis], keepdim)
}
/// I32 index of the first maximum along `axis`.
pub fn argmax(x: &Tensor, axis: isize, keepdim: bool) -> Result<Tensor> {
    reduce(x, ReduceOp::ArgMax, &[axis], keepdim)
}
/// Variance over `axes` (`unbiased`: divide by n − 1).
pub fn var(x: &Tensor, axes: &[isize], unbiased: bool, keepdim: bool) -> Result<Tensor> {
    reduce(x, ReduceOp::Var { unbiased }, axes, keepdim)
}
/// Standard deviation over `axes` (`unbiased`: from the n − 1 variance).
pub fn std(x: &Tensor, axes: &[isize], unbiased: bool, keepdim: bool) -> Result<Tensor> {
    reduce(x, ReduceOp::Std { unbiased }, axes, keepdim)
}

fn all_axes(x: &Tensor) -> Vec<isize> {
    (0..x.rank() as isize).collect()
}

/// Sum of every element, as a rank-0 tensor.
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    sum(x, &all_axes(x), false)
}
/// Mean of every element, as a rank-0 tensor.
pub fn mean_all(x: &Tensor) -> Result<Tensor> {
    mean(x, &all_axes(x), false)
}
/// Minimum of every element, as a rank-0 tensor.
pub fn min_all(x: &Tensor) -> Result<Tensor> {
    min(x, &all_axes(x), false)
}
/// Maximum of every element, as a rank-0 tensor.
pub fn max_all(x: &Tensor) -> Result<Tensor> {
    max(x, &all_axes(x), false)
}
/// Variance of every element, as a rank-0 tensor.
pub fn var_all(x: &Tensor, unbiased: bool) -> Result<Tensor> {
    var(x, &all_axes(x), unbiased, false)
}
