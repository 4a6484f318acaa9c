#!/usr/bin/env bash
# CUDA backend check, run on a GPU machine from the repository root. Builds nothing: it runs
# binaries prebuilt on the build machine and placed in .gpu/ (see `prepare` below):
#   cuda_nvrtc    NVRTC compiles every kernel            (crates/bitnet-core/tests/cuda_nvrtc.rs)
#   cuda_kernels  every kernel vs the CPU reference      (crates/bitnet-core/tests/cuda_kernels.rs)
#   cuda_model    tiny model logits/greedy, GPU vs CPU   (crates/bitnet-models/tests/cuda_model.rs)
#   cuda_bench    copy BW, GEMV GB/s, GEMM, 2B-4T prefill/decode, per-kernel decode profile
#                 (crates/bitnet-models/examples); cuda_bench_before, when present, is the same
#                 benchmark built from an earlier commit, run with --model-only for comparison
# and the CPU kernel tests (.gpu/kernels-test) when present. Prints a summary table last.
#
# prepare (on the build machine):  scripts/gpu-check.sh --prepare
set -u -o pipefail

if [ "${1:-}" = "--prepare" ]; then
    set -e
    mkdir -p .gpu
    cargo build --release -p bitnet-models --features cuda --example cuda_bench
    cp target/release/examples/cuda_bench .gpu/
    for t in "bitnet-core cuda_nvrtc" "bitnet-core cuda_kernels" "bitnet-models cuda_model"; do
        set -- $t
        exe=$(cargo test --release -p "$1" --features cuda --test "$2" --no-run --message-format=json 2>/dev/null \
            | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
        cp "$exe" ".gpu/$2"
    done
    ls -la .gpu
    exit 0
fi

OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | head -3
lscpu | grep -i -E 'model name|flags' | head
if ! ldconfig -p | grep -q 'libnvrtc.so'; then
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -e "$d/libnvrtc.so.13" ] || [ -e "$d/libnvrtc.so" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
    done
fi

results=()
run() {
    local name=$1
    shift
    echo "=== $name: $*"
    local t0=$SECONDS
    if "$@" 2>&1 | tee "$OUT/$name.log"; then
        results+=("| $name | PASS | $((SECONDS - t0)) s |")
    else
        results+=("| $name | FAIL | $((SECONDS - t0)) s |")
    fi
}

run nvrtc .gpu/cuda_nvrtc --nocapture
run kernels .gpu/cuda_kernels --nocapture --test-threads=1
run model .gpu/cuda_model --nocapture
if [ -x .gpu/kernels-test ]; then
    run cpu-kernels .gpu/kernels-test --nocapture
fi
if [ -x .gpu/cuda_bench_before ]; then
    # The previous commit's kernels (built from it with the same profiler) for comparison.
    run bench-before .gpu/cuda_bench_before --model-only
fi
run bench .gpu/cuda_bench ${BENCH_ARGS:-}

echo
echo "## summary"
echo "| check | result | time |"
echo "| --- | --- | --- |"
printf '%s\n' "${results[@]}"
grep -h -E 'rel err|codes off|exact|identical' "$OUT"/kernels.log "$OUT"/model.log 2>/dev/null | sort | uniq -c | sort -rn | head -30
echo
if [ -f "$OUT/bench-before.log" ]; then
    echo "### before"
    grep -h '^|' "$OUT/bench-before.log" 2>/dev/null
    echo "### after"
fi
grep -h '^|' "$OUT/bench.log" 2>/dev/null
grep -h -E '^(device|prefill|decode|copy)' "$OUT/bench.log" 2>/dev/null
