#!/usr/bin/env python3
"""Record an independent PyTorch reference of the ensemble forward pass for ``tests/oracle.rs``.

For each configuration below this script builds a small ensemble with a fixed seed, directly in
PyTorch, writes it as an mbrl-gpu checkpoint (``tests/fixtures/torch/<name>.safetensors``,
the layout of ``src/io/checkpoint.rs``), and evaluates it in float64 on a fixed set of
inputs, writing ``tests/fixtures/torch/<name>.forward.safetensors``. The Rust test loads the
checkpoint through ``mbrl_gpu::io::checkpoint::load`` and compares the CPU backend's forward
pass and ``Ensemble::predict`` with these numbers. The test suite never needs PyTorch: the
fixtures are committed files. Regenerate them with

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch safetensors numpy
    /tmp/torchenv/bin/python scripts/record_torch_forward.py      # from the repository root

(``--out DIR`` writes elsewhere; ``--check`` only recomputes the reference from the
checkpoints already in ``--out`` and reports the largest difference from the stored one.)

The reference is written from the equations, not from the Rust code (PETS appendix A.1 and
mbrl-lib's ``GaussianMLP``, which ``src/backend/cpu/ensemble.rs`` also follows):

    xn   = (x - input_mean) / input_std                      x = [obs, act], [E, B, in]
    h    = act(xn @ W_i + b_i)        for the hidden layers i < L   (SiLU, ReLU or tanh)
    out  = h @ W_L + b_L                                     the head, [E, B, D] or [E, B, 2D]
    mean = out[..., :D]                                      the change of observation
                                                             (and the reward when learned)
    lv1  = max_logvar - softplus(max_logvar - out[..., D:])  soft upper bound
    lv   = min_logvar + softplus(lv1 - min_logvar)           soft lower bound

with softplus(z) = max(z, 0) + log1p(exp(-|z|)) written out here (exact in float64, no
threshold as in ``torch.nn.functional.softplus``). Every weight, bias, bound, normaliser
value and input is a float32 number (it is stored as one); the reference upcasts those exact
values to float64 and computes everything in float64, so its own rounding (~1e-16 relative)
is negligible next to the f32 forward pass it checks.

Files (all tensors little-endian safetensors)
---------------------------------------------
``<name>.safetensors`` -- the checkpoint: ``layers.{i}.weight`` [E, in_i, out_i],
``layers.{i}.bias`` [E, 1, out_i], ``max_logvar`` / ``min_logvar`` [1, D] (probabilistic
only), ``input_mean`` / ``input_std`` [1, in], all float32; metadata ``format`` =
``mbrl-gpu/ensemble/1``, ``config`` (JSON of ``ModelConfig``), ``elites`` (JSON list).

``<name>.forward.safetensors`` -- the reference: ``obs`` [B, obs_dim] and ``act``
[B, act_dim] float32 (every member sees the same B rows, as in ``Ensemble::predict``),
``mean`` [E, B, D] float64 (the raw head mean: the predicted change, not obs + change) and,
for probabilistic models, ``logvar`` [E, B, D] float64; metadata ``checkpoint`` (the file
name), ``generator`` (this script and the torch version).
"""

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT = "mbrl-gpu/ensemble/1"

# Awkward sizes: no width is a multiple of any tile or workgroup. One configuration per
# activation; the probabilistic ones exercise both soft bounds of the log-variance.
CONFIGS = [
    dict(
        name="silu_prob_reward",
        seed=11,
        rows=9,
        config=dict(obs_dim=3, act_dim=2, ensemble_size=3, hidden=13, num_layers=2,
                    activation="silu", probabilistic=True, learn_reward=True, num_elites=2),
        elites=[2, 0],
    ),
    dict(
        name="tanh_det",
        seed=12,
        rows=9,
        config=dict(obs_dim=3, act_dim=2, ensemble_size=3, hidden=13, num_layers=3,
                    activation="tanh", probabilistic=False, learn_reward=False, num_elites=3),
        elites=[0, 1, 2],
    ),
    dict(
        name="relu_prob",
        seed=13,
        rows=9,
        config=dict(obs_dim=3, act_dim=2, ensemble_size=3, hidden=13, num_layers=1,
                    activation="relu", probabilistic=True, learn_reward=False, num_elites=1),
        elites=[1],
    ),
]


