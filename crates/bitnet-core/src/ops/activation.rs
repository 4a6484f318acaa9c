//! Activations (relu, relu², gelu in erf and tanh forms, silu, sigmoid, tanh, exp) and
//! numerically stable softmax / log-softmax along an axis.
//!
//! Float dtypes only (integer tensors are [`Error::UnsupportedDType`]); f16/bf16 are
//! computed in f32. A strided input is first copied to contiguous (one copy) so that
//! every element goes through the same kernel: mixing the SIMD polynomial on contiguous
//! runs with libm on strided ones would make results depend on the layout. NaN inputs
//! give NaN outputs; softmax subtracts the row maximum before
//! `exp`, so large logits cannot overflow, and a row containing NaN is NaN throughout.

use rayon::prelude::*;

use super::dispatch::{self, OpClass};
use super::elementwise::TensorMut;
use super::iter;
use super::simd::{self, BinOp, UnOp};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// An element-wise activation function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    Relu,
    /// relu(x)² (BitNet b1.58's FFN activation).
    Relu2,
    /// GELU with the exact normal CDF (erf form).
    Gelu,
    /// GELU's tanh approximation.
    GeluTanh,
    Silu,
    Sigmoid,
    Tanh,
    Exp,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Relu2 => "relu2",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Silu => "silu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Exp => "exp",
        }
    }

    fn kernel_op(self) -> UnOp {
        match self {
            Activation::Relu => UnOp::Relu,
            Activation::Relu2 => UnOp::Relu2,
            Activation::Gelu => UnOp::GeluErf,
            Activation::GeluTanh => UnOp::GeluTanh,
            Activation::Silu => UnOp::Silu,
            Activation::Sigmoid => UnOp::Sigmoid,
            Activation::Tanh => UnOp::Tanh,
            Activation::Exp => UnOp::Exp,
        }
    }

    fn class(self) -> OpClass {
        match self {
            Activation::Relu | Activation::Relu2 => OpClass::Elementwise,
            _ => OpClass::Transcendental,
        }
    }
}

fn check_float(op: &'static str, x: &Tensor) -> Result<()> {
    if !x.dtype().is_float() {
        return Err(Error::UnsupportedDType {
            op,
            dtype: x.dtype(),
        });
    }
    Ok(())
}

/// Apply `act` element-wise to a tensor of any layout.
pub fn unary(x: &Tensor, act: Activation) -> Result<Tensor> {
    let op = act.name();
    check_float(op, x)?;
    if x.dtype() != DType::F32 {
        return unary(&x.to_dtype(DType::F32)?, act)?.to_dtype(x.dtype());
    }
    let plan = dispatch::plan(op, act.class(), &[x], DType::F32, x.elem_count())?;
    let x = x.contiguous()?;
    let src = x.as_slice::<f32>()?;
    let kop = act.kernel_op();
    iter::build::<f32>(op, x.shape().clone(), |out| {
        iter::fill(
            out,
            plan.parallel,
            act.class().parallel_threshold() / 4,
            |start, c| simd::unary(plan.kernel, kop, &src[start..start + c.len()], c),
        );
        Ok(())
    })
}

/// In-place activation on a [`TensorMut`] (no allocation for f32).
pub(crate) fn unary_assign(t: &mut TensorMut, act: Activation) -> Result<()> {
    let op = act.name();
    let dtype = t.dtype();
    if !dtype.is_float() {
        return Err(Error::UnsupportedDType { op, dtype });
    }
    let n = t.shape().elem_count();
    let plan = dispatch::plan(op, act.class(), &[], DType::F32, n)?;
    let kop = act.kernel_op();
    let min_chunk = act.class().parallel_threshold() / 4;
    match dtype {
        DType::F32 => {
            let data = t.buf_mut().typed_mut::<f32>()?;
            iter::fill(data, plan.parallel, min_chunk, |_, c| {
                simd::unary_inplace(plan.kernel, kop, c)
            });
        }
        DType::F16 => {
            let data = t.buf_mut().typed_mut::<half::f16>()?;
            iter::fill(data, plan.parallel, min_chunk, |_, c| {
                for v in c {
                    *v = half::f16::from_f32(simd::un_scalar(kop, v.to_f32()));
                }
            });
        }
        _ => {
            let data = t.buf_mut().typed_mut::<half::bf16>()?;
            iter::fill(data, plan.parallel, min_chunk, |_, c| {
                for v in c {
                    *v = half::bf16::from_f32(simd::un_scalar(kop, v.to_f32()));
                }
            });
        }
    }
    Ok(())
}

