//! Neural-network layers on CPU tensors.

pub mod attention;
pub mod bitlinear;
pub mod norm;
pub mod rope;
