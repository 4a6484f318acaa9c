//! The engine's in-memory ternary matrix: weights in {−1, 0, +1} with one f32 scale per
//! tensor, packed in one of two layouts that the CPU kernels ([`crate::cpu`]) run on.
//!
//! # Layouts
//!
//! Both layouts store each row as a sequence of 32-byte blocks; a row's last block is
//! padded with zero trits, so `cols` need not be a multiple of the block size (kernels
//! read the matching activations from a zero-padded copy, never past `x`).
//!
//! * [`TernaryLayout::I2S`] — bitnet.cpp's x86 `I2_S` layout, so GGUF I2_S tensors run
//!   zero-copy from the memory map. 2 bits per weight, 128 weights per block: byte `j` of
//!   a block holds weights `j, j+32, j+64, j+96` at bit shifts 6, 4, 2, 0, each as the
//!   code `q + 1` (0 = −1, 1 = 0, 2 = +1).
//! * [`TernaryLayout::T1`] — our own exact 1.6-bit layout, 160 weights per block: byte `j`
//!   holds weights `j, j+32, j+64, j+96, j+128` as the base-3 fixed-point fraction
//!   `byte = ceil(v·256/243)` with `v = Σ_i t_i·3^(4−i)`, `t = q + 1`. Trit `i` is then
//!   the top two bits of `3·(byte·3^i mod 256)`, i.e. `((byte·3^i mod 256)·3) >> 8`,
//!   which SIMD code evaluates with 8-bit adds and compares (x86 has no 8-bit multiply).
//!   Memory-bound gemv reads 20% fewer bytes than I2S.

use crate::cpu::{self, KernelPath, PackedView, BLOCK_BYTES};
use crate::error::{Error, Result};
use crate::storage::SharedBytes;

/// How the trits of a [`TernaryMatrix`] are packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TernaryLayout {
    /// bitnet.cpp's I2_S: 2 bits per weight, 128-weight blocks.
    I2S,
    /// 5 trits per byte (1.6 bits per weight), 160-weight blocks.
    T1,
}

impl TernaryLayout {
    /// Weights per 32-byte block.
    pub const fn block_weights(self) -> usize {
        match self {
            TernaryLayout::I2S => 128,
            TernaryLayout::T1 => 160,
        }
    }

    /// Packed bytes of one row of `cols` weights (whole, zero-padded blocks).
    pub const fn row_bytes(self, cols: usize) -> usize {
        cols.div_ceil(self.block_weights()) * BLOCK_BYTES
    }

    /// Short name for labels.
    pub fn name(self) -> &'static str {
        match self {
            TernaryLayout::I2S => "i2s",
            TernaryLayout::T1 => "t1",
        }
    }
}

/// A ternary weight matrix: `rows` output features × `cols` input features, one scale.
#[derive(Clone, Debug)]
pub struct TernaryMatrix {
    data: SharedBytes,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    scale: f32,
    layout: TernaryLayout,
}

/// Encode 4 trits (weights j, j+32, j+64, j+96 of an I2S block) into one byte.
#[inline]
fn i2s_byte(t: [i8; 4]) -> u8 {
    ((t[0] + 1) as u8) << 6 | ((t[1] + 1) as u8) << 4 | ((t[2] + 1) as u8) << 2 | (t[3] + 1) as u8
}

/// Encode 5 trits (weights j, j+32, ..., j+128 of a T1 block) into one byte.
#[inline]
pub(crate) fn t1_byte(t: [i8; 5]) -> u8 {
    let v = t.iter().fold(0u32, |v, &q| v * 3 + (q + 1) as u32);
    // ceil(v·256/243): rounding up makes every later ×3 step land inside the right third.
    ((v * 256).div_ceil(243)) as u8
}

/// Decode trit `i` (0 = most significant) of a T1 byte, as the code `q + 1`.
#[inline]
pub(crate) fn t1_code(byte: u8, i: u32) -> u8 {
    let m = byte.wrapping_mul(3u8.pow(i));
    ((m as u16 * 3) >> 8) as u8
}

