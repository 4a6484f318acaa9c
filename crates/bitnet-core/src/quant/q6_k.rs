//! llama.cpp's `Q6_K` (GGML type id 14): super-blocks of 256 weights, 6-bit quants with
//! one i8 scale per 16 weights and an f16 super-block scale (6.5625 bits per weight).
//!
//! Source: ggml-org/llama.cpp `ggml/src/ggml-common.h` (`block_q6_K { uint8_t
//! ql[QK_K/2]; uint8_t qh[QK_K/4]; int8_t scales[QK_K/16]; ggml_half d; }`) and
//! `ggml/src/ggml-quants.c` (`make_qx_quants`, `quantize_row_q6_K_ref`,
//! `dequantize_row_q6_K`, `quantize_row_q8_K_ref`). Re-implemented faithfully (same
//! float operations in the same order, `nearest_int` = round half to even, no FMA), so
//! files we write dequantize like llama.cpp's.
//!
//! Layout of a super-block, per half `h` (128 weights, `ql[64h..]`, `qh[32h..]`,
//! `scales[8h..]`), for `l < 32`: weight `l` = low nibble of `ql[l]` | bits 0-1 of `qh[l]`;
//! `l+32` = low nibble of `ql[l+32]` | bits 2-3; `l+64` = high nibble of `ql[l]` | bits
//! 4-5; `l+96` = high nibble of `ql[l+32]` | bits 6-7; value = `d·scale[j]·(q − 32)` with
//! `j` = the 16-weight group.
//!
//! [`dot_q8k`] multiplies a row with activations quantized like llama.cpp's `Q8_K` (one f32
//! scale per 256, values −127..=127), as llama.cpp's `ggml_vec_dot_q6_K_q8_K` does.

use crate::error::{Error, Result};
use half::f16;

/// Weights per super-block.
pub const QK_K: usize = 256;
/// Bytes per super-block: 128 + 64 + 16 + 2.
pub const BLOCK_BYTES: usize = 210;

/// `ggml-common.h`'s `block_q6_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ6K {
    /// Low 4 bits of the quants.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of the quants.
    pub qh: [u8; QK_K / 4],
    /// One scale per 16 weights.
    pub scales: [i8; QK_K / 16],
    /// f16 bits of the super-block scale.
    pub d: u16,
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == BLOCK_BYTES);

const FMT: &str = "Q6_K";
const BLOCKS: super::Blocks = super::Blocks {
    name: FMT,
    block: QK_K,
    bytes: BLOCK_BYTES,
};
const GROUP_MAX_EPS: f32 = 1e-15;

/// Number of weights of a `rows × cols` tensor, checked (`cols % 256 == 0`, no overflow).
pub fn check_shape(rows: usize, cols: usize) -> Result<usize> {
    BLOCKS.check_shape(rows, cols)
}

/// Bytes of one row of `cols` weights.
pub fn row_bytes(cols: usize) -> usize {
    BLOCKS.size_of(cols)
}

/// Bytes of a `rows × cols` tensor.
pub fn tensor_bytes(rows: usize, cols: usize) -> Result<usize> {
    Ok(BLOCKS.size_of(check_shape(rows, cols)?))
}

