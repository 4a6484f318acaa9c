//! Quantization: the BitNet b1.58 quantizers, one module per weight format as found in
//! files (bitnet.cpp I2_S, llama.cpp TQ1_0/TQ2_0/Q8_0/Q6_K, the Hugging Face packed
//! checkpoint), and the engine's in-memory matrices ([`ternary::TernaryMatrix`] and
//! [`dense::DenseMatrix`]) that kernels run on.

pub mod absmean;
pub mod act;
pub mod dense;
pub mod hf_packed;
pub mod i2s;
pub mod q6_k;
pub mod q8_0;
pub mod ternary;
pub mod tq1_0;
pub mod tq2_0;

use crate::{Error, Result};

/// The geometry every block format shares: `block` weights stored in `bytes` bytes, rows a
/// whole number of blocks. One place for the shape, size and length checks of TQ1_0, TQ2_0,
/// Q8_0 and Q6_K.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blocks {
    pub name: &'static str,
    pub block: usize,
    pub bytes: usize,
}

impl Blocks {
    /// Weights of a `rows × cols` tensor: `cols` a multiple of the block, and the tensor's
    /// byte size representable.
    pub fn check_shape(self, rows: usize, cols: usize) -> Result<usize> {
        if !cols.is_multiple_of(self.block) {
            return Err(Error::format(
                self.name,
                format!("row length {cols} is not a multiple of {}", self.block),
            ));
        }
        rows.checked_mul(cols)
            .filter(|n| n / self.block <= usize::MAX / self.bytes)
            .ok_or_else(|| Error::format(self.name, format!("{rows}x{cols} overflows")))
    }

    /// Bytes of `n` weights (a whole number of blocks).
    pub fn size_of(self, n: usize) -> usize {
        n / self.block * self.bytes
    }

    /// Error unless `data` holds at least the blocks of `n` weights.
    pub fn check_len(self, data: &[u8], n: usize) -> Result<()> {
        let need = self.size_of(n);
        if data.len() < need {
            return Err(Error::format(
                self.name,
                format!("need {need} bytes for {n} weights, got {}", data.len()),
            ));
        }
        Ok(())
    }

    /// Error unless `x` holds exactly `n` values.
    pub fn check_values(self, x: &[f32], n: usize) -> Result<()> {
        if x.len() != n {
            return Err(Error::format(
                self.name,
                format!("expected {n} values, got {}", x.len()),
            ));
        }
        Ok(())
    }
}
