//! Dense (non-ternary) matrices: the token embedding table and the LM head.
//!
//! A [`DenseMatrix`] is `rows × cols`, row-major (row = one token's embedding / one logit's
//! weights). Storage is whatever the file holds (F32, F16, BF16, llama.cpp Q8_0 / Q6_K
//! bytes, usually a zero-copy view of a memory map) or our own int8 per-row absmax layout
//! (`I8Row`). Formats: see [`super::q8_0`], [`super::q6_k`].
//!
//! # `matvec` numerics (logits = W·x)
//!
//! * **F32 / F16 / BF16**: exact f32 products of the (widened) weights with f32 `x`, f32
//!   accumulation (AVX2+FMA with 8 partial sums; F16 widened with F16C `_mm256_cvtph_ps`
//!   when detected). Differs from a sequential f32 sum only by summation order (~1e-6
//!   relative).
//! * **Q8_0 and I8Row**: `x` is quantized to int8 per block of 32 with an f32 scale
//!   (`max|x_b|/127`, round half to even) — like llama.cpp's Q8_0 activations but with an
//!   f32 instead of f16 scale; the products are exact int8 sums. Error vs. the f32 dot of
//!   the dequantized weights: at most `Σ_b xd_b/2 · Σ_{i∈b} |w_i|` (tested), typically
//!   ~0.1–0.3% of `Σ|w·x|`.
//! * **Q6_K**: `x` is quantized like llama.cpp's `Q8_K` (one f32 scale per 256), which is
//!   what llama.cpp's `ggml_vec_dot_q6_K_q8_K` uses, so logits match llama.cpp's CPU
//!   path up to summation order. Error bound as above with blocks of 256.
//!
//! Rows are spread over threads with rayon.

use half::{bf16, f16};
use rayon::prelude::*;

use super::{q6_k, q8_0};
use crate::error::{Error, Result};
use crate::storage::SharedBytes;

/// Storage kinds, for [`DenseMatrix::from_f32`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenseKind {
    F32,
    F16,
    BF16,
    Q8_0,
    Q6K,
    I8Row,
}

impl DenseKind {
    /// F32, F16 or BF16: values stored as floats, not quantized.
    pub fn is_float(self) -> bool {
        matches!(self, DenseKind::F32 | DenseKind::F16 | DenseKind::BF16)
    }
}

/// Row-major `rows × cols` dense matrix.
#[derive(Clone, Debug)]
pub enum DenseMatrix {
    /// Little-endian f32 bytes (owned vector or file view).
    F32 {
        data: SharedBytes,
        rows: usize,
        cols: usize,
    },
    F16 {
        data: SharedBytes,
        rows: usize,
        cols: usize,
    },
    BF16 {
        data: SharedBytes,
        rows: usize,
        cols: usize,
    },
    /// llama.cpp Q8_0 blocks, `cols % 32 == 0`.
    Q8_0 {
        data: SharedBytes,
        rows: usize,
        cols: usize,
    },
    /// llama.cpp Q6_K super-blocks, `cols % 256 == 0`.
    Q6K {
        data: SharedBytes,
        rows: usize,
        cols: usize,
    },
    /// int8 per-row absmax: `w[r][c] ≈ data[r·cols + c] · scales[r]`.
    I8Row {
        data: Vec<i8>,
        scales: Vec<f32>,
        rows: usize,
        cols: usize,
    },
}

const FMT: &str = "dense";

fn need_bytes(kind: &str, data: &SharedBytes, need: Option<usize>) -> Result<()> {
    match need {
        Some(n) if data.len() == n => Ok(()),
        Some(n) => Err(Error::format(
            FMT,
            format!("{kind}: expected {n} bytes, got {}", data.len()),
        )),
        None => Err(Error::format(FMT, format!("{kind}: shape overflows"))),
    }
}

#[inline]
fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

impl DenseMatrix {
    /// View little-endian f32 bytes (any alignment).
    pub fn from_f32_bytes(data: SharedBytes, rows: usize, cols: usize) -> Result<Self> {
        need_bytes(
            "F32",
            &data,
            rows.checked_mul(cols).and_then(|n| n.checked_mul(4)),
        )?;
        Ok(DenseMatrix::F32 { data, rows, cols })
    }

