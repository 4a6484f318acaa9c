//! Files that parse as GGUF but describe a broken model — absurd hyper-parameters, tensors of
//! the wrong shape or type, missing tensors and keys — must load with a clear error, or load
//! and run, and never panic. The tiny I2_S fixture is rewritten with seeded random changes
//! to its metadata values and tensor infos; each variant is loaded, and when it loads, a
//! short prompt is run through it and its tokenizer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use bitnet_models::bitnet::Logits;
use bitnet_models::generate::Session;
use bitnet_models::gguf::{GgmlType, GgufFile, Value};
use bitnet_models::gguf_write::GgufWriter;
use bitnet_models::kv_cache::KvDType;
use bitnet_models::load::{self, LoadOptions};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/tiny-bitnet/gguf/tiny-bitnet-i2_s.gguf")
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const INTS: [u64; 20] = [
    0,
    1,
    2,
    3,
    5,
    16,
    31,
    32,
    64,
    100,
    128,
    255,
    256,
    1000,
    1024,
    4096,
    65535,
    1 << 20,
    1 << 31,
    u32::MAX as u64,
];
const FLOATS: [f32; 9] = [
    0.0,
    -0.0,
    1e-30,
    -1.0,
    1e30,
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    1e-6,
];

/// A value of `v`'s type taken from the interesting lists (numbers and booleans only).
fn mutate_value(v: &Value, rng: &mut Rng) -> Option<Value> {
    let i = INTS[rng.below(INTS.len())];
    let f = FLOATS[rng.below(FLOATS.len())];
    Some(match v {
        Value::U8(_) => Value::U8(i as u8),
        Value::I8(_) => Value::I8(i as i8),
        Value::U16(_) => Value::U16(i as u16),
        Value::I16(_) => Value::I16(i as i16),
        Value::U32(_) => Value::U32(i as u32),
        Value::I32(_) => Value::I32(if rng.below(4) == 0 {
            -(i as i32)
        } else {
            i as i32
        }),
        Value::U64(_) => Value::U64(i),
        Value::I64(_) => Value::I64(i as i64),
        Value::F32(_) => Value::F32(f),
        Value::F64(_) => Value::F64(f as f64),
        Value::Bool(b) => Value::Bool(!b),
        _ => return None,
    })
}

/// The fixture rewritten with one to three random changes; `None` if the writer itself
/// refuses the result (that is not the loader's concern).
fn variant(g: &GgufFile, rng: &mut Rng) -> Option<Vec<u8>> {
    let mut kvs: Vec<(String, Value)> = g
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)> = g
        .tensors
        .iter()
        .map(|t| {
            let d = g.tensor_data(t).unwrap().to_vec();
            (t.name.clone(), t.dims.clone(), t.ggml_type, d)
        })
        .collect();
    for _ in 0..1 + rng.below(3) {
        match rng.below(10) {
            0..=4 => {
                // A numeric value.
                let numeric: Vec<usize> = (0..kvs.len())
                    .filter(|&i| mutate_value(&kvs[i].1, &mut Rng(1)).is_some())
                    .collect();
                let i = numeric[rng.below(numeric.len())];
                kvs[i].1 = mutate_value(&kvs[i].1, rng).unwrap();
            }
            5 => {
                // A missing key.
                let i = rng.below(kvs.len());
                kvs.remove(i);
            }
            6 => {
                // A missing tensor.
                let i = rng.below(tensors.len());
                tensors.remove(i);
            }
            7 | 8 => {
                // A tensor of another shape: one dimension changed, or the two swapped.
                let j = rng.below(tensors.len());
                let t = &mut tensors[j];
                if t.1.len() == 2 && rng.below(2) == 0 {
                    t.1.swap(0, 1);
                } else {
                    let d = rng.below(t.1.len());
                    t.1[d] = INTS[1 + rng.below(14)];
                }
            }
            _ => {
                // A tensor of another type.
                let types = [
                    GgmlType::F32,
                    GgmlType::F16,
                    GgmlType::Q8_0,
                    GgmlType::I2_S,
                    GgmlType::TQ2_0,
                ];
                let j = rng.below(tensors.len());
                let t = &mut tensors[j];
                t.2 = types[rng.below(types.len())];
            }
        }
    }
    let mut w = GgufWriter::new();
    for (k, v) in kvs {
        w.add_kv(k, v).ok()?;
    }
    for (name, dims, ty, mut data) in tensors {
        let n = ty.tensor_bytes(&dims)? as usize;
        if n > 64 << 20 {
            return None;
        }
        data.resize(n, 0x5a);
        w.add_tensor(name, &dims, ty, data).ok()?;
    }
    Some(w.to_bytes())
}

