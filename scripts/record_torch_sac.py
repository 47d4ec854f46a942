#!/usr/bin/env python3
"""Record a PyTorch reference of one SAC gradient step for ``tests/sac_oracle.rs``.

The networks are pranz24's ``GaussianPolicy`` and ``QNetwork`` (the SAC that mbrl-lib's MBPO
runs, ``mbrl/third_party/pytorch_sac_pranz24``), built here in float64 with a fixed seed;
the losses are those of its ``SAC.update_parameters`` with the reparameterisation noise
fixed (``mean + std * eps`` instead of ``rsample()``), so that the autograd gradients can be
compared with mbrl-gpu's hand-written ones:

    a', logpi' = policy at s' with eps_next          (no gradient)
    y          = r + mask * gamma * (min(Q1t, Q2t)(s', a') - alpha * logpi')
    J_Q        = mse(Q1(s, a), y) + mse(Q2(s, a), y)
    a~, logpi  = policy at s with eps_pi
    J_pi       = mean(alpha * logpi - min(Q1, Q2)(s, a~))

Written to ``tests/fixtures/torch/`` (the test suite never needs PyTorch):

- ``sac_policy.safetensors``, ``sac_critic.safetensors``, ``sac_target.safetensors``: the
  networks in mbrl-gpu's policy / critic formats (pranz24's state-dict names and shapes,
  float32 values, the metadata of ``src/policy/checkpoint.rs``), loaded with
  ``load_state_dict(strict=True)`` semantics: every name, no other;
- ``sac_policy_grad.safetensors``, ``sac_critic_grad.safetensors``: dJ_pi/dtheta and
  dJ_Q/dtheta in the same two formats;
- ``sac_batch.safetensors``: obs, act, reward, next_obs, mask, eps_next, eps_pi, the
  scalars alpha, gamma, critic_loss, actor_loss, and ``det_action`` = the policy's mean
  action scale * tanh(mean) + bias at obs.

Run from the repository root with a Python that has torch, safetensors and mbrl 0.2.0
(``scripts/bench_vs_mbrl_lib.sh`` makes one in .tools/mbrl-lib-venv):

    .tools/mbrl-lib-venv/bin/python scripts/record_torch_sac.py
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mbrl.third_party.pytorch_sac_pranz24.model import (
    LOG_SIG_MAX,
    LOG_SIG_MIN,
    GaussianPolicy,
    QNetwork,
    epsilon,
)

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/torch"
OBS, ACT, HIDDEN, B = 3, 2, 16, 7
LOW, HIGH = [-2.0, -0.5], [2.0, 1.5]
ALPHA, GAMMA = 0.3, 0.97


class Space:
    low, high = LOW, HIGH


def meta(fmt):
    cfg = {
        "hidden": HIDDEN,
        "num_layers": 2,
        "activation": "relu",
        "lr": 3e-4,
        "gamma": 0.99,
        "tau": 0.005,
        "batch_size": 256,
        "target_update_interval": 1,
        "alpha": 0.2,
        "automatic_entropy_tuning": True,
        "target_entropy": None,
    }
    return {
        "format": fmt,
        "config": json.dumps(cfg),
        "obs_dim": str(OBS),
        "action_low": json.dumps(LOW),
        "action_high": json.dumps(HIGH),
    }


def f32(sd):
    return {k: v.detach().to(torch.float32).contiguous() for k, v in sd.items()}


def sample(policy, s, eps):
    """pranz24's GaussianPolicy.sample with rsample's noise given."""
    mean, log_std = policy(s)
    std = log_std.exp()
    x = mean + std * eps
    y = torch.tanh(x)
    action = y * policy.action_scale + policy.action_bias
    log_prob = torch.distributions.Normal(mean, std).log_prob(x)
    log_prob = log_prob - torch.log(policy.action_scale * (1 - y.pow(2)) + epsilon)
    return action, log_prob.sum(1, keepdim=True)


def main():
    torch.manual_seed(7)
    policy = GaussianPolicy(OBS, ACT, HIDDEN, Space())
    critic = QNetwork(OBS, ACT, HIDDEN)
    target = QNetwork(OBS, ACT, HIDDEN)
    # Non-zero biases and a wider log-std head, so that every term matters; values rounded
    # to float32 first (they are stored as float32), then the reference runs in float64.
    with torch.no_grad():
        for net in (policy, critic, target):
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
        policy.log_std_linear.bias.add_(torch.tensor([0.4, -0.6]))
    for net in (policy, critic, target):
        net.to(torch.float32)
        net.double()
    policy.action_scale = policy.action_scale.double()
    policy.action_bias = policy.action_bias.double()

    g = torch.Generator().manual_seed(11)
    r32 = lambda *s: torch.randn(*s, generator=g).float().double()
    obs, next_obs = r32(B, OBS), r32(B, OBS)
    act = (0.5 * r32(B, ACT)).float().double()
    reward = r32(B, 1)
    mask = torch.tensor([[1.0], [0.0], [1.0], [1.0], [1.0], [0.0], [1.0]], dtype=torch.float64)
    eps_next, eps_pi = r32(B, ACT), r32(B, ACT)

    with torch.no_grad():
        a_next, logp_next = sample(policy, next_obs, eps_next)
        q1t, q2t = target(next_obs, a_next)
        y = reward + mask * GAMMA * (torch.min(q1t, q2t) - ALPHA * logp_next)
    q1, q2 = critic(obs, act)
    critic_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
    critic.zero_grad()
    critic_loss.backward()
    critic_grad = {k: p.grad.clone() for k, p in critic.named_parameters()}

    a_pi, logp = sample(policy, obs, eps_pi)
    q1p, q2p = critic(obs, a_pi)
    actor_loss = (ALPHA * logp - torch.min(q1p, q2p)).mean()
    policy.zero_grad()
    actor_loss.backward()
    policy_grad = {k: p.grad.clone() for k, p in policy.named_parameters()}

    with torch.no_grad():
        mean, _ = policy(obs)
        det = torch.tanh(mean) * policy.action_scale + policy.action_bias

    os.makedirs(OUT, exist_ok=True)
    p = lambda n: os.path.join(OUT, n)
    save_file(f32(policy.state_dict()), p("sac_policy.safetensors"), meta("mbrl-gpu/sac-policy/1"))
    save_file(f32(critic.state_dict()), p("sac_critic.safetensors"), meta("mbrl-gpu/sac-critic/1"))
    save_file(f32(target.state_dict()), p("sac_target.safetensors"), meta("mbrl-gpu/sac-critic/1"))
    # Gradients keep float64: they are what the f64 specification is compared with.
    save_file(
        {k: v.contiguous() for k, v in policy_grad.items()},
        p("sac_policy_grad.safetensors"),
        meta("mbrl-gpu/sac-policy/1"),
    )
    save_file(
        {k: v.contiguous() for k, v in critic_grad.items()},
        p("sac_critic_grad.safetensors"),
        meta("mbrl-gpu/sac-critic/1"),
    )
    scalars = lambda v: torch.tensor([float(v)], dtype=torch.float64)
    save_file(
        {
            "obs": obs, "act": act, "reward": reward.reshape(B), "next_obs": next_obs,
            "mask": mask.reshape(B), "eps_next": eps_next, "eps_pi": eps_pi,
            "alpha": scalars(ALPHA), "gamma": scalars(GAMMA),
            "critic_loss": scalars(critic_loss.item()), "actor_loss": scalars(actor_loss.item()),
            "det_action": det.contiguous(),
        },
        p("sac_batch.safetensors"),
        {"format": "mbrl-gpu/sac-reference/1"},
    )
    print(f"critic loss {critic_loss.item():.6f}  actor loss {actor_loss.item():.6f}  -> {OUT}")


if __name__ == "__main__":
    main()
