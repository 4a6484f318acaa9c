//! Fixture tests for the weight formats and the GGUF reader/writer.
//!
//! Checks, against `fixtures/tiny-bitnet/model.safetensors` (bf16 HF master weights):
//! * every ternary projection of the bitnet.cpp I2_S / TQ2_0 / TQ1_0 GGUFs unpacks to
//!   exactly the absmean trits of the HF weight, in HF row order (no q/k permutation),
//!   with GGUF dims `[in, out]`; and the scales equal mean|W|;
//! * the HF packed checkpoint unpacks to the same trits and `weight_scale = bf16(mean|W|)`;
//! * `token_embd` (F16) equals the bf16 embeddings rounded to f16;
//! * truncated / corrupted files give errors, never panics;
//! * re-writing a fixture with `GgufWriter` reproduces it.

use std::path::PathBuf;

use bitnet_core::quant::{absmean, hf_packed, i2s, tq1_0, tq2_0};
use bitnet_core::SharedBytes;
use bitnet_models::gguf::{GgmlType, GgufFile};
use bitnet_models::gguf_write::GgufWriter;
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

fn fixtures() -> PathBuf {
    match std::env::var_os("BITNET_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"),
    }
}

fn gguf_path(kind: &str) -> PathBuf {
    fixtures().join(format!("tiny-bitnet/gguf/tiny-bitnet-{kind}.gguf"))
}

const PROJ: [(&str, &str); 7] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

struct Hf {
    bytes: Vec<u8>,
}

impl Hf {
    fn load(rel: &str) -> Hf {
        Hf {
            bytes: std::fs::read(fixtures().join(rel)).expect("read safetensors fixture"),
        }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }

    /// bf16 tensor as f32 with its shape.
    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = self.st();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::BF16, "{name}");
        let v = t
            .data()
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        (v, t.shape().to_vec())
    }
}

/// (trits, mean|W| scale, [out, in]) of an HF projection.
fn hf_trits(hf: &Hf, layer: usize, proj: &str) -> (Vec<i8>, f32, [usize; 2]) {
    let (w, shape) = hf.f32(&format!("model.layers.{layer}.{proj}.weight"));
    let mut q = vec![0i8; w.len()];
    let scale = absmean::ternarize(&w, &mut q);
    (q, scale, [shape[0], shape[1]])
}

/// What bitnet.cpp's preprocessing stores as the ternarized weight magnitude: f32(1/s)
/// with s = f32(1/mean).
fn ternarized_magnitude(mean: f32) -> f32 {
    1.0f32 / (1.0f32 / mean)
}

