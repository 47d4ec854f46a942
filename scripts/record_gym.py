#!/usr/bin/env python3
"""Record reference trajectories from real Gymnasium for the native-environment parity tests.

Writes ``tests/fixtures/gym/{cartpole,pendulum,mountain-car}.json``; ``tests/env_parity.rs``
replays them through ``mbrl_gpu::env`` and asserts per-step agreement. The test suite never
needs Gymnasium: the fixtures are committed files. Regenerate them with

    python3 -m venv /tmp/gymvenv
    /tmp/gymvenv/bin/pip install 'gymnasium>=1.0,<2' 'numpy>=2'
    /tmp/gymvenv/bin/python scripts/record_gym.py            # from the repository root

Environments
------------
* ``pendulum``      -> ``gymnasium.make("Pendulum-v1")``
* ``mountain-car``  -> ``gymnasium.make("MountainCarContinuous-v0")``
* ``cartpole``      -> the continuous cart-pole of mbrl-lib's PETS
  (``mbrl/env/cartpole_continuous.py``). Gymnasium ships no continuous cart-pole, and
  installing mbrl-lib would pull in torch, so ``ContinuousCartPole`` below restates mbrl-lib's
  ``step`` on top of Gymnasium's ``CartPoleEnv`` (same constants, same expression order, same
  Python/NumPy scalar types: ``force = action.squeeze() * force_mag`` is a ``np.float32``,
  the state stays ``np.float64``, the observation is ``np.array(self.state)`` in float64, no
  action clipping, reward 1.0 on every step including the terminating one), wrapped in
  ``TimeLimit(max_episode_steps=200)`` as mbrl-lib's ``trial_length`` for PETS cart-pole.

Episodes
--------
Each fixture holds several episodes. Episodes that start with ``reset(seed=...)`` run one
after another with consecutive seeds: after a termination (or truncation) the next episode
resets with the next seed. Actions come from ``numpy.random.default_rng`` with a fixed seed:
uniform noise (deliberately ~20 % outside the action bounds, to exercise Gymnasium's clipping
or lack of it), or a simple feedback policy plus noise where random actions would never
reach the interesting branches (cart-pole balanced until the 200-step truncation; mountain car
pumped to the goal). A few "set" episodes reset and then overwrite ``env.unwrapped.state``
with a chosen float64 state, to hit the clamp branches (pendulum speed limit and angle
wrap-around; mountain-car velocity limit, both position limits and the left-wall velocity
reset) on the first step (float64 state) and on later steps (float32 state).

Format (one JSON object per environment)
----------------------------------------
``episodes[i]``: ``seed``, ``start`` ("reset" or "set"), ``start_state`` (the floats of
``env.unwrapped.state`` before the first step), ``start_state_f64_bits`` (the same values as
IEEE-754 binary64 bit patterns in hex, so the Rust side reads them exactly whatever its JSON
float parser does), ``start_obs``, and per step ``actions`` (float32 values), ``obs``,
``reward``, ``terminated``, ``truncated``.
"""

import argparse
import json
import math
import platform
import struct
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.wrappers import TimeLimit

# The NumPy 2 scalar-promotion rules (NEP 50) decide which sub-expressions of these
# environments run in float32; the Rust port follows them. Refuse to record with NumPy 1.
assert int(np.__version__.split(".")[0]) >= 2, "record with NumPy >= 2 (NEP 50 promotion)"


class ContinuousCartPole(CartPoleEnv):
    """mbrl-lib's ``cartpole_continuous.CartPoleEnv`` on Gymnasium's cart-pole constants."""

    def __init__(self):
        super().__init__()
        act_high = np.array((1,), dtype=np.float32)
        self.action_space = spaces.Box(-act_high, act_high, dtype=np.float32)
        self.steps_beyond_done = None

    def step(self, action):
        # Same statements, in the same order and with the same operand types, as mbrl-lib.
        action = action.squeeze()
        x, x_dot, theta, theta_dot = self.state
        force = action * self.force_mag  # np.float32 under NumPy 2
        costheta = math.cos(theta)
        sintheta = math.sin(theta)
        temp = (
            force + self.polemass_length * theta_dot**2 * sintheta
        ) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta**2 / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        # kinematics_integrator == "euler"
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        self.state = (x, x_dot, theta, theta_dot)
        terminated = bool(
            x < -self.x_threshold
            or x > self.x_threshold
            or theta < -self.theta_threshold_radians
            or theta > self.theta_threshold_radians
        )
        if not terminated:
            reward = 1.0
        elif self.steps_beyond_done is None:
            self.steps_beyond_done = 0
            reward = 1.0
        else:
            self.steps_beyond_done += 1
            reward = 0.0
        return np.array(self.state), reward, terminated, False, {}

    def reset(self, *, seed=None, options=None):
        gym.Env.reset(self, seed=seed)
        self.state = self.np_random.uniform(low=-0.05, high=0.05, size=(4,))
        self.steps_beyond_done = None
        return np.array(self.state), {}


def make(name):
    if name == "cartpole":
        return TimeLimit(ContinuousCartPole(), max_episode_steps=200)
    if name == "pendulum":
        return gym.make("Pendulum-v1")
    if name == "mountain-car":
        return gym.make("MountainCarContinuous-v0")
    raise ValueError(name)


GYM_ID = {
    "cartpole": "mbrl-lib cartpole_continuous (CartPole-v1 physics), TimeLimit 200",
    "pendulum": "Pendulum-v1",
    "mountain-car": "MountainCarContinuous-v0",
}


