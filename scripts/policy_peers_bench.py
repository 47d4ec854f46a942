#!/usr/bin/env python3
"""SAC gradient steps/s next to Stable-Baselines3, MBPO env steps/s next to mbrl-lib 0.2.0,
in one run on the same threads. Run through ``scripts/bench_policy_peers.sh``.

Ours: ``mbrl-gpu bench policy --json --backend cpu`` (rows ``sac_update_*`` and
``mbpo_env_step_cartpole``, each also with ``_bf16``: SAC's training products in bf16 on
AMX tiles; the peers stay float32), with RAYON_NUM_THREADS = --threads.

Stable-Baselines3: ``SAC("MlpPolicy", env, batch_size=256, net_arch=[256, 256])`` on CPU
with ``torch.set_num_threads(--threads)``; the replay buffer is filled by a short ``learn``,
then ``model.train(gradient_steps=G, batch_size=256)`` is timed (critics, actor, entropy
coefficient and the Polyak update: the same work as one of our updates). Pendulum-v1
(obs 3, act 1) and a Box environment of HalfCheetah's sizes (obs 17, act 6).

mbrl-lib: ``mbrl.algorithms.mbpo.train`` composed from its own Hydra configuration
(main + algorithm=mbpo + overrides=mbpo_cartpole, device=cpu) with our benchmark's
changes: 200 random initial steps (``random_initial_explore``), one evaluation episode.
The second epoch is timed (one model training with patience 5, 80,000 branched rollouts,
4,000 SAC updates over 200 env steps), as the difference of two runs with ``num_steps``
400 and 200; ours reports the same epoch from its metrics rows.

Prints a table to stderr and, with --json, one JSON line per comparison to stdout.
"""
import argparse
import contextlib
import gymnasium as gym
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mbrl-gpu", default="target/release/mbrl-gpu")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of ours/theirs")
    p.add_argument("--sac-steps", type=int, default=50, help="SB3 gradient steps per timing")
    p.add_argument("--skip-mbpo", action="store_true")
    p.add_argument("--json", action="store_true")
    return p.parse_args()


ARGS = parse_args()
torch.set_num_threads(ARGS.threads)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ours():
    cmd = [ARGS.mbrl_gpu, "bench", "policy", "--json", "--backend", "cpu", "--reps", "4"]
    env = dict(os.environ, RAYON_NUM_THREADS=str(ARGS.threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return {
        row["name"]: row
        for row in (json.loads(l) for l in r.stdout.splitlines() if l.startswith("{"))
    }


class BoxEnv(gym.Env):
    """An environment with HalfCheetah's spaces (obs 17, act 6) and random dynamics: SB3's
    networks and update depend only on the sizes."""

    def __init__(self, obs=17, act=6):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (act,), np.float32)
        self.rng = np.random.default_rng(0)

    def reset(self, seed=None, options=None):
        return self.rng.standard_normal(self.observation_space.shape).astype(np.float32), {}

    def step(self, a):
        o = self.rng.standard_normal(self.observation_space.shape).astype(np.float32)
        return o, float(-np.sum(a * a)), False, False, {}


def sb3_setup(env):
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", env, batch_size=256, learning_starts=0, device="cpu",
                policy_kwargs=dict(net_arch=[256, 256]), seed=0, verbose=0)
    model.learn(total_timesteps=600)
    return model


def sb3_time(model):
    t0 = time.perf_counter()
    model.train(gradient_steps=ARGS.sac_steps, batch_size=256)
    return (time.perf_counter() - t0) * 1e3 / ARGS.sac_steps


def mbrl_lib_mbpo_cfg(work, num_steps):
    """What Hydra composes from main.yaml with algorithm=mbpo, overrides=mbpo_cartpole and
    the default dynamics model, read from mbrl-lib's own files."""
    import mbrl
    import omegaconf

    conf = os.path.join(os.path.dirname(mbrl.__file__), "examples", "conf")
    load = lambda *p: omegaconf.OmegaConf.load(os.path.join(conf, *p))
    cfg = omegaconf.OmegaConf.create({
        "seed": 0, "device": "cpu", "log_frequency_agent": 1000, "save_video": False,
        "debug_mode": False, "root_dir": work,
        "algorithm": load("algorithm", "mbpo.yaml"),
        "dynamics_model": load("dynamics_model", "gaussian_mlp_ensemble.yaml"),
        "overrides": load("overrides", "mbpo_cartpole.yaml"),
    })
    cfg.algorithm.initial_exploration_steps = 200
    cfg.algorithm.random_initial_explore = True
    cfg.algorithm.num_eval_episodes = 1
    cfg.overrides.num_steps = num_steps
    # GaussianMLP instantiates its activation_fn_cfg itself (as mbrl-lib's own runs do).
    cfg.dynamics_model._recursive_ = False
    # mbrl 0.2.0's mbpo.yaml names `gym.env.Box`, which no gym release has; the Box it means
    # is Gymnasium's, which takes arrays rather than the lists Hydra passes.
    cfg.algorithm.agent.action_space._target_ = "__main__.box"
    return cfg


