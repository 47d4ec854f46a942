#!/usr/bin/env python3
"""Record reference trajectories of Gymnasium's v5 MuJoCo tasks for the native MuJoCo parity
test (``tests/mujoco_parity.rs``): ``tests/fixtures/mujoco/{task}.json``.

Recorded with the MuJoCo version the ``mujoco-rs`` crate binds (3.17.0): the same seed and
actions give different trajectories under other versions. Regenerate with

    python3 -m venv /tmp/mjvenv
    /tmp/mjvenv/bin/pip install gymnasium==1.4.0 mujoco==3.17.0 numpy==2.4.6 imageio packaging
    /tmp/mjvenv/bin/python scripts/record_mujoco.py           # from the repository root

Each episode starts with ``env.reset(seed=...)`` and records the (qpos, qvel) it reset to, so
the parity test can check that the native ``reset(seed)`` (NumPy's PCG64 stream, reproduced
in ``src/env/np_random.rs``) reaches the same state bit for bit. Actions are float32, uniform over 1.2 × the action bounds (a sixth outside them:
MuJoCo clamps the control, Gymnasium's control cost does not); in the later episodes of the
hopper, walker and ant uniform over 0.2 × the bounds, and for the inverted pendulum a noisy
stabilising feedback, so that episodes last. An episode ends at termination or after
``steps`` steps. Every float is stored as the 16 hex digits of its IEEE-754 bits (f64 for
states, observations and rewards; f32 for actions), so that nothing is lost in decimal.
"""

import json
import os
import struct

import gymnasium as gym
import mujoco
import numpy as np

TASKS = {
    "halfcheetah": ("HalfCheetah-v5", 2, 150),
    "hopper": ("Hopper-v5", 3, 150),
    "walker2d": ("Walker2d-v5", 3, 150),
    "ant": ("Ant-v5", 3, 60),
    "inverted-pendulum": ("InvertedPendulum-v5", 3, 120),
}


def bits64(x):
    return "%016x" % struct.unpack("<Q", struct.pack("<d", float(x)))[0]


def bits32(x):
    return "%08x" % struct.unpack("<I", struct.pack("<f", np.float32(x)))[0]


def record(name, env_id, episodes, steps):
    env = gym.make(env_id)
    u = env.unwrapped
    low, high = env.action_space.low, env.action_space.high
    out = []
    for ep in range(episodes):
        seed = 1000 + ep
        obs, _ = env.reset(seed=seed)
        rec = {
            "seed": seed,
            "qpos": [bits64(v) for v in u.data.qpos],
            "qvel": [bits64(v) for v in u.data.qvel],
            "reset_obs": [bits64(v) for v in obs],
            "actions": [],
            "obs": [],
            "rewards": [],
            "terminated": [],
        }
        rng = np.random.default_rng(ep)
        for t in range(steps):
            if name == "inverted-pendulum" and ep > 0:
                a = np.array([4.0 * obs[1] + 1.0 * obs[3] + 0.3 * obs[0] + rng.normal(0, 0.3)])
                a = a.astype(np.float32)
            elif name in ("hopper", "walker2d", "ant") and ep > 0:
                # Small actions: the body stays up for longer episodes.
                a = rng.uniform(0.2 * low, 0.2 * high).astype(np.float32)
            else:
                a = rng.uniform(1.2 * low, 1.2 * high).astype(np.float32)
            obs, r, term, trunc, _ = env.step(a)
            rec["actions"].append([bits32(v) for v in a])
            rec["obs"].append([bits64(v) for v in obs])
            rec["rewards"].append(bits64(r))
            rec["terminated"].append(bool(term))
            if term:
                break
        out.append(rec)
    env.close()
    return {
        "task": name,
        "source": env_id,
        "recorded_with": {
            "gymnasium": gym.__version__,
            "mujoco": mujoco.__version__,
            "numpy": np.__version__,
        },
        "episodes": out,
    }


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "mujoco")
    os.makedirs(root, exist_ok=True)
    for name, (env_id, episodes, steps) in TASKS.items():
        data = record(name, env_id, episodes, steps)
        with open(os.path.join(root, f"{name}.json"), "w") as f:
            json.dump(data, f, separators=(",", ":"))
        lens = [len(e["rewards"]) for e in data["episodes"]]
        print(f"{name}: episodes of {lens} steps")


if __name__ == "__main__":
    main()