impl TernaryMatrix {
    /// Pack row-major `rows × cols` trits (values −1, 0, 1) into `layout`.
    pub fn from_trits(
        q: &[i8],
        rows: usize,
        cols: usize,
        scale: f32,
        layout: TernaryLayout,
    ) -> Result<Self> {
        if Some(q.len()) != rows.checked_mul(cols) {
            return Err(Error::shape(
                "TernaryMatrix::from_trits",
                format!("{} trits for a {rows}×{cols} matrix", q.len()),
            ));
        }
        if let Some(pos) = q.iter().position(|&v| !(-1..=1).contains(&v)) {
            return Err(Error::format(
                "ternary",
                format!("value {} at index {pos} is not in {{-1, 0, 1}}", q[pos]),
            ));
        }
        let row_bytes = layout.row_bytes(cols);
        let bw = layout.block_weights();
        let mut data = crate::memory::weight_buffer(rows * row_bytes);
        // Trit k of a row, zero past `cols` (the padding).
        let at = |row: &[i8], k: usize| if k < cols { row[k] } else { 0 };
        for (r, out) in data
            .chunks_exact_mut(row_bytes.max(1))
            .enumerate()
            .take(rows)
        {
            let row = &q[r * cols..(r + 1) * cols];
            for (b, blk) in out.chunks_exact_mut(BLOCK_BYTES).enumerate() {
                let k0 = b * bw;
                for (j, byte) in blk.iter_mut().enumerate() {
                    *byte = match layout {
                        TernaryLayout::I2S => {
                            i2s_byte([0, 1, 2, 3].map(|i| at(row, k0 + j + 32 * i)))
                        }
                        TernaryLayout::T1 => {
                            t1_byte([0, 1, 2, 3, 4].map(|i| at(row, k0 + j + 32 * i)))
                        }
                    };
                }
            }
        }
        Ok(TernaryMatrix {
            data: SharedBytes::from_vec(data),
            rows,
            cols,
            row_bytes,
            scale,
            layout,
        })
    }

    /// A zero-copy view of bitnet.cpp I2_S packed weights: exactly `rows·cols/4` bytes,
    /// rows contiguous, `cols` a multiple of 128. (The per-tensor scale that follows the
    /// packed bytes in a GGUF file is passed separately as `scale`; slice it off first.)
    pub fn from_i2s(data: SharedBytes, rows: usize, cols: usize, scale: f32) -> Result<Self> {
        let bw = TernaryLayout::I2S.block_weights();
        if !cols.is_multiple_of(bw) {
            return Err(Error::format(
                "I2_S",
                format!("{cols} columns is not a multiple of the {bw}-weight block"),
            ));
        }
        Self::from_packed(data, rows, cols, scale, TernaryLayout::I2S)
    }

