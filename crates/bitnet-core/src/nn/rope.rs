//! Rotary position embeddings (RoFormer, Su et al. 2021) with precomputed tables.
//!
//! Two pairings of the head dimensions exist in the wild:
//! - [`RopeStyle::Neox`], transformers' `rotate_half`: dimension `i` pairs with `i + d/2`.
//!   The Hugging Face BitNet checkpoints use it.
//! - [`RopeStyle::Interleaved`] (GPT-J / llama.cpp "norm"): dimension `2i` pairs with `2i+1`.
//!   GGUF converters that permute the q/k rows of llama-style models need it.
//!
//! The frequencies are computed in f32 the way transformers does
//! (`inv_freq = 1 / base^(2i/d)`, `angle = pos · inv_freq`), so results agree with it to
//! within an ulp of `cos`/`sin`.

/// Which dimensions a rotation pairs (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Neox,
    Interleaved,
}

/// cos/sin tables for positions `0..max_pos` and a head dimension.
#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: usize,
    max_pos: usize,
    style: RopeStyle,
    /// `max_pos × head_dim/2`, row-major by position.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// Tables for `max_pos` positions. `head_dim` must be even.
    pub fn new(
        head_dim: usize,
        max_pos: usize,
        theta: f32,
        style: RopeStyle,
    ) -> crate::Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(crate::Error::shape(
                "rope",
                format!("head dimension {head_dim} must be even and non-zero"),
            ));
        }
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for &f in &inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Rope {
            head_dim,
            max_pos,
            style,
            cos,
            sin,
        })
    }

    pub fn max_pos(&self) -> usize {
        self.max_pos
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The cos and sin tables, `max_pos × head_dim/2` each, row-major by position.
    pub fn tables(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    pub fn style(&self) -> RopeStyle {
        self.style
    }

    /// Rotate every head of one token in place. `x.len()` must be a multiple of head_dim.
    pub fn apply(&self, x: &mut [f32], pos: usize) -> crate::Result<()> {
        if pos >= self.max_pos {
            return Err(crate::Error::OutOfRange {
                op: "rope",
                index: pos,
                size: self.max_pos,
            });
        }
        if !x.len().is_multiple_of(self.head_dim) {
            return Err(crate::Error::shape(
                "rope",
                format!(
                    "length {} is not a multiple of head dimension {}",
                    x.len(),
                    self.head_dim
                ),
            ));
        }
        let half = self.head_dim / 2;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        for head in x.chunks_exact_mut(self.head_dim) {
            match self.style {
                RopeStyle::Neox => {
                    let (a, b) = head.split_at_mut(half);
                    for i in 0..half {
                        let (x0, x1) = (a[i], b[i]);
                        a[i] = x0 * cos[i] - x1 * sin[i];
                        b[i] = x1 * cos[i] + x0 * sin[i];
                    }
                }
                RopeStyle::Interleaved => {
                    for i in 0..half {
                        let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = x0 * cos[i] - x1 * sin[i];
                        head[2 * i + 1] = x1 * cos[i] + x0 * sin[i];
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity() {
        let r = Rope::new(8, 4, 10000.0, RopeStyle::Neox).unwrap();
        let mut x: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let y = x.clone();
        r.apply(&mut x, 0).unwrap();
        assert_eq!(x, y);
    }

    #[test]
    fn preserves_norm_and_styles_agree_up_to_permutation() {
        let d = 8;
        let r1 = Rope::new(d, 16, 500000.0, RopeStyle::Neox).unwrap();
        let r2 = Rope::new(d, 16, 500000.0, RopeStyle::Interleaved).unwrap();
        let x: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
        // Interleaved input = the Neox input with pairs (i, i+d/2) placed at (2i, 2i+1).
        let mut xi = vec![0.0; d];
        for i in 0..d / 2 {
            xi[2 * i] = x[i];
            xi[2 * i + 1] = x[i + d / 2];
        }
        let mut a = x.clone();
        r1.apply(&mut a, 7).unwrap();
        r2.apply(&mut xi, 7).unwrap();
        for i in 0..d / 2 {
            assert_eq!(a[i], xi[2 * i]);
            assert_eq!(a[i + d / 2], xi[2 * i + 1]);
        }
        let n0: f32 = x.iter().map(|v| v * v).sum();
        let n1: f32 = a.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-5);
    }

    #[test]
    fn errors_on_bad_input() {
        assert!(Rope::new(7, 4, 1e4, RopeStyle::Neox).is_err());
        let r = Rope::new(8, 4, 1e4, RopeStyle::Neox).unwrap();
        assert!(r.apply(&mut [0.0; 8], 4).is_err());
        assert!(r.apply(&mut [0.0; 9], 0).is_err());
    }
}
