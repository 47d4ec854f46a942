#!/usr/bin/env bash
# SAC gradient steps/s next to Stable-Baselines3 and MBPO env steps/s next to mbrl-lib 0.2.0,
# in one run, on the same threads.
#
#   scripts/bench_policy_peers.sh [--no-build] [options of scripts/policy_peers_bench.py]
#
# e.g. scripts/bench_policy_peers.sh --rounds 3 --threads 2 --json > policy_peers.jsonl
#
# Uses the virtual environment of scripts/bench_vs_mbrl_lib.sh (made there on first use),
# adding stable-baselines3 2.x, imageio (imported by mbrl-lib's MBPO module) and safetensors.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${MBRL_LIB_VENV:-.tools/mbrl-lib-venv}"
build=1
pass=()
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        *) pass+=("$a") ;;
    esac
done
scripts/bench_vs_mbrl_lib.sh --setup-only
stamp="$venv/.policy-peers-ready"
if [ ! -f "$stamp" ]; then
    echo "== adding stable-baselines3, imageio and safetensors to $venv" >&2
    "$venv/bin/python" -m pip install --quiet 'stable-baselines3>=2,<3' imageio safetensors
    "$venv/bin/python" -c 'import stable_baselines3, mbrl.algorithms.mbpo'
    touch "$stamp"
fi
if [ "$build" = 1 ]; then
    cargo build --release --quiet
fi
exec "$venv/bin/python" scripts/policy_peers_bench.py "${pass[@]+"${pass[@]}"}"
