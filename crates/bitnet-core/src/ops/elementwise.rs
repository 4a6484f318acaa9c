//! Element-wise arithmetic with NumPy broadcasting: `+ - * / %`, pow, minimum, maximum.
//!
//! Semantics per dtype:
//! * f32: IEEE (division by zero gives ±∞/NaN); `%` is the truncated remainder (C
//!   `fmod`, Rust `%`: sign of the dividend); minimum/maximum propagate NaN.
//! * f16/bf16: each element is widened to f32, computed, and rounded once.
//! * i8/i32/u8: wrapping `+ - *` and pow (Rust `wrapping_*`), truncating `/` and `%`;
//!   a zero divisor is [`Error::Unsupported`] naming the op, a negative exponent too.
//!
//! The f32 kernels are the SIMD ones of [`super::simd`] whenever the inner run of both
//! operands is contiguous or a broadcast scalar (which covers same-shape tensors, scalar
//! operands and row/bias broadcasts); other strides use a scalar strided loop.

use half::{bf16, f16};

use super::dispatch::{self, Kernel, OpClass};
use super::iter::{self, Walk};
use super::match_dtype;
use super::simd::{self, BinOp};
use crate::dtype::{DType, WithDType};
use crate::error::{Error, Result};
use crate::memory::PoolBuffer;
use crate::shape::Shape;
use crate::tensor::Tensor;

/// A binary element-wise operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// Truncated remainder (sign of the dividend), like Rust's `%` and C's `fmod`.
    Rem,
    Pow,
    /// NaN-propagating element-wise minimum.
    Minimum,
    /// NaN-propagating element-wise maximum.
    Maximum,
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Rem => "rem",
            BinaryOp::Pow => "pow",
            BinaryOp::Minimum => "minimum",
            BinaryOp::Maximum => "maximum",
        }
    }

    fn simd(self) -> Option<BinOp> {
        Some(match self {
            BinaryOp::Add => BinOp::Add,
            BinaryOp::Sub => BinOp::Sub,
            BinaryOp::Mul => BinOp::Mul,
            BinaryOp::Div => BinOp::Div,
            BinaryOp::Minimum => BinOp::Min,
            BinaryOp::Maximum => BinOp::Max,
            BinaryOp::Rem | BinaryOp::Pow => return None,
        })
    }

    fn class(self) -> OpClass {
        match self {
            BinaryOp::Pow | BinaryOp::Rem => OpClass::Transcendental,
            _ => OpClass::Elementwise,
        }
    }
}

/// Element types the arithmetic is defined for (all dtypes).
pub(crate) trait Arith: WithDType {
    fn apply(op: BinaryOp, a: Self, b: Self) -> Self;
    /// Whether `b` is an invalid right operand of `op` (integer zero divisor, negative
    /// integer exponent): such inputs are rejected before any work.
    fn invalid_rhs(_op: BinaryOp, _b: Self) -> bool {
        false
    }

    /// `out[i] = a[oa + i*sa] op b[ob + i*sb]`.
    #[allow(clippy::too_many_arguments)]
    fn row(
        _k: Kernel,
        op: BinaryOp,
        a: &[Self],
        oa: usize,
        sa: usize,
        b: &[Self],
        ob: usize,
        sb: usize,
        out: &mut [Self],
    ) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = Self::apply(op, a[oa + i * sa], b[ob + i * sb]);
        }
    }

    /// `out[i] = out[i] op b[ob + i*sb]`.
    fn row_assign(_k: Kernel, op: BinaryOp, out: &mut [Self], b: &[Self], ob: usize, sb: usize) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = Self::apply(op, *o, b[ob + i * sb]);
        }
    }
}

impl Arith for f32 {
    #[inline]
    fn apply(op: BinaryOp, a: f32, b: f32) -> f32 {
        match op.simd() {
            Some(s) => simd::bin_scalar(s, a, b),
            None => match op {
                BinaryOp::Rem => a % b,
                _ => a.powf(b),
            },
        }
    }