    /// Own an f32 vector.
    pub fn from_f32_vec(v: Vec<f32>, rows: usize, cols: usize) -> Result<Self> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Self::from_f32_bytes(SharedBytes::from_vec(bytes), rows, cols)
    }

    pub fn from_f16_bytes(data: SharedBytes, rows: usize, cols: usize) -> Result<Self> {
        need_bytes(
            "F16",
            &data,
            rows.checked_mul(cols).and_then(|n| n.checked_mul(2)),
        )?;
        Ok(DenseMatrix::F16 { data, rows, cols })
    }

    pub fn from_bf16_bytes(data: SharedBytes, rows: usize, cols: usize) -> Result<Self> {
        need_bytes(
            "BF16",
            &data,
            rows.checked_mul(cols).and_then(|n| n.checked_mul(2)),
        )?;
        Ok(DenseMatrix::BF16 { data, rows, cols })
    }

    pub fn from_q8_0_bytes(data: SharedBytes, rows: usize, cols: usize) -> Result<Self> {
        need_bytes("Q8_0", &data, Some(q8_0::tensor_bytes(rows, cols)?))?;
        Ok(DenseMatrix::Q8_0 { data, rows, cols })
    }

    pub fn from_q6k_bytes(data: SharedBytes, rows: usize, cols: usize) -> Result<Self> {
        need_bytes("Q6_K", &data, Some(q6_k::tensor_bytes(rows, cols)?))?;
        Ok(DenseMatrix::Q6K { data, rows, cols })
    }

    /// int8 rows with one f32 scale each.
    pub fn from_i8_rows(data: Vec<i8>, scales: Vec<f32>, rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) || scales.len() != rows {
            return Err(Error::format(
                FMT,
                format!(
                    "I8Row: {} values and {} scales for {rows}x{cols}",
                    data.len(),
                    scales.len()
                ),
            ));
        }
        Ok(DenseMatrix::I8Row {
            data,
            scales,
            rows,
            cols,
        })
    }

    /// Convert row-major f32 data to `kind` (quantizing where needed; Q8_0 and Q6_K with
    /// llama.cpp's reference quantizers, I8Row with per-row absmax/127, round half to even).
    pub fn from_f32(data: &[f32], rows: usize, cols: usize, kind: DenseKind) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::format(
                FMT,
                format!("{} values for {rows}x{cols}", data.len()),
            ));
        }
        match kind {
            DenseKind::F32 => Self::from_f32_vec(data.to_vec(), rows, cols),
            DenseKind::F16 => Self::from_f16_bytes(
                SharedBytes::from_vec(
                    data.iter()
                        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                        .collect(),
                ),
                rows,
                cols,
            ),
            DenseKind::BF16 => Self::from_bf16_bytes(
                SharedBytes::from_vec(
                    data.iter()
                        .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                        .collect(),
                ),
                rows,
                cols,
            ),
            DenseKind::Q8_0 => Self::from_q8_0_bytes(
                SharedBytes::from_vec(q8_0::quantize(data, rows, cols)?),
                rows,
                cols,
            ),
            DenseKind::Q6K => Self::from_q6k_bytes(
                SharedBytes::from_vec(q6_k::quantize(data, rows, cols)?),
                rows,
                cols,
            ),
            DenseKind::I8Row => {
                let mut q = vec![0i8; data.len()];
                let mut scales = Vec::with_capacity(rows);
                for (xr, qr) in data
                    .chunks_exact(cols.max(1))
                    .zip(q.chunks_exact_mut(cols.max(1)))
                {
                    let amax = xr.iter().fold(0f32, |m, &v| m.max(v.abs()));
                    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                    for (o, &v) in qr.iter_mut().zip(xr) {
                        *o = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
                    }
                    scales.push(amax / 127.0);
                }
                if cols == 0 {
                    scales.resize(rows, 0.0);
                }
                Self::from_i8_rows(q, scales, rows, cols)
            }
        }
    }

    pub fn kind(&self) -> DenseKind {
        match self {
            DenseMatrix::F32 { .. } => DenseKind::F32,
            DenseMatrix::F16 { .. } => DenseKind::F16,
            DenseMatrix::BF16 { .. } => DenseKind::BF16,
            DenseMatrix::Q8_0 { .. } => DenseKind::Q8_0,
            DenseMatrix::Q6K { .. } => DenseKind::Q6K,
            DenseMatrix::I8Row { .. } => DenseKind::I8Row,
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            DenseMatrix::F32 { rows, .. }
            | DenseMatrix::F16 { rows, .. }
            | DenseMatrix::BF16 { rows, .. }
            | DenseMatrix::Q8_0 { rows, .. }
            | DenseMatrix::Q6K { rows, .. }
            | DenseMatrix::I8Row { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            DenseMatrix::F32 { cols, .. }
            | DenseMatrix::F16 { cols, .. }
            | DenseMatrix::BF16 { cols, .. }
            | DenseMatrix::Q8_0 { cols, .. }
            | DenseMatrix::Q6K { cols, .. }
            | DenseMatrix::I8Row { cols, .. } => *cols,
        }
    }

    /// Bytes of weight storage.
    pub fn nbytes(&self) -> usize {
        match self {
            DenseMatrix::F32 { data, .. }
            | DenseMatrix::F16 { data, .. }
            | DenseMatrix::BF16 { data, .. }
            | DenseMatrix::Q8_0 { data, .. }
            | DenseMatrix::Q6K { data, .. } => data.len(),
            DenseMatrix::I8Row { data, scales, .. } => data.len() + 4 * scales.len(),
        }
    }

    fn row_stride(&self) -> usize {
        let c = self.cols();
        match self {
            DenseMatrix::F32 { .. } => 4 * c,
            DenseMatrix::F16 { .. } | DenseMatrix::BF16 { .. } => 2 * c,
            DenseMatrix::Q8_0 { .. } => q8_0::row_bytes(c),
            DenseMatrix::Q6K { .. } => q6_k::row_bytes(c),
            DenseMatrix::I8Row { .. } => c,
        }
    }

    /// Dequantize row `r` into `out` (`cols` values): the embedding lookup.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) -> Result<()> {
        let (rows, cols) = (self.rows(), self.cols());
        if r >= rows {
            return Err(Error::OutOfRange {
                op: "DenseMatrix::row_f32",
                index: r,
                size: rows,
            });
        }
        if out.len() != cols {
            return Err(Error::shape(
                "DenseMatrix::row_f32",
                format!("output holds {}, row has {cols}", out.len()),
            ));
        }
        let st = self.row_stride();
        match self {
            DenseMatrix::F32 { data, .. } => {
                let b = &data[r * st..(r + 1) * st];
                for (i, o) in out.iter_mut().enumerate() {
                    *o = f32_at(b, i);
                }
            }
            DenseMatrix::F16 { data, .. } => {
                let b = &data[r * st..(r + 1) * st];
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            DenseMatrix::BF16 { data, .. } => {
                let b = &data[r * st..(r + 1) * st];
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            DenseMatrix::Q8_0 { data, .. } => {
                q8_0::dequantize_row(&data[r * st..(r + 1) * st], out)?
            }
            DenseMatrix::Q6K { data, .. } => {
                q6_k::dequantize_row(&data[r * st..(r + 1) * st], out)?
            }
            DenseMatrix::I8Row { data, scales, .. } => {
                let s = scales[r];
                for (o, &q) in out.iter_mut().zip(&data[r * cols..(r + 1) * cols]) {
                    *o = q as f32 * s;
                }
            }
        }
        Ok(())
    }

    /// The raw bytes of row `r` of a Q6_K matrix (`cols/256` super-blocks, see
    /// [`q6_k::block_parts`]); `None` for other storage kinds or `r` out of range.
    pub fn q6k_row(&self, r: usize) -> Option<&[u8]> {
        match self {
            DenseMatrix::Q6K { data, rows, .. } if r < *rows => {
                let st = self.row_stride();
                Some(&data[r * st..(r + 1) * st])
            }
            _ => None,
        }
    }

    /// Row `r` as int8 values and one f32 scale per 16 of them, exactly (value =
    /// scale·q, the same products [`DenseMatrix::row_f32`] computes), for the kinds that
    /// are integer-coded: Q8_0, Q6_K and I8Row. `Ok(false)` (outputs untouched) for the
    /// float kinds, and for `cols % 16 != 0`.
    pub fn row_i8_groups16(&self, r: usize, q: &mut [i8], scales: &mut [f32]) -> Result<bool> {
        let (rows, cols) = (self.rows(), self.cols());
        if r >= rows {
            return Err(Error::OutOfRange {
                op: "DenseMatrix::row_i8_groups16",
                index: r,
                size: rows,
            });
        }
        if !cols.is_multiple_of(16) {
            return Ok(false);
        }
        if q.len() != cols || scales.len() != cols / 16 {
            return Err(Error::shape(
                "DenseMatrix::row_i8_groups16",
                format!(
                    "outputs hold {} values and {} scales, the row has {cols} values",
                    q.len(),
                    scales.len()
                ),
            ));
        }
        let st = self.row_stride();
        match self {
            DenseMatrix::F32 { .. } | DenseMatrix::F16 { .. } | DenseMatrix::BF16 { .. } => {
                return Ok(false)
            }
            DenseMatrix::Q8_0 { data, .. } => {
                let b = &data[r * st..(r + 1) * st];
                for ((blk, qo), so) in b
                    .chunks_exact(q8_0::BLOCK_BYTES)
                    .zip(q.chunks_exact_mut(q8_0::QK))
                    .zip(scales.chunks_exact_mut(q8_0::QK / 16))
                {
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    so.fill(d);
                    for (o, &v) in qo.iter_mut().zip(&blk[2..]) {
                        *o = v as i8;
                    }
                }
            }
            DenseMatrix::Q6K { data, .. } => {
                q6_k::row_groups16(&data[r * st..(r + 1) * st], q, scales)?
            }
            DenseMatrix::I8Row {
                data, scales: rs, ..
            } => {
                q.copy_from_slice(&data[r * cols..(r + 1) * cols]);
                scales.fill(rs[r]);
            }
        }
        Ok(true)
    }

    /// The same matrix stored as `kind`: every row dequantized to f32 and quantized again
    /// (rows in parallel; for Q8_0 and Q6_K the result equals [`DenseMatrix::from_f32`] of
    /// [`DenseMatrix::to_f32`] without holding the f32 matrix). For turning a float LM head
    /// into a compact one at load.
    pub fn requantize(&self, kind: DenseKind) -> Result<DenseMatrix> {
        let (rows, cols) = (self.rows(), self.cols());
        type QuantizeRow = fn(&[f32], &mut [u8]) -> Result<()>;
        let (row_bytes, quantize): (usize, QuantizeRow) = match kind {
            DenseKind::Q8_0 => {
                q8_0::check_shape(rows, cols)?;
                (q8_0::row_bytes(cols), q8_0::quantize_row)
            }
            DenseKind::Q6K => {
                q6_k::check_shape(rows, cols)?;
                (q6_k::row_bytes(cols), q6_k::quantize_row)
            }
            _ => return Self::from_f32(&self.to_f32()?, rows, cols, kind),
        };
        const ROWS: usize = 64;
        let mut out = crate::memory::weight_buffer(rows * row_bytes);
        if row_bytes > 0 {
            out.par_chunks_mut(ROWS * row_bytes)
                .enumerate()
                .try_for_each(|(t, chunk)| -> Result<()> {
                    let mut x = vec![0f32; cols];
                    for (i, ob) in chunk.chunks_exact_mut(row_bytes).enumerate() {
                        self.row_f32(t * ROWS + i, &mut x)?;
                        quantize(&x, ob)?;
                    }
                    Ok(())
                })?;
        }
        let data = SharedBytes::from_vec(out);
        match kind {
            DenseKind::Q8_0 => Self::from_q8_0_bytes(data, rows, cols),
            _ => Self::from_q6k_bytes(data, rows, cols),
        }
    }

    /// The whole matrix as f32 (row-major).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.rows() * self.cols()];
        if self.cols() > 0 {
            for (r, row) in out.chunks_exact_mut(self.cols()).enumerate() {
                self.row_f32(r, row)?;
            }
        }
        Ok(out)
    }

    /// `out = W·x` (`x`: cols values, `out`: rows values).
    pub fn matvec(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        self.matmul(x, 1, out)
    }

    /// `m` vectors at once: `x` is `m × cols` (row-major), `out` is `m × rows`
    /// (`out[i·rows + r] = W[r]·x[i]`). Each weight row is read once for all `m` vectors.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        let (rows, cols) = (self.rows(), self.cols());
        if x.len() != m * cols || out.len() != m * rows {
            return Err(Error::shape(
                "DenseMatrix::matmul",
                format!(
                    "W is {rows}x{cols}, x has {} values for m={m}, out has {}",
                    x.len(),
                    out.len()
                ),
            ));
        }
        if m == 0 || rows == 0 {
            return Ok(());
        }
        // Activation preparation (quantized kinds).
        let act = Act::prepare(self.kind(), x, m, cols);
        let feat = Features::detect();
        let st = self.row_stride();
        // One f32 per (row, vector) in a row-major [rows, m] buffer, then transposed.
        let mut tmp = if m == 1 {
            Vec::new()
        } else {
            vec![0f32; rows * m]
        };
        let target: &mut [f32] = if m == 1 { &mut *out } else { &mut tmp };
        let chunk_rows = (rows / (rayon::current_num_threads() * 8)).clamp(16, 1024);
        target
            .par_chunks_mut(chunk_rows * m)
            .enumerate()
            .for_each(|(ci, oc)| {
                let r0 = ci * chunk_rows;
                let done = if m == 1 {
                    self.q6k_rows_x4(r0, st, &act, feat, oc)
                } else {
                    0
                };
                for (k, orow) in oc.chunks_exact_mut(m).enumerate().skip(done) {
                    let r = r0 + k;
                    for (i, o) in orow.iter_mut().enumerate() {
                        *o = self.row_dot(r, st, i, x, cols, &act, feat);
                    }
                }
            });
        if m > 1 {
            for r in 0..rows {
                for i in 0..m {
                    out[i * rows + r] = tmp[r * m + i];
                }
            }
        }
        Ok(())
    }

    /// One vector (`m` = 1) times a Q6_K matrix four rows at a time, where the dot kernel
    /// has a four-row form: fills `out` (rows `r0..`) in groups of four and returns how
    /// many rows it did (0 for other kinds and kernels).
    fn q6k_rows_x4(
        &self,
        r0: usize,
        st: usize,
        act: &Act,
        feat: Features,
        out: &mut [f32],
    ) -> usize {
        let DenseMatrix::Q6K { data, cols, .. } = self else {
            return 0;
        };
        let nb = cols / q6_k::QK_K;
        let mut done = 0;
        for (g, o) in out.chunks_exact_mut(4).enumerate() {
            let r = r0 + 4 * g;
            let rows = [0, 1, 2, 3].map(|j| &data[(r + j) * st..(r + j + 1) * st]);
            match q6_k::dot_q8k_bsums_x4(
                feat.q6k,
                rows,
                &act.q[..*cols],
                &act.d[..nb],
                &act.bsums[..cols / 16],
            ) {
                Some(v) => o.copy_from_slice(&v),
                None => return 0,
            }
            done += 4;
        }
        done
    }

    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn row_dot(
        &self,
        r: usize,
        st: usize,
        i: usize,
        x: &[f32],
        cols: usize,
        act: &Act,
        feat: Features,
    ) -> f32 {
        let xi = &x[i * cols..(i + 1) * cols];
        match self {
            DenseMatrix::F32 { data, .. } => dot_f32_bytes(&data[r * st..(r + 1) * st], xi, feat),
            DenseMatrix::F16 { data, .. } => dot_f16_bytes(&data[r * st..(r + 1) * st], xi, feat),
            DenseMatrix::BF16 { data, .. } => dot_bf16_bytes(&data[r * st..(r + 1) * st], xi, feat),
            DenseMatrix::Q8_0 { data, .. } => {
                let nb = cols / q8_0::QK;
                q8_0::dot_q8(
                    &data[r * st..(r + 1) * st],
                    &act.q[i * cols..(i + 1) * cols],
                    &act.d[i * nb..(i + 1) * nb],
                )
            }
            DenseMatrix::Q6K { data, .. } => {
                let nb = cols / q6_k::QK_K;
                q6_k::dot_q8k_bsums_with(
                    feat.q6k,
                    &data[r * st..(r + 1) * st],
                    &act.q[i * cols..(i + 1) * cols],
                    &act.d[i * nb..(i + 1) * nb],
                    &act.bsums[i * cols / 16..(i + 1) * cols / 16],
                )
            }
            DenseMatrix::I8Row { data, scales, .. } => {
                let w = &data[r * cols..(r + 1) * cols];
                let nb = cols.div_ceil(q8_0::QK);
                scales[r]
                    * dot_i8_blocks(
                        w,
                        &act.q[i * act.stride..i * act.stride + cols],
                        &act.d[i * nb..(i + 1) * nb],
                        feat,
                    )
            }
        }
    }
}

