#!/usr/bin/env python3
"""Closed-loop control through ``mbrl-gpu serve``, and its latency benchmark.

Every tick (``--rate-hz``) the loop sends the environment's observation, applies the action
the server returns, and steps the environment; the round trip of ``Client.act`` is timed with
``time.perf_counter``. Ticks follow an absolute schedule (tick k starts at t0 + k/rate); a
tick whose work ran past the next tick's start counts as late, and the schedule then restarts
from that moment rather than bursting to catch up.

    mbrl-gpu serve --env pendulum --true-dynamics --listen 127.0.0.1:5555 &
    python3 python/examples/closed_loop.py --address 127.0.0.1:5555 --json

Uses Gymnasium when it imports; otherwise, for Pendulum-v1 only, a built-in copy of its
dynamics, so that the example needs only the standard library.
"""

import argparse
import json
import math
import os
import random
import statistics
import sys
import time

try:
    from mbrl_gpu import Client
except ImportError:  # run from a checkout without `pip install ./python`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from mbrl_gpu import Client


class BuiltinPendulum:
    """Gymnasium's Pendulum-v1 (classic_control/pendulum.py, with its 200-step time limit) in
    pure Python: the same dynamics, reward, reset distribution and observation
    ``[cos θ, sin θ, θ̇]`` (kept as Python floats; the client sends f32 anyway). Its random
    numbers are Python's, so a seed gives other initial states than Gymnasium's."""

    g, m, l, dt = 10.0, 1.0, 1.0, 0.05
    max_speed, max_torque, max_steps = 8.0, 2.0, 200

    def __init__(self):
        self.rng = random.Random()
        self.th = self.thdot = 0.0
        self.steps = 0

    def reset(self, seed=None):
        if seed is not None:
            self.rng.seed(seed)
        self.th = self.rng.uniform(-math.pi, math.pi)
        self.thdot = self.rng.uniform(-1.0, 1.0)
        self.steps = 0
        return self._obs(), {}

    def step(self, action):
        u = min(max(float(action[0]), -self.max_torque), self.max_torque)
        th, thdot = self.th, self.thdot
        # The cost is of the state before the step, as in Gymnasium.
        th_n = ((th + math.pi) % (2 * math.pi)) - math.pi
        cost = th_n ** 2 + 0.1 * thdot ** 2 + 0.001 * u ** 2
        g, m, l, dt = self.g, self.m, self.l, self.dt
        thdot += (3 * g / (2 * l) * math.sin(th) + 3.0 / (m * l ** 2) * u) * dt
        thdot = min(max(thdot, -self.max_speed), self.max_speed)
        self.th, self.thdot = th + thdot * self.dt, thdot
        self.steps += 1
        return self._obs(), -cost, False, self.steps >= self.max_steps, {}

    def _obs(self):
        return [math.cos(self.th), math.sin(self.th), self.thdot]


class GymEnv:
    """A Gymnasium environment seen through flat lists of floats."""

    def __init__(self, gym, name):
        import numpy as np

        self.np = np
        self.env = gym.make(name)
        self.act_dtype = self.env.action_space.dtype
        self.act_shape = self.env.action_space.shape

    def reset(self, seed=None):
        obs, info = self.env.reset(seed=seed)
        return self.np.asarray(obs).ravel().tolist(), info

    def step(self, action):
        # Gymnasium environments expect an array of the action space's dtype and shape.
        a = self.np.asarray(action, dtype=self.act_dtype).reshape(self.act_shape)
        obs, reward, terminated, truncated, info = self.env.step(a)
        return self.np.asarray(obs).ravel().tolist(), float(reward), terminated, truncated, info


def make_env(name):
    try:
        import gymnasium
    except ImportError:
        if name != "Pendulum-v1":
            raise SystemExit(f"{name} needs Gymnasium (pip install gymnasium); without it "
                             f"only Pendulum-v1 runs, on a built-in copy")
        print("gymnasium not found: using the built-in Pendulum-v1", file=sys.stderr)
        return BuiltinPendulum()
    return GymEnv(gymnasium, name)