    fn row(
        k: Kernel,
        op: BinaryOp,
        a: &[f32],
        oa: usize,
        sa: usize,
        b: &[f32],
        ob: usize,
        sb: usize,
        out: &mut [f32],
    ) {
        let n = out.len();
        match (op.simd(), sa, sb) {
            (Some(s), 1, 1) => simd::binary_vv(k, s, &a[oa..oa + n], &b[ob..ob + n], out),
            (Some(s), 1, 0) => simd::binary_vs(k, s, &a[oa..oa + n], b[ob], out),
            (Some(s), 0, 1) => simd::binary_sv(k, s, a[oa], &b[ob..ob + n], out),
            _ => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = Self::apply(op, a[oa + i * sa], b[ob + i * sb]);
                }
            }
        }
    }

    fn row_assign(k: Kernel, op: BinaryOp, out: &mut [f32], b: &[f32], ob: usize, sb: usize) {
        let n = out.len();
        match (op.simd(), sb) {
            (Some(s), 1) => simd::binary_assign_vv(k, s, out, &b[ob..ob + n]),
            (Some(s), 0) => simd::binary_assign_vs(k, s, out, b[ob]),
            _ => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = Self::apply(op, *o, b[ob + i * sb]);
                }
            }
        }
    }
}

macro_rules! arith_half {
    ($t:ty) => {
        impl Arith for $t {
            #[inline]
            fn apply(op: BinaryOp, a: $t, b: $t) -> $t {
                <$t>::from_f32(f32::apply(op, a.to_f32(), b.to_f32()))
            }
        }
    };
}
arith_half!(f16);
arith_half!(bf16);

macro_rules! arith_int {
    ($t:ty, $signed:expr) => {
        impl Arith for $t {
            #[inline]
            fn apply(op: BinaryOp, a: $t, b: $t) -> $t {
                match op {
                    BinaryOp::Add => a.wrapping_add(b),
                    BinaryOp::Sub => a.wrapping_sub(b),
                    BinaryOp::Mul => a.wrapping_mul(b),
                    // Zero divisors were rejected up front (`invalid_rhs`), so the `0`
                    // arms never run; wrapping covers MIN / -1 (MIN) and MIN % -1 (0).
                    BinaryOp::Div => {
                        if b == 0 {
                            0
                        } else {
                            a.wrapping_div(b)
                        }
                    }
                    BinaryOp::Rem => {
                        if b == 0 {
                            0
                        } else {
                            a.wrapping_rem(b)
                        }
                    }
                    BinaryOp::Pow => a.wrapping_pow(b as u32),
                    BinaryOp::Minimum => a.min(b),
                    BinaryOp::Maximum => a.max(b),
                }
            }

            fn invalid_rhs(op: BinaryOp, b: $t) -> bool {
                match op {
                    BinaryOp::Div | BinaryOp::Rem => b == 0,
                    #[allow(unused_comparisons)]
                    BinaryOp::Pow => $signed && b < 0,
                    _ => false,
                }
            }
        }
    };
}
arith_int!(i8, true);
arith_int!(i32, true);
arith_int!(u8, false);

fn check_same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            op,
            expected: a.dtype(),
            got: b.dtype(),
        });
    }
    Ok(())
}

/// Reject invalid right operands (integer zero divisors, negative integer exponents).
fn check_rhs<T: Arith>(op: BinaryOp, b: &Tensor) -> Result<()> {
    if !T::DTYPE.is_float() && matches!(op, BinaryOp::Div | BinaryOp::Rem | BinaryOp::Pow) {
        let vals = b.to_vec::<T>()?;
        if let Some(v) = vals.iter().find(|&&v| T::invalid_rhs(op, v)) {
            let what = if op == BinaryOp::Pow {
                "negative exponent"
            } else {
                "division by zero"
            };
            return Err(Error::Unsupported(format!(
                "{}: integer {what} ({v:?}) in a {} tensor",
                op.name(),
                T::DTYPE
            )));
        }
    }
    Ok(())
}

/// `a op b` with NumPy broadcasting; both tensors must have the same dtype.
pub fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let name = op.name();
    check_same_dtype(name, a, b)?;
    let shape = a.shape().broadcast_shape_binary_op(b.shape(), name)?;
    let n = shape.elem_count();
    let compute = if a.dtype().is_float() {
        DType::F32
    } else {
        a.dtype()
    };
    let plan = dispatch::plan(name, op.class(), &[a, b], compute, n)?;
    match_dtype!(a.dtype(), T, binary_t::<T>(a, b, op, shape, plan))
}