/// Quantized activations of `m` vectors.
struct Act {
    q: Vec<i8>,
    d: Vec<f32>,
    /// Values per vector in `q` (cols, or cols rounded up to 32 for I8Row).
    stride: usize,
    /// Q6_K only: sums of each 16 consecutive values of `q` ([`q6_k::q8k_bsums`]).
    bsums: Vec<i16>,
}

impl Act {
    fn prepare(kind: DenseKind, x: &[f32], m: usize, cols: usize) -> Act {
        match kind {
            DenseKind::Q8_0 => {
                let mut q = vec![0i8; m * cols];
                let mut d = vec![0f32; m * cols / q8_0::QK];
                q8_0::quantize_act(x, &mut q, &mut d);
                Act {
                    q,
                    d,
                    stride: cols,
                    bsums: Vec::new(),
                }
            }
            DenseKind::Q6K => {
                let mut q = vec![0i8; m * cols];
                let mut d = vec![0f32; m * cols / q6_k::QK_K];
                q6_k::quantize_act_q8k(x, &mut q, &mut d);
                let mut bsums = vec![0i16; m * cols / 16];
                q6_k::q8k_bsums(&q, &mut bsums);
                Act {
                    q,
                    d,
                    stride: cols,
                    bsums,
                }
            }
            DenseKind::I8Row => {
                // Pad each vector to a multiple of 32 with zeros so any `cols` works.
                let stride = cols.div_ceil(q8_0::QK) * q8_0::QK;
                let mut xp = vec![0f32; m * stride];
                for i in 0..m {
                    xp[i * stride..i * stride + cols].copy_from_slice(&x[i * cols..(i + 1) * cols]);
                }
                let mut q = vec![0i8; m * stride];
                let mut d = vec![0f32; m * stride / q8_0::QK];
                q8_0::quantize_act(&xp, &mut q, &mut d);
                Act {
                    q,
                    d,
                    stride,
                    bsums: Vec::new(),
                }
            }
            _ => Act {
                q: Vec::new(),
                d: Vec::new(),
                stride: 0,
                bsums: Vec::new(),
            },
        }
    }
}

