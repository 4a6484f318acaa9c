//! Comparisons (eq, ne, lt, gt, le, ge) with broadcasting, returning U8 masks (1 = true,
//! 0 = false); `where_cond` selecting between two tensors by a mask; `clamp`.
//!
//! Floats compare by IEEE rules: any comparison with NaN is false except `ne`, which is
//! true. f16/bf16 compare exactly (widening is exact).

use super::dispatch::{self, OpClass};
use super::elementwise::scalar_tensor;
use super::iter::{self, Walk};
use super::match_dtype;
use crate::dtype::{DType, WithDType};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

impl CmpOp {
    pub fn name(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Lt => "lt",
            CmpOp::Gt => "gt",
            CmpOp::Le => "le",
            CmpOp::Ge => "ge",
        }
    }

    #[inline]
    fn test<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Gt => a > b,
            CmpOp::Le => a <= b,
            CmpOp::Ge => a >= b,
        }
    }
}

/// `a op b` element-wise with broadcasting → U8 mask.
pub fn compare(a: &Tensor, b: &Tensor, op: CmpOp) -> Result<Tensor> {
    let name = op.name();
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            op: name,
            expected: a.dtype(),
            got: b.dtype(),
        });
    }
    let shape = a.shape().broadcast_shape_binary_op(b.shape(), name)?;
    let plan = dispatch::plan(
        name,
        OpClass::Elementwise,
        &[a, b],
        a.dtype(),
        shape.elem_count(),
    )?;
    let (a, b) = (iter::aligned(a)?, iter::aligned(b)?);
    let la = a.layout().broadcast_as(shape.clone())?;
    let lb = b.layout().broadcast_as(shape.clone())?;
    let walk = Walk::new([&la, &lb]);
    match_dtype!(a.dtype(), T, {
        let (da, db) = (iter::storage::<T>(&a)?, iter::storage::<T>(&b)?);
        iter::build::<u8>(name, shape, |out| {
            iter::fill(
                out,
                plan.parallel,
                OpClass::Elementwise.parallel_threshold() / 4,
                |start, c| {
                    walk.rows(start..start + c.len(), |[oa, ob], [sa, sb], pos, len| {
                        for (i, o) in c[pos..pos + len].iter_mut().enumerate() {
                            *o = u8::from(op.test(da[oa + i * sa], db[ob + i * sb]));
                        }
                    });
                },
            );
            Ok(())
        })
    })
}

/// `a op s` against a scalar (converted to `a`'s dtype).
pub fn compare_scalar(a: &Tensor, op: CmpOp, s: f64) -> Result<Tensor> {
    if matches!(a.dtype(), DType::F16 | DType::BF16) {
        // Compare in f32 so that `s` is not rounded to the half type first.
        return compare(
            &a.to_dtype(DType::F32)?,
            &scalar_tensor(op.name(), s, DType::F32)?,
            op,
        );
    }
    compare(a, &scalar_tensor(op.name(), s, a.dtype())?, op)
}

pub fn eq(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    compare(a, b, CmpOp::Eq)
}
pub fn ne(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    compare(a, b, CmpOp::Ne)
}
pub fn lt(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    compare(a, b, CmpOp::Lt)
}
pub fn gt(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    compare(a, b, CmpOp::Gt)
}
pub fn le(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    compare(a, b, CmpOp::Le)
}
pub fn ge(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    compare(a, b, CmpOp::Ge)
}

/// `cond ? a : b` element-wise; `cond` is a U8 mask (non-zero = true); all three
/// broadcast together; `a` and `b` share a dtype, which the result has.
pub fn where_cond(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = "where";
    if cond.dtype() != DType::U8 {
        return Err(Error::DType {
            op: name,
            expected: DType::U8,
            got: cond.dtype(),
        });
    }
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            op: name,
            expected: a.dtype(),
            got: b.dtype(),
        });
    }
    let shape = cond
        .shape()
        .broadcast_shape_binary_op(a.shape(), name)?
        .broadcast_shape_binary_op(b.shape(), name)?;
    let plan = dispatch::plan(
        name,
        OpClass::Elementwise,
        &[cond, a, b],
        a.dtype(),
        shape.elem_count(),
    )?;
    let (c, a, b) = (iter::aligned(cond)?, iter::aligned(a)?, iter::aligned(b)?);
    let lc = c.layout().broadcast_as(shape.clone())?;
    let la = a.layout().broadcast_as(shape.clone())?;
    let lb = b.layout().broadcast_as(shape.clone())?;
    let walk = Walk::new([&lc, &la, &lb]);
    let dc = iter::storage::<u8>(&c)?;
    match_dtype!(a.dtype(), T, {
        let (da, db) = (iter::storage::<T>(&a)?, iter::storage::<T>(&b)?);
        iter::build::<T>(name, shape, |out| {
            iter::fill(
                out,
                plan.parallel,
                OpClass::Elementwise.parallel_threshold() / 4,
                |start, o| {
                    walk.rows(
                        start..start + o.len(),
                        |[oc, oa, ob], [sc, sa, sb], pos, len| {
                            for (i, v) in o[pos..pos + len].iter_mut().enumerate() {
                                *v = if dc[oc + i * sc] != 0 {
                                    da[oa + i * sa]
                                } else {
                                    db[ob + i * sb]
                                };
                            }
                        },
                    );
                },
            );
            Ok(())
        })
    })
}

/// Clamp every element to `[lo, hi]` (`None` = unbounded on that side). NaN stays NaN.
/// For integer dtypes the bounds are rounded toward the inside of the interval and
/// saturated to the dtype's range. `lo > hi` is an error.
pub fn clamp(x: &Tensor, lo: Option<f64>, hi: Option<f64>) -> Result<Tensor> {
    let name = "clamp";
    if let (Some(l), Some(h)) = (lo, hi) {
        if l > h || l.is_nan() || h.is_nan() {
            return Err(Error::Unsupported(format!(
                "clamp: invalid bounds [{l}, {h}]"
            )));
        }
    }
    let plan = dispatch::plan(name, OpClass::Elementwise, &[x], x.dtype(), x.elem_count())?;
    let x = iter::aligned(x)?;
    let walk = Walk::new([x.layout()]);
    let float = x.dtype().is_float();
    match_dtype!(x.dtype(), T, {
        let src = iter::storage::<T>(&x)?;
        // Bounds in the computation domain (f64 for every dtype: exact for all of them).
        let lo = lo.map(|l| if float { l } else { l.ceil() });
        let hi = hi.map(|h| if float { h } else { h.floor() });
        iter::build::<T>(name, x.shape().clone(), |out| {
            iter::fill(
                out,
                plan.parallel,
                OpClass::Elementwise.parallel_threshold() / 4,
                |start, o| {
                    walk.rows(start..start + o.len(), |[ox], [sx], pos, len| {
                        for (i, v) in o[pos..pos + len].iter_mut().enumerate() {
                            let e = src[ox + i * sx];
                            let f = e.to_f64();
                            *v = match (lo, hi) {
                                (Some(l), _) if f < l => T::from_f64(l),
                                (_, Some(h)) if f > h => T::from_f64(h),
                                _ => e,
                            };
                        }
                    });
                },
            );
            Ok(())
        })
    })
}