def observe(name, env):
    """The observation the environment would return for its current state."""
    u = env.unwrapped
    if name == "cartpole":
        return np.array(u.state)
    if name == "pendulum":
        return u._get_obs()
    return np.array(u.state, dtype=np.float32)


# ----------------------------------------------------------------------------- policies
# Each policy maps (obs, rng) to a float32 action of shape (1,).


def uniform(scale):
    def policy(obs, rng):
        return np.array([rng.uniform(-scale, scale)], dtype=np.float32)

    return policy


def cartpole_balance(obs, rng):
    x, x_dot, theta, theta_dot = (float(v) for v in obs)
    a = 0.5 * x + 1.0 * x_dot + 12.0 * theta + 2.0 * theta_dot + rng.normal(0.0, 0.1)
    return np.array([np.clip(a, -1.0, 1.0)], dtype=np.float32)


def mountain_car_pump(obs, rng):
    # Push along the velocity (energy pumping); noise occasionally leaves [-1, 1].
    v = float(obs[1])
    a = (1.0 if v >= 0.0 else -1.0) + rng.normal(0.0, 0.3)
    return np.array([a], dtype=np.float32)


def constant(value, noise=0.0):
    def policy(obs, rng):
        return np.array([value + rng.uniform(-noise, noise)], dtype=np.float32)

    return policy


# ----------------------------------------------------------------------------- plans
# (start, seed or state, policy, step cap). "reset" episodes use consecutive seeds.

PLANS = {
    "cartpole": {
        "action_seed": 1000,
        "episodes": [("reset", None, uniform(1.25), None)] * 14
        + [("reset", None, cartpole_balance, None)],
        "first_seed": 0,
    },
    "pendulum": {
        "action_seed": 2000,
        "episodes": [
            ("reset", None, uniform(2.5), None),
            ("reset", None, uniform(2.5), None),
            # Spinning: hits the 8 rad/s clamp and wraps the angle past +pi many times.
            ("set", [0.0, 7.9], constant(2.25, 0.5), None),
            # Near the upright position, small torques.
            ("set", [0.05, -0.3], uniform(0.5), 60),
        ],
        "first_seed": 100,
    },
    "mountain-car": {
        "action_seed": 3000,
        "episodes": [
            ("reset", None, uniform(1.25), None),  # never reaches the goal: truncated at 999
            ("reset", None, mountain_car_pump, None),
            ("reset", None, mountain_car_pump, None),
            ("reset", None, mountain_car_pump, None),
            # Velocity clamp at +0.07 on the second step (float32 state).
            ("set", [-1.0, 0.064], constant(1.0), 40),
            # Velocity clamp at -0.07 on the first step (float64 state).
            ("set", [0.0, -0.0685], constant(-1.0), 5),
            # Left wall: position clamp to -1.2 and velocity reset on the third step.
            ("set", [-1.1, -0.05], constant(-1.0, 0.2), 30),
            # Left wall on the first step (float64 state).
            ("set", [-1.19, -0.03], constant(-1.0), 3),
            # Right limit 0.6 on the first step (float64 state), terminating.
            ("set", [0.55, 0.06], constant(1.0), None),
            # Right limit 0.6 on the second step (float32 state), terminating.
            ("set", [0.6, -0.003], constant(1.0), None),
        ],
        "first_seed": 200,
    },
}


def f64_bits(v):
    return struct.unpack("<Q", struct.pack("<d", float(v)))[0].to_bytes(8, "big").hex()


def record(name):
    plan = PLANS[name]
    env = make(name)
    rng = np.random.default_rng(plan["action_seed"])
    seed = plan["first_seed"]
    episodes = []
    for start, state, policy, cap in plan["episodes"]:
        obs, _ = env.reset(seed=seed)
        if start == "set":
            env.unwrapped.state = np.array(state, dtype=np.float64)
            obs = observe(name, env)
        start_state = [float(v) for v in np.asarray(env.unwrapped.state, dtype=np.float64)]
        ep = {
            "seed": seed,
            "start": start,
            "start_state": start_state,
            "start_state_f64_bits": [f64_bits(v) for v in start_state],
            "start_obs": [float(v) for v in obs],
            "actions": [],
            "obs": [],
            "reward": [],
            "terminated": [],
            "truncated": [],
        }
        seed += 1
        while True:
            action = policy(obs, rng)
            obs, reward, terminated, truncated, _ = env.step(action)
            ep["actions"].append([float(v) for v in action])
            ep["obs"].append([float(v) for v in obs])
            ep["reward"].append(float(reward))
            ep["terminated"].append(bool(terminated))
            ep["truncated"].append(bool(truncated))
            if terminated or truncated or (cap is not None and len(ep["actions"]) >= cap):
                break
        episodes.append(ep)
    env.close()
    return {
        "env": name,
        "source": GYM_ID[name],
        "recorded_with": {
            "gymnasium": gym.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "episodes": episodes,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--out", type=Path, default=root / "tests" / "fixtures" / "gym")
    parser.add_argument("--env", choices=sorted(PLANS), action="append")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.env or sorted(PLANS):
        data = record(name)
        path = args.out / f"{name}.json"
        text = json.dumps(data, separators=(",", ":"))
        path.write_text(text + "\n")
        eps = data["episodes"]
        steps = sum(len(e["actions"]) for e in eps)
        terms = sum(any(e["terminated"]) for e in eps)
        truncs = sum(any(e["truncated"]) for e in eps)
        print(
            f"{path}: {len(eps)} episodes, {steps} steps, {terms} terminated, "
            f"{truncs} truncated, {len(text) / 1024:.0f} KiB"
        )


if __name__ == "__main__":
    main()
