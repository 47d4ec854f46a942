#!/usr/bin/env bash
# mbrl-gpu (cpu backend) next to mbrl-lib 0.2.0 + PyTorch (CPU), in one run, on the same threads.
#
#   scripts/bench_vs_mbrl_lib.sh [--setup-only] [--no-build] [options of scripts/mbrl_lib_bench.py]
#
# e.g. scripts/bench_vs_mbrl_lib.sh --rounds 3 --threads 2 --json > side_by_side.jsonl
#
# 1. Makes (once) a virtual environment at .tools/mbrl-lib-venv (MBRL_LIB_VENV overrides; .tools/
#    is git-ignored) with torch (PyPI's default wheel; TORCH_SPEC overrides, e.g. "torch==2.5.1"),
#    numpy, gymnasium 1.x, hydra-core 1.3.8, omegaconf 2.3.1, termcolor, tqdm, and mbrl 0.2.0
#    installed with --no-deps: its own pins (hydra-core 1.0.3, omegaconf < 2.1, gymnasium 0.26.3)
#    do not resolve or import on Python 3.11; its PETS path needs only the packages above.
# 2. Builds target/release/mbrl-gpu if it is missing (not with --no-build).
# 3. Runs scripts/mbrl_lib_bench.py: alternating rounds of `mbrl-gpu bench plan|model --json
#    --backend cpu` and mbrl-lib's PETS `act` (pets_cartpole) and ModelTrainer epoch, then a
#    table (stderr) and, with --json, one JSON line per comparison (stdout).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${MBRL_LIB_VENV:-.tools/mbrl-lib-venv}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch}"

setup_only=0
build=1
pass=()
for a in "$@"; do
    case "$a" in
        --setup-only) setup_only=1 ;;
        --no-build) build=0 ;;
        -h|--help)
            sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
            echo
            [ -x "$venv/bin/python" ] && "$venv/bin/python" scripts/mbrl_lib_bench.py --help
            exit 0 ;;
        *) pass+=("$a") ;;
    esac
done

stamp="$venv/.mbrl-lib-0.2.0-ready"
if [ ! -f "$stamp" ]; then
    echo "== making $venv (torch, gymnasium 1.x, hydra-core 1.3.8, omegaconf 2.3.1, mbrl 0.2.0)" >&2
    mkdir -p "$(dirname "$venv")"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "$torch_spec" numpy 'gymnasium>=1,<2' \
        hydra-core==1.3.8 omegaconf==2.3.1 termcolor tqdm
    "$venv/bin/python" -m pip install --quiet --no-deps mbrl==0.2.0
    # Fails here, not halfway through a run, if mbrl's PETS path lacks a module.
    "$venv/bin/python" -c 'import mbrl.models, mbrl.planning, mbrl.util.common
import mbrl.env.cartpole_continuous, mbrl.env.reward_fns, mbrl.env.termination_fns'
    touch "$stamp"
fi
"$venv/bin/python" -m pip list 2>/dev/null |
    grep -E -i '^(torch|numpy|gymnasium|hydra-core|omegaconf|mbrl) ' >&2 || true
[ "$setup_only" = 1 ] && exit 0

bin="target/release/mbrl-gpu"
if [ ! -x "$bin" ]; then
    if [ "$build" = 1 ]; then
        echo "== cargo build --release (no $bin yet)" >&2
        cargo build --release --bin mbrl-gpu >&2
    else
        echo "no $bin: build it with cargo build --release, or drop --no-build" >&2
        exit 1
    fi
fi

exec "$venv/bin/python" scripts/mbrl_lib_bench.py --mbrl-gpu "$bin" "${pass[@]+"${pass[@]}"}"