fn binary_t<T: Arith>(
    a: &Tensor,
    b: &Tensor,
    op: BinaryOp,
    shape: Shape,
    plan: dispatch::Plan,
) -> Result<Tensor> {
    check_rhs::<T>(op, b)?;
    let (a, b) = (iter::aligned(a)?, iter::aligned(b)?);
    let la = a.layout().broadcast_as(shape.clone())?;
    let lb = b.layout().broadcast_as(shape.clone())?;
    let (da, db) = (iter::storage::<T>(&a)?, iter::storage::<T>(&b)?);
    let walk = Walk::new([&la, &lb]);
    let min_chunk = op.class().parallel_threshold() / 4;
    iter::build::<T>(op.name(), shape, |out| {
        iter::fill(out, plan.parallel, min_chunk, |start, chunk| {
            walk.rows(
                start..start + chunk.len(),
                |[oa, ob], [sa, sb], pos, len| {
                    T::row(
                        plan.kernel,
                        op,
                        da,
                        oa,
                        sa,
                        db,
                        ob,
                        sb,
                        &mut chunk[pos..pos + len],
                    );
                },
            );
        });
        Ok(())
    })
}

/// A rank-0 tensor of `dtype` holding `s`; integer dtypes need an integral, in-range `s`.
pub(crate) fn scalar_tensor(op: &'static str, s: f64, dtype: DType) -> Result<Tensor> {
    match_dtype!(dtype, T, {
        let v = T::from_f64(s);
        if !dtype.is_float() && v.to_f64() != s {
            return Err(Error::Unsupported(format!(
                "{op}: scalar {s} is not representable in {dtype}"
            )));
        }
        Tensor::from_vec(vec![v], ())
    })
}

/// `a op s` for a scalar `s` (converted to `a`'s dtype; f16/bf16 keep `s` in f32).
pub fn binary_scalar(a: &Tensor, op: BinaryOp, s: f64) -> Result<Tensor> {
    if matches!(a.dtype(), DType::F16 | DType::BF16) {
        // Rounding `s` to f16 first would change the result (e.g. 0.1); compute in f32.
        let r = binary(
            &a.to_dtype(DType::F32)?,
            &scalar_tensor(op.name(), s, DType::F32)?,
            op,
        )?;
        return r.to_dtype(a.dtype());
    }
    binary(a, &scalar_tensor(op.name(), s, a.dtype())?, op)
}

/// `s op a` for a scalar `s` (e.g. `1 - x`, `2 / x`).
pub fn scalar_binary(s: f64, op: BinaryOp, a: &Tensor) -> Result<Tensor> {
    if matches!(a.dtype(), DType::F16 | DType::BF16) {
        let r = binary(
            &scalar_tensor(op.name(), s, DType::F32)?,
            &a.to_dtype(DType::F32)?,
            op,
        )?;
        return r.to_dtype(a.dtype());
    }
    binary(&scalar_tensor(op.name(), s, a.dtype())?, a, op)
}

/// `a + b` (broadcasting).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Add)
}
/// `a - b` (broadcasting).
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Sub)
}
/// `a * b` (broadcasting).
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Mul)
}
/// `a / b` (broadcasting; integer zero divisors are an error).
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Div)
}
/// `a % b`, truncated remainder (broadcasting; integer zero divisors are an error).
pub fn rem(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Rem)
}
/// `a ^ b` element-wise (broadcasting).
pub fn pow(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Pow)
}
/// NaN-propagating element-wise minimum (broadcasting).
pub fn minimum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Minimum)
}
/// NaN-propagating element-wise maximum (broadcasting).
pub fn maximum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Maximum)
}

// ------------------------------------------------------------------ in place

/// A uniquely owned, contiguous, mutable tensor: the in-place side of the op API.
///
/// [`Tensor`] storage is shared and immutable (any number of views may alias it), so an
/// op can never write into a `Tensor`. `TensorMut` owns its pool buffer outright, so the
/// `*_assign` methods update it without allocating; [`TensorMut::freeze`] turns it into a
/// `Tensor` without copying. Typical use: accumulate a residual stream or apply an
/// activation to a freshly computed buffer.
pub struct TensorMut {
    buf: PoolBuffer<'static>,
    shape: Shape,
    dtype: DType,
}

