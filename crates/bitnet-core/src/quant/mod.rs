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
