//! Compile every CUDA kernel with NVRTC (no GPU or driver needed, only libnvrtc), so that a
//! kernel that does not compile fails CI. Skipped, with a message, when libnvrtc is absent;
//! set BITNET_REQUIRE_NVRTC=1 to make its absence a failure.
#![cfg(feature = "cuda")]

use bitnet_core::cuda;

#[test]
fn all_kernels_compile_with_nvrtc() {
    if !cuda::nvrtc_available() {
        if std::env::var_os("BITNET_REQUIRE_NVRTC").is_some() {
            panic!("BITNET_REQUIRE_NVRTC is set but libnvrtc.so was not found");
        }
        eprintln!("skipped: libnvrtc not found (no CUDA toolkit or nvidia-cuda-nvrtc wheel)");
        return;
    }
    for arch in ["compute_90", "compute_80"] {
        let ptx = match cuda::compile_ptx(arch) {
            Ok(p) => p,
            Err(e) => panic!("NVRTC failed for {arch}:\n{e}"),
        };
        for name in [
            "tern_gemv_r4",
            "tern_gemv_r4s2",
            "tern_gemv_r4s2u1",
            "tern_gemv_qkv_r4",
            "tern_gemv_qkv_r4s2u1",
            "tern_gemv_qkv_r4s2",
            "tern_gemm",
            "rmsnorm_quant",
            "rmsnorm_f32",
            "rope_kv",
            "embed_rows",
            "head_gemv",
            "head_i8",
            "head_q6_r1",
            "head_q6_r8",
            "rmsnorm_q8k",
            "argmax_f32",
            "copy_u4",
            "attention",
            "attn_decode",
            "attn_decode_cluster",
            "attn_decode_gqa",
            "gpu_sleep",
            "decode_layers_d1",
            "decode_layers_d2",
            "decode_layers_d4",
            "decode_layers_d8",
        ] {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{arch}: kernel {name} missing from the PTX"
            );
        }
        // The prefill product must use the int8 tensor cores, the decode product dp4a.
        assert!(ptx.contains("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32"));
        assert!(ptx.contains("dp4a"));
        // sm_90: programmatic dependent launch in the kernels; older: compiled out.
        assert_eq!(ptx.contains("griddepcontrol.wait"), arch == "compute_90");
        // sm_90: the decode attention merges a cluster's blocks through distributed shared
        // memory.
        assert_eq!(ptx.contains("mapa.shared::cluster"), arch == "compute_90");
        if let Some(dir) = std::env::var_os("BITNET_PTX_OUT") {
            std::fs::write(std::path::Path::new(&dir).join(format!("{arch}.ptx")), &ptx).unwrap();
        }
        eprintln!(
            "{arch}: {} kernels compiled, {} bytes of PTX",
            13,
            ptx.len()
        );
    }
}

#[test]
fn a_syntax_error_is_reported_not_panicked() {
    if !cuda::nvrtc_available() {
        eprintln!("skipped: libnvrtc not found");
        return;
    }
    let bad = "extern \"C\" __global__ void k(int* p) { p[0] = ; }";
    let r = cuda::compile_source(bad, "compute_90");
    assert!(r.is_err(), "NVRTC accepted a syntax error");
}
