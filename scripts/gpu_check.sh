#!/usr/bin/env bash
# The GPU checks issue 9 asks for whenever a GPU is at hand, as one prepared script: the CUDA
# parity test against the CPU specification, then `bench plan`, `bench model` and SAC's
# `bench policy --only sac_update` on the CUDA
# backend (tensor-core planning, the default on sm_80+, and f32 planning for comparison).
#
# The GPU machine this project is sometimes lent has no Rust toolchain and no network, so the
# binaries are built here and carried:
#
#   scripts/gpu_check.sh pack     # here: release binary + the parity test binary, stripped,
#                                 # into .gpu/ (ignored by git; about 40 MB)
#   scripts/gpu_check.sh run      # there, from the repository root, with .gpu carried:
#                                 # writes gpu_check.log and bench_*.json to $OUT (or .gpu/out)
#
# `run` finds libnvrtc (CUDA 13) in the image's CUDA toolkit or its nvidia-cuda-nvrtc wheel,
# stops each step at a time limit, and keeps going when one fails, so one call brings back
# every figure it could get. Total: about 3–5 minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/.."

pack() {
    set -e
    cargo build --release --bin mbrl-gpu
    # The parity test in the release profile: smaller and faster than the test profile.
    local test_bin
    test_bin=$(cargo test --release --no-run --test cuda_pocl --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda_pocl" and m.get("executable"):
        print(m["executable"])')
    [ -n "$test_bin" ] || { echo "could not find the cuda_pocl test binary" >&2; exit 1; }
    mkdir -p .gpu
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    strip -o .gpu/mbrl-gpu target/release/mbrl-gpu
    strip -o .gpu/cuda_parity "$test_bin"
    du -sh .gpu/mbrl-gpu .gpu/cuda_parity
    echo "carry .gpu and call: bash scripts/gpu_check.sh run"
}

run() {
    local out="${OUT:-.gpu/out}"
    mkdir -p "$out"
    local log="$out/gpu_check.log"
    [ -x .gpu/mbrl-gpu ] && [ -x .gpu/cuda_parity ] || {
        echo "no .gpu/mbrl-gpu or .gpu/cuda_parity: run 'scripts/gpu_check.sh pack' here first and carry .gpu" | tee "$log"
        exit 1
    }
    # libnvrtc.so.13: a toolkit's lib64, or the wheel's folder under the image's python3.
    local d
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
        $(python3 -c 'import nvidia.cuda_nvrtc, os; print(os.path.dirname(nvidia.cuda_nvrtc.__file__) + "/lib")' 2>/dev/null) \
        $(python3 -c 'import nvidia, os; [print(os.path.join(p, "cu13", "lib")) for p in nvidia.__path__]' 2>/dev/null); do
        if ls "$d"/libnvrtc.so* >/dev/null 2>&1; then
            export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            break
        fi
    done
    {
        date -u
        nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
        echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
        .gpu/mbrl-gpu devices 2>&1
    } >"$log"
    step() { # name, seconds, command...
        local name=$1 secs=$2
        shift 2
        echo "== $name: $*" >>"$log"
        local t0=$SECONDS
        timeout "$secs" "$@" >>"$log" 2>&1
        echo "== $name: exit $? after $((SECONDS - t0)) s" >>"$log"
    }
    step parity 240 .gpu/cuda_parity cuda_device_should_match_the_cpu_when_present --nocapture
    step plan_tf32 150 sh -c ".gpu/mbrl-gpu bench plan --backend cuda --json --reps 5 > '$out/bench_plan_tf32.json'"
    step plan_f32 150 sh -c "MBRL_GPU_FP32_PLANNING=1 .gpu/mbrl-gpu bench plan --backend cuda --json --reps 5 > '$out/bench_plan_f32.json'"
    step model 120 sh -c ".gpu/mbrl-gpu bench model --backend cuda --json --reps 5 > '$out/bench_model.json'"
    step sac 90 sh -c ".gpu/mbrl-gpu bench policy --only sac_update --backend cuda --json --reps 5 > '$out/bench_sac.json'"
    cat "$out"/bench_*.json >>"$log" 2>/dev/null
    tail -n 60 "$log"
}

case "${1:-}" in
pack) pack ;;
run) run ;;
*)
    echo "usage: scripts/gpu_check.sh pack|run (see the header)" >&2
    exit 2
    ;;
esac
