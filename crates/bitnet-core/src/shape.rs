//! Shapes and strided layouts.
//!
//! A [`Layout`] is what makes tensor views zero-copy: transpose, permute, narrow and
//! broadcast only rewrite the shape, the strides (in elements, not bytes) and the start
//! offset; the bytes stay where they are. Strides are unsigned: no view in this crate needs
//! to walk memory backwards, and unsigned strides keep every offset computation free of
//! sign checks. A stride of 0 repeats an element (broadcasting).

use crate::error::{Error, Result};
use std::fmt;

/// The dimensions of a tensor, outermost first. A rank-0 shape (`[]`) is a scalar with one
/// element.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    /// A shape from its dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (product of the dimensions; 1 for a scalar).
    ///
    /// Saturates at `usize::MAX` on overflow; constructors reject such shapes through
    /// [`Shape::checked_elem_count`], so this never matters for a shape a tensor holds.
    pub fn elem_count(&self) -> usize {
        self.checked_elem_count().unwrap_or(usize::MAX)
    }

    /// Number of elements, or `None` if the product overflows `usize`.
    pub fn checked_elem_count(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Size of dimension `dim`, or [`Error::OutOfRange`].
    pub fn dim(&self, dim: usize) -> Result<usize> {
        self.0.get(dim).copied().ok_or(Error::OutOfRange {
            op: "dim",
            index: dim,
            size: self.rank(),
        })
    }

    /// Row-major (C-order) strides in elements for this shape.
    pub fn stride_contiguous(&self) -> Vec<usize> {
        let mut strides = vec![0; self.rank()];
        let mut acc = 1usize;
        for (s, &d) in strides.iter_mut().zip(&self.0).rev() {
            *s = acc;
            acc = acc.saturating_mul(d);
        }
        strides
    }

    /// The shape of `self ⊕ rhs` under NumPy broadcasting: dimensions are aligned from the
    /// right, and each pair must be equal or contain a 1.
    pub fn broadcast_shape_binary_op(&self, rhs: &Shape, op: &'static str) -> Result<Shape> {
        let (a, b) = (self.dims(), rhs.dims());
        let rank = a.len().max(b.len());
        let mut out = vec![0; rank];
        for i in 0..rank {
            let da = if i < rank - a.len() {
                1
            } else {
                a[i - (rank - a.len())]
            };
            let db = if i < rank - b.len() {
                1
            } else {
                b[i - (rank - b.len())]
            };
            out[i] = if da == db || db == 1 {
                da
            } else if da == 1 {
                db
            } else {
                return Err(Error::shape(
                    op,
                    format!("cannot broadcast {self} with {rhs} (dimension {i}: {da} vs {db})"),
                ));
            };
        }
        Ok(Shape(out))
    }

    /// Whether a tensor of this shape can be broadcast to `target` (NumPy rules, one way:
    /// every dimension of `self`, aligned from the right, is 1 or equal to the target's).
    pub fn is_broadcastable_to(&self, target: &Shape) -> bool {
        let (a, t) = (self.dims(), target.dims());
        a.len() <= t.len()
            && a.iter()
                .rev()
                .zip(t.iter().rev())
                .all(|(&da, &dt)| da == dt || da == 1)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}
impl From<&Vec<usize>> for Shape {
    fn from(v: &Vec<usize>) -> Self {
        Shape(v.clone())
    }
}
impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<&[usize; N]> for Shape {
    fn from(v: &[usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}
impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(Vec::new())
    }
}
impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(vec![d])
    }
}
impl From<(usize,)> for Shape {
    fn from(d: (usize,)) -> Self {
        Shape(vec![d.0])
    }
}
impl From<(usize, usize)> for Shape {
    fn from(d: (usize, usize)) -> Self {
        Shape(vec![d.0, d.1])
    }
}
impl From<(usize, usize, usize)> for Shape {
    fn from(d: (usize, usize, usize)) -> Self {
        Shape(vec![d.0, d.1, d.2])
    }
}
impl From<(usize, usize, usize, usize)> for Shape {
    fn from(d: (usize, usize, usize, usize)) -> Self {
        Shape(vec![d.0, d.1, d.2, d.3])
    }
}