impl TensorMut {
    /// A zero-filled tensor.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Result<TensorMut> {
        let shape = shape.into();
        let n = shape
            .checked_elem_count()
            .ok_or_else(|| Error::shape("TensorMut::zeros", format!("{shape} overflows")))?;
        let mut buf = iter::alloc("TensorMut::zeros", n, dtype)?;
        buf.fill(0);
        Ok(TensorMut { buf, shape, dtype })
    }

    /// A mutable copy of any tensor or view (one copy, row-major).
    pub fn from_tensor(t: &Tensor) -> Result<TensorMut> {
        let n = t.elem_count();
        let mut buf = iter::alloc("TensorMut::from_tensor", n, t.dtype())?;
        super::shape_ops::copy_into(t, &mut buf)?;
        Ok(TensorMut {
            buf,
            shape: t.shape().clone(),
            dtype: t.dtype(),
        })
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The elements, row-major; `T` must be the dtype's type.
    pub fn as_mut_slice<T: WithDType>(&mut self) -> Result<&mut [T]> {
        if T::DTYPE != self.dtype {
            return Err(Error::DType {
                op: "TensorMut::as_mut_slice",
                expected: self.dtype,
                got: T::DTYPE,
            });
        }
        self.buf.typed_mut::<T>()
    }

    /// `self = self op rhs`; `rhs` broadcasts to `self`'s shape (not the other way round:
    /// the buffer cannot grow).
    pub fn binary_assign(&mut self, op: BinaryOp, rhs: &Tensor) -> Result<()> {
        let name = op.name();
        if rhs.dtype() != self.dtype {
            return Err(Error::DType {
                op: name,
                expected: self.dtype,
                got: rhs.dtype(),
            });
        }
        let n = self.shape.elem_count();
        let compute = if self.dtype.is_float() {
            DType::F32
        } else {
            self.dtype
        };
        let plan = dispatch::plan(name, op.class(), &[rhs], compute, n)?;
        if !rhs.shape().is_broadcastable_to(&self.shape) {
            return Err(Error::shape(
                name,
                format!(
                    "in-place operand {} does not broadcast to {}",
                    rhs.shape(),
                    self.shape
                ),
            ));
        }
        match_dtype!(self.dtype, T, {
            check_rhs::<T>(op, rhs)?;
            let rhs = iter::aligned(rhs)?;
            let lb = rhs.layout().broadcast_as(self.shape.clone())?;
            let db = iter::storage::<T>(&rhs)?;
            let walk = Walk::new([&lb]);
            let out = self.buf.typed_mut::<T>()?;
            let min_chunk = op.class().parallel_threshold() / 4;
            iter::fill(out, plan.parallel, min_chunk, |start, chunk| {
                walk.rows(start..start + chunk.len(), |[ob], [sb], pos, len| {
                    T::row_assign(plan.kernel, op, &mut chunk[pos..pos + len], db, ob, sb);
                });
            });
        });
        Ok(())
    }

    /// `self = self op s`; `s` is first converted to the tensor's dtype (for f16/bf16
    /// that rounds `s`; integer dtypes need an integral, in-range `s`).
    pub fn binary_scalar_assign(&mut self, op: BinaryOp, s: f64) -> Result<()> {
        self.binary_assign(op, &scalar_tensor(op.name(), s, self.dtype)?)
    }

    /// Apply an activation in place.
    pub fn unary_assign(&mut self, act: super::activation::Activation) -> Result<()> {
        super::activation::unary_assign(self, act)
    }

    /// Freeze into an immutable contiguous [`Tensor`] (no copy).
    pub fn freeze(self) -> Result<Tensor> {
        Tensor::from_pool_buffer(self.buf, self.shape, self.dtype)
    }

    pub(crate) fn buf_mut(&mut self) -> &mut PoolBuffer<'static> {
        &mut self.buf
    }
}

impl std::fmt::Debug for TensorMut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorMut[{}, {}]", self.shape, self.dtype)
    }
}
