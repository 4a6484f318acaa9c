#!/usr/bin/env bash
# Same-run comparison with bitnet.cpp: alternates its `llama-bench` and `bitnet bench` on one
# GGUF file, so both see the same machine state. Builds nothing: pass a bitnet.cpp build.
#
#   scripts/vs-bitnetcpp.sh LLAMA_BENCH BITNET MODEL.gguf [THREADS] [ROUNDS] [-- EXTRA BITNET ARGS]
#
# MODEL must carry a tokenizer (llama.cpp refuses a file without one), e.g.
#   bitnet convert --synthetic 2b4t --tokenizer fixtures/llama3-tokenizer -o syn.gguf
# Environment: PP (default 128), TG (default 128), REPS (default 3), PIN (a taskset CPU list).
set -u -o pipefail
if [ $# -lt 3 ]; then
    sed -n '2,10p' "$0"
    exit 2
fi
bench=$1 ours=$2 model=$3
threads=${4:-2}
rounds=${5:-2}
shift $(($# < 5 ? $# : 5))
[ "${1:-}" = "--" ] && shift
pp=${PP:-128} tg=${TG:-128} reps=${REPS:-3}
pin=()
[ -n "${PIN:-}" ] && pin=(taskset -c "$PIN")
for f in "$bench" "$ours" "$model"; do
    [ -e "$f" ] || { echo "not found: $f" >&2; exit 2; }
done
export LD_LIBRARY_PATH="$(dirname "$bench"):${LD_LIBRARY_PATH:-}"

rows=()
# measure ENGINE ROUND COMMAND...: run it, add its pp/tg rows (the tok/s column is the
# second last of both tables).
measure() {
    local engine=$1 round=$2 out v t
    shift 2
    out=$("${pin[@]}" "$@" 2>&1) || {
        echo "$out" >&2
        exit 1
    }
    for t in "pp$pp" "tg$tg"; do
        v=$(echo "$out" | grep -E "\| +$t +\|" | tail -1 | awk -F'|' '{print $(NF-1)}' | xargs)
        rows+=("| $round | $engine | $t | $v |")
    done
}
for r in $(seq 1 "$rounds"); do
    measure bitnet.cpp "$r" "$bench" -m "$model" -p "$pp" -n "$tg" -t "$threads" -r "$reps"
    measure bitnet-rust "$r" "$ours" bench -m "$model" -p "$pp" -n "$tg" -t "$threads" -r "$reps" "$@"
done
echo "threads $threads, $(uptime | sed 's/.*load/load/')"
echo "| round | engine | test | tok/s |"
echo "| --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
