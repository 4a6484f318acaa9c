//! Memory pool (being written)