#[test]
fn broken_models_load_with_an_error_or_run_never_panic() {
    let g = GgufFile::open(fixture()).unwrap();
    let dir = std::env::temp_dir().join(format!("bitnet-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("variant.gguf");
    // BITNET_FUZZ_ITERS and BITNET_FUZZ_SEED run a longer or another campaign.
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mut rng = Rng(env("BITNET_FUZZ_SEED", 0x2545f4914f6cdd1d).max(1));
    let mut tally = Tally::default();
    for i in 0..env("BITNET_FUZZ_ITERS", 600) {
        let Some(bytes) = variant(&g, &mut rng) else {
            continue;
        };
        std::fs::write(&path, &bytes).unwrap();
        tally.add(load_and_run(&path, &format!("GGUF variant {i}")));
    }
    std::fs::remove_dir_all(&dir).ok();
    tally.check("GGUF");
}

/// How many variants of a campaign loaded and ran, and how many were refused.
#[derive(Default)]
struct Tally {
    loaded: usize,
    refused: usize,
}

impl Tally {
    fn add(&mut self, loaded: bool) {
        if loaded {
            self.loaded += 1;
        } else {
            self.refused += 1;
        }
    }

    /// A campaign must exercise both outcomes, or its damage was too mild or too severe.
    fn check(&self, what: &str) {
        let (loaded, refused) = (self.loaded, self.refused);
        eprintln!("{what}: {loaded} variants loaded and ran, {refused} refused with an error");
        assert!(
            loaded > 0 && refused > 0,
            "loaded {loaded}, refused {refused}"
        );
    }
}

/// Load `path` and, when it loads, run a prompt and the tokenizer; a panic fails the test
/// with the variant kept for reproduction. Ok(true) = loaded and ran, Ok(false) = refused.
fn load_and_run(path: &Path, label: &str) -> bool {
    let r = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        let l = load::load(path, LoadOptions::default()).map_err(|e| e.to_string())?;
        let mut s = Session::new(&l.model, 8, KvDType::F16);
        let logits = s
            .feed(&[1, 2, 3], Logits::Last)
            .map_err(|e| e.to_string())?;
        assert_eq!(logits.len(), l.model.config.vocab_size);
        if let Some(t) = &l.tokenizer {
            let ids = t
                .encode("Permission is granted", true)
                .map_err(|e| e.to_string())?;
            t.decode(&ids).map_err(|e| e.to_string())?;
        }
        Ok(())
    }));
    match r {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            assert!(!e.is_empty());
            if std::env::var("BITNET_FUZZ_SHOW").is_ok() {
                eprintln!("ERR {e}");
            }
            false
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{label} panicked: {msg} (kept in {})", path.display());
        }
    }
}

/// A JSON value for a config field: numbers of every kind, and wrong types.
fn json_value(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.below(8) {
        0..=3 => json!(INTS[rng.below(INTS.len())]),
        4 => json!(-(INTS[rng.below(INTS.len())] as i64)),
        5 => {
            let f = FLOATS[rng.below(FLOATS.len())];
            if f.is_finite() {
                json!(f)
            } else {
                json!(1e300)
            }
        }
        6 => json!("12"),
        _ => serde_json::Value::Null,
    }
}

/// The safetensors file with one tensor's dtype, shape or offsets changed in its header.
fn mutate_safetensors(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let names: Vec<String> = h.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let t = h.get_mut(&names[rng.below(names.len())]).unwrap();
    match rng.below(3) {
        0 => {
            let dtypes = ["BF16", "F32", "F16", "U8", "I8", "F64", "I64", "BOOL"];
            t["dtype"] = dtypes[rng.below(dtypes.len())].into();
        }
        1 => {
            let shape = t["shape"].as_array_mut().unwrap();
            if shape.len() == 2 && rng.below(2) == 0 {
                shape.swap(0, 1);
            } else if !shape.is_empty() {
                let d = rng.below(shape.len());
                shape[d] = INTS[rng.below(14)].into();
            }
        }
        _ => {
            let off = t["data_offsets"].as_array_mut().unwrap();
            let d = rng.below(2);
            let v = off[d].as_u64().unwrap();
            off[d] = (v ^ (1 << rng.below(20))).into();
        }
    }
    let header = serde_json::to_vec(&h).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn broken_hf_directories_load_with_an_error_or_run_never_panic() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mut rng = Rng(env("BITNET_FUZZ_SEED", 0x9e3779b97f4a7c15).max(1));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let dir = std::env::temp_dir().join(format!("bitnet-corrupt-hf-{}", std::process::id()));
    let mut tally = Tally::default();
    for i in 0..env("BITNET_FUZZ_ITERS", 600) / 2 {
        let src = root.join(["tiny-bitnet", "tiny-bitnet-packed"][rng.below(2)]);
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "generation_config.json",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let mut cfg: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
        let mut st = std::fs::read(src.join("model.safetensors")).unwrap();
        for _ in 0..1 + rng.below(2) {
            if rng.below(3) == 0 {
                st = mutate_safetensors(&st, &mut rng);
            } else {
                let keys: Vec<String> = cfg.keys().cloned().collect();
                let k = &keys[rng.below(keys.len())];
                if rng.below(6) == 0 {
                    cfg.remove(k);
                } else {
                    cfg.insert(k.clone(), json_value(&mut rng));
                }
            }
        }
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        std::fs::write(dir.join("model.safetensors"), &st).unwrap();
        tally.add(load_and_run(&dir, &format!("HF variant {i}")));
    }
    std::fs::remove_dir_all(&dir).ok();
    tally.check("HF");
}

#[test]
fn an_absurd_context_length_is_an_error_not_an_abort() {
    // It used to size the RoPE tables: 2³² positions aborted the process on allocation.
    let g = GgufFile::open(fixture()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        let v = if k.ends_with(".context_length") {
            Value::U32(u32::MAX)
        } else {
            v.clone()
        };
        w.add_kv(k.clone(), v).unwrap();
    }
    for t in &g.tensors {
        let d = g.tensor_data(t).unwrap().to_vec();
        w.add_tensor(t.name.clone(), &t.dims, t.ggml_type, d)
            .unwrap();
    }
    let path = std::env::temp_dir().join(format!("bitnet-ctx-{}.gguf", std::process::id()));
    w.write_file(&path).unwrap();
    let e = load::load(&path, LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    std::fs::remove_file(&path).ok();
    assert!(e.contains("context length 4294967295"), "{e}");
}