def percentile(sorted_values, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    k = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--address", required=True, help="HOST:PORT or unix:/path of mbrl-gpu serve")
    p.add_argument("--env", default="Pendulum-v1", help="Gymnasium environment ID")
    p.add_argument("--rate-hz", type=float, default=50.0, help="control rate")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to run")
    p.add_argument("--deadline-ms", type=float, default=0.0,
                   help="planning deadline per action (0: the server's --deadline-ms)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first env.reset")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--learn", action="store_true",
                   help="send every transition with ADD (when the server is learning)")
    return p.parse_args()


def main():
    args = parse_args()
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    env = make_env(args.env)
    with Client(args.address) as client:
        info = client.hello()
        log(f"server {info.get('server')}: env {info.get('env')}, dynamics "
            f"{info.get('dynamics')}, deadline {info.get('deadline_ms')} ms, planner "
            f"{json.dumps(info.get('planner'))}")
        learn = args.learn and bool(info.get("learning"))
        if args.learn and not learn:
            log("--learn: the server does not accept transitions (learning is false); "
                "running without ADD")
        obs, _ = env.reset(seed=args.seed)
        client.reset()

        period = 1.0 / args.rate_hz
        ticks = max(1, round(args.seconds * args.rate_hz))
        latencies, plan_ms, returns = [], [], []
        deadline_misses = deadline_cuts = late_ticks = fallbacks = 0
        ret = 0.0
        next_tick = time.perf_counter()
        try:
            for _ in range(ticks):
                t0 = time.perf_counter()
                reply = client.act(obs, args.deadline_ms)
                latencies.append((time.perf_counter() - t0) * 1e3)
                plan_ms.append(reply.plan_ms)
                # A miss: the answer came after the deadline. A cut: fewer planner iterations
                # ran so that it would not.
                deadline_misses += reply.late
                deadline_cuts += reply.deadline_hit
                fallbacks += reply.fallback
                next_obs, reward, terminated, truncated, _ = env.step(reply.action)
                ret += reward
                if learn:
                    client.add([(obs, reply.action, reward, next_obs, terminated)])
                obs = next_obs
                if terminated or truncated:
                    returns.append(ret)
                    log(f"episode {len(returns)}: return {ret:.2f}")
                    ret = 0.0
                    obs, _ = env.reset()
                    client.reset()
                next_tick += period
                delay = next_tick - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                else:
                    late_ticks += 1
                    next_tick = time.perf_counter()
        except KeyboardInterrupt:
            log("interrupted: reporting the ticks so far")

    lat = sorted(latencies)
    result = {
        "n": len(lat),
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else None,
        "deadline_misses": deadline_misses,
        "deadline_cuts": deadline_cuts,
        "late_ticks": late_ticks,
        "fallbacks": fallbacks,
        "episodes": len(returns),
        "mean_return": statistics.fmean(returns) if returns else None,
        # The server's own planning time, to tell transport overhead from planning.
        "plan_p50_ms": statistics.median(plan_ms) if plan_ms else None,
        "env": args.env,
        "rate_hz": args.rate_hz,
        "deadline_ms": args.deadline_ms,
    }
    if args.json:
        print(json.dumps(result))
    elif not lat:
        print("no action completed")
    else:
        mean = result["mean_return"]
        print(f"{result['n']} actions at {args.rate_hz:g} Hz: round trip p50 "
              f"{result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms, max "
              f"{result['max_ms']:.3f} ms (server planning p50 {result['plan_p50_ms']:.3f} ms); "
              f"{deadline_misses} deadline misses ({deadline_cuts} cut short), {late_ticks} late ticks, {fallbacks} fallbacks; "
              f"{len(returns)} episodes, mean return {'-' if mean is None else f'{mean:.2f}'}")


if __name__ == "__main__":
    main()
