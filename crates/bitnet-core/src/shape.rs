//! Shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape(pub Vec<usize>);
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout;
