//! Dense linear algebra through `faer`: thin SVD, thin QR, Cholesky and linear solves.
//!
//! Inputs are 2-D float tensors of any layout (f32, f16, bf16); the factorisations run in
//! f64 — these are not hot paths, and f64 keeps reconstruction errors at f32 rounding level
//! even for ill-conditioned inputs — and the results are returned in the input's dtype.
//! Failures are typed ([`LinalgError`]): non-square input where a square one is needed, a
//! matrix that is not positive definite (Cholesky), a singular system (solve), non-finite
//! input, or a decomposition that did not converge.

use faer::linalg::solvers::Solve;
use faer::Mat;

use super::dispatch::{self, OpClass};
use crate::dtype::DType;
use crate::error::Error;
use crate::tensor::Tensor;

/// Why a linear-algebra op failed.
#[derive(Debug, thiserror::Error)]
pub enum LinalgError {
    /// The op needs a square matrix.
    #[error("{op}: matrix must be square, got {rows}×{cols}")]
    NotSquare {
        op: &'static str,
        rows: usize,
        cols: usize,
    },
    /// Cholesky found a non-positive pivot: the matrix is not (numerically) positive
    /// definite. Only the lower triangle is read, as in LAPACK `potrf`.
    #[error("cholesky: matrix is not positive definite (pivot {pivot} is not > 0)")]
    NotPositiveDefinite { pivot: usize },
    /// The system matrix is singular to working precision.
    #[error("solve: matrix is singular to working precision (pivot {pivot})")]
    Singular { pivot: usize },
    /// NaN or infinity in the input.
    #[error("{op}: input contains NaN or infinity")]
    NonFinite { op: &'static str },
    /// The iterative SVD did not converge.
    #[error("{op}: did not converge")]
    NoConvergence { op: &'static str },
    /// A shape, dtype or device problem reported by the tensor layer.
    #[error(transparent)]
    Tensor(#[from] Error),
}

impl From<LinalgError> for Error {
    fn from(e: LinalgError) -> Error {
        match e {
            LinalgError::Tensor(e) => e,
            LinalgError::NotSquare { op, .. } => Error::shape(op, e.to_string()),
            other => Error::Unsupported(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, LinalgError>;

/// A 2-D float tensor as an f64 faer matrix (reads any layout).
fn to_mat(op: &'static str, t: &Tensor) -> Result<Mat<f64>> {
    if !t.dtype().is_float() {
        return Err(Error::UnsupportedDType {
            op,
            dtype: t.dtype(),
        }
        .into());
    }
    if t.rank() != 2 {
        return Err(Error::shape(op, format!("expected a matrix, got shape {}", t.shape())).into());
    }
    let (m, n) = (t.dims()[0], t.dims()[1]);
    let v = t.to_dtype(DType::F32)?.to_vec::<f32>()?;
    if v.iter().any(|x| !x.is_finite()) {
        return Err(LinalgError::NonFinite { op });
    }
    Ok(Mat::from_fn(m, n, |i, j| v[i * n + j] as f64))
}

fn from_mat(m: faer::MatRef<'_, f64>, dtype: DType) -> Result<Tensor> {
    let (r, c) = (m.nrows(), m.ncols());
    let mut v = Vec::with_capacity(r * c);
    for i in 0..r {
        for j in 0..c {
            v.push(m[(i, j)] as f32);
        }
    }
    Ok(Tensor::from_vec(v, (r, c))?.to_dtype(dtype)?)
}

fn square(op: &'static str, t: &Tensor) -> Result<usize> {
    let (r, c) = (t.dims()[0], t.dims()[1]);
    if r != c {
        return Err(LinalgError::NotSquare {
            op,
            rows: r,
            cols: c,
        });
    }
    Ok(r)
}

fn plan(op: &'static str, inputs: &[&Tensor], n: usize) -> Result<()> {
    dispatch::plan(op, OpClass::Linalg, inputs, DType::F32, n.saturating_pow(3))?;
    Ok(())
}

/// Thin SVD `a = U · diag(S) · Vᵀ` of an m×n matrix, r = min(m, n): returns `(U [m, r],
/// S [r] non-negative and non-increasing, Vᵀ [r, n])`.
pub fn svd(a: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "svd";
    let m = to_mat(op, a)?;
    plan(op, &[a], m.nrows().max(m.ncols()))?;
    let s = m
        .thin_svd()
        .map_err(|_| LinalgError::NoConvergence { op })?;
    let sv: Vec<f32> = s.S().column_vector().iter().map(|&x| x as f32).collect();
    let r = sv.len();
    let u = from_mat(s.U(), a.dtype())?;
    let vt = from_mat(s.V().transpose(), a.dtype())?;
    let st = Tensor::from_vec(sv, r)?.to_dtype(a.dtype())?;
    Ok((u, st, vt))
}

/// Thin QR `a = Q · R` of an m×n matrix, r = min(m, n): `Q [m, r]` with orthonormal
/// columns and upper-triangular `R [r, n]`.
pub fn qr(a: &Tensor) -> Result<(Tensor, Tensor)> {
    let op = "qr";
    let m = to_mat(op, a)?;
    plan(op, &[a], m.nrows().max(m.ncols()))?;
    let f = m.qr();
    let q = from_mat(f.compute_thin_Q().as_ref(), a.dtype())?;
    let r = from_mat(f.thin_R(), a.dtype())?;
    Ok((q, r))
}

/// Cholesky factor `L` (lower triangular, positive diagonal) with `a = L·Lᵀ`. Reads the
/// lower triangle of `a` only (as LAPACK `potrf`); a non-positive pivot is
/// [`LinalgError::NotPositiveDefinite`].
pub fn cholesky(a: &Tensor) -> Result<Tensor> {
    let op = "cholesky";
    let m = to_mat(op, a)?;
    let n = square(op, a)?;
    plan(op, &[a], n)?;
    let f = m.llt(faer::Side::Lower).map_err(|e| match e {
        faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index } => {
            LinalgError::NotPositiveDefinite { pivot: index }
        }
    })?;
    from_mat(f.L(), a.dtype())
}

/// Solve `a · x = b` for square `a` (`[n, n]`) and `b` of shape `[n]` or `[n, k]` (LU with
/// partial pivoting). A pivot below n·ε·max|pivot| is [`LinalgError::Singular`]: beyond
/// that the answer would be dominated by rounding.
pub fn solve(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let op = "solve";
    let am = to_mat(op, a)?;
    let n = square(op, a)?;
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            op,
            expected: a.dtype(),
            got: b.dtype(),
        }
        .into());
    }
    let b_vec = b.rank() == 1;
    let b2 = if b_vec { b.unsqueeze(1)? } else { b.clone() };
    if b2.rank() != 2 || b2.dims()[0] != n {
        return Err(Error::shape(
            op,
            format!(
                "right-hand side {} does not match a {n}×{n} system",
                b.shape()
            ),
        )
        .into());
    }
    let bm = to_mat(op, &b2)?;
    plan(op, &[a, b], n)?;
    let lu = am.partial_piv_lu();
    let u = lu.U();
    let diag: Vec<f64> = (0..n).map(|i| u[(i, i)].abs()).collect();
    let max = diag.iter().cloned().fold(0.0, f64::max);
    if let Some(pivot) = diag
        .iter()
        .position(|&d| d == 0.0 || d <= max * n as f64 * f64::EPSILON)
    {
        return Err(LinalgError::Singular { pivot });
    }
    let x = lu.solve(&bm);
    let xt = from_mat(x.as_ref(), a.dtype())?;
    if b_vec {
        Ok(xt.squeeze(1)?)
    } else {
        Ok(xt)
    }
}