/// CPU features used by the dense kernels, detected once per call.
#[derive(Clone, Copy, Debug)]
struct Features {
    avx2_fma: bool,
    f16c: bool,
    q6k: q6_k::DotKernel,
}

impl Features {
    fn detect() -> Features {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2_fma = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            Features {
                avx2_fma,
                f16c: avx2_fma && std::arch::is_x86_feature_detected!("f16c"),
                q6k: q6_k::DotKernel::detect(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Features {
            avx2_fma: false,
            f16c: false,
            q6k: q6_k::DotKernel::Scalar,
        }
    }
}

/// Σ w·x with w as little-endian f32 bytes.
fn dot_f32_bytes(w: &[u8], x: &[f32], feat: Features) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if feat.avx2_fma {
        // SAFETY: AVX2 and FMA detected; lengths checked inside.
        return unsafe { simd::dot_f32(w, x) };
    }
    let _ = feat;
    x.iter().enumerate().map(|(i, &v)| f32_at(w, i) * v).sum()
}

fn dot_f16_bytes(w: &[u8], x: &[f32], feat: Features) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if feat.f16c {
        // SAFETY: AVX2, FMA and F16C detected.
        return unsafe { simd::dot_f16(w, x) };
    }
    let _ = feat;
    w.chunks_exact(2)
        .zip(x)
        .map(|(c, &v)| f16::from_le_bytes([c[0], c[1]]).to_f32() * v)
        .sum()
}

