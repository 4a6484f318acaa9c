//! BitLinear (BitNet b1.58): ternary weights × int8 per-token activations, exact i32
//! accumulation, then one f32 rescale per output.

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::quant::act;
use crate::quant::ternary::TernaryMatrix;

/// `m` rows of `k` int8 activations with one dequantization factor (`1/a`) per row.
/// Reusable: [`quantize`](Self::quantize) only grows the buffers.
#[derive(Clone, Debug, Default)]
pub struct QuantizedActs {
    pub q: Vec<i8>,
    pub factors: Vec<f32>,
    pub k: usize,
}

impl QuantizedActs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Quantize `x` (row-major, rows of `k`) with [`act::quantize`], one factor per row.
    ///
    /// # Panics
    /// If `k == 0` or `x.len()` is not a multiple of `k`.
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        assert!(
            k > 0 && x.len().is_multiple_of(k),
            "QuantizedActs::quantize: {} values in rows of {k}",
            x.len()
        );
        let m = x.len() / k;
        self.k = k;
        self.q.resize(m * k, 0);
        self.factors.resize(m, 0.0);
        act::quantize_rows(x, k, &mut self.q, &mut self.factors);
    }

    /// Number of activation rows (tokens).
    pub fn rows(&self) -> usize {
        self.factors.len()
    }
}

/// A linear layer with ternary weights.
#[derive(Clone, Debug)]
pub struct BitLinear {
    pub weight: TernaryMatrix,
    pub bias: Option<Vec<f32>>,
}

thread_local! {
    /// The i32 accumulator scratch of [`BitLinear::forward`]: grows to the largest
    /// `m × rows` seen on this thread, then is reused without allocating.
    static SCRATCH: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
}

impl BitLinear {
    pub fn new(weight: TernaryMatrix, bias: Option<Vec<f32>>) -> Self {
        BitLinear { weight, bias }
    }

    /// `out[i*rows+n] = (Σ_k q_w[n,k]·q_x[i,k]) · weight.scale() · factors[i] (+ bias[n])`
    /// for the `m = x.rows()` activation rows. gemv when m == 1, gemm otherwise.
    pub fn forward(&self, x: &QuantizedActs, out: &mut [f32]) -> Result<()> {
        let w = &self.weight;
        let (n, k, m) = (w.rows(), w.cols(), x.rows());
        if x.k != k || x.q.len() < m * k {
            return Err(Error::shape(
                "BitLinear::forward",
                format!(
                    "weight has {k} inputs, activations are {m} rows of {} ({} values)",
                    x.k,
                    x.q.len()
                ),
            ));
        }
        if out.len() != m * n {
            return Err(Error::shape(
                "BitLinear::forward",
                format!("output has {} values, want {m}×{n}", out.len()),
            ));
        }
        if let Some(b) = &self.bias {
            if b.len() != n {
                return Err(Error::shape(
                    "BitLinear::forward",
                    format!("bias has {} values, want {n}", b.len()),
                ));
            }
        }
        // Take the buffer out rather than holding a RefCell borrow across the kernel call:
        // while a rayon worker waits for the kernel's tasks it may steal another forward()
        // on this same thread, which then just finds an empty buffer instead of panicking.
        let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        if buf.len() < m * n {
            buf.resize(m * n, 0);
        }
        let res = (|| {
            let acc = &mut buf[..m * n];
            let xq = &x.q[..m * k];
            if m == 1 {
                w.gemv(xq, acc)?;
            } else {
                w.gemm(xq, m, acc)?;
            }
            let scale = w.scale();
            for ((orow, arow), &f) in out
                .chunks_exact_mut(n.max(1))
                .zip(acc.chunks_exact(n.max(1)))
                .zip(&x.factors)
            {
                let s = scale * f;
                match &self.bias {
                    Some(b) => {
                        for ((o, &a), &bi) in orow.iter_mut().zip(arow).zip(b) {
                            *o = a as f32 * s + bi;
                        }
                    }
                    None => {
                        for (o, &a) in orow.iter_mut().zip(arow) {
                            *o = a as f32 * s;
                        }
                    }
                }
            }
            Ok(())
        })();
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < buf.len() {
                *s = buf;
            }
        });
        res
    }
}