def box(low, high, shape):
    return gym.spaces.Box(np.array(low, np.float32), np.array(high, np.float32),
                          tuple(shape), np.float32)


def mbrl_lib_mbpo_seconds(num_steps):
    import mbrl.algorithms.mbpo as mbpo
    import mbrl.env.cartpole_continuous as cartpole
    import mbrl.env.termination_fns as term

    with tempfile.TemporaryDirectory() as work:
        cfg = mbrl_lib_mbpo_cfg(work, num_steps)
        env, test_env = cartpole.CartPoleEnv(), cartpole.CartPoleEnv()
        env.reset(seed=0)
        test_env.reset(seed=1)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        # mbrl-lib's logger prints its results table on stdout even when silent; keep
        # stdout for this script's JSON lines.
        with contextlib.redirect_stdout(sys.stderr):
            mbpo.train(env, test_env, term.cartpole, cfg, silent=True, work_dir=work)
        return time.perf_counter() - t0


def mbrl_lib_mbpo_ms_per_step():
    """The second epoch's time per env step: two epochs minus one (the first epoch trains its
    model, and starts its SAC updates, only at its last step)."""
    return (mbrl_lib_mbpo_seconds(400) - mbrl_lib_mbpo_seconds(200)) * 1e3 / 200


def main():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines()
                  if l.startswith("Model name")), "unknown")
    log(f"CPU: {model}; threads {ARGS.threads}; torch {torch.__version__}")
    log(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    sb3 = {"pendulum": sb3_setup(gym.make("Pendulum-v1")), "halfcheetah": sb3_setup(BoxEnv())}
    keys = ["sac_pendulum", "sac_halfcheetah", "mbpo"]
    rows = {k + s: [] for k in keys for s in ["", "_bf16"]}
    theirs = {k: [] for k in keys}
    for r in range(ARGS.rounds):
        o = ours()
        for s in ["", "_bf16"]:
            for name in ["pendulum", "halfcheetah"]:
                rows[f"sac_{name}{s}"].append(o[f"sac_update_{name}_b256_2x256{s}"]["median_ms"])
            rows[f"mbpo{s}"].append(o[f"mbpo_env_step_cartpole{s}"]["median_ms"])
        for name in ["pendulum", "halfcheetah"]:
            theirs[f"sac_{name}"].append(sb3_time(sb3[name]))
        if not ARGS.skip_mbpo:
            theirs["mbpo"].append(mbrl_lib_mbpo_ms_per_step())
        log(f"round {r + 1}: ours {[round(v[-1], 3) for v in rows.values()]} ms, "
            f"theirs {[round(v[-1], 3) if v else None for v in theirs.values()]} ms")
    peers = {"sac_pendulum": "Stable-Baselines3", "sac_halfcheetah": "Stable-Baselines3",
             "mbpo": "mbrl-lib 0.2.0"}
    for k in rows:
        peer = k.removesuffix("_bf16")
        if not theirs[peer]:
            continue
        a, b = statistics.median(rows[k]), statistics.median(theirs[peer])
        unit = "gradient step" if k.startswith("sac") else "env step"
        log(f"{k:<21} ours {a:8.3f} ms/{unit}  {peers[peer]} {b:8.3f} ms/{unit}  "
            f"ratio {b / a:5.2f}x")
        if ARGS.json:
            print(json.dumps({"name": k, "ours_ms": a, "peer": peers[peer], "peer_ms": b,
                              "speedup": b / a, "rounds": ARGS.rounds,
                              "threads": ARGS.threads, "cpu": model}))


if __name__ == "__main__":
    main()