    /// A zero-copy view of bytes already packed in `layout` (as [`data`](Self::data)
    /// returns them: `rows` rows of [`TernaryLayout::row_bytes`]`(cols)` bytes each, padding
    /// included), e.g. a T1 matrix cached on disk. Validates the length.
    pub fn from_packed(
        data: SharedBytes,
        rows: usize,
        cols: usize,
        scale: f32,
        layout: TernaryLayout,
    ) -> Result<Self> {
        let row_bytes = layout.row_bytes(cols);
        let want = rows.checked_mul(row_bytes);
        if want != Some(data.len()) {
            return Err(Error::format(
                if layout == TernaryLayout::I2S {
                    "I2_S"
                } else {
                    "T1"
                },
                format!(
                    "{} bytes for a {rows}×{cols} matrix, expected {}",
                    data.len(),
                    want.map_or("an overflowing size".to_string(), |w| w.to_string())
                ),
            ));
        }
        Ok(TernaryMatrix {
            data,
            rows,
            cols,
            row_bytes,
            scale,
            layout,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn scale(&self) -> f32 {
        self.scale
    }

    pub fn layout(&self) -> TernaryLayout {
        self.layout
    }

    /// Bytes of packed weights (including row padding).
    pub fn nbytes(&self) -> usize {
        self.data.len()
    }

    /// Packed bytes per row (whole 32-byte blocks).
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The packed bytes.
    pub fn data(&self) -> &SharedBytes {
        &self.data
    }

    /// The kernels' view of this matrix.
    pub fn view(&self) -> PackedView<'_> {
        PackedView {
            data: self.data.as_slice(),
            rows: self.rows,
            cols: self.cols,
            row_bytes: self.row_bytes,
            layout: self.layout,
        }
    }

    /// Unpack to row-major trits (`rows × cols`, padding dropped).
    pub fn to_trits(&self) -> Vec<i8> {
        let mut q = vec![0i8; self.rows * self.cols];
        if self.cols == 0 {
            return q;
        }
        let bw = self.layout.block_weights();
        let mut buf = [0i8; cpu::MAX_BLOCK_WEIGHTS];
        for (r, out) in q.chunks_exact_mut(self.cols).enumerate() {
            let row = &self.data[r * self.row_bytes..(r + 1) * self.row_bytes];
            for (b, blk) in row.chunks_exact(BLOCK_BYTES).enumerate() {
                cpu::reference::decode_block(self.layout, blk, &mut buf);
                let k0 = b * bw;
                let k1 = (k0 + bw).min(self.cols);
                out[k0..k1].copy_from_slice(&buf[..k1 - k0]);
            }
        }
        q
    }

    /// The same matrix in another layout (a cheap clone if already in it).
    pub fn to_layout(&self, layout: TernaryLayout) -> Self {
        if layout == self.layout {
            return self.clone();
        }
        TernaryMatrix::from_trits(&self.to_trits(), self.rows, self.cols, self.scale, layout)
            .expect("trits decoded from a valid matrix are valid")
    }

    fn check_gemv(&self, x: &[i8], out: &[i32]) -> Result<()> {
        if x.len() != self.cols || out.len() != self.rows {
            return Err(Error::shape(
                "TernaryMatrix::gemv",
                format!(
                    "matrix {}×{}, x has {} entries (want {}), out has {} (want {})",
                    self.rows,
                    self.cols,
                    x.len(),
                    self.cols,
                    out.len(),
                    self.rows
                ),
            ));
        }
        Ok(())
    }

    fn check_gemm(&self, x: &[i8], m: usize, out: &[i32]) -> Result<()> {
        if x.len() != m * self.cols || out.len() != m * self.rows {
            return Err(Error::shape(
                "TernaryMatrix::gemm",
                format!(
                    "matrix {}×{}, m = {m}: x has {} entries (want {}), out has {} (want {})",
                    self.rows,
                    self.cols,
                    x.len(),
                    m * self.cols,
                    out.len(),
                    m * self.rows
                ),
            ));
        }
        Ok(())
    }

    /// `out[n] = Σ_k q[n,k]·x[k]`, exact, on the active kernel path
    /// ([`cpu::active_path`]); multi-threaded over rows on the current rayon pool.
    pub fn gemv(&self, x: &[i8], out: &mut [i32]) -> Result<()> {
        self.gemv_with(cpu::active_path()?, x, out)
    }

    /// [`gemv`](Self::gemv) on an explicit path (errors if this CPU lacks it). AMX has no
    /// gemv kernel: it runs the kernels of [`KernelPath::gemv_path`] (VNNI, else AVX2).
    pub fn gemv_with(&self, path: KernelPath, x: &[i8], out: &mut [i32]) -> Result<()> {
        let path = path.check()?;
        self.check_gemv(x, out)?;
        cpu::gemv(path, &self.view(), x, out);
        Ok(())
    }

    /// `out[i*rows+n] = Σ_k q[n,k]·x[i*cols+k]` for `m` activation rows (row-major
    /// `m × cols`), exact, on the active kernel path.
    pub fn gemm(&self, x: &[i8], m: usize, out: &mut [i32]) -> Result<()> {
        self.gemm_with(cpu::active_path()?, x, m, out)
    }

    /// [`gemm`](Self::gemm) on an explicit path (errors if this CPU lacks it).
    pub fn gemm_with(&self, path: KernelPath, x: &[i8], m: usize, out: &mut [i32]) -> Result<()> {
        let path = path.check()?;
        self.check_gemm(x, m, out)?;
        cpu::gemm(path, &self.view(), x, m, out);
        Ok(())
    }
}

/// [`TernaryMatrix::gemm`] of several matrices that share `cols` and the same `m`
/// activation rows, in one parallel region (see [`cpu`]): `outs[j]` gets `mats[j]`'s
/// `m × rows` products. Matrices in different layouts are run one after another.
pub fn gemm_multi(
    mats: &[&TernaryMatrix],
    x: &[i8],
    m: usize,
    outs: &mut [&mut [i32]],
) -> Result<()> {
    let path = cpu::active_path()?.check()?;
    if mats.len() != outs.len() {
        return Err(Error::shape(
            "ternary::gemm_multi",
            format!("{} matrices but {} outputs", mats.len(), outs.len()),
        ));
    }
    for (w, o) in mats.iter().zip(outs.iter()) {
        w.check_gemm(x, m, o)?;
    }
    let Some(first) = mats.first() else {
        return Ok(());
    };
    if mats.iter().any(|w| w.layout != first.layout) {
        for (w, o) in mats.iter().zip(outs.iter_mut()) {
            cpu::gemm_multi(path, &[w.view()], x, m, std::slice::from_mut(o));
        }
        return Ok(());
    }
    let views: Vec<PackedView<'_>> = mats.iter().map(|w| w.view()).collect();
    cpu::gemm_multi(path, &views, x, m, outs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t1_byte_decodes_exactly_for_all_243_values() {
        for v in 0..243u32 {
            let t: [i8; 5] = std::array::from_fn(|i| ((v / 3u32.pow(4 - i as u32)) % 3) as i8 - 1);
            let b = t1_byte(t);
            for (i, &q) in t.iter().enumerate() {
                assert_eq!(t1_code(b, i as u32) as i8 - 1, q, "v={v} trit {i}");
            }
        }
    }

    #[test]
    fn i2s_byte_matches_the_documented_bit_positions() {
        // weights j, j+32, j+64, j+96 = -1, 0, +1, -1 -> codes 0,1,2,0 at shifts 6,4,2,0.
        assert_eq!(i2s_byte([-1, 0, 1, -1]), 0b00_01_10_00);
    }
}
