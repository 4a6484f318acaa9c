//! Tensors.
#[derive(Debug, Clone)]
pub struct Tensor;