def build_checkpoint(spec):
    """Random float32 tensors in the checkpoint layout (PyTorch's own generator, fixed seed)."""
    c = spec["config"]
    g = torch.Generator().manual_seed(spec["seed"])
    e, d_in = c["ensemble_size"], c["obs_dim"] + c["act_dim"]
    d_out = c["obs_dim"] + int(c["learn_reward"])
    head = 2 * d_out if c["probabilistic"] else d_out
    dims = [d_in] + [c["hidden"]] * c["num_layers"] + [head]
    t = {}
    for i, (fi, fo) in enumerate(zip(dims[:-1], dims[1:])):
        # ~Xavier scale so that activations stay O(1) and every nonlinearity bends.
        std = (2.0 / (fi + fo)) ** 0.5 * 1.5
        t[f"layers.{i}.weight"] = torch.randn(e, fi, fo, generator=g) * std
        t[f"layers.{i}.bias"] = torch.randn(e, 1, fo, generator=g) * 0.3
    if c["probabilistic"]:
        # Bounds close to the raw log-variances (which are O(1)), so that both softplus
        # branches are away from their linear and flat ends for some outputs.
        t["max_logvar"] = 0.5 + 0.3 * torch.randn(1, d_out, generator=g)
        t["min_logvar"] = -1.0 + 0.3 * torch.randn(1, d_out, generator=g)
    t["input_mean"] = 0.5 * torch.randn(1, d_in, generator=g)
    t["input_std"] = 0.5 + 1.5 * torch.rand(1, d_in, generator=g)
    return {k: v.to(torch.float32).contiguous() for k, v in t.items()}


def inputs(spec):
    c = spec["config"]
    g = torch.Generator().manual_seed(1000 + spec["seed"])
    b = spec["rows"]
    obs = (torch.randn(b, c["obs_dim"], generator=g) * 1.5).to(torch.float32)
    act = (torch.rand(b, c["act_dim"], generator=g) * 4.0 - 2.0).to(torch.float32)
    # A few large inputs, so that tanh saturates and ReLU units switch off.
    obs[0] = torch.tensor([4.0, -3.5, 2.75][: c["obs_dim"]])
    act[1] = torch.tensor([-2.0, 2.0][: c["act_dim"]])
    return obs, act


def softplus(z):
    return torch.clamp(z, min=0.0) + torch.log1p(torch.exp(-z.abs()))


def reference(cfg, t, obs, act):
    """The forward pass in float64, from the equations in the module docstring."""
    f64 = {k: v.to(torch.float64) for k, v in t.items()}
    e = cfg["ensemble_size"]
    x = torch.cat([obs, act], dim=1).to(torch.float64)  # [B, in]
    x = x.unsqueeze(0).expand(e, -1, -1)  # [E, B, in]: every member sees the same rows
    h = (x - f64["input_mean"]) / f64["input_std"]
    activation = {
        "silu": lambda z: z * torch.sigmoid(z),
        "relu": lambda z: torch.clamp(z, min=0.0),
        "tanh": torch.tanh,
    }[cfg["activation"]]
    layers = cfg["num_layers"] + 1
    for i in range(layers):
        h = torch.matmul(h, f64[f"layers.{i}.weight"]) + f64[f"layers.{i}.bias"]
        if i < layers - 1:
            h = activation(h)
    d = cfg["obs_dim"] + int(cfg["learn_reward"])
    mean = h[..., :d]
    if not cfg["probabilistic"]:
        return mean, None, None
    raw = h[..., d:]
    hi, lo = f64["max_logvar"], f64["min_logvar"]
    lv1 = hi - softplus(hi - raw)
    lv = lo + softplus(lv1 - lo)
    return mean, lv, raw


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/torch"))
    ap.add_argument("--check", action="store_true",
                    help="recompute from the stored checkpoints and compare, write nothing")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in CONFIGS:
        name, cfg = spec["name"], spec["config"]
        ck_path = args.out / f"{name}.safetensors"
        ref_path = args.out / f"{name}.forward.safetensors"
        if args.check:
            t = load_file(ck_path)
            stored = load_file(ref_path)
            mean, lv, _ = reference(cfg, t, stored["obs"], stored["act"])
            worst = (mean - stored["mean"]).abs().max().item()
            if lv is not None:
                worst = max(worst, (lv - stored["logvar"]).abs().max().item())
            print(f"{name}: largest difference from the stored reference {worst:.3e}")
            continue
        t = build_checkpoint(spec)
        meta = {
            "format": FORMAT,
            "config": json.dumps(cfg),
            "elites": json.dumps(spec["elites"]),
        }
        save_file(t, str(ck_path), metadata=meta)
        obs, act = inputs(spec)
        mean, lv, raw = reference(cfg, t, obs, act)
        ref = {"obs": obs.contiguous(), "act": act.contiguous(), "mean": mean.contiguous()}
        if lv is not None:
            ref["logvar"] = lv.contiguous()
        save_file(ref, str(ref_path), metadata={
            "checkpoint": ck_path.name,
            "generator": f"scripts/record_torch_forward.py, torch {torch.__version__}",
        })
        extra = ""
        if lv is not None:
            # How many raw log-variances lie where a soft bound bends (within 2 of it, where
            # the softplus is neither ~linear nor ~0): the entries that check the formula.
            near_hi = int(((t["max_logvar"].double() - raw).abs() < 2).sum())
            near_lo = int(((raw - t["min_logvar"].double()).abs() < 2).sum())
            extra = (f", logvar in [{lv.min():.3f}, {lv.max():.3f}], raw log-variances "
                     f"near max {near_hi}, near min {near_lo} of {raw.numel()}")
        print(f"{name}: wrote {ck_path} and {ref_path}; mean in "
              f"[{mean.min():.3f}, {mean.max():.3f}]{extra}")


if __name__ == "__main__":
    main()