/// A shape plus strides (in elements) and a start offset (in elements) into a storage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    start_offset: usize,
}

impl Layout {
    /// Row-major layout starting at element 0.
    pub fn contiguous(shape: impl Into<Shape>) -> Self {
        Self::contiguous_with_offset(shape, 0)
    }

    /// Row-major layout starting at element `start_offset`.
    pub fn contiguous_with_offset(shape: impl Into<Shape>, start_offset: usize) -> Self {
        let shape = shape.into();
        let strides = shape.stride_contiguous();
        Layout {
            shape,
            strides,
            start_offset,
        }
    }

    /// An arbitrary strided layout; the stride count must equal the rank.
    pub fn new(shape: impl Into<Shape>, strides: Vec<usize>, start_offset: usize) -> Result<Self> {
        let shape = shape.into();
        if strides.len() != shape.rank() {
            return Err(Error::shape(
                "layout",
                format!(
                    "{} strides for a rank-{} shape {shape}",
                    strides.len(),
                    shape.rank()
                ),
            ));
        }
        Ok(Layout {
            shape,
            strides,
            start_offset,
        })
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    /// Strides in elements, one per dimension.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Offset of the first element, in elements.
    pub fn start_offset(&self) -> usize {
        self.start_offset
    }

    /// Whether the elements are laid out row-major without gaps or repeats, so that the
    /// view is the storage range `start_offset .. start_offset + elem_count`. Strides of
    /// size-1 dimensions are irrelevant and ignored; an empty view is contiguous.
    pub fn is_contiguous(&self) -> bool {
        if self.elem_count() == 0 {
            return true;
        }
        let mut expected = 1usize;
        for (&d, &s) in self.dims().iter().zip(&self.strides).rev() {
            if d != 1 {
                if s != expected {
                    return false;
                }
                expected *= d;
            }
        }
        true
    }

    /// The storage element range of a contiguous view, `None` otherwise.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous()
            .then(|| self.start_offset..self.start_offset + self.elem_count())
    }

    /// Elements of storage a view needs: one past its largest offset (0 if empty).
    pub fn required_storage_elems(&self) -> usize {
        if self.elem_count() == 0 {
            return 0;
        }
        let max: usize = self
            .dims()
            .iter()
            .zip(&self.strides)
            .map(|(&d, &s)| (d - 1) * s)
            .sum();
        self.start_offset + max + 1
    }

    fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        if dim >= self.rank() {
            return Err(Error::OutOfRange {
                op,
                index: dim,
                size: self.rank(),
            });
        }
        Ok(())
    }

    /// Swap two dimensions.
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Layout> {
        self.check_dim("transpose", d0)?;
        self.check_dim("transpose", d1)?;
        let mut l = self.clone();
        l.shape.0.swap(d0, d1);
        l.strides.swap(d0, d1);
        Ok(l)
    }

    /// Reorder dimensions: dimension `i` of the result is dimension `perm[i]` of `self`.
    pub fn permute(&self, perm: &[usize]) -> Result<Layout> {
        if perm.len() != self.rank() {
            return Err(Error::shape(
                "permute",
                format!(
                    "permutation {perm:?} has {} entries for a rank-{} tensor",
                    perm.len(),
                    self.rank()
                ),
            ));
        }
        let mut seen = vec![false; perm.len()];
        for &p in perm {
            if p >= perm.len() || std::mem::replace(&mut seen[p], true) {
                return Err(Error::shape(
                    "permute",
                    format!("{perm:?} is not a permutation of 0..{}", perm.len()),
                ));
            }
        }
        Ok(Layout {
            shape: Shape(perm.iter().map(|&p| self.dims()[p]).collect()),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            start_offset: self.start_offset,
        })
    }

    /// Keep `len` entries of dimension `dim` starting at `start`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        self.check_dim("narrow", dim)?;
        let size = self.dims()[dim];
        let end = start.checked_add(len).filter(|&e| e <= size);
        if end.is_none() {
            return Err(Error::shape(
                "narrow",
                format!(
                    "range {start}..{start}+{len} does not fit dimension {dim} of size {size} (shape {})",
                    self.shape
                ),
            ));
        }
        let mut l = self.clone();
        l.shape.0[dim] = len;
        if len > 0 {
            l.start_offset += start * self.strides[dim];
        }
        Ok(l)
    }

    /// View with a new shape of the same element count; only for contiguous layouts.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Layout> {
        let shape = shape.into();
        if shape.checked_elem_count() != Some(self.elem_count()) {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot reshape {} ({} elements) into {shape}",
                    self.shape,
                    self.elem_count()
                ),
            ));
        }
        if !self.is_contiguous() {
            return Err(Error::Unsupported(format!(
                "reshape: the tensor is a non-contiguous view (shape {}, strides {:?}); \
                 call .contiguous() first",
                self.shape, self.strides
            )));
        }
        Ok(Layout::contiguous_with_offset(shape, self.start_offset))
    }

    /// View broadcast to `shape` (NumPy rules): new leading dimensions and expanded size-1
    /// dimensions get stride 0, so each element is repeated without copying.
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Layout> {
        let shape = shape.into();
        if !self.shape.is_broadcastable_to(&shape) || shape.checked_elem_count().is_none() {
            return Err(Error::shape(
                "broadcast_as",
                format!("cannot broadcast {} to {shape}", self.shape),
            ));
        }
        let extra = shape.rank() - self.rank();
        let strides = shape
            .dims()
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                if i < extra {
                    0
                } else {
                    let j = i - extra;
                    if self.dims()[j] == 1 && d != 1 {
                        0
                    } else {
                        self.strides[j]
                    }
                }
            })
            .collect();
        Ok(Layout {
            shape,
            strides,
            start_offset: self.start_offset,
        })
    }

    /// Insert a size-1 dimension at `dim` (0 ..= rank).
    pub fn unsqueeze(&self, dim: usize) -> Result<Layout> {
        if dim > self.rank() {
            return Err(Error::OutOfRange {
                op: "unsqueeze",
                index: dim,
                size: self.rank() + 1,
            });
        }
        let mut l = self.clone();
        // Any stride works for a size-1 dimension; this one keeps contiguous layouts
        // looking contiguous to code that compares strides literally.
        let stride = self
            .dims()
            .get(dim)
            .map(|&d| d * self.strides[dim])
            .unwrap_or(1);
        l.shape.0.insert(dim, 1);
        l.strides.insert(dim, stride);
        Ok(l)
    }

    /// Remove dimension `dim`, which must have size 1.
    pub fn squeeze(&self, dim: usize) -> Result<Layout> {
        self.check_dim("squeeze", dim)?;
        if self.dims()[dim] != 1 {
            return Err(Error::shape(
                "squeeze",
                format!(
                    "dimension {dim} of {} has size {}, not 1",
                    self.shape,
                    self.dims()[dim]
                ),
            ));
        }
        let mut l = self.clone();
        l.shape.0.remove(dim);
        l.strides.remove(dim);
        Ok(l)
    }

    /// Storage offsets (in elements) of every element of the view, in row-major order.
    pub fn offsets(&self) -> StridedOffsets<'_> {
        StridedOffsets {
            layout: self,
            index: vec![0; self.rank()],
            next: (self.elem_count() > 0).then_some(self.start_offset),
        }
    }

    /// Call `f(offset, len)` for each maximal run of consecutive storage elements of the
    /// view, in row-major order. Copy loops use this to move whole rows with one memcpy.
    pub fn for_each_run(&self, mut f: impl FnMut(usize, usize)) {
        if self.elem_count() == 0 {
            return;
        }
        // Merge trailing dimensions that are contiguous with each other into one run.
        let dims = self.dims();
        let mut run = 1usize;
        let mut outer = dims.len();
        while outer > 0 {
            let d = dims[outer - 1];
            if d == 1 {
                outer -= 1;
                continue;
            }
            if self.strides[outer - 1] == run {
                run *= d;
                outer -= 1;
            } else {
                break;
            }
        }
        let outer_dims = &dims[..outer];
        let outer_strides = &self.strides[..outer];
        let mut index = vec![0usize; outer];
        let mut offset = self.start_offset;
        loop {
            f(offset, run);
            // Odometer increment over the outer dimensions.
            let mut k = outer;
            loop {
                if k == 0 {
                    return;
                }
                k -= 1;
                index[k] += 1;
                offset += outer_strides[k];
                if index[k] < outer_dims[k] {
                    break;
                }
                offset -= outer_strides[k] * outer_dims[k];
                index[k] = 0;
            }
        }
    }
}

