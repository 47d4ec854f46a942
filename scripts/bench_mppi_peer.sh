#!/usr/bin/env bash
# MPPI planning time per action next to pytorch_mppi (Pendulum-v1, true dynamics, K = 1000,
# T = 30, float32 on the CPU), in one run, on the same threads.
#
#   scripts/bench_mppi_peer.sh [--no-build] [options of scripts/mppi_peer_bench.py]
#
# e.g. scripts/bench_mppi_peer.sh --threads 2 --reps 200 --json > mppi_peer.jsonl
#
# Uses the virtual environment of scripts/bench_vs_mbrl_lib.sh (made there on first use),
# adding pytorch-mppi 0.9.1 (which pulls arm-pytorch-utilities, matplotlib and scipy). pip may
# report that mbrl 0.2.0's own pins are unmet: bench_vs_mbrl_lib.sh installs it with --no-deps
# on purpose, and nothing here uses mbrl.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${MBRL_LIB_VENV:-.tools/mbrl-lib-venv}"
mppi_spec="pytorch-mppi==0.9.1"
build=1
pass=()
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        *) pass+=("$a") ;;
    esac
done
scripts/bench_vs_mbrl_lib.sh --setup-only
stamp="$venv/.${mppi_spec/==/-}-ready"
if [ ! -f "$stamp" ]; then
    echo "== adding $mppi_spec to $venv" >&2
    "$venv/bin/python" -m pip install --quiet "$mppi_spec"
    "$venv/bin/python" -c 'from pytorch_mppi import MPPI'
    touch "$stamp"
fi
if [ "$build" = 1 ]; then
    cargo build --release --quiet
fi
exec "$venv/bin/python" scripts/mppi_peer_bench.py "${pass[@]+"${pass[@]}"}"
