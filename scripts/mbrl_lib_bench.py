#!/usr/bin/env python3
"""mbrl-gpu (cpu backend) next to mbrl-lib 0.2.0 (PyTorch, CPU), in one run, on the same threads.

Run through scripts/bench_vs_mbrl_lib.sh, which makes the virtual environment this needs
(torch, gymnasium 1.x, hydra-core 1.3.8, omegaconf 2.3.1, mbrl 0.2.0 without its pins).

Each round runs, alternating:
  ours    `mbrl-gpu bench plan --json --backend cpu`   (plan_step_cartpole_mbrl_lib)
  theirs  mbrl-lib's PETS agent `act`, pets_cartpole configuration
  ours    `mbrl-gpu bench model --json --backend cpu`  (train_epoch_..., ensemble_forward_...)
  theirs  mbrl-lib's ModelTrainer.train epoch (2000 transitions, E=7, 4x200, batch 256) and
          GaussianMLP forward at `bench model`'s forward sizes
and every figure reported is the median over rounds of each round's median.

The table goes to stderr; with --json one JSON object per comparison goes to stdout.
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mbrl-gpu", default="target/release/mbrl-gpu", help="our binary")
    p.add_argument("--threads", type=int, default=2, help="threads for both sides")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (ours, theirs)")
    p.add_argument("--act-reps", type=int, default=3, help="timed mbrl-lib acts per round")
    p.add_argument("--act-warmup", type=int, default=1, help="untimed mbrl-lib acts per round")
    p.add_argument("--train-reps", type=int, default=3,
                   help="mbrl-lib per-epoch measurements per round, each (t(6 epochs)-t(1))/5")
    p.add_argument("--ours-reps", type=int, default=3, help="--reps passed to mbrl-gpu bench")
    p.add_argument("--pretrain-epochs", type=int, default=5,
                   help="epochs mbrl-lib's model is trained before the first act")
    p.add_argument("--json", action="store_true", help="one JSON line per comparison on stdout")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


ARGS = parse_args()
# Thread counts must be fixed before torch is imported.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import omegaconf  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(ARGS.threads)

import mbrl  # noqa: E402
import mbrl.env.cartpole_continuous as cartpole_env  # noqa: E402
import mbrl.env.reward_fns as reward_fns  # noqa: E402
import mbrl.env.termination_fns as termination_fns  # noqa: E402
import mbrl.models as models  # noqa: E402
import mbrl.planning as planning  # noqa: E402
import mbrl.util.common as common_util  # noqa: E402
from mbrl.util.replay_buffer import ReplayBuffer  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def median(xs):
    return statistics.median(xs)


# ---------------------------------------------------------------- the machine
def cpu_info():
    model, flags = "unknown", set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "Model name":
                model = v.strip()
            elif k.strip() == "Flags":
                flags = set(v.split())
    except OSError:
        pass
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "amx_tile": "amx_tile" in flags,
    }


def uptime_line():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: %.2f, %.2f, %.2f" % os.getloadavg()


# ---------------------------------------------------------------- ours
def run_ours(kind):
    """`mbrl-gpu bench {kind} --json --backend cpu`: rows by name."""
    cmd = [ARGS.mbrl_gpu, "bench", kind, "--json", "--backend", "cpu",
           "--reps", str(ARGS.ours_reps)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(ARGS.threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    rows = {}
    for line in r.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            row = json.loads(line)
            rows[row["name"]] = row
    return rows


# ---------------------------------------------------------------- theirs
OBS_DIM, ACT_DIM = 4, 1


def pets_cartpole_cfg():
    """mbrl-lib's exp conf: main.yaml + algorithm/pets + dynamics_model/gaussian_mlp_ensemble
    + overrides/pets_cartpole + action_optimizer/cem, on the CPU."""
    return omegaconf.OmegaConf.create({
        "dynamics_model": {
            "_target_": "mbrl.models.GaussianMLP",
            # activation_fn_cfg is a config GaussianMLP instantiates itself.
            "_recursive_": False,
            "device": "cpu",
            "num_layers": 4,
            "in_size": OBS_DIM + ACT_DIM,
            "out_size": OBS_DIM,
            "ensemble_size": 7,
            "hid_size": 200,
            "deterministic": False,
            "propagation_method": "random_model",  # TS1: a random member per row, per step
            "learn_logvar_bounds": False,
            "activation_fn_cfg": {"_target_": "torch.nn.SiLU"},
        },
        "algorithm": {
            "learned_rewards": False,
            "target_is_delta": True,
            "normalize": True,
            "normalize_double_precision": True,
            "num_particles": 20,
            "agent": {
                "_target_": "mbrl.planning.TrajectoryOptimizerAgent",
                # the agent builds its optimizer from optimizer_cfg itself.
                "_recursive_": False,
                "action_lb": "???",
                "action_ub": "???",
                "planning_horizon": 15,
                "replan_freq": 1,
                "verbose": False,
                "optimizer_cfg": {
                    "_target_": "mbrl.planning.CEMOptimizer",
                    "num_iterations": 5,
                    "elite_ratio": 0.1,
                    "population_size": 350,
                    "alpha": 0.1,
                    "lower_bound": "???",
                    "upper_bound": "???",
                    "return_mean_elites": True,
                    "device": "cpu",
                    "clipped_normal": False,
                },
            },
        },
        "overrides": {
            "num_elites": 5,
            "model_lr": 7.5e-4,
            "model_wd": 3e-5,
            "model_batch_size": 256,
            "validation_ratio": 0,
            "patience": 25,
        },
    })


class Theirs:
    def __init__(self, seed):
        self.cfg = cfg = pets_cartpole_cfg()
        self.env = cartpole_env.CartPoleEnv()
        self.env.reset(seed=seed)
        self.env.action_space.seed(seed)
        self.rng = np.random.default_rng(seed)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
        torch.manual_seed(seed)
        self.dyn = common_util.create_one_dim_tr_model(
            cfg, self.env.observation_space.shape, self.env.action_space.shape)
        # 2000 cart-pole transitions from random actions, stored in double as PETS stores them.
        self.buffer = ReplayBuffer(2000, self.env.observation_space.shape,
                                   self.env.action_space.shape, obs_type=np.double,
                                   action_type=np.double, reward_type=np.double, rng=self.rng)
        common_util.rollout_agent_trajectories(
            self.env, 2000, planning.RandomAgent(self.env), {}, replay_buffer=self.buffer)
        assert self.buffer.num_stored == 2000, self.buffer.num_stored
        self.train_iter, self.val_iter = common_util.get_basic_buffer_iterators(
            self.buffer, cfg.overrides.model_batch_size, cfg.overrides.validation_ratio,
            ensemble_size=len(self.dyn), shuffle_each_epoch=True, bootstrap_permutes=False)
        assert self.val_iter is None
        self.dyn.update_normalizer(self.buffer.get_all())
        self.trainer = models.ModelTrainer(self.dyn, optim_lr=cfg.overrides.model_lr,
                                           weight_decay=cfg.overrides.model_wd)
        # Brief training as PETS does it (evaluation on the training set, elites chosen).
        if ARGS.pretrain_epochs > 0:
            self.trainer.train(self.train_iter, num_epochs=ARGS.pretrain_epochs,
                               patience=cfg.overrides.patience, silent=True)
        self.model_env = models.ModelEnv(self.env, self.dyn, termination_fns.cartpole,
                                         reward_fns.cartpole, generator=gen)
        self.agent = planning.create_trajectory_optim_agent_for_model(
            self.model_env, cfg.algorithm.agent,
            num_particles=cfg.algorithm.num_particles)
        self.obs, _ = self.env.reset(seed=seed)

    # ---- checks
    def gaussian_mlp(self):
        return self.dyn.model

    def macs_per_row(self, m=None):
        """Multiply-adds per row through one member: every EnsembleLinearLayer in -> out."""
        m = m or self.gaussian_mlp()
        macs = 0
        for mod in m.modules():
            if isinstance(mod, models.EnsembleLinearLayer):
                macs += mod.in_size * mod.out_size
        return macs

    def describe(self):
        opt = self.agent.optimizer.optimizer
        traj = self.agent.optimizer
        m = self.gaussian_mlp()
        lay = [(l.in_size, l.out_size) for l in m.modules()
               if isinstance(l, models.EnsembleLinearLayer)]
        acts = sorted({type(x).__name__ for x in m.modules()
                       if isinstance(x, torch.nn.Module) and "torch.nn.modules.activation"
                       in type(x).__module__})
        return {
            "optimizer": type(opt).__name__,
            "num_iterations": opt.num_iterations,
            "population_size": opt.population_size,
            "elite_num": int(opt.elite_num),
            "elite_ratio": opt.elite_ratio,
            "alpha": opt.alpha,
            "return_mean_elites": opt.return_mean_elites,
            "clipped_normal": opt._clipped_normal,
            "horizon": traj.horizon,
            "bounds_shape": list(opt.lower_bound.shape),
            "replan_freq": traj.replan_freq,
            "keep_last_solution": traj.keep_last_solution,
            "model": type(m).__name__,
            "ensemble_size": m.num_members,
            "elites_in_use": (len(m.elite_models) if m.elite_models is not None
                              else m.num_members),
            "layers_in_out": lay,
            "activation": acts,
            "propagation_method": m.propagation_method,
            "deterministic": m.deterministic,
            "normalize_double_precision": self.cfg.algorithm.normalize_double_precision,
            "termination_fn": f"{termination_fns.cartpole.__module__}.cartpole",
            "reward_fn": f"{reward_fns.cartpole.__module__}.cartpole",
        }

    def count_act_rows(self):
        """Rows through one member per act, counted by wrapping the per-member forward."""
        m = self.gaussian_mlp()
        counted = {"rows": 0, "calls": 0}
        orig = m._default_forward

        def counting(x, *a, **k):
            counted["rows"] += int(np.prod(x.shape[:-1]))
            counted["calls"] += 1
            return orig(x, *a, **k)

        m._default_forward = counting
        try:
            self.agent.act(self.obs)
        finally:
            del m._default_forward
        return counted

    # ---- timings
    def time_act(self, warmup, reps):
        for _ in range(warmup):
            self.agent.act(self.obs)
        ts = []
        for _ in range(reps):
            s = time.perf_counter()
            self.agent.act(self.obs)
            ts.append((time.perf_counter() - s) * 1e3)
        return median(ts)

    def _train(self, epochs, evaluate):
        s = time.perf_counter()
        if evaluate:
            self.trainer.train(self.train_iter, dataset_val=self.val_iter, num_epochs=epochs,
                               patience=self.cfg.overrides.patience, silent=True)
        else:
            self.trainer.train(self.train_iter, num_epochs=epochs, evaluate=False, silent=True)
        return (time.perf_counter() - s) * 1e3

    def time_epoch(self, reps, evaluate):
        """Per epoch = (t(6 epochs) - t(1 epoch)) / 5, as `bench model` measures ours."""
        self._train(1, evaluate)  # warm-up
        per = []
        for _ in range(reps):
            t1 = self._train(1, evaluate)
            t6 = self._train(6, evaluate)
            per.append((t6 - t1) / 5.0)
        return median(per)

    def forward_setup(self):
        """GaussianMLP at `bench model`'s forward sizes: E=7, 1000 rows/member, 24 -> 4x200
        SiLU -> 2x18 (mean, log-variance); no input normaliser (ours normalises inside)."""
        self.fwd = models.GaussianMLP(in_size=24, out_size=18, device="cpu", num_layers=4,
                                      ensemble_size=7, hid_size=200, deterministic=False,
                                      activation_fn_cfg=omegaconf.OmegaConf.create(
                                          {"_target_": "torch.nn.SiLU"}))
        g = torch.Generator().manual_seed(3)
        self.fwd_x = torch.randn(7, 1000, 24, generator=g)

    def time_forward(self, reps):
        with torch.no_grad():
            self.fwd(self.fwd_x)
            ts = []
            for _ in range(reps):
                s = time.perf_counter()
                self.fwd(self.fwd_x)
                ts.append((time.perf_counter() - s) * 1e3)
        return median(ts)


# ---------------------------------------------------------------- main
def main():
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    cpu = cpu_info()
    load_before = uptime_line()
    log(f"date          {date}")
    log(f"cpu           {cpu['cpu_model']} ({cpu['logical_cpus']} logical CPUs); "
        f"avx512f={cpu['avx512f']} avx512_bf16={cpu['avx512_bf16']} "
        f"amx_bf16={cpu['amx_bf16']} amx_tile={cpu['amx_tile']}")
    log(f"load before   {load_before}")
    log(f"python        {platform.python_version()}; torch {torch.__version__} "
        f"(threads {torch.get_num_threads()}, cpu capability "
        f"{torch.backends.cpu.get_cpu_capability()}); mbrl {mbrl.__version__}; "
        f"numpy {np.__version__}")
    log(f"threads       {ARGS.threads} (torch.set_num_threads, OMP/MKL/RAYON_NUM_THREADS)")
    log(f"rounds        {ARGS.rounds}: mbrl-lib act {ARGS.act_warmup} warm-up + "
        f"{ARGS.act_reps} timed, epochs {ARGS.train_reps}x(6-1), mbrl-gpu --reps {ARGS.ours_reps}")

    t0 = time.perf_counter()
    th = Theirs(ARGS.seed)
    th.forward_setup()
    desc = th.describe()
    log("mbrl-lib set-up " + f"{time.perf_counter() - t0:.1f} s; model trained "
        f"{ARGS.pretrain_epochs} epochs on 2000 random-action cart-pole transitions")
    log("mbrl-lib PETS  " + json.dumps(desc))
    counted = th.count_act_rows()
    macs = th.macs_per_row()
    theirs_act_gflop = 2.0 * counted["rows"] * macs / 1e9
    log(f"mbrl-lib act   {counted['rows']} member-rows per act in {counted['calls']} forward "
        f"calls (expected 350x20x15x5 = {350 * 20 * 15 * 5}); {macs} multiply-adds per row "
        f"-> {theirs_act_gflop:.1f} GFLOP per act")

    rounds = {k: [] for k in ("ours_plan", "ours_plan_bf16", "ours_train", "ours_train_bf16",
                              "ours_fwd", "theirs_act", "theirs_train", "theirs_train_eval",
                              "theirs_fwd")}
    ours_last = {}
    peaks, fmas, loads = [], [], []
    for r in range(ARGS.rounds):
        plan = run_ours("plan")
        if r == 0:
            log("mbrl-gpu rows " + ", ".join(plan))
        cp = plan["plan_step_cartpole_mbrl_lib"]
        rounds["ours_plan"].append(cp["median_ms"])
        # On the CPU `bench plan` also measures bf16 products (AMX tiles where present).
        if "plan_step_cartpole_mbrl_lib_bf16" in plan:
            rounds["ours_plan_bf16"].append(plan["plan_step_cartpole_mbrl_lib_bf16"]["median_ms"])
        ours_last.update(plan)
        a = th.time_act(ARGS.act_warmup, ARGS.act_reps)
        rounds["theirs_act"].append(a)
        mod = run_ours("model")
        if r == 0:
            log("mbrl-gpu rows " + ", ".join(mod))
        ours_last.update(mod)
        peaks += [row["peak_gflops"] for row in (cp, mod["gemm_peak_square"])]
        # The f32 FMA issue ceiling (newer binaries): steadier than the GEMM peak.
        fmas += [row.get("fma_ceiling_gflops", 0.0) for row in (cp, mod["gemm_peak_square"])]
        rounds["ours_train"].append(mod["train_epoch_n2000_e7_5x200x4_8_b256"]["median_ms"])
        # On the CPU `bench model` also trains with bf16 products (train.precision = bf16).
        if "train_epoch_n2000_e7_5x200x4_8_b256_bf16" in mod:
            rounds["ours_train_bf16"].append(
                mod["train_epoch_n2000_e7_5x200x4_8_b256_bf16"]["median_ms"])
        rounds["ours_fwd"].append(mod["ensemble_forward_e7_r1000_24x200x4_36"]["median_ms"])
        e = th.time_epoch(ARGS.train_reps, evaluate=False)
        ee = th.time_epoch(ARGS.train_reps, evaluate=True)
        f = th.time_forward(ARGS.ours_reps * 4)
        rounds["theirs_train"].append(e)
        rounds["theirs_train_eval"].append(ee)
        rounds["theirs_fwd"].append(f)
        loads.append(os.getloadavg()[0])
        log(f"round {r + 1}/{ARGS.rounds} (1-min load {loads[-1]:.2f}): plan ours "
            f"{cp['median_ms']:.1f} / theirs {a:.1f} ms; "
            f"epoch ours {rounds['ours_train'][-1]:.1f} / theirs {e:.1f} "
            f"(with per-epoch evaluation {ee:.1f}) ms; forward ours "
            f"{rounds['ours_fwd'][-1]:.2f} / theirs {f:.2f} ms")

    load_after = uptime_line()
    # The GEMM peak each `mbrl-gpu bench` call of this run reported (its best): their median.
    peak = median(peaks)
    ours_cp = ours_last["plan_step_cartpole_mbrl_lib"]
    m_gflop = re.search(r"([0-9.]+) GFLOP per action", ours_cp["note"])
    ours_act_gflop = float(m_gflop.group(1)) if m_gflop else (
        ours_cp["gflops"] * ours_cp["median_ms"] * 1e-3)
    ours_tr = ours_last["train_epoch_n2000_e7_5x200x4_8_b256"]
    ours_fw = ours_last["ensemble_forward_e7_r1000_24x200x4_36"]
    # Training FLOPs as `bench model` counts them: forward 2*macs, dW 2*macs, dX 2*(macs-first).
    first = (OBS_DIM + ACT_DIM) * 200
    train_gflop = 2000 * 7 * 2 * (3 * macs - first) / 1e9
    fwd_gflop = 2 * 7 * 1000 * th.macs_per_row(th.fwd) / 1e9

    comps = [
        ("planning step (act), cart-pole PETS: CEM 350x5 it, 35 elites, H=15, 20 particles TS1",
         "plan_step_cartpole_mbrl_lib", "ours_plan", "theirs_act", theirs_act_gflop,
         ours_cp, "TrajectoryOptimizerAgent.act (pets_cartpole)"),
        ("training epoch, 2000 transitions, E=7, 4x200, batch 256",
         "train_epoch_n2000_e7_5x200x4_8_b256", "ours_train", "theirs_train", train_gflop,
         ours_tr, "ModelTrainer.train, evaluate=False"),
        ("training epoch + per-epoch evaluation on the training set (as mbrl-lib PETS trains)",
         "train_epoch_n2000_e7_5x200x4_8_b256", "ours_train", "theirs_train_eval", train_gflop,
         ours_tr, "ModelTrainer.train, evaluate=True, patience 25, no validation split"),
        ("training epoch as above, mbrl-gpu with bf16 products (mbrl-lib still f32)",
         "train_epoch_n2000_e7_5x200x4_8_b256_bf16", "ours_train_bf16", "theirs_train",
         train_gflop, ours_last.get("train_epoch_n2000_e7_5x200x4_8_b256_bf16"),
         "ModelTrainer.train, evaluate=False"),
        ("planning step (act) as above, mbrl-gpu with bf16 products (mbrl-lib still f32)",
         "plan_step_cartpole_mbrl_lib_bf16", "ours_plan_bf16", "theirs_act", theirs_act_gflop,
         ours_last.get("plan_step_cartpole_mbrl_lib_bf16"),
         "TrajectoryOptimizerAgent.act (pets_cartpole)"),
        ("ensemble forward, E=7 x 1000 rows, 24 -> 4x200 SiLU -> 36",
         "ensemble_forward_e7_r1000_24x200x4_36", "ours_fwd", "theirs_fwd", fwd_gflop,
         ours_fw, "GaussianMLP.forward under no_grad (no normaliser)"),
    ]
    log("")
    log(f"load after    {load_after}")
    log(f"mbrl-gpu GEMM peak {peak:.1f} GFLOP/s on {ours_cp['threads']} threads (median of "
        f"{len(peaks)} measurements, {min(peaks):.0f}-{max(peaks):.0f}); 1-min load after each "
        f"round: {', '.join(f'{l:.2f}' for l in loads)}")
    fmas = [v for v in fmas if v > 0]
    if fmas:
        log(f"mbrl-gpu f32 FMA issue ceiling {median(fmas):.1f} GFLOP/s (median of {len(fmas)}, "
            f"{min(fmas):.0f}-{max(fmas):.0f}): 'GFLOP/s' below over it is each side's share "
            f"of what the FMA units can issue")
    log(f"{'work':<88} {'mbrl-gpu ms':>11} {'mbrl-lib ms':>11} {'ratio':>7} "
        f"{'GFLOP/s ours':>12} {'theirs':>8}")
    lines = []
    for work, name, ko, kt, gflop, orow, how in comps:
        if not rounds[ko]:
            continue
        mo, mt = median(rounds[ko]), median(rounds[kt])
        g_o = gflop / (mo * 1e-3)
        g_t = gflop / (mt * 1e-3)
        log(f"{work:<88} {mo:>11.1f} {mt:>11.1f} {mt / mo:>6.2f}x {g_o:>12.1f} {g_t:>8.1f}")
        lines.append({
            "work": work,
            "mbrl_gpu_bench": name,
            "mbrl_lib_call": how,
            "mbrl_gpu_median_ms": mo,
            "mbrl_lib_median_ms": mt,
            "ratio_mbrl_lib_over_mbrl_gpu": mt / mo,
            "mbrl_gpu_round_medians_ms": rounds[ko],
            "mbrl_lib_round_medians_ms": rounds[kt],
            "gflop_per_call": gflop,
            "mbrl_gpu_gflops": g_o,
            "mbrl_lib_gflops": g_t,
            "peak_gflops": peak,
            "peak_gflops_measurements": peaks,
            "fma_ceiling_gflops_measurements": fmas,
            "load_1min_after_rounds": loads,
            "mbrl_gpu_fraction_of_peak": g_o / peak if peak > 0 else 0.0,
            "mbrl_lib_fraction_of_peak": g_t / peak if peak > 0 else 0.0,
            "mbrl_gpu_last_row": orow,
            "threads": ARGS.threads,
            "rounds": ARGS.rounds,
            "date": date,
            **cpu,
            "load_before": load_before,
            "load_after": load_after,
            "torch": torch.__version__,
            "mbrl": mbrl.__version__,
        })
    log(f"ratio = mbrl-lib / mbrl-gpu (above 1: mbrl-gpu is faster). GFLOP per act: ours "
        f"{ours_act_gflop:.1f}, mbrl-lib {theirs_act_gflop:.1f}; per epoch {train_gflop:.2f}; "
        f"the mbrl-lib act counts its model forward only (CEM, reward and normaliser are extra "
        f"work in both).")
    if abs(ours_act_gflop - theirs_act_gflop) > 0.01 * ours_act_gflop:
        log(f"WARNING: FLOPs per act differ: ours {ours_act_gflop:.2f}, "
            f"mbrl-lib {theirs_act_gflop:.2f} GFLOP")
    if ARGS.json:
        for l in lines:
            print(json.dumps(l), flush=True)


if __name__ == "__main__":
    main()