/// Iterator over the storage offsets of a [`Layout`], row-major.
pub struct StridedOffsets<'a> {
    layout: &'a Layout,
    index: Vec<usize>,
    next: Option<usize>,
}

impl Iterator for StridedOffsets<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let current = self.next?;
        let dims = self.layout.dims();
        let strides = self.layout.strides();
        let mut offset = current;
        let mut k = dims.len();
        self.next = loop {
            if k == 0 {
                break None;
            }
            k -= 1;
            self.index[k] += 1;
            offset += strides[k];
            if self.index[k] < dims[k] {
                break Some(offset);
            }
            offset -= strides[k] * dims[k];
            self.index[k] = 0;
        };
        Some(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_basics() {
        let s = Shape::from((2, 3, 4));
        assert_eq!(s.elem_count(), 24);
        assert_eq!(s.rank(), 3);
        assert_eq!(s.stride_contiguous(), vec![12, 4, 1]);
        assert_eq!(Shape::from(()).elem_count(), 1);
        assert!(s.dim(3).is_err());
        assert_eq!(Shape::from([usize::MAX, 2]).checked_elem_count(), None);
    }

    #[test]
    fn broadcasting_rules() {
        let a = Shape::from((3, 1, 5));
        let b = Shape::from((4, 1));
        assert_eq!(
            a.broadcast_shape_binary_op(&b, "add").unwrap(),
            Shape::from((3, 4, 5))
        );
        assert!(Shape::from((3, 2))
            .broadcast_shape_binary_op(&Shape::from((4, 2)), "add")
            .is_err());
        assert!(Shape::from((1, 5)).is_broadcastable_to(&Shape::from((2, 3, 5))));
        assert!(!Shape::from((2, 5)).is_broadcastable_to(&Shape::from((3, 5))));
    }

    #[test]
    fn layout_views_and_offsets() {
        let l = Layout::contiguous((2, 3));
        assert!(l.is_contiguous());
        let t = l.transpose(0, 1).unwrap();
        assert!(!t.is_contiguous());
        assert_eq!(t.offsets().collect::<Vec<_>>(), vec![0, 3, 1, 4, 2, 5]);
        let n = l.narrow(1, 1, 2).unwrap();
        assert_eq!(n.offsets().collect::<Vec<_>>(), vec![1, 2, 4, 5]);
        let b = Layout::contiguous((3, 1)).broadcast_as((2, 3, 4)).unwrap();
        assert_eq!(b.strides(), &[0, 1, 0]);
        assert_eq!(b.required_storage_elems(), 3);
        let mut runs = Vec::new();
        n.for_each_run(|o, len| runs.push((o, len)));
        assert_eq!(runs, vec![(1, 2), (4, 2)]);
        let mut runs = Vec::new();
        l.for_each_run(|o, len| runs.push((o, len)));
        assert_eq!(runs, vec![(0, 6)]);
        assert!(t.reshape(6).is_err());
        assert!(l.reshape((3, 2)).is_ok());
        assert!(l.reshape(5).is_err());
    }
}
