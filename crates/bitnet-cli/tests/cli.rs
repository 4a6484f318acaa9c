//! End-to-end tests of the `bitnet` binary on the bundled fixtures: the commands work, and
//! bad input gives a one-line error naming the problem and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn bitnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(args)
        .output()
        .expect("run bitnet")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure with a message, not a panic (exit code 101 and "panicked" are Rust's).
fn assert_clean_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert_ne!(o.status.code(), Some(101), "panicked: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(
        err.contains(needle),
        "stderr should mention `{needle}`: {err}"
    );
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bitnet-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn i2s() -> String {
    fixtures()
        .join("tiny-bitnet/gguf/tiny-bitnet-i2_s.gguf")
        .display()
        .to_string()
}

/// `bitnet convert` of the tiny I2_S GGUF to `out` with the vocabulary of `tokenizer`.
fn convert_tiny_with_tokenizer(out: &str, tokenizer: &str) -> Output {
    bitnet(&["convert", &i2s(), "-o", out, "--tokenizer", tokenizer])
}

#[test]
fn generate_json_is_greedy_and_reproducible() {
    let run = || {
        bitnet(&[
            "generate",
            "-m",
            &i2s(),
            "-p",
            "Permission is granted to",
            "-n",
            "8",
            "--temp",
            "0",
            "--json",
            "-t",
            "2",
        ])
    };
    let a = run();
    assert!(a.status.success(), "{}", stderr(&a));
    let v: serde_json::Value = serde_json::from_str(stdout(&a).trim()).unwrap();
    assert_eq!(
        v["prompt_ids"],
        serde_json::json!([1016, 47, 412, 627, 439, 933, 362])
    );
    assert_eq!(v["ids"].as_array().unwrap().len(), 8);
    // The HF reference's greedy continuation starts 140, 140, 296 (golden.json, margins clear).
    assert_eq!(v["ids"][0], 140);
    assert!(v["prefill_tok_s"].as_f64().unwrap() > 0.0);
    let b: serde_json::Value = serde_json::from_str(stdout(&run()).trim()).unwrap();
    assert_eq!(v["ids"], b["ids"]);
    assert_eq!(v["text"], b["text"]);
}

#[test]
fn generate_streams_text_and_reports_speed() {
    let o = bitnet(&[
        "generate",
        "-m",
        &fixtures().join("tiny-bitnet").display().to_string(),
        "-p",
        "The software",
        "-n",
        "4",
        "--temp",
        "0.7",
        "--seed",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("The software"));
    assert!(stderr(&o).contains("tok/s"));
}

#[test]
fn a_float_lm_head_can_be_quantized_at_load() {
    let model = i2s();
    let gen = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "-m",
            &model,
            "-p",
            "Permission is granted to",
            "-n",
            "3",
            "--temp",
            "0",
            "--json",
        ];
        args.extend_from_slice(extra);
        bitnet(&args)
    };
    // Kept as stored, with a hint.
    let o = gen(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("--lm-head-type q6_k"), "{}", stderr(&o));
    for t in ["q6_k", "q8_0"] {
        let o = gen(&["--lm-head-type", t]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("LM head quantized at load"),
            "{}",
            stderr(&o)
        );
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        // The reference's greedy continuation starts with 140 (golden.json, clear margin).
        assert_eq!(v["ids"][0], 140, "{t}");
    }
    let o = bitnet(&[
        "bench",
        "-m",
        &model,
        "-p",
        "4",
        "-n",
        "2",
        "-r",
        "1",
        "-t",
        "1",
        "--lm-head-type",
        "q6_k",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("LM head quantized at load"),
        "{}",
        stderr(&o)
    );
    let o = bitnet(&["bench", "--synthetic", "2b4t", "--lm-head-type", "q8_0"]);
    assert_clean_failure(&o, "--lm-head-type");
    let o = gen(&["--lm-head-type", "q4_0"]);
    assert_clean_failure(&o, "q4_0");
}

#[test]
fn sampling_is_seeded_and_independent_of_threads() {
    let run = |t: &str| {
        let o = bitnet(&[
            "generate",
            "-m",
            &i2s(),
            "-p",
            "Permission",
            "-n",
            "12",
            "--temp",
            "1.0",
            "--seed",
            "7",
            "--json",
            "-t",
            t,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        v["ids"].clone()
    };
    assert_eq!(run("1"), run("2"));
}

#[test]
fn device_cuda_without_a_usable_gpu_falls_back_to_the_cpu_with_a_reason() {
    let o = bitnet(&[
        "generate",
        "-m",
        &i2s(),
        "-p",
        "Permission",
        "-n",
        "2",
        "--temp",
        "0",
        "--device",
        "cuda",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("running on the CPU") || err.contains("device: "),
        "{err}"
    );
}

#[test]
fn logits_writes_one_row_per_position() {
    let out = tmp("logits.json");
    let o = bitnet(&[
        "logits",
        "-m",
        &i2s(),
        "--ids",
        "1016,47,412",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["ids"], serde_json::json!([1016, 47, 412]));
    let rows = v["logits"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.as_array().unwrap().len() == 1024));
}

#[test]
fn tokenize_from_every_kind_of_source_agrees() {
    let text = "Permission is granted to";
    let want = serde_json::json!({"ids": [47, 412, 627, 439, 933, 362]});
    for src in [
        i2s(),
        fixtures().join("tiny-bitnet").display().to_string(),
        fixtures()
            .join("tiny-bitnet/tokenizer.json")
            .display()
            .to_string(),
    ] {
        let o = bitnet(&["tokenize", "-m", &src, "-p", text, "--json"]);
        assert!(o.status.success(), "{src}: {}", stderr(&o));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(stdout(&o).trim()).unwrap(),
            want,
            "{src}"
        );
    }
    let o = bitnet(&["tokenize", "-m", &i2s(), "-p", text, "--bos"]);
    assert!(stdout(&o).starts_with("[1016, 47"), "{}", stdout(&o));
}

#[test]
fn inspect_lists_tensors_and_the_tokenizer_note() {
    let o = bitnet(&["inspect", &i2s()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains("blk.0.attn_q.weight") && s.contains("I2_S"),
        "{s}"
    );
    assert!(s.contains("general.architecture"), "{s}");
    assert!(
        s.to_lowercase().contains("llama-3"),
        "the missing tokenizer.ggml.pre note: {s}"
    );
}

#[test]
fn perplexity_runs_like_llama_perplexity() {
    let o = bitnet(&[
        "perplexity",
        "-m",
        &i2s(),
        "-f",
        fixtures()
            .join("tiny-bitnet/gguf/ppl.txt")
            .to_str()
            .unwrap(),
        "-c",
        "128",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    let ppl: f64 = s.trim().rsplit(' ').next().unwrap().parse().unwrap();
    // bitnet.cpp's I2_S perplexity on this file is 1076.4178 (its own tokenization).
    assert!((ppl - 1076.4178).abs() / 1076.4178 < 0.01, "{s}");
}

#[test]
fn convert_round_trips_to_identical_logits() {
    for ty in ["i2_s", "tq2_0", "tq1_0"] {
        let out = tmp(&format!("tiny-{ty}.gguf"));
        let hf = fixtures().join("tiny-bitnet").display().to_string();
        let o = bitnet(&[
            "convert",
            &hf,
            "-o",
            out.to_str().unwrap(),
            "--type",
            ty,
            "--embed-type",
            "f32",
        ]);
        assert!(o.status.success(), "{ty}: {}", stderr(&o));
        let ids = "1016,51,71,68,547";
        let a = bitnet(&["logits", "-m", &hf, "--ids", ids]);
        let b = bitnet(&["logits", "-m", out.to_str().unwrap(), "--ids", ids]);
        assert!(b.status.success(), "{ty}: {}", stderr(&b));
        // Same trits and embedding values; the scale is f32 (I2_S) or f16 (TQ): only the
        // LM head's summation order (f32 vs bf16 kernel) or the f16 scale differ.
        let parse = |o: &Output| -> Vec<f64> {
            let v: serde_json::Value = serde_json::from_str(stdout(o).trim()).unwrap();
            v["logits"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
                .collect()
        };
        let max = parse(&a)
            .iter()
            .zip(parse(&b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        let tol = if ty == "i2_s" { 1e-5 } else { 6e-2 };
        assert!(max <= tol, "{ty}: max |Δlogit| {max} > {tol}");
        let t = bitnet(&[
            "tokenize",
            "-m",
            out.to_str().unwrap(),
            "-p",
            "Permission is granted to",
            "--json",
        ]);
        assert_eq!(
            stdout(&t).trim(),
            r#"{"ids":[47,412,627,439,933,362]}"#,
            "{ty}"
        );
    }
}

#[test]
fn convert_takes_the_vocabulary_from_a_tokenizer_option() {
    // The tiny GGUF re-written with the vocabulary of the HF directory's tokenizer.json.
    let out = tmp("tiny-tok.gguf");
    let out = out.to_str().unwrap();
    let tj = fixtures().join("tiny-bitnet/tokenizer.json");
    let o = convert_tiny_with_tokenizer(out, tj.to_str().unwrap());
    assert!(o.status.success(), "{}", stderr(&o));
    let t = bitnet(&[
        "tokenize",
        "-m",
        out,
        "-p",
        "Permission is granted to",
        "--json",
    ]);
    assert_eq!(stdout(&t).trim(), r#"{"ids":[47,412,627,439,933,362]}"#);
    let i = bitnet(&["inspect", out]);
    assert!(
        stdout(&i).contains("tokenizer.ggml.bos_token_id"),
        "{}",
        stdout(&i)
    );
    // Llama-3's 128,256 tokens do not fit the tiny model's 1,024 embedding rows.
    let l3 = fixtures().join("llama3-tokenizer");
    let o = convert_tiny_with_tokenizer(out, l3.to_str().unwrap());
    assert_clean_failure(&o, "128256 tokens");
    let o = convert_tiny_with_tokenizer(out, "/nonexistent/tok.json");
    assert_clean_failure(&o, "/nonexistent/tok.json");
}

#[test]
fn bench_synthetic_json_has_the_promised_fields() {
    let o = bitnet(&[
        "bench",
        "-m",
        &i2s(),
        "-p",
        "16",
        "-n",
        "4",
        "-r",
        "1",
        "-t",
        "1,2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 4);
    assert_eq!(r[0]["test"], "pp16");
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0 && v["min_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn bad_input_fails_cleanly() {
    // Missing file.
    assert_clean_failure(
        &bitnet(&["generate", "-m", "/nonexistent/model.gguf", "-p", "x"]),
        "/nonexistent/model.gguf",
    );
    // Not a model.
    let junk = tmp("junk.bin");
    std::fs::write(&junk, b"hello world, not a model").unwrap();
    assert_clean_failure(
        &bitnet(&["generate", "-m", junk.to_str().unwrap(), "-p", "x"]),
        "junk.bin",
    );
    // Truncated GGUF, at several cut points.
    let full = std::fs::read(fixtures().join("tiny-bitnet/gguf/tiny-bitnet-i2_s.gguf")).unwrap();
    for cut in [3usize, 20, 1000, full.len() / 2, full.len() - 1] {
        let p = tmp(&format!("trunc-{cut}.gguf"));
        std::fs::write(&p, &full[..cut]).unwrap();
        assert_clean_failure(
            &bitnet(&["generate", "-m", p.to_str().unwrap(), "-p", "x", "-n", "2"]),
            &format!("trunc-{cut}.gguf"),
        );
    }
    // Bad flags and values.
    assert_clean_failure(
        &bitnet(&["generate", "-m", &i2s(), "-p", "x", "--top-p", "1.5"]),
        "top",
    );
    assert_clean_failure(
        &bitnet(&["generate", "-m", &i2s(), "--ids", "1,x,3"]),
        "--ids",
    );
    assert_clean_failure(
        &bitnet(&["generate", "-m", &i2s(), "--ids", "5000"]),
        "5000",
    );
    assert_clean_failure(
        &bitnet(&["generate", "-m", &i2s(), "-p", "x", "-n", "600"]),
        "context",
    );
    assert_clean_failure(
        &bitnet(&["generate", "-m", &i2s(), "-p", "x", "--bogus"]),
        "--bogus",
    );
    assert_clean_failure(&bitnet(&["bench", "--synthetic", "7b", "-r", "1"]), "7b");
    let out = tmp("never.gguf");
    let out = out.to_str().unwrap();
    assert_clean_failure(&bitnet(&["convert", "--synthetic", "7b", "-o", out]), "7b");
    assert_clean_failure(&bitnet(&["convert", "-o", out]), "<INPUT>");
    assert_clean_failure(
        &bitnet(&["convert", &i2s(), "--synthetic", "2b4t", "-o", out]),
        "--synthetic",
    );
    assert_clean_failure(
        &bitnet(&["generate", "-m", &i2s(), "-p", "x", "--device", "gpu0"]),
        "--device",
    );
    // A config.json that is not JSON.
    let dir = tmp("badcfg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    assert_clean_failure(
        &bitnet(&["generate", "-m", dir.to_str().unwrap(), "-p", "x"]),
        "config.json",
    );
}

/// `bitnet chat` with `input` on standard input.
fn chat(model: &str, input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["chat", "-m", model, "-n", "8", "--temp", "0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run bitnet chat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().expect("wait for bitnet chat")
}

#[test]
fn chat_renders_the_template_and_bounds_its_memory() {
    // Two turns with the tiny model's own template; end of input quits.
    let o = chat(&i2s(), "hello\nand again\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).matches("> ").count(), 3, "{}", stdout(&o));
    // The same model with a template that materializes 10¹⁰ values (240 GB): an error
    // naming the limit, not an aborted process.
    let dir = tmp("hostile-template");
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixtures().join("tiny-bitnet");
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("tokenizer_config.json")).unwrap()).unwrap();
    cfg["chat_template"] = "{{ (range(100000) * 100000) | list | length }}".into();
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let out = tmp("hostile-template.gguf");
    let out = out.to_str().unwrap();
    let o = convert_tiny_with_tokenizer(out, dir.join("tokenizer.json").to_str().unwrap());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_clean_failure(&chat(out, "hello\n"), "more than 512 MiB of memory");
}