fn dot_bf16_bytes(w: &[u8], x: &[f32], feat: Features) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if feat.avx2_fma {
        // SAFETY: AVX2 and FMA detected.
        return unsafe { simd::dot_bf16(w, x) };
    }
    let _ = feat;
    w.chunks_exact(2)
        .zip(x)
        .map(|(c, &v)| bf16::from_le_bytes([c[0], c[1]]).to_f32() * v)
        .sum()
}

/// `Σ_b xd[b]·Σ_{i∈b} w_i·xq_i` over blocks of 32 (`xq` padded to a multiple of 32; `w`
/// may be shorter — its tail block is handled in scalar code).
fn dot_i8_blocks(w: &[i8], xq: &[i8], xd: &[f32], feat: Features) -> f32 {
    let full = w.len() / q8_0::QK;
    let mut acc = 0f32;
    #[cfg(target_arch = "x86_64")]
    let done = if feat.avx2_fma {
        // SAFETY: AVX2 and FMA detected; `full` blocks are in bounds of w and xq.
        acc = unsafe { simd::dot_i8_blocks(w, xq, xd, full) };
        full
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = feat;
        0
    };
    for b in done..xd.len() {
        let lo = b * q8_0::QK;
        let hi = (lo + q8_0::QK).min(w.len());
        if lo >= hi {
            break;
        }
        acc += xd[b] * q8_0::isum32_scalar(&w[lo..hi], &xq[lo..hi]) as f32;
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::q8_0::avx2::{hsum, isum32};
    use crate::cpu::Prefetch;
    use std::arch::x86_64::*;

    /// # Safety
    /// Requires AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(w: &[u8], x: &[f32]) -> f32 {
        let n = x.len().min(w.len() / 4);
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n, so 64 bytes of w and 16 floats of x are in bounds.
            unsafe {
                let w0 = _mm256_loadu_ps(w.as_ptr().add(4 * i) as *const f32);
                let w1 = _mm256_loadu_ps(w.as_ptr().add(4 * i + 32) as *const f32);
                a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.as_ptr().add(i)), a0);
                a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.as_ptr().add(i + 8)), a1);
            }
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        for j in i..n {
            s += super::f32_at(w, j) * x[j];
        }
        s
    }

    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
        let pf = Prefetch::get();
        let n = x.len().min(w.len() / 2);
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            if i % 32 == 0 {
                // One line per 64 bytes, the prefetch distance ahead.
                pf.ahead::<_MM_HINT_T0>(w.as_ptr(), 2 * i);
            }
            // SAFETY: i + 16 <= n: 32 bytes of w and 16 floats of x are in bounds.
            unsafe {
                let h0 = _mm_loadu_si128(w.as_ptr().add(2 * i) as *const __m128i);
                let h1 = _mm_loadu_si128(w.as_ptr().add(2 * i + 16) as *const __m128i);
                a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(h0), _mm256_loadu_ps(x.as_ptr().add(i)), a0);
                a1 = _mm256_fmadd_ps(
                    _mm256_cvtph_ps(h1),
                    _mm256_loadu_ps(x.as_ptr().add(i + 8)),
                    a1,
                );
            }
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        for j in i..n {
            s += half::f16::from_le_bytes([w[2 * j], w[2 * j + 1]]).to_f32() * x[j];
        }
        s
    }

    /// # Safety
    /// Requires AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_bf16(w: &[u8], x: &[f32]) -> f32 {
        let pf = Prefetch::get();
        let n = x.len().min(w.len() / 2);
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut i = 0;
        // Two accumulators: one FMA chain would bound the loop at 16 bytes per FMA latency.
        while i + 16 <= n {
            if i % 32 == 0 {
                // One line per 64 bytes, the prefetch distance ahead.
                pf.ahead::<_MM_HINT_T0>(w.as_ptr(), 2 * i);
            }
            // SAFETY: i + 16 <= n: 32 bytes of w and 16 floats of x are in bounds.
            unsafe {
                let h0 = _mm_loadu_si128(w.as_ptr().add(2 * i) as *const __m128i);
                let h1 = _mm_loadu_si128(w.as_ptr().add(2 * i + 16) as *const __m128i);
                let w0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h0), 16));
                let w1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h1), 16));
                a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.as_ptr().add(i)), a0);
                a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.as_ptr().add(i + 8)), a1);
            }
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        for j in i..n {
            s += half::bf16::from_le_bytes([w[2 * j], w[2 * j + 1]]).to_f32() * x[j];
        }
        s
    }

    /// # Safety
    /// Requires AVX2 and FMA; `w`, `xq` hold at least `nb·32` values and `xd` `nb`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_i8_blocks(w: &[i8], xq: &[i8], xd: &[f32], nb: usize) -> f32 {
        let pf = Prefetch::get();
        assert!(w.len() >= nb * 32 && xq.len() >= nb * 32 && xd.len() >= nb);
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            if b % 2 == 0 {
                // One line per 64 bytes, the prefetch distance ahead.
                pf.ahead::<_MM_HINT_T0>(w.as_ptr() as *const u8, 32 * b);
            }
            // SAFETY: bounds asserted above.
            let s = unsafe { isum32(w.as_ptr().add(32 * b) as *const u8, xq.as_ptr().add(32 * b)) };
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(xd[b]), acc);
        }
        hsum(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32, amp: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2.0 * amp
            })
            .collect()
    }

    /// Reference: dequantize, then plain f64 dots.
    fn reference(m: &DenseMatrix, x: &[f32]) -> Vec<f64> {
        let w = m.to_f32().unwrap();
        w.chunks(m.cols())
            .map(|r| r.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum())
            .collect()
    }

    #[test]
    fn requantize_equals_quantizing_the_dequantized_matrix() {
        // 131 rows: two full chunks of 64 rows and a partial one.
        let (rows, cols) = (131, 512);
        let w = data(rows * cols, 9, 0.05);
        let f16m = DenseMatrix::from_f32(&w, rows, cols, DenseKind::F16).unwrap();
        let wide = f16m.to_f32().unwrap();
        for kind in [
            DenseKind::Q8_0,
            DenseKind::Q6K,
            DenseKind::I8Row,
            DenseKind::BF16,
        ] {
            let got = f16m.requantize(kind).unwrap();
            let want = DenseMatrix::from_f32(&wide, rows, cols, kind).unwrap();
            assert_eq!(got.kind(), kind);
            assert_eq!((got.rows(), got.cols()), (rows, cols));
            assert_eq!(got.to_f32().unwrap(), want.to_f32().unwrap(), "{kind:?}");
        }
        // Q6_K needs rows of a multiple of 256 values.
        let narrow = DenseMatrix::from_f32(&w[..3 * 96], 3, 96, DenseKind::F16).unwrap();
        let e = narrow.requantize(DenseKind::Q6K).unwrap_err().to_string();
        assert!(e.contains("256"), "{e}");
    }

    #[test]
    fn i8_groups_are_the_exact_factors_of_the_dequantized_rows() {
        let (rows, cols) = (3, 512);
        let w = data(rows * cols, 5, 0.07);
        for kind in [DenseKind::Q8_0, DenseKind::Q6K, DenseKind::I8Row] {
            let m = DenseMatrix::from_f32(&w, rows, cols, kind).unwrap();
            let (mut q, mut s, mut f) = (vec![0i8; cols], vec![0f32; cols / 16], vec![0f32; cols]);
            for r in 0..rows {
                assert!(m.row_i8_groups16(r, &mut q, &mut s).unwrap());
                m.row_f32(r, &mut f).unwrap();
                for (i, &v) in f.iter().enumerate() {
                    assert_eq!(
                        (s[i / 16] * q[i] as f32).to_bits(),
                        v.to_bits(),
                        "{kind:?} {r} {i}"
                    );
                }
            }
            assert!(m.row_i8_groups16(rows, &mut q, &mut s).is_err());
            assert!(m.row_i8_groups16(0, &mut q[1..], &mut s).is_err());
        }
        let m = DenseMatrix::from_f32(&w, rows, cols, DenseKind::F16).unwrap();
        let (mut q, mut s) = (vec![0i8; cols], vec![0f32; cols / 16]);
        assert!(!m.row_i8_groups16(0, &mut q, &mut s).unwrap());
    }

    fn check_kind(kind: DenseKind, rows: usize, cols: usize) {
        let w = data(rows * cols, 11, 0.05);
        let x = data(cols, 12, 1.0);
        let m = DenseMatrix::from_f32(&w, rows, cols, kind).unwrap();
        assert_eq!((m.rows(), m.cols()), (rows, cols));
        let mut out = vec![0f32; rows];
        m.matvec(&x, &mut out).unwrap();
        let r = reference(&m, &x);
        let wd = m.to_f32().unwrap();
        // Block for the activation-quantization bound.
        let blk = match kind {
            DenseKind::Q6K => 256,
            _ => 32,
        };
        let xd: Vec<f32> = x
            .chunks(blk)
            .map(|b| b.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0)
            .collect();
        for row in 0..rows {
            let wr = &wd[row * cols..(row + 1) * cols];
            let mag: f64 = wr.iter().zip(&x).map(|(&a, &b)| (a * b).abs() as f64).sum();
            let tol = match kind {
                DenseKind::F32 | DenseKind::F16 | DenseKind::BF16 => 1e-5 * mag + 1e-7,
                _ => {
                    let b: f64 = wr
                        .chunks(blk)
                        .zip(&xd)
                        .map(|(c, &d)| {
                            c.iter().map(|v| v.abs() as f64).sum::<f64>() * d as f64 * 0.5
                        })
                        .sum();
                    b * 1.01 + 1e-5 * mag + 1e-7
                }
            };
            let err = (out[row] as f64 - r[row]).abs();
            assert!(
                err <= tol,
                "{kind:?} row {row}: {} vs {} (tol {tol})",
                out[row],
                r[row]
            );
        }
        // matmul with m = 3 agrees with 3 matvecs.
        let xs = data(3 * cols, 13, 1.0);
        let mut o3 = vec![0f32; 3 * rows];
        m.matmul(&xs, 3, &mut o3).unwrap();
        for i in 0..3 {
            let mut o1 = vec![0f32; rows];
            m.matvec(&xs[i * cols..(i + 1) * cols], &mut o1).unwrap();
            assert_eq!(&o3[i * rows..(i + 1) * rows], &o1[..]);
        }
        // Row lookup equals dequantization.
        let mut row = vec![0f32; cols];
        m.row_f32(rows - 1, &mut row).unwrap();
        assert_eq!(&row[..], &wd[(rows - 1) * cols..]);
        assert!(m.row_f32(rows, &mut row).is_err());
    }

    #[test]
    fn all_kinds_match_reference() {
        for kind in [
            DenseKind::F32,
            DenseKind::F16,
            DenseKind::BF16,
            DenseKind::Q8_0,
            DenseKind::Q6K,
            DenseKind::I8Row,
        ] {
            check_kind(kind, 77, 512);
        }
        // Odd sizes where the format allows them.
        for kind in [
            DenseKind::F32,
            DenseKind::F16,
            DenseKind::BF16,
            DenseKind::I8Row,
        ] {
            check_kind(kind, 5, 45);
        }
    }

    #[test]
    fn quantized_storage_is_llama_cpp_bytes() {
        let w = data(2 * 256, 3, 0.1);
        let m = DenseMatrix::from_f32(&w, 2, 256, DenseKind::Q6K).unwrap();
        assert_eq!(m.nbytes(), 2 * 210);
        let b = q6_k::quantize(&w, 2, 256).unwrap();
        let m2 = DenseMatrix::from_q6k_bytes(SharedBytes::from_vec(b), 2, 256).unwrap();
        assert_eq!(m.to_f32().unwrap(), m2.to_f32().unwrap());
        assert!(DenseMatrix::from_q6k_bytes(SharedBytes::from_vec(vec![0; 209]), 1, 256).is_err());
        assert!(DenseMatrix::from_f16_bytes(SharedBytes::from_vec(vec![0; 3]), 1, 2).is_err());
    }

    #[test]
    fn scalar_and_simd_paths_agree() {
        let x = data(203, 5, 1.0);
        let w = data(203, 6, 0.1);
        let scalar = Features {
            avx2_fma: false,
            f16c: false,
            q6k: q6_k::DotKernel::Scalar,
        };
        let fast = Features::detect();
        let wf: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let wh: Vec<u8> = w
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        let wb: Vec<u8> = w
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * (1.0 + a.abs());
        assert!(close(
            dot_f32_bytes(&wf, &x, scalar),
            dot_f32_bytes(&wf, &x, fast)
        ));
        assert!(close(
            dot_f16_bytes(&wh, &x, scalar),
            dot_f16_bytes(&wh, &x, fast)
        ));
        assert!(close(
            dot_bf16_bytes(&wb, &x, scalar),
            dot_bf16_bytes(&wb, &x, fast)
        ));
        let wq: Vec<i8> = w.iter().map(|&v| (v * 1000.0) as i8).collect();
        let mut xp = x.clone();
        xp.resize(224, 0.0);
        let mut xq = vec![0i8; 224];
        let mut xd = vec![0f32; 7];
        q8_0::quantize_act(&xp, &mut xq, &mut xd);
        assert!(close(
            dot_i8_blocks(&wq, &xq, &xd, scalar),
            dot_i8_blocks(&wq, &xq, &xd, fast)
        ));
    }

    #[test]
    fn shape_errors() {
        let m = DenseMatrix::from_f32(&[1.0; 6], 2, 3, DenseKind::F32).unwrap();
        let mut out = [0f32; 2];
        assert!(m.matvec(&[1.0; 2], &mut out).is_err());
        m.matvec(&[1.0; 3], &mut out).unwrap();
        assert_eq!(out, [3.0, 3.0]);
    }
}
