#!/usr/bin/env python3
"""MPPI planning time per action next to pytorch_mppi, in one run on the same threads.
Run through ``scripts/bench_mppi_peer.sh``.

Theirs: pytorch_mppi's ``MPPI.command(state)`` on Pendulum-v1's true dynamics, written as
the batched torch functions of pytorch_mppi's own pendulum example (tests/pendulum.py: its
dynamics, which update θ before clamping θ̇, unlike Gymnasium, and its running cost
angle_normalize(θ)² + 0.1 θ̇², with no action term), at K = 1000 samples, horizon T = 30,
noise covariance [[1.0]], lambda_ = 1, u in [-2, 2], float32 on the CPU, with
``torch.set_num_threads(--threads)``. The calls run a closed loop from the example's
downward start [π, 1] (state stepped with the commanded action, 200-step episodes, then
``reset``), so every timed call warm-starts from the previous plan as in real use; after
``--warmup`` calls, ``--reps`` calls are timed one by one with ``time.perf_counter``.

Ours: ``mbrl-gpu bench plan --json --optimizer mppi --backend <--backend>`` with
RAYON_NUM_THREADS = --threads; every row whose name contains "mppi" is passed through.

Prints a short table and, with --json, one JSON object per line to stdout (the table then
goes to stderr).
"""
import argparse
import importlib.metadata
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mbrl-gpu", default="target/release/mbrl-gpu")
    p.add_argument("--backend", default="cpu", help="backend of `mbrl-gpu bench plan`")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=200, help="timed command() calls")
    p.add_argument("--warmup", type=int, default=20, help="untimed command() calls first")
    p.add_argument("--skip-ours", action="store_true", help="time pytorch_mppi only")
    p.add_argument("--json", action="store_true")
    return p.parse_args()


ARGS = parse_args()
K, T = 1000, 30
DTYPE = torch.float32


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def dynamics(state, action):
    """pytorch_mppi's pendulum example (Gym's true dynamics, in its own order), batched:
    state (K, 2) = [θ, θ̇], action (K, 1) -> next state (K, 2)."""
    g, m, l, dt = 10.0, 1.0, 1.0, 0.05
    th, thdot = state[:, 0:1], state[:, 1:2]
    u = torch.clamp(action, -2.0, 2.0)
    newthdot = thdot + (-3 * g / (2 * l) * torch.sin(th + math.pi) + 3.0 / (m * l ** 2) * u) * dt
    newth = th + newthdot * dt
    newthdot = torch.clamp(newthdot, -8.0, 8.0)
    return torch.cat((newth, newthdot), dim=1)


def angle_normalize(x):
    return ((x + math.pi) % (2 * math.pi)) - math.pi


def running_cost(state, action):
    """pytorch_mppi's pendulum example: angle_normalize(θ)² + 0.1 θ̇² (K,)."""
    return angle_normalize(state[:, 0]) ** 2 + 0.1 * state[:, 1] ** 2


def pytorch_mppi_times():
    """Milliseconds of each timed ``command`` call, and the returns of the finished
    episodes (Pendulum-v1's reward, as a check that the controller swings up)."""
    from pytorch_mppi import MPPI

    torch.manual_seed(0)
    ctrl = MPPI(dynamics, running_cost, 2, torch.tensor([[1.0]], dtype=DTYPE),
                num_samples=K, horizon=T, device="cpu", lambda_=1.0,
                u_min=torch.tensor([-2.0], dtype=DTYPE), u_max=torch.tensor([2.0], dtype=DTYPE))
    start = torch.tensor([math.pi, 1.0], dtype=DTYPE)
    state, steps, ret, returns, times = start.clone(), 0, 0.0, [], []
    for i in range(ARGS.warmup + ARGS.reps):
        t0 = time.perf_counter()
        action = ctrl.command(state)
        dt = time.perf_counter() - t0
        if i >= ARGS.warmup:
            times.append(dt * 1e3)
        u = float(torch.clamp(action, -2.0, 2.0)[0])
        s = state[None]
        ret -= float(running_cost(s, None)[0]) + 0.001 * u * u
        state = dynamics(s, action.reshape(1, 1))[0]
        steps += 1
        if steps == 200:
            returns.append(ret)
            state, steps, ret = start.clone(), 0, 0.0
            ctrl.reset()
    return times, returns


def ours():
    """Our rows (dicts) whose name contains "mppi"; [] with a note when that fails."""
    cmd = [ARGS.mbrl_gpu, "bench", "plan", "--json", "--optimizer", "mppi",
           "--backend", ARGS.backend, "--reps", str(ARGS.reps)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(ARGS.threads))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except OSError as e:
        log(f"note: {' '.join(cmd)} could not start ({e}); pytorch_mppi's row only")
        return []
    if r.returncode != 0:
        log(f"note: {' '.join(cmd)} failed (exit {r.returncode}); pytorch_mppi's row only:\n"
            + r.stderr.strip())
        return []
    rows = []
    for line in r.stdout.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "mppi" in str(row.get("name", "")):
            rows.append(row)
    if not rows:
        log(f"note: {' '.join(cmd)} printed no row whose name contains \"mppi\"")
    return rows


def nearest_rank(sorted_values, q):
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def main():
    torch.set_num_threads(ARGS.threads)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines()
                if l.startswith("Model name")), "unknown")
    versions = {"torch": torch.__version__,
                "pytorch_mppi": importlib.metadata.version("pytorch-mppi")}
    log(f"CPU: {cpu}; threads {ARGS.threads}; torch {versions['torch']}; "
        f"pytorch_mppi {versions['pytorch_mppi']}")
    log(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())

    # Ours first, so that the two never share the cores.
    our_rows = [] if ARGS.skip_ours else ours()
    times, returns = pytorch_mppi_times()
    log(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    times.sort()
    theirs = {"name": f"pytorch_mppi_pendulum_k{K}_t{T}",
              "median_ms": statistics.median(times), "p99_ms": nearest_rank(times, 99),
              "min_ms": times[0], "reps": ARGS.reps, "threads": ARGS.threads,
              "episode_returns": [round(r, 2) for r in returns], "cpu": cpu, **versions}

    # The table goes to stderr when stdout carries the JSON lines.
    show = log if ARGS.json else print
    def ms(row, key):
        v = row.get(key)
        return f"{v:8.3f} ms" if isinstance(v, (int, float)) else "       -   "

    for row in our_rows + [theirs]:
        show(f"{row['name']:<40} median {ms(row, 'median_ms')}  p99 {ms(row, 'p99_ms')}")
    if returns:
        show(f"pytorch_mppi closed-loop returns (200-step episodes): {theirs['episode_returns']}")
    if ARGS.json:
        for row in our_rows + [theirs]:
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
