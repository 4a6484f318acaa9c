//! bitnet-core: the tensor core, memory pool, ternary quantization formats and CPU kernels
//! of the BitNet b1.58 engine.
//!
//! Layers, bottom up: [`memory`] (the pool CPU tensors allocate from), [`tensor`] (dtype,
//! shape and strided views over [`storage`]), [`quant`] (one module per weight format, plus
//! the engine's own in-memory ternary layouts), [`cpu`] (scalar reference kernels and their
//! SIMD versions, chosen at run time) and [`nn`] (BitLinear, norms, RoPE, attention).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod error;
pub mod memory;
pub mod nn;
pub mod ops;
pub mod quant;
pub mod shape;
pub mod storage;
pub mod tensor;

pub use device::Device;
pub use dtype::DType;
pub use error::{Error, Result};
pub use shape::{Layout, Shape};
pub use storage::SharedBytes;
pub use tensor::Tensor;