/// Round half to even, as llama.cpp's `nearest_int`: adding 1.5·2^23 leaves the rounded
/// integer in the low mantissa bits (exact for |v| < 2^22, which the quantizers' values
/// are: at most 2·nmax). `round_ties_even` would be a libm call without SSE4.1.
#[inline]
fn nearest_int(v: f32) -> i32 {
    ((v + 12582912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// [`make_qx_quants`]`(32, group, L, 1)` of the 16 groups of 16 weights of a super-block at
/// once, one vector lane per group: every lane runs the scalar version's float operations
/// in its order, so the scales and quants are the same bits (tested); only the lanes run
/// side by side. Writes the groups' scales and `L` (0..64).
#[inline(always)]
fn group_scales_body(xb: &[f32], l_out: &mut [i8; QK_K], scales: &mut [f32; QK_K / 16]) {
    const G: usize = QK_K / 16;
    const NMAX: i32 = 32;
    let mut xt = [[0f32; G]; 16];
    for g in 0..G {
        for i in 0..16 {
            xt[i][g] = xb[16 * g + i];
        }
    }
    let (mut amax, mut max) = ([0f32; G], [0f32; G]);
    for row in &xt {
        for g in 0..G {
            let ax = row[g].abs();
            if ax > amax[g] {
                amax[g] = ax;
                max[g] = row[g];
            }
        }
    }
    // Σ w·x·l and Σ w·l² (w = x²) of the quants at `iscale`, per lane.
    let sums = |iscale: &[f32; G]| -> ([f32; G], [f32; G]) {
        let (mut sumlx, mut suml2) = ([0f32; G], [0f32; G]);
        for row in &xt {
            for g in 0..G {
                let x = row[g];
                let lf = nearest_int(iscale[g] * x).clamp(-NMAX, NMAX - 1) as f32;
                let w = x * x;
                sumlx[g] += w * x * lf;
                suml2[g] += w * lf * lf;
            }
        }
        (sumlx, suml2)
    };
    let mut best_iscale = [0f32; G];
    for g in 0..G {
        best_iscale[g] = -(NMAX as f32) / max[g];
    }
    let (sumlx, suml2) = sums(&best_iscale);
    let (mut scale, mut best) = ([0f32; G], [0f32; G]);
    for g in 0..G {
        scale[g] = if suml2[g] != 0.0 {
            sumlx[g] / suml2[g]
        } else {
            0.0
        };
        best[g] = scale[g] * sumlx[g];
    }
    for is in (-9..=9).filter(|&is| is != 0) {
        let mut iscale = [0f32; G];
        for g in 0..G {
            iscale[g] = -(NMAX as f32 + 0.1f32 * is as f32) / max[g];
        }
        let (sumlx, suml2) = sums(&iscale);
        for g in 0..G {
            if suml2[g] > 0.0 && sumlx[g] * sumlx[g] > best[g] * suml2[g] {
                scale[g] = sumlx[g] / suml2[g];
                best[g] = scale[g] * sumlx[g];
                best_iscale[g] = iscale[g];
            }
        }
    }
    for g in 0..G {
        let tiny = amax[g] < GROUP_MAX_EPS;
        scales[g] = if tiny { 0.0 } else { scale[g] };
        for i in 0..16 {
            let q = nearest_int(best_iscale[g] * xt[i][g]).clamp(-NMAX, NMAX - 1);
            l_out[16 * g + i] = if tiny { 0 } else { (NMAX + q) as i8 };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn group_scales_avx2(xb: &[f32], l_out: &mut [i8; QK_K], scales: &mut [f32; QK_K / 16]) {
    group_scales_body(xb, l_out, scales)
}

/// The 16 group scales and quants of one super-block (`xb`: 256 values), AVX2 lanes where
/// the CPU has them.
fn group_scales(xb: &[f32], l_out: &mut [i8; QK_K], scales: &mut [f32; QK_K / 16]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected.
        return unsafe { group_scales_avx2(xb, l_out, scales) };
    }
    group_scales_body(xb, l_out, scales)
}

/// llama.cpp's `make_qx_quants` for `qw = NULL`: returns the scale and writes
/// `L[i] = q + nmax` (0..2·nmax). The reference [`group_scales`] is tested against.
#[cfg(test)]
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8], rmse_type: i32) -> f32 {
    let n = x.len();
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    if rmse_type == 0 {
        for i in 0..n {
            let l = nearest_int(iscale * x[i]);
            l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
        }
        return 1.0 / iscale;
    }
    let weight = |v: f32| -> f32 {
        match rmse_type {
            1 => v * v,
            2 => 1.0,
            3 => v.abs(),
            _ => v.abs().sqrt(),
        }
    };
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = weight(x[i]);
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            let w = weight(x[i]);
            let lf = l as f32;
            sumlx += w * x[i] * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `quantize_row_q6_K_ref` on `x` (a multiple of 256 values) into `out`.
pub fn quantize_row(x: &[f32], out: &mut [u8]) -> Result<()> {
    if !x.len().is_multiple_of(QK_K) || out.len() != x.len() / QK_K * BLOCK_BYTES {
        return Err(Error::format(
            FMT,
            format!("quantize_row: {} values into {} bytes", x.len(), out.len()),
        ));
    }
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        let mut max_scale = 0f32;
        let mut max_abs_scale = 0f32;
        group_scales(xb, &mut l, &mut scales);
        for &s in &scales {
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        ob.fill(0);
        if max_abs_scale < GROUP_MAX_EPS {
            continue;
        }
        let iscale = -128f32 / max_scale;
        let d = f16::from_f32(1.0 / iscale);
        ob[208..210].copy_from_slice(&d.to_bits().to_le_bytes());
        let mut sc = [0i8; QK_K / 16];
        for ib in 0..QK_K / 16 {
            sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
            ob[192 + ib] = sc[ib] as u8;
        }
        let df = d.to_f32();
        for j in 0..QK_K / 16 {
            let dd = df * sc[j] as f32;
            if dd == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(xb[16 * j + ii] / dd).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        for h in 0..2 {
            let lb = &l[128 * h..128 * h + 128];
            for i in 0..32 {
                let q1 = lb[i] as u8;
                let q2 = lb[i + 32] as u8;
                let q3 = lb[i + 64] as u8;
                let q4 = lb[i + 96] as u8;
                ob[64 * h + i] = (q1 & 0xF) | ((q3 & 0xF) << 4);
                ob[64 * h + i + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            }
            for i in 0..32 {
                let q1 = lb[i] as u8;
                let q2 = lb[i + 32] as u8;
                let q3 = lb[i + 64] as u8;
                let q4 = lb[i + 96] as u8;
                ob[128 + 32 * h + i] =
                    (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
    }
    Ok(())
}

/// Quantize a row-major `rows × cols` tensor.
pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>> {
    let n = check_shape(rows, cols)?;
    BLOCKS.check_values(x, n)?;
    let mut out = crate::memory::weight_buffer(BLOCKS.size_of(n));
    quantize_row(x, &mut out)?;
    Ok(out)
}

/// The 256 quants (0..=63) of a super-block in weight order.
#[inline]
fn block_quants(b: &[u8], q: &mut [u8; QK_K]) {
    for h in 0..2 {
        let ql = &b[64 * h..64 * h + 64];
        let qh = &b[128 + 32 * h..128 + 32 * h + 32];
        let o = &mut q[128 * h..128 * h + 128];
        for l in 0..32 {
            o[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
            o[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
            o[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            o[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
}

/// One super-block (`BLOCK_BYTES` bytes) taken apart: its 256 quants (0..=63) in weight
/// order into `q`, its 16 group scales into `scales`; returns its scale `d`. The value of
/// weight `i` is `d·scales[i/16]·(q[i] − 32)`. For repacking into other layouts.
pub fn block_parts(b: &[u8], q: &mut [u8; QK_K], scales: &mut [i8; QK_K / 16]) -> f32 {
    block_quants(b, q);
    for (s, &v) in scales.iter_mut().zip(&b[192..208]) {
        *s = v as i8;
    }
    block_d(b)
}

#[inline]
fn block_d(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[208], b[209]])).to_f32()
}

/// `dequantize_row_q6_K`: `bytes` holds `out.len()/256` super-blocks.
pub fn dequantize_row(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    if !out.len().is_multiple_of(QK_K) || bytes.len() < out.len() / QK_K * BLOCK_BYTES {
        return Err(Error::format(
            FMT,
            format!(
                "dequantize_row: {} bytes for {} values",
                bytes.len(),
                out.len()
            ),
        ));
    }
    let mut q = [0u8; QK_K];
    for (b, ob) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let d = block_d(b);
        block_quants(b, &mut q);
        for (j, (og, qg)) in ob.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let sc = d * (b[192 + j] as i8) as f32;
            for (o, &qi) in og.iter_mut().zip(qg) {
                *o = sc * (qi as i32 - 32) as f32;
            }
        }
    }
    Ok(())
}

/// A row as int8 quants (`q − 32`, in −32..=31) and one f32 scale per 16 weights
/// (`d·scale`), the exact factors of [`dequantize_row`]: value = scale·q.
pub fn row_groups16(bytes: &[u8], q: &mut [i8], scales: &mut [f32]) -> Result<()> {
    if !q.len().is_multiple_of(QK_K)
        || scales.len() != q.len() / 16
        || bytes.len() < q.len() / QK_K * BLOCK_BYTES
    {
        return Err(Error::format(
            FMT,
            format!(
                "row_groups16: {} bytes, {} quants, {} scales",
                bytes.len(),
                q.len(),
                scales.len()
            ),
        ));
    }
    let mut qb = [0u8; QK_K];
    for ((b, qo), so) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(q.chunks_exact_mut(QK_K))
        .zip(scales.chunks_exact_mut(QK_K / 16))
    {
        let d = block_d(b);
        block_quants(b, &mut qb);
        for (o, &v) in qo.iter_mut().zip(qb.iter()) {
            *o = (v as i32 - 32) as i8;
        }
        for (j, s) in so.iter_mut().enumerate() {
            *s = d * (b[192 + j] as i8) as f32;
        }
    }
    Ok(())
}

/// Dequantize a whole `rows × cols` tensor.
pub fn dequantize(bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>> {
    let n = check_shape(rows, cols)?;
    let mut out = vec![0f32; n];
    dequantize_row(bytes, &mut out)?;
    Ok(out)
}

/// Dot product of one Q6_K row with an f32 vector (weights dequantized on the fly).
pub fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let mut q = [0u8; QK_K];
    let mut acc = 0f32;
    for (b, xb) in row.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(QK_K)) {
        let d = block_d(b);
        block_quants(b, &mut q);
        for (j, (qg, xg)) in q.chunks_exact(16).zip(xb.chunks_exact(16)).enumerate() {
            let s: f32 = qg
                .iter()
                .zip(xg)
                .map(|(&qi, &v)| (qi as i32 - 32) as f32 * v)
                .sum();
            acc += d * (b[192 + j] as i8) as f32 * s;
        }
    }
    acc
}

/// llama.cpp's `quantize_row_q8_K_ref` for activations: per 256 values, `iscale =
/// −127/max` (max = the value of largest magnitude, with sign), `q = min(127,
/// nearest_int(iscale·x))`, `d = 1/iscale` (0 for an all-zero block).
pub fn quantize_act_q8k(x: &[f32], xq: &mut [i8], xd: &mut [f32]) {
    assert!(x.len().is_multiple_of(QK_K) && xq.len() == x.len() && xd.len() == x.len() / QK_K);
    for ((xb, qb), d) in x.chunks_exact(QK_K).zip(xq.chunks_exact_mut(QK_K)).zip(xd) {
        let mut max = 0f32;
        let mut amax = 0f32;
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *d = 0.0;
            qb.fill(0);
            continue;
        }
        let iscale = -127f32 / max;
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        *d = 1.0 / iscale;
    }
}

/// Dot of a Q6_K row with Q8_K activations: `Σ_blocks d·xd·Σ_j scale_j·Σ (q−32)·xq`.
/// Uses AVX-512 (BW, VNNI) or AVX2 when available; the integer sums are exact either way.
pub fn dot_q8k(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // The 16-value sums on the stack for rows up to 16384 values, else on the heap.
            let mut stack = [0i16; 1024];
            let mut heap = Vec::new();
            let bsums: &mut [i16] = if xq.len() / 16 <= stack.len() {
                &mut stack[..xq.len() / 16]
            } else {
                heap.resize(xq.len() / 16, 0);
                &mut heap
            };
            q8k_bsums(xq, bsums);
            return dot_q8k_bsums(row, xq, xd, bsums);
        }
    }
    dot_q8k_scalar(row, xq, xd)
}

/// The sums of each 16 consecutive activations (`xq.len()/16` of them), which
/// [`dot_q8k_bsums`] uses to apply the −32 offset once per block instead of per weight.
pub fn q8k_bsums(xq: &[i8], out: &mut [i16]) {
    for (o, g) in out.iter_mut().zip(xq.chunks_exact(16)) {
        *o = g.iter().map(|&v| v as i16).sum();
    }
}

/// [`dot_q8k`] with the activations' 16-value sums ([`q8k_bsums`]) computed beforehand,
/// once per activation vector rather than once per row. Same result, bit for bit.
pub fn dot_q8k_bsums(row: &[u8], xq: &[i8], xd: &[f32], bsums: &[i16]) -> f32 {
    dot_q8k_bsums_with(DotKernel::detect(), row, xq, xd, bsums)
}

/// Which implementation of the Q6_K × Q8_K dot runs; all give the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DotKernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl DotKernel {
    /// The fastest this CPU runs: AVX-512 (BW, VNNI) when the kernel path in force
    /// (`BITNET_KERNEL`, [`crate::cpu::set_forced_path`]) is AVX-512 or AMX, so that forcing
    /// `avx2` measures the AVX2 head too; else AVX2 with F16C; else scalar.
    pub(crate) fn detect() -> DotKernel {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::cpu::KernelPath;
            use std::arch::is_x86_feature_detected as has;
            if has!("f16c") {
                let wide = matches!(
                    crate::cpu::active_path(),
                    Ok(KernelPath::Avx512Vnni | KernelPath::Amx)
                );
                if wide && has!("avx512bw") && has!("avx512vnni") {
                    return DotKernel::Avx512;
                }
                if has!("avx2") {
                    return DotKernel::Avx2;
                }
            }
        }
        DotKernel::Scalar
    }
}

/// [`dot_q8k_bsums`] on a kernel chosen beforehand ([`DotKernel::detect`], once per matrix
/// product rather than per row).
pub(crate) fn dot_q8k_bsums_with(
    kernel: DotKernel,
    row: &[u8],
    xq: &[i8],
    xd: &[f32],
    bsums: &[i16],
) -> f32 {
    match kernel {
        // SAFETY: `detect` found the features at run time.
        #[cfg(target_arch = "x86_64")]
        DotKernel::Avx512 => unsafe { avx512::dot_q8k(row, xq, xd, bsums) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        DotKernel::Avx2 => unsafe { avx2::dot_q8k(row, xq, xd, bsums) },
        DotKernel::Scalar => dot_q8k_scalar(row, xq, xd),
    }
}

/// Four rows at once where the kernel has a multi-row form (AVX-512: one activation load
/// for four rows, four weight streams in flight), each result bit-identical to
/// [`dot_q8k_bsums_with`]; `None` where it has not (call per row).
pub(crate) fn dot_q8k_bsums_x4(
    kernel: DotKernel,
    rows: [&[u8]; 4],
    xq: &[i8],
    xd: &[f32],
    bsums: &[i16],
) -> Option<[f32; 4]> {
    match kernel {
        // SAFETY: `detect` found the features at run time.
        #[cfg(target_arch = "x86_64")]
        DotKernel::Avx512 => Some(unsafe { avx512::dot_q8k_rows::<4>(rows, xq, xd, bsums) }),
        _ => None,
    }
}

/// Scalar version of [`dot_q8k`].
pub fn dot_q8k_scalar(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    let mut q = [0u8; QK_K];
    let mut acc = 0f32;
    for ((b, xb), &dx) in row
        .chunks_exact(BLOCK_BYTES)
        .zip(xq.chunks_exact(QK_K))
        .zip(xd)
    {
        block_quants(b, &mut q);
        let mut isum = 0i32;
        for (j, (qg, xg)) in q.chunks_exact(16).zip(xb.chunks_exact(16)).enumerate() {
            let s: i32 = qg
                .iter()
                .zip(xg)
                .map(|(&qi, &v)| (qi as i32 - 32) * v as i32)
                .sum();
            isum += (b[192 + j] as i8) as i32 * s;
        }
        acc += block_d(b) * dx * isum as f32;
    }
    acc
}

/// The super-block scale `d` (f16 bytes 208..210 of a block at `p`) as f32, on x86 with
/// F16C. The bits go into a vector register with `vmovd` (zero-extending) from an asm
/// block: from intrinsics, LLVM loads them with `vpinsrw`, which merges into whatever
/// register it picks, and it picked the dot's accumulator, so every block waited for
/// the previous one: 17 GB/s on one core from cache, AVX2 and AVX-512 alike.
///
/// # Safety
/// F16C and AVX available; `p` points at a whole block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
#[inline]
unsafe fn block_d_f16c(p: *const u8) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: bytes 208..210 are inside the 210-byte block.
    let bits = unsafe { u16::from_le_bytes([*p.add(208), *p.add(209)]) } as u32;
    let v: __m128i;
    // SAFETY: a register move; reads no memory.
    unsafe {
        std::arch::asm!("vmovd {v}, {b:e}", v = out(xmm_reg) v, b = in(reg) bits,
            options(pure, nomem, nostack))
    };
    _mm_cvtss_f32(_mm_cvtph_ps(v))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::cpu::Prefetch;
    use std::arch::x86_64::*;

    /// `pshufb` mask that puts the even scale bytes of a super-block first and the odd ones
    /// after: sign-extended to i16, scales 0, 2, …, 14 fill the low 128-bit lane and 1, 3,
    /// …, 15 the high one.
    static EVEN_ODD: [u8; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15];

    /// `vpshufb` masks that broadcast i16 element `k` of each 128-bit lane over the lane:
    /// applied to the even/odd scales, scale `2k` in the low lane and `2k+1` in the high
    /// one, the lanes where `maddubs` leaves the products of weights `32k..32k+16` and
    /// `32k+16..32k+32` of 32-weight step `k` (0..8).
    const fn scale_broadcast() -> [[u8; 32]; 8] {
        let mut m = [[0u8; 32]; 8];
        let mut k = 0;
        while k < 8 {
            let mut i = 0;
            while i < 32 {
                m[k][i] = (2 * k + i % 2) as u8;
                i += 1;
            }
            k += 1;
        }
        m
    }
    static SCALE_BROADCAST: [[u8; 32]; 8] = scale_broadcast();

    /// Σ over blocks of `d·xd·isum` with `isum = Σ_j scale_j·Σ (q−32)·x`, computed as
    /// `Σ_j scale_j·Σ q·x − 32·Σ_j scale_j·bsum_j` (q in 0..=63 is `maddubs`'s unsigned
    /// operand). The float accumulation is the scalar kernel's, in the same order.
    ///
    /// Overflow: one `maddubs` lane is q₁x₁ + q₂x₂ ≤ 2·63·128 = 16128 < 2¹⁵; `madd` with a
    /// scale (|s| ≤ 128) gives ≤ 2·16128·128 < 2²²; a block adds 8 of those per lane.
    ///
    /// # Safety
    /// Requires AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn dot_q8k(row: &[u8], xq: &[i8], xd: &[f32], bsums: &[i16]) -> f32 {
        let pf = Prefetch::get();
        let nb = (row.len() / super::BLOCK_BYTES)
            .min(xq.len() / super::QK_K)
            .min(xd.len())
            .min(bsums.len() / 16);
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        // SAFETY: the masks are 16 and 8 × 32 bytes. They go through an empty asm block:
        // seeing constants, LLVM would turn a one-instruction `pshufb` into several
        // shuffles (`pshuflw`/`pshufhw` + `pshufd`).
        let (even_odd, bcast) = unsafe {
            let mut e = _mm_loadu_si128(EVEN_ODD.as_ptr() as *const __m128i);
            std::arch::asm!("/* {0} */", inout(xmm_reg) e, options(pure, nomem, nostack));
            let b: [__m256i; 8] = std::array::from_fn(|k| {
                let mut v = _mm256_loadu_si256(SCALE_BROADCAST[k].as_ptr() as *const __m256i);
                std::arch::asm!("/* {0} */", inout(ymm_reg) v, options(pure, nomem, nostack));
                v
            });
            (e, b)
        };
        let mut acc = 0f32;
        for b in 0..nb {
            let p = row[b * super::BLOCK_BYTES..][..super::BLOCK_BYTES].as_ptr();
            // The four lines the prefetch distance ahead (a 210-byte block spans up to four).
            for l in 0..4 {
                pf.ahead::<_MM_HINT_T0>(p, 64 * l);
            }
            let x = xq[b * super::QK_K..][..super::QK_K].as_ptr();
            // SAFETY (all loads below): offsets stay inside the 210-byte block, the
            // 256-value x block and the 16 bsums of this block.
            let sc = unsafe { _mm_loadu_si128(p.add(192) as *const __m128i) };
            let bs = unsafe { _mm256_loadu_si256(bsums.as_ptr().add(16 * b) as *const __m256i) };
            // Σ_j scale_j·bsum_j (8 lanes), subtracted ×32 at the end.
            let corr = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), bs);
            let scales = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, even_odd));
            let mut isum = _mm256_setzero_si256();
            for h in 0..2 {
                let (ql0, ql1, qh) = unsafe {
                    (
                        _mm256_loadu_si256(p.add(64 * h) as *const __m256i),
                        _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i),
                        _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i),
                    )
                };
                // 16-bit shifts are fine: each mask keeps only bits of the same byte.
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                        _mm256_and_si256(qh, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
                    ),
                ];
                for (k, qk) in q.iter().enumerate() {
                    let xv =
                        unsafe { _mm256_loadu_si256(x.add(128 * h + 32 * k) as *const __m256i) };
                    let prod = _mm256_maddubs_epi16(*qk, xv);
                    let s = _mm256_shuffle_epi8(scales, bcast[4 * h + k]);
                    isum = _mm256_add_epi32(isum, _mm256_madd_epi16(prod, s));
                }
            }
            let v = _mm256_sub_epi32(isum, _mm256_slli_epi32::<5>(corr));
            let lo = _mm256_castsi256_si128(v);
            let hi = _mm256_extracti128_si256::<1>(v);
            let s = _mm_add_epi32(lo, hi);
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            let isum = _mm_cvtsi128_si32(s);
            // F16C converts exactly, like `half` (whose run-time dispatch is an out-of-line
            // call that spills every vector register of this loop).
            // SAFETY: p is a whole block.
            let d = unsafe { super::block_d_f16c(p) };
            acc += d * xd[b] * isum as f32;
        }
        acc
    }
}