fn check_ternary_gguf(kind: &str, ty: GgmlType) {
    let hf = Hf::load("tiny-bitnet/model.safetensors");
    let g = GgufFile::open(gguf_path(kind)).unwrap();
    assert_eq!(g.architecture().unwrap(), "bitnet-25");
    let mut checked = 0;
    for layer in 0..2 {
        for (gname, hname) in PROJ {
            let (q, mean, [out, inp]) = hf_trits(&hf, layer, hname);
            let name = format!("blk.{layer}.{gname}.weight");
            let info = g.tensor(&name).unwrap();
            assert_eq!(info.ggml_type, ty, "{name}");
            assert_eq!(info.dims, vec![inp as u64, out as u64], "{name}: ne0 = in");
            let (rows, cols) = info.rows_cols();
            assert_eq!((rows, cols), (out, inp));
            let data = g.tensor_data(info).unwrap();
            match ty {
                GgmlType::I2_S => {
                    assert_eq!(data.len(), i2s::tensor_bytes(rows, cols));
                    let t = i2s::unpack(&data, rows, cols).unwrap();
                    assert!(t == q, "{kind} {name}: trits differ from HF (row order?)");
                    let s = i2s::read_scale(&data, rows, cols).unwrap();
                    // max|W'| with W' = q/s computed by torch in f32: mean|W| up to an ulp
                    // or two (torch's f32 mean vs our correctly rounded one).
                    let t = ternarized_magnitude(mean);
                    assert!((s - t).abs() <= t * 3e-7, "{name}: {s} vs {t}");
                    assert!((s - mean).abs() <= mean * 3e-7, "{name}: {s} vs {mean}");
                }
                GgmlType::TQ2_0 | GgmlType::TQ1_0 => {
                    let (t, scales) = if ty == GgmlType::TQ2_0 {
                        tq2_0::to_trits_and_scales(&data, rows, cols).unwrap()
                    } else {
                        tq1_0::to_trits_and_scales(&data, rows, cols).unwrap()
                    };
                    assert!(t == q, "{kind} {name}: trits differ from HF");
                    let want = f16::from_f32(mean).to_f32();
                    for (b, &s) in scales.iter().enumerate() {
                        let all_zero = q[b * 256..(b + 1) * 256].iter().all(|&x| x == 0);
                        if all_zero {
                            assert_eq!(s, 0.0);
                        } else {
                            assert_eq!(s, want, "{name} block {b}");
                        }
                    }
                }
                _ => unreachable!(),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 14);
}

#[test]
fn i2s_fixture_matches_hf_trits() {
    check_ternary_gguf("i2_s", GgmlType::I2_S);
}

#[test]
fn tq2_0_fixture_matches_hf_trits() {
    check_ternary_gguf("tq2_0", GgmlType::TQ2_0);
}

#[test]
fn tq1_0_fixture_matches_hf_trits() {
    check_ternary_gguf("tq1_0", GgmlType::TQ1_0);
}

#[test]
fn i2s_trailer_is_scale_plus_padding() {
    // Each I2_S tensor spans n/4 + 32 bytes and the next tensor starts right after it.
    let g = GgufFile::open(gguf_path("i2_s")).unwrap();
    let mut infos: Vec<_> = g.tensors.iter().collect();
    infos.sort_by_key(|t| t.offset);
    for w in infos.windows(2) {
        if w[0].ggml_type == GgmlType::I2_S {
            let n = w[0].n_elements();
            assert_eq!(w[0].nbytes, n / 4 + 32);
            assert_eq!(w[1].offset, w[0].offset + n / 4 + 32, "{}", w[0].name);
        }
    }
}

#[test]
fn hf_packed_fixture_matches_hf_trits() {
    let hf = Hf::load("tiny-bitnet/model.safetensors");
    let packed = Hf::load("tiny-bitnet-packed/model.safetensors");
    let st = packed.st();
    for layer in 0..2 {
        for (_, hname) in PROJ {
            let (q, mean, [out, inp]) = hf_trits(&hf, layer, hname);
            let w = st
                .tensor(&format!("model.layers.{layer}.{hname}.weight"))
                .unwrap();
            assert_eq!(w.dtype(), Dtype::U8);
            assert_eq!(w.shape(), &[out / 4, inp]);
            let t = hf_packed::unpack(w.data(), out, inp).unwrap();
            assert!(t == q, "packed {layer} {hname}");
            assert_eq!(hf_packed::pack(&q, out, inp).unwrap(), w.data());
            let s = st
                .tensor(&format!("model.layers.{layer}.{hname}.weight_scale"))
                .unwrap();
            assert_eq!(s.dtype(), Dtype::BF16);
            let sv = bf16::from_le_bytes([s.data()[0], s.data()[1]]);
            assert_eq!(sv, bf16::from_f32(mean), "{layer} {hname} weight_scale");
        }
    }
}

#[test]
fn token_embd_f16_matches_bf16_embeddings() {
    let hf = Hf::load("tiny-bitnet/model.safetensors");
    let (emb, shape) = hf.f32("model.embed_tokens.weight");
    assert_eq!(shape, vec![1024, 256]);
    for kind in ["i2_s", "tq2_0", "tq1_0", "f16"] {
        let g = GgufFile::open(gguf_path(kind)).unwrap();
        let info = g.tensor("token_embd.weight").unwrap();
        assert_eq!(info.ggml_type, GgmlType::F16);
        assert_eq!(info.dims, vec![256, 1024]);
        assert!(g.tensor("output.weight").is_none(), "tied LM head");
        let data = g.tensor_data(info).unwrap();
        for (i, c) in data.chunks_exact(2).enumerate() {
            let v = f16::from_le_bytes([c[0], c[1]]);
            assert_eq!(v, f16::from_f32(emb[i]), "{kind} element {i}");
        }
    }
}

#[test]
fn norms_are_f32_and_match_hf() {
    let hf = Hf::load("tiny-bitnet/model.safetensors");
    let g = GgufFile::open(gguf_path("i2_s")).unwrap();
    let pairs = [
        (
            "output_norm.weight".to_string(),
            "model.norm.weight".to_string(),
        ),
        (
            "blk.1.attn_norm.weight".into(),
            "model.layers.1.input_layernorm.weight".into(),
        ),
        (
            "blk.0.ffn_norm.weight".into(),
            "model.layers.0.post_attention_layernorm.weight".into(),
        ),
        (
            "blk.0.attn_sub_norm.weight".into(),
            "model.layers.0.self_attn.attn_sub_norm.weight".into(),
        ),
        (
            "blk.1.ffn_sub_norm.weight".into(),
            "model.layers.1.mlp.ffn_sub_norm.weight".into(),
        ),
    ];
    for (gn, hn) in pairs {
        let info = g.tensor(&gn).unwrap();
        assert_eq!(info.ggml_type, GgmlType::F32);
        let d = g.tensor_data(info).unwrap();
        let v: Vec<f32> = d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(v, hf.f32(&hn).0, "{gn}");
    }
}

#[test]
fn metadata_getters() {
    let g = GgufFile::open(gguf_path("i2_s")).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.get_u32("bitnet-25.block_count").unwrap(), 2);
    assert_eq!(g.get_u32("bitnet-25.attention.head_count_kv").unwrap(), 1);
    assert_eq!(g.get_f32("bitnet-25.rope.freq_base").unwrap(), 500000.0);
    assert_eq!(
        g.get_f32("bitnet-25.attention.layer_norm_rms_epsilon")
            .unwrap(),
        1e-5
    );
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        1024
    );
    assert_eq!(g.get_str_array("tokenizer.ggml.merges").unwrap().len(), 760);
    assert_eq!(
        g.get_i32_array("tokenizer.ggml.token_type").unwrap().len(),
        1024
    );
    assert_eq!(
        g.get_f32_array("tokenizer.ggml.scores").unwrap().len(),
        1024
    );
    assert_eq!(g.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 1016);
    assert!(g.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(g.get_u32("general.file_type").unwrap(), 40);
    assert!(g.get_u32("general.name").is_err());
    let e = g.get_u32("no.such.key").unwrap_err().to_string();
    assert!(
        e.contains("no.such.key") && e.contains("tiny-bitnet-i2_s.gguf"),
        "{e}"
    );
    assert_eq!(g.tensors.len(), 24);
}

fn parse(bytes: Vec<u8>) -> bitnet_models::Result<GgufFile> {
    GgufFile::from_bytes("corrupt.gguf", SharedBytes::from_vec(bytes))
}

#[test]
fn truncated_files_are_errors() {
    let full = std::fs::read(gguf_path("i2_s")).unwrap();
    let g = parse(full.clone()).unwrap();
    let header_end = g.data_offset as usize;
    // Every offset in the header region (step 1 near the start, then step 3) and a spread
    // of offsets in the data section.
    let mut cuts: Vec<usize> = (0..200).collect();
    cuts.extend((200..header_end + 64).step_by(3));
    cuts.extend((header_end..full.len()).step_by(4099));
    cuts.push(full.len() - 1);
    for cut in cuts {
        match parse(full[..cut].to_vec()) {
            Ok(_) => panic!("truncation at {cut} of {} was accepted", full.len()),
            Err(e) => {
                let s = e.to_string();
                assert!(s.starts_with("corrupt.gguf"), "{s}");
                assert!(matches!(e, bitnet_models::Error::BadFile { .. }), "{s}");
            }
        }
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let full = std::fs::read(gguf_path("tq1_0")).unwrap();
    let header_end = parse(full.clone()).unwrap().data_offset as usize;
    let mut s: u64 = 0x9e3779b97f4a7c15;
    let mut rng = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut errs = 0;
    for i in 0..3000u32 {
        let mut b = full.clone();
        let nflip = 1 + (i % 3);
        for _ in 0..nflip {
            let pos = (rng() % header_end as u64) as usize;
            let bit = rng() % 8;
            b[pos] ^= 1 << bit;
        }
        // Also try forcing bytes to 0xff (absurd counts and lengths).
        if i.is_multiple_of(5) {
            let pos = (rng() % header_end as u64) as usize;
            b[pos] = 0xff;
        }
        if let Ok(g) = parse(b) {
            // Whatever parsed must be internally consistent.
            for t in &g.tensors {
                let d = g.tensor_data(t).unwrap();
                assert_eq!(d.len() as u64, t.nbytes);
            }
        } else {
            errs += 1;
        }
    }
    assert!(errs > 0);
}

/// Build a minimal file by hand and corrupt specific fields.
#[test]
fn targeted_corruptions() {
    let mut w = GgufWriter::new();
    w.add_kv(
        "general.architecture",
        bitnet_models::gguf::Value::String("x".into()),
    )
    .unwrap();
    w.add_tensor("t", &[4], GgmlType::F32, vec![0u8; 16])
        .unwrap();
    let good = w.to_bytes();
    assert!(parse(good.clone()).is_ok());
    // Layout: magic 4, version 4, n_tensors 8, n_kv 8, key len 8 @24.
    let expect_err = |b: Vec<u8>, what: &str| {
        let e = parse(b).expect_err(what).to_string();
        assert!(e.contains(what), "expected `{what}` in `{e}`");
    };
    let mut b = good.clone();
    b[0] = b'X';
    expect_err(b, "bad magic");
    let mut b = good.clone();
    b[4] = 1;
    expect_err(b, "unsupported GGUF version 1");
    let mut b = good.clone();
    b[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    expect_err(b, "limit");
    let mut b = good.clone();
    b[24..32].copy_from_slice(&60000u64.to_le_bytes());
    expect_err(b, "past the end");
    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_err(b, "tensor count");
    // Value type of the kv: after key (8 + 20 bytes) at 24 + 28 = 52.
    let key_len = "general.architecture".len();
    let ty_at = 32 + key_len;
    let mut b = good.clone();
    b[ty_at..ty_at + 4].copy_from_slice(&13u32.to_le_bytes());
    expect_err(b, "unknown value type 13");
    // Tensor info: after the value (8 + 1) then name (8 + 1), n_dims, dim, type, offset.
    let ti = ty_at + 4 + 9;
    let ndims_at = ti + 9;
    let type_at = ndims_at + 4 + 8;
    let off_at = type_at + 4;
    let mut b = good.clone();
    b[ndims_at..ndims_at + 4].copy_from_slice(&9u32.to_le_bytes());
    expect_err(b, "9 dimensions");
    let mut b = good.clone();
    b[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
    expect_err(b, "tensor `t`: unknown ggml type id 99");
    let mut b = good.clone();
    b[off_at..off_at + 8].copy_from_slice(&4u64.to_le_bytes());
    expect_err(b, "not a multiple of the alignment");
    let mut b = good.clone();
    b[off_at..off_at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    expect_err(b, "past the end of the file");
    let mut b = good.clone();
    b[ndims_at + 4..ndims_at + 12].copy_from_slice(&(1u64 << 62).to_le_bytes());
    expect_err(b, "size overflow");
    let mut b = good.clone();
    b[ndims_at + 4..ndims_at + 12].copy_from_slice(&(1u64 << 40).to_le_bytes());
    expect_err(b, "past the end of the file");
    let mut b = good.clone();
    b[ndims_at + 4..ndims_at + 12].copy_from_slice(&3u64.to_le_bytes());
    b[type_at..type_at + 4].copy_from_slice(&8u32.to_le_bytes()); // Q8_0 needs ne0 % 32
    expect_err(b, "do not fit type Q8_0");
}

#[test]
fn rewriting_fixtures_reproduces_them() {
    for kind in ["i2_s", "tq2_0", "tq1_0", "f16"] {
        let path = gguf_path(kind);
        let orig = std::fs::read(&path).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in &g.metadata {
            w.add_kv(k.clone(), v.clone()).unwrap();
        }
        let mut by_offset: Vec<_> = g.tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        assert!(by_offset
            .iter()
            .map(|t| &t.name)
            .eq(g.tensors.iter().map(|t| &t.name)));
        for t in &g.tensors {
            let d = g.tensor_data(t).unwrap();
            w.add_tensor(t.name.clone(), &t.dims, t.ggml_type, d.to_vec())
                .unwrap();
        }
        let out = w.to_bytes();
        let g2 = parse(out.clone()).unwrap();
        assert_eq!(g2.metadata, g.metadata);
        assert_eq!(g2.tensors, g.tensors);
        for t in &g.tensors {
            assert_eq!(
                g2.tensor_data(t).unwrap().as_slice(),
                g.tensor_data(t).unwrap().as_slice()
            );
        }
        assert!(
            out == orig,
            "{kind}: re-written file differs from the original"
        );
    }
}
