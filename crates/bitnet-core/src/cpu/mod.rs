//! CPU kernels (being written)
