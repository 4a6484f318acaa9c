//! Random models with real shapes, built in memory (no file), for benchmarks:
//! `bitnet bench --synthetic 2b4t`. The weights are random but valid: every ternary code
//! is −1, 0 or +1 and the LM head is a well-formed Q6_K table, so the kernels do exactly
//! the work of the real model.

use std::path::Path;

use bitnet_core::nn::bitlinear::BitLinear;
use bitnet_core::nn::rope::RopeStyle;
use bitnet_core::quant::dense::DenseMatrix;
use bitnet_core::quant::ternary::{TernaryLayout, TernaryMatrix};
use bitnet_core::SharedBytes;
use half::f16;
use rayon::prelude::*;

use crate::bitnet::{Config, Layer, Model};
use crate::{Error, Result};

/// A small, fast PRNG (SplitMix64): the synthetic weights only need to be varied and
/// reproducible, and this keeps generating ~2.4 G trits to a second or two.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Fill `out` in parallel, each 64 KiB chunk from its own seeded stream.
fn fill_parallel(out: &mut [u8], seed: u64, f: impl Fn(&mut SplitMix) -> u8 + Sync) {
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = SplitMix(seed ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            for b in chunk {
                *b = f(&mut rng);
            }
        });
}

/// Random I2_S bytes: each byte holds four codes from {0, 1, 2} (never the invalid 3).
fn random_i2s(rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let valid: Vec<u8> = (0u16..256)
        .map(|b| b as u8)
        .filter(|b| (0..4).all(|i| (b >> (2 * i)) & 3 != 3))
        .collect();
    let mut out = bitnet_core::memory::weight_buffer(rows * cols / 4);
    fill_parallel(&mut out, seed, |r| {
        valid[(r.next() % valid.len() as u64) as usize]
    });
    out
}

/// Random Q6_K super-blocks (ggml layout: ql[128], qh[64], scales[16] i8, d f16) whose
/// values have the magnitude of real embeddings (|x| ≲ 0.05).
fn random_q6k(rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    const BLOCK: usize = 210;
    let nblocks = rows * cols / 256;
    let mut out = bitnet_core::memory::weight_buffer(nblocks * BLOCK);
    fill_parallel(&mut out, seed, |r| r.next() as u8);
    let d = f16::from_f32(1e-4).to_le_bytes();
    out.par_chunks_mut(BLOCK).for_each(|b| {
        for s in &mut b[192..208] {
            *s = ((*s as i8) >> 3) as u8; // scales in [-16, 15]
        }
        b[208..210].copy_from_slice(&d);
    });
    out
}

/// Which synthetic model to build.
pub fn config_by_name(name: &str) -> Result<Config> {
    match name {
        "2b4t" | "2b-4t" | "bitnet-2b4t" => Ok(Config::b2b4t()),
        _ => Err(Error::InvalidArgument(format!(
            "unknown synthetic model `{name}` (known: 2b4t)"
        ))),
    }
}

/// Build a random model with `config`'s shapes: ternary projections in `layout`, the
/// embeddings (tied LM head) in Q6_K as bitnet.cpp's converter writes them.
pub fn build(config: Config, layout: TernaryLayout, seed: u64) -> Result<Model> {
    let c = &config;
    if !c.hidden.is_multiple_of(256) {
        return Err(Error::InvalidArgument(format!(
            "synthetic models need a hidden size that is a multiple of 256, got {}",
            c.hidden
        )));
    }
    let mut next_seed = seed;
    let mut ternary = |rows: usize, cols: usize| -> Result<BitLinear> {
        next_seed = next_seed.wrapping_add(1);
        let bytes = random_i2s(rows, cols, next_seed);
        let m = TernaryMatrix::from_i2s(SharedBytes::from_vec(bytes), rows, cols, 0.02)?;
        let weight = if layout == TernaryLayout::I2S {
            m
        } else {
            m.to_layout(layout)
        };
        Ok(BitLinear { weight, bias: None })
    };
    let mut layers = Vec::with_capacity(c.n_layers);
    for _ in 0..c.n_layers {
        layers.push(Layer {
            attn_norm: vec![1.0; c.hidden],
            q: ternary(c.q_dim(), c.hidden)?,
            k: ternary(c.kv_dim(), c.hidden)?,
            v: ternary(c.kv_dim(), c.hidden)?,
            o: ternary(c.hidden, c.q_dim())?,
            attn_sub_norm: vec![1.0; c.q_dim()],
            ffn_norm: vec![1.0; c.hidden],
            gate: ternary(c.intermediate, c.hidden)?,
            up: ternary(c.intermediate, c.hidden)?,
            down: ternary(c.hidden, c.intermediate)?,
            ffn_sub_norm: vec![1.0; c.intermediate],
        });
    }
    let embed = DenseMatrix::from_q6k_bytes(
        SharedBytes::from_vec(random_q6k(c.vocab_size, c.hidden, seed ^ 0xE3B)),
        c.vocab_size,
        c.hidden,
    )?;
    let norm = vec![1.0; c.hidden];
    Model::new(
        config,
        embed,
        None,
        layers,
        norm,
        RopeStyle::Neox,
        Path::new("<synthetic>"),
    )
}