pub fn relu(x: &Tensor) -> Result<Tensor> {
    unary(x, Activation::Relu)
}
pub fn relu2(x: &Tensor) -> Result<Tensor> {
    unary(x, Activation::Relu2)
}
/// GELU, erf form: x·(1 + erf(x/√2))/2.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    unary(x, Activation::Gelu)
}
/// GELU, tanh form: x·(1 + tanh(√(2/π)(x + 0.044715x³)))/2.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    unary(x, Activation::GeluTanh)
}
pub fn silu(x: &Tensor) -> Result<Tensor> {
    unary(x, Activation::Silu)
}
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    unary(x, Activation::Sigmoid)
}
pub fn tanh(x: &Tensor) -> Result<Tensor> {
    unary(x, Activation::Tanh)
}

/// Softmax along `axis` (negative counts from the end): exp(x − max) / Σ exp(x − max).
pub fn softmax(x: &Tensor, axis: isize) -> Result<Tensor> {
    softmax_impl(x, axis, false)
}

/// Log-softmax along `axis`: x − max − ln Σ exp(x − max).
pub fn log_softmax(x: &Tensor, axis: isize) -> Result<Tensor> {
    softmax_impl(x, axis, true)
}

fn softmax_impl(x: &Tensor, axis: isize, log: bool) -> Result<Tensor> {
    let op = if log { "log_softmax" } else { "softmax" };
    check_float(op, x)?;
    if x.dtype() != DType::F32 {
        return softmax_impl(&x.to_dtype(DType::F32)?, axis, log)?.to_dtype(x.dtype());
    }
    let ax = iter::axis(op, axis, x.rank())?;
    let last = x.rank() - 1;
    // Rows are the softmax axis: move it last (a view), make the rows contiguous (a copy
    // only when the axis was not already innermost), and move it back at the end.
    let xt = if ax == last {
        x.contiguous()?
    } else {
        x.transpose(ax, last)?.contiguous()?
    };
    let len = xt.dims()[last];
    let plan = dispatch::plan(op, OpClass::Softmax, &[x], DType::F32, x.elem_count())?;
    let src = xt.as_slice::<f32>()?;
    let k = plan.kernel;
    let row = |x: &[f32], out: &mut [f32]| {
        let m = simd::max(k, x);
        let s = simd::exp_sub_sum(k, x, m, out);
        if log {
            let lse = m + (s as f32).ln();
            simd::binary_vs(k, BinOp::Sub, x, lse, out);
        } else {
            simd::binary_assign_vs(k, BinOp::Mul, out, (1.0 / s) as f32);
        }
    };
    let out = iter::build::<f32>(op, xt.shape().clone(), |out| {
        if len == 0 || out.is_empty() {
            return Ok(());
        }
        // Whole rows per task; enough rows that each task is ~16 Ki elements.
        let rows_per_task = (OpClass::Softmax.parallel_threshold() / len).max(1);
        if plan.parallel {
            out.par_chunks_mut(len * rows_per_task)
                .zip(src.par_chunks(len * rows_per_task))
                .for_each(|(o, s)| {
                    for (orow, srow) in o.chunks_mut(len).zip(s.chunks(len)) {
                        row(srow, orow);
                    }
                });
        } else {
            for (orow, srow) in out.chunks_mut(len).zip(src.chunks(len)) {
                row(srow, orow);
            }
        }
        Ok(())
    })?;
    if ax == last {
        Ok(out)
    } else {
        out.transpose(ax, last)?.contiguous()
    }
}