/// AVX-512 (BW + VNNI) version of the AVX2 kernel: 64 weights per vector, so a half
/// super-block is two vectors, and `vpdpwssd` applies the group scales and accumulates in
/// one instruction. The integer sums are exact and the float accumulation is the scalar
/// kernel's, so the result is bit-identical.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::cpu::Prefetch;
    use std::arch::x86_64::*;

    /// `vpermw` indices that spread four 16-weight group scales over the 32 i16 lanes of a
    /// 64-weight vector (lanes 8g..8g+8 hold the `maddubs` pairs of group g): vector `v`
    /// of a super-block takes scales 4v..4v+4. Vectors 0 and 2 are the low nibbles of
    /// each half (weights 0..64 of the half), 1 and 3 the high nibbles (64..128).
    const fn scale_index() -> [[u16; 32]; 4] {
        let mut m = [[0u16; 32]; 4];
        let mut v = 0;
        while v < 4 {
            let mut i = 0;
            while i < 32 {
                m[v][i] = (4 * v + i / 8) as u16;
                i += 1;
            }
            v += 1;
        }
        m
    }
    static SCALE_INDEX: [[u16; 32]; 4] = scale_index();

    /// # Safety
    /// Requires AVX-512 F, BW, VNNI and F16C.
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_q8k(row: &[u8], xq: &[i8], xd: &[f32], bsums: &[i16]) -> f32 {
        // SAFETY: forwarded.
        unsafe { dot_q8k_rows::<1>([row], xq, xd, bsums)[0] }
    }

    /// `R` rows at once (each row's result as [`dot_q8k`] gives it, bit for bit): one
    /// activation load serves all rows, and `R` weight streams are in flight.
    ///
    /// # Safety
    /// Requires AVX-512 F, BW, VNNI and F16C; the rows have the same length.
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_q8k_rows<const R: usize>(
        rows: [&[u8]; R],
        xq: &[i8],
        xd: &[f32],
        bsums: &[i16],
    ) -> [f32; R] {
        let pf = Prefetch::get();
        let nb = (rows[0].len() / super::BLOCK_BYTES)
            .min(xq.len() / super::QK_K)
            .min(xd.len())
            .min(bsums.len() / 16);
        assert!(rows.iter().all(|r| r.len() >= nb * super::BLOCK_BYTES));
        let m4 = _mm512_set1_epi8(0x0F);
        let m30 = _mm512_set1_epi8(0x30);
        // The high bits of a half's low-nibble vector: qh << 4 for weights 0..32 (bits
        // 0-1), << 2 for 32..64 (bits 2-3); of its high-nibble vector: qh >> 0 for 64..96
        // (bits 4-5), >> 2 for 96..128 (bits 6-7). 16-bit shifts are fine: the mask keeps
        // only bits of the same byte.
        let lo_shift = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(2));
        let hi_shift = _mm512_inserti64x4::<1>(_mm512_set1_epi16(0), _mm256_set1_epi16(2));
        let mut idx = [_mm512_setzero_si512(); 4];
        for (v, i) in idx.iter_mut().enumerate() {
            // SAFETY: each index table is 64 bytes.
            *i = unsafe { _mm512_loadu_si512(SCALE_INDEX[v].as_ptr() as *const _) };
        }
        let mut acc = [0f32; R];
        for b in 0..nb {
            let mut p = [std::ptr::null::<u8>(); R];
            for r in 0..R {
                p[r] = rows[r][b * super::BLOCK_BYTES..][..super::BLOCK_BYTES].as_ptr();
                // The four lines a prefetch distance ahead (a 210-byte block spans up to
                // four).
                for l in 0..4 {
                    pf.ahead::<_MM_HINT_T0>(p[r], 64 * l);
                }
            }
            let x = xq[b * super::QK_K..][..super::QK_K].as_ptr();
            // SAFETY: the 16 bsums of this block.
            let bs = unsafe { _mm256_loadu_si256(bsums.as_ptr().add(16 * b) as *const __m256i) };
            let mut isum = [_mm512_setzero_si512(); R];
            let mut corr = [_mm256_setzero_si256(); R];
            let mut sc16 = [_mm512_setzero_si512(); R];
            for r in 0..R {
                // SAFETY (all loads below): offsets stay inside the 210-byte blocks and
                // the 256-value x block.
                let sc = _mm256_cvtepi8_epi16(unsafe {
                    _mm_loadu_si128(p[r].add(192) as *const __m128i)
                });
                // Σ_j scale_j·bsum_j (8 lanes), subtracted ×32 at the end.
                corr[r] = _mm256_madd_epi16(sc, bs);
                sc16[r] = _mm512_castsi256_si512(sc);
            }
            for h in 0..2 {
                let xv = unsafe {
                    [
                        _mm512_loadu_si512(x.add(128 * h) as *const _),
                        _mm512_loadu_si512(x.add(128 * h + 64) as *const _),
                    ]
                };
                for r in 0..R {
                    let (ql, qh) = unsafe {
                        (
                            _mm512_loadu_si512(p[r].add(64 * h) as *const _),
                            _mm512_broadcast_i64x4(_mm256_loadu_si256(
                                p[r].add(128 + 32 * h) as *const __m256i
                            )),
                        )
                    };
                    let q = [
                        _mm512_or_si512(
                            _mm512_and_si512(ql, m4),
                            _mm512_and_si512(_mm512_sllv_epi16(qh, lo_shift), m30),
                        ),
                        _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                            _mm512_and_si512(_mm512_srlv_epi16(qh, hi_shift), m30),
                        ),
                    ];
                    for k in 0..2 {
                        let prod = _mm512_maddubs_epi16(q[k], xv[k]);
                        let s = _mm512_permutexvar_epi16(idx[2 * h + k], sc16[r]);
                        isum[r] = _mm512_dpwssd_epi32(isum[r], prod, s);
                    }
                }
            }
            for r in 0..R {
                let v = _mm256_add_epi32(
                    _mm512_castsi512_si256(isum[r]),
                    _mm512_extracti64x4_epi64::<1>(isum[r]),
                );
                let v = _mm256_sub_epi32(v, _mm256_slli_epi32::<5>(corr[r]));
                let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
                let isum = _mm_cvtsi128_si32(s);
                // SAFETY: p[r] is a whole block.
                let d = unsafe { super::block_d_f16c(p[r]) };
                acc[r] += d * xd[b] * isum as f32;
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.1
            })
            .collect()
    }

    #[test]
    fn group_scales_equal_the_scalar_reference() {
        let mut seed = 11u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for round in 0..200 {
            let amp = [1e-3f32, 0.05, 1.0, 300.0][round % 4];
            let mut xb: Vec<f32> = (0..QK_K).map(|_| next() * amp).collect();
            // Special groups: all zero, below GROUP_MAX_EPS, a tie of +m and −m for the
            // largest magnitude, a constant group, one large outlier.
            let g = |k: usize| 16 * ((round + k) % 16);
            xb[g(0)..g(0) + 16].fill(0.0);
            xb[g(3)..g(3) + 16].iter_mut().for_each(|v| *v *= 1e-17);
            xb[g(5)] = 0.7 * amp;
            xb[g(5) + 9] = -0.7 * amp;
            xb[g(8)..g(8) + 16].fill(0.25 * amp);
            xb[g(11) + 4] = 40.0 * amp;
            let (mut l, mut sc) = ([0i8; QK_K], [0f32; 16]);
            group_scales(&xb, &mut l, &mut sc);
            let mut l_ref = [0i8; QK_K];
            for gi in 0..16 {
                let s = make_qx_quants(32, &xb[16 * gi..16 * gi + 16], &mut l_ref[16 * gi..], 1);
                assert_eq!(sc[gi].to_bits(), s.to_bits(), "round {round} group {gi}");
            }
            assert_eq!(l, l_ref, "round {round}");
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        let mut s = 7u32;
        let random = (0..10_000).map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 300.0
        });
        let halves = (-400..=400).map(|i| i as f32 * 0.25);
        let edges = [
            0.0,
            -0.0,
            0.49999997,
            -0.49999997,
            0.5000001,
            4194302.5,
            -4194302.5,
        ];
        for v in random.chain(halves).chain(edges) {
            assert_eq!(nearest_int(v), v.round_ties_even() as i32, "{v}");
        }
    }

    #[test]
    fn quantize_dequantize_error() {
        let x = data(2 * 512, 5);
        let b = quantize(&x, 2, 512).unwrap();
        assert_eq!(b.len(), 4 * 210);
        let y = dequantize(&b, 2, 512).unwrap();
        let num: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
        let den: f32 = x.iter().map(|a| a * a).sum();
        // 6-bit: relative RMS error around 1%.
        assert!((num / den).sqrt() < 0.02, "{}", (num / den).sqrt());
        // Re-quantizing the dequantized values is (nearly) idempotent.
        let b2 = quantize(&y, 2, 512).unwrap();
        let y2 = dequantize(&b2, 2, 512).unwrap();
        let e: f32 = y
            .iter()
            .zip(&y2)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(e < 2e-3, "{e}");
    }

    #[test]
    fn layout_positions() {
        // Only weight 64+5 (second half-group) is large: it lands in the high nibble of ql[5].
        let mut x = vec![0f32; 256];
        x[69] = 1.0;
        x[0] = -0.01;
        let b = quantize(&x, 1, 256).unwrap();
        let y = dequantize(&b, 1, 256).unwrap();
        assert!((y[69] - 1.0).abs() < 0.02);
        assert!(y
            .iter()
            .enumerate()
            .all(|(i, v)| i == 69 || i == 0 || *v == 0.0));
    }

    #[test]
    fn zero_block() {
        let b = quantize(&[0f32; 256], 1, 256).unwrap();
        assert!(b.iter().all(|&v| v == 0));
        assert!(dequantize(&b, 1, 256).unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn q8k_dot_equals_the_scalar_kernel_bit_for_bit() {
        // Rows of 10 super-blocks (the 2B-4T head's 2,560 columns) with weights of mixed
        // magnitudes, so the 16 group scales take both signs and many values.
        let (rows, cols) = (64, 2560);
        let mut w = data(rows * cols, 21);
        for (i, v) in w.iter_mut().enumerate() {
            *v *=
                [0.1f32, 1.0, 7.0, 0.01][(i / 16) % 4] * if (i / 48) % 3 == 0 { -1.0 } else { 1.0 };
        }
        let b = quantize(&w, rows, cols).unwrap();
        let x = data(cols, 22);
        let mut xq = vec![0i8; cols];
        let mut xd = vec![0f32; cols / QK_K];
        quantize_act_q8k(&x, &mut xq, &mut xd);
        let rb = row_bytes(cols);
        let mut bsums = vec![0i16; cols / 16];
        q8k_bsums(&xq, &mut bsums);
        for r in 0..rows {
            let row = &b[r * rb..(r + 1) * rb];
            let s = dot_q8k_scalar(row, &xq, &xd);
            let v = dot_q8k(row, &xq, &xd);
            assert_eq!(s.to_bits(), v.to_bits(), "row {r}: {s} {v}");
            // Each SIMD kernel on its own, whichever the dispatch picks.
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("avx2") && has!("f16c") {
                    // SAFETY: features detected.
                    let v = unsafe { avx2::dot_q8k(row, &xq, &xd, &bsums) };
                    assert_eq!(s.to_bits(), v.to_bits(), "avx2 row {r}: {s} {v}");
                }
                if has!("avx512bw") && has!("avx512vnni") && has!("f16c") {
                    // SAFETY: features detected.
                    let v = unsafe { avx512::dot_q8k(row, &xq, &xd, &bsums) };
                    assert_eq!(s.to_bits(), v.to_bits(), "avx512 row {r}: {s} {v}");
                    if r % 4 == 0 {
                        let four = [0, 1, 2, 3].map(|j| &b[(r + j) * rb..(r + j + 1) * rb]);
                        // SAFETY: features detected.
                        let v4 = unsafe { avx512::dot_q8k_rows::<4>(four, &xq, &xd, &bsums) };
                        for (j, v) in v4.into_iter().enumerate() {
                            let s = dot_q8k_scalar(four[j], &xq, &xd);
                            assert_eq!(s.to_bits(), v.to_bits(), "avx512 ×4 row {}", r + j);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn q8k_dot_matches() {
        let w = data(768, 7);
        let x = data(768, 8);
        let b = quantize(&w, 1, 768).unwrap();
        let wd = dequantize(&b, 1, 768).unwrap();
        let exact: f32 = wd.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!((dot_f32(&b, &x) - exact).abs() < 1e-5);
        let mut xq = vec![0i8; 768];
        let mut xd = vec![0f32; 3];
        quantize_act_q8k(&x, &mut xq, &mut xd);
        let s = dot_q8k_scalar(&b, &xq, &xd);
        let v = dot_q8k(&b, &xq, &xd);
        assert_eq!(s.to_bits(), v.to_bits(), "{s} {v}");
        let mut bsums = vec![0i16; 768 / 16];
        q8k_bsums(&xq, &mut bsums);
        assert_eq!(dot_q8k_bsums(&b, &xq, &xd, &bsums), v);
        let bound: f32 = wd
            .chunks(256)
            .zip(&xd)
            .map(|(wb, d)| wb.iter().map(|w| w.abs()).sum::<f32>() * d.abs() * 0.5)
            .sum();
        assert!(
            (s - exact).abs() <= bound * 1.01 + 1e-6,
            "{s} {exact} {bound}"
        );
    }
}
