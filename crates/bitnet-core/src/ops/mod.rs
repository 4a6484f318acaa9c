//! General tensor operations on CPU tensors, one module per op family.
//!
//! * [`elementwise`]: `+ - * / %`, pow, minimum/maximum with NumPy broadcasting, scalar
//!   variants, and [`TensorMut`] for in-place updates;
//! * [`activation`]: relu, relu², gelu (erf and tanh), silu, sigmoid, tanh, softmax and
//!   log-softmax;
//! * [`reduce`]: sum, mean, min, max, argmin, argmax, var, std over axes or everything;
//! * [`mod@compare`]: eq/ne/lt/gt/le/ge masks, `where_cond`, `clamp`;
//! * [`shape_ops`]: concat, stack, split, chunk, index_select, gather, contiguous copy;
//! * [`mod@matmul`]: matmul / batched matmul through the `gemm` crate;
//! * [`linalg`]: SVD, QR, Cholesky, solve through `faer`;
//! * [`simd`]: the scalar and AVX2 f32 kernels; [`dispatch`]: which backend and kernel run.
//!
//! Conventions:
//! * Inputs of any layout are accepted (transposed, narrowed, broadcast views); outputs are
//!   fresh contiguous tensors from the memory pool, except views (`split`, `chunk`).
//! * f16 and bf16 are computed in f32 and rounded once to the output dtype.
//! * Integer dtypes (i8, i32, u8) wrap on overflow like Rust's `wrapping_*` ops (NumPy
//!   does the same); division or remainder by zero is an error, never a panic.
//! * Mixed dtypes are an error ([`crate::Error::DType`]): there is no implicit promotion.
//! * Tensors are immutable shared views, so an op cannot overwrite its input. In-place
//!   work happens on a [`TensorMut`]: a uniquely owned contiguous pool buffer that ops
//!   update without allocating, frozen into a `Tensor` without copying when done.

pub mod activation;
pub mod compare;
pub mod dispatch;
pub mod elementwise;
pub(crate) mod iter;
pub mod linalg;
pub mod matmul;
pub mod reduce;
pub mod shape_ops;
pub mod simd;

pub use activation::{
    gelu, gelu_tanh, log_softmax, relu, relu2, sigmoid, silu, softmax, tanh, unary, Activation,
};
pub use compare::{clamp, compare, compare_scalar, eq, ge, gt, le, lt, ne, where_cond, CmpOp};
pub use dispatch::{Kernel, OpClass, Plan};
pub use elementwise::{
    add, binary, binary_scalar, div, maximum, minimum, mul, pow, rem, scalar_binary, sub, BinaryOp,
    TensorMut,
};
pub use linalg::{cholesky, qr, solve, svd, LinalgError};
pub use matmul::matmul;
pub use reduce::{
    argmax, argmin, max, max_all, mean, mean_all, min, min_all, std, sum, sum_all, var, var_all,
    ReduceOp,
};
pub use shape_ops::{
    chunk, concat, contiguous_copy, gather, index_select, split, split_sizes, stack,
};

/// Run `$body` with `$T` bound to the Rust type of `$dtype` (every dtype).
macro_rules! match_dtype {
    ($dtype:expr, $T:ident, $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            $crate::DType::I8 => {
                type $T = i8;
                $body
            }
            $crate::DType::I32 => {
                type $T = i32;
                $body
            }
            $crate::DType::U8 => {
                type $T = u8;
                $body
            }
        }
    };
}
pub(crate) use match_dtype;
