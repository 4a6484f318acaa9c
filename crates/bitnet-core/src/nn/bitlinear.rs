//! BitLinear (BitNet b1.58): ternary weights × int8 per-token activations, exact i32
//! accumulation, then one f32 rescale per output.

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::quant::act;
use crate::quant::ternary::{gemm_multi, TernaryMatrix};
use rayon::prelude::*;

/// Outputs (tokens × rows) from which [`BitLinear::forward_multi`] scales rows in parallel.
const PAR_SCALE_MIN: usize = 1 << 16;

/// One output row: `o = a·s (+ b)`.
#[inline]
fn scale_row(o: &mut [f32], a: &[i32], s: f32, bias: Option<&[f32]>) {
    match bias {
        Some(b) => {
            for ((o, &a), &bi) in o.iter_mut().zip(a).zip(b) {
                *o = a as f32 * s + bi;
            }
        }
        None => {
            for (o, &a) in o.iter_mut().zip(a) {
                *o = a as f32 * s;
            }
        }
    }
}

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
        Self::forward_multi(&[self], x, &mut [out])
    }

    /// [`forward`](Self::forward) of several layers that read the same activations (a
    /// block's q/k/v projections, or gate/up), with all their row tiles in one parallel
    /// region: `outs[j]` gets `layers[j]`'s output. Each layer keeps its own scale and bias.
    pub fn forward_multi(
        layers: &[&BitLinear],
        x: &QuantizedActs,
        outs: &mut [&mut [f32]],
    ) -> Result<()> {
        let m = x.rows();
        if layers.len() != outs.len() {
            return Err(Error::shape(
                "BitLinear::forward_multi",
                format!("{} layers but {} outputs", layers.len(), outs.len()),
            ));
        }
        let mut total = 0;
        for (l, out) in layers.iter().zip(outs.iter()) {
            let w = &l.weight;
            let (n, k) = (w.rows(), w.cols());
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
            if let Some(b) = &l.bias {
                if b.len() != n {
                    return Err(Error::shape(
                        "BitLinear::forward",
                        format!("bias has {} values, want {n}", b.len()),
                    ));
                }
            }
            total += m * n;
        }
        let Some(first) = layers.first() else {
            return Ok(());
        };
        let k = first.weight.cols();
        // Take the buffer out rather than holding a RefCell borrow across the kernel call:
        // while a rayon worker waits for the kernel's tasks it may steal another forward()
        // on this same thread, which then just finds an empty buffer instead of panicking.
        let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        if buf.len() < total {
            buf.resize(total, 0);
        }
        let res = (|| {
            let mut accs: Vec<&mut [i32]> = Vec::with_capacity(layers.len());
            let mut rest = &mut buf[..total];
            for l in layers {
                let (a, r) = rest.split_at_mut(m * l.weight.rows());
                accs.push(a);
                rest = r;
            }
            let mats: Vec<&TernaryMatrix> = layers.iter().map(|l| &l.weight).collect();
            gemm_multi(&mats, &x.q[..m * k], m, &mut accs)?;
            for ((l, out), acc) in layers.iter().zip(outs.iter_mut()).zip(&accs) {
                let n = l.weight.rows().max(1);
                let (scale, bias) = (l.weight.scale(), l.bias.as_deref());
                if m * n >= PAR_SCALE_MIN {
                    // Prompts: the rows in parallel (on one thread this took 5 % of a
                    // 128-token prompt).
                    out.par_chunks_exact_mut(n)
                        .zip(acc.par_chunks_exact(n))
                        .zip(x.factors.par_iter())
                        .for_each(|((o, a), &f)| scale_row(o, a, scale * f, bias));
                } else {
                    let rows = out.chunks_exact_mut(n).zip(acc.chunks_exact(n));
                    for ((o, a), &f) in rows.zip(&x.factors) {
                        scale_row(o, a, scale * f, bias);
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
