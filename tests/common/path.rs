//! The path gradient on a device (`policy::device_path::DevicePath`: the dense-layer engine
//! and the six `path_*` stages) against the CPU backend's (itself checked against
//! `policy::path::path_loss` in its unit tests), shared by `wgpu_parity.rs` and
//! `cuda_pocl.rs`. Awkward sizes: 37 rows (uneven chunks for one-workgroup kernels), 13-wide
//! networks, three elites, horizons 0 to 4; every task with a hand-written reward gradient
//! (pendulum, mountain car, half-cheetah's `next₀ − 0.1‖a‖²` with two actions), learned
//! rewards with termination inside the horizon (cart-pole), no terminal value (SVG(∞)) and a
//! deterministic model. Every scratch buffer is poisoned (NaN) before the run, so a stage
//! that leaves a value unwritten for a later one to read shows up.
use super::planners::Compare;
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::backend::{path_report, sac_stats, Activation, Backend, EnsembleShape, PathShape};
use mbrl_gpu::env::{task, EnvId};
use mbrl_gpu::policy::device::BranchModel;
use mbrl_gpu::policy::device_path::{DevicePath, PathNets, PathSpec};
use mbrl_gpu::policy::path::PathNoise;
use mbrl_gpu::policy::sac::{init_params, Nets, SacConfig, Squash};

/// One case: networks, model, start states and the path's settings.
#[derive(Clone)]
pub struct Case {
    pub name: &'static str,
    nets: Nets,
    sq: Squash<f32>,
    actor: Vec<f32>,
    critic: Vec<f32>,
    shape: EnsembleShape,
    model: Vec<f32>,
    norm: Vec<f32>,
    start: Vec<f32>,
    spec: PathSpec,
    horizon: usize,
}

fn randn(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut g = mbrl_gpu::rng::Philox::new(seed, 97, 0);
    (0..n).map(|_| g.normal() * scale).collect()
}

#[allow(clippy::too_many_arguments)]
fn make(
    name: &'static str,
    o: usize,
    a: usize,
    task: u32,
    learn_reward: bool,
    probabilistic: bool,
    terminal_value: bool,
    horizon: usize,
    start: Vec<f32>,
) -> Case {
    let cfg = SacConfig {
        hidden: 13,
        num_layers: 2,
        ..SacConfig::default()
    };
    let nets = Nets::new(o, a, &cfg);
    let mut actor = init_params(&nets.actor, 3, 0);
    let head = *nets.actor.layout().layers.last().unwrap();
    for j in 0..a {
        actor[head.bias + a + j] = -0.5;
    }
    let shape = EnsembleShape {
        ensemble: 3,
        in_dim: o + a,
        out_dim: o + usize::from(learn_reward),
        hidden: 13,
        num_layers: 2,
        activation: Activation::Silu,
        probabilistic,
    };
    let mut model = mbrl_gpu::backend::cpu::ensemble::init_params(&shape, 5);
    // Small steps (a tenth of the head, σ ≈ 0.08): paths stay near their start.
    let lay = shape.layout();
    let hl = *lay.layers.last().unwrap();
    let n = shape.ensemble * hl.fan_in * hl.fan_out;
    model[hl.weight..hl.weight + n]
        .iter_mut()
        .for_each(|w| *w *= 0.1);
    if probabilistic {
        for v in &mut model[lay.max_logvar..lay.max_logvar + shape.out_dim] {
            *v = -5.0;
        }
    }
    let i = o + a;
    let mut norm: Vec<f32> = (0..i).map(|j| 0.1 * j as f32 - 0.2).collect();
    norm.extend((0..i).map(|j| 1.0 + 0.2 * j as f32));
    let (low, high): (Vec<f32>, Vec<f32>) = (0..a).map(|j| (-1.0 - j as f32, 2.0)).unzip();
    Case {
        name,
        critic: init_params(&nets.critic, 3, 1),
        sq: Squash::from_bounds(&low, &high),
        nets,
        actor,
        shape,
        model,
        norm,
        start,
        spec: PathSpec {
            gamma: 0.95,
            task,
            learn_reward,
            terminal_value,
            target_entropy: -(a as f32),
            ..PathSpec::default()
        },
        horizon,
    }
}

pub const ROWS: usize = 37;

pub fn cases() -> Vec<Case> {
    let pendulum = || {
        let th = randn(1, ROWS, 1.5);
        let td = randn(2, ROWS, 1.0);
        (0..ROWS)
            .flat_map(|b| [th[b].cos(), th[b].sin(), td[b]])
            .collect::<Vec<f32>>()
    };
    let cartpole: Vec<f32> = randn(3, ROWS * 4, 0.02)
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if i / 4 % 2 == 0 && i % 4 == 0 {
                2.37 + r
            } else {
                *r
            }
        })
        .collect();
    // Near the goal (x ≥ 0.45 with v ≥ 0 ends the episode with a bonus of 100).
    let car: Vec<f32> = randn(4, ROWS * 2, 1.0)
        .chunks(2)
        .flat_map(|v| [0.44 + 0.01 * v[0], 0.01 * v[1]])
        .collect();
    let cheetah = randn(5, ROWS * 5, 0.5);
    let (p, cp) = (EnvId::Pendulum.code(), EnvId::CartPole.code());
    // SVG(∞)'s options: each step's contribution clipped (some steps' only: their norms are
    // 1.38–1.54 here, about 0 at the last step without a terminal value) and the penalty on
    // means beyond 0.05 (most rows').
    let mut svg_options = make(
        "pendulum SVG H4, step clip and mean penalty",
        3,
        1,
        p,
        false,
        true,
        false,
        4,
        pendulum(),
    );
    svg_options.spec.step_grad_norm = 1.45;
    svg_options.spec.mean_limit = 0.05;
    svg_options.spec.mean_penalty = 0.5;
    vec![
        svg_options,
        make("pendulum H3", 3, 1, p, false, true, true, 3, pendulum()),
        make(
            "pendulum H0 (SAC)",
            3,
            1,
            p,
            false,
            true,
            true,
            0,
            pendulum(),
        ),
        make(
            "pendulum SVG H4",
            3,
            1,
            p,
            false,
            true,
            false,
            4,
            pendulum(),
        ),
        make(
            "pendulum deterministic H2",
            3,
            1,
            p,
            false,
            false,
            true,
            2,
            pendulum(),
        ),
        make(
            "cartpole learned H4",
            4,
            1,
            cp,
            true,
            true,
            true,
            4,
            cartpole.clone(),
        ),
        make("cartpole task H3", 4, 1, cp, false, true, true, 3, cartpole),
        make(
            "mountain car H3",
            2,
            1,
            EnvId::MountainCar.code(),
            false,
            true,
            true,
            3,
            car,
        ),
        make(
            "half-cheetah reward H2",
            5,
            2,
            task::HALF_CHEETAH,
            false,
            true,
            true,
            2,
            cheetah,
        ),
    ]
}

/// (∂loss/∂θ, report, α gradient, SAC statistics summed over both paths) of one path on
/// `be`, scratch poisoned first.
pub fn run<B: Backend>(be: &B, c: &Case) -> (Vec<f32>, Vec<f32>, f32, Vec<f32>) {
    let (o, a) = (c.nets.obs_dim, c.nets.act_dim);
    let unit = |n: usize| {
        let mut v = vec![0.0f32; n];
        v.extend(std::iter::repeat_n(1.0f32, n));
        v
    };
    let up = |v: &[f32]| be.upload(v).unwrap();
    let (actor, critic) = (up(&c.actor), up(&c.critic));
    let (norm_obs, norm_critic) = (up(&unit(o)), up(&unit(o + a)));
    let (model, norm, log_alpha) = (up(&c.model), up(&c.norm), up(&[-1.3]));
    let n = PathNets {
        nets: &c.nets,
        actor: &actor,
        critic: &critic,
        norm_obs: &norm_obs,
        norm_critic: &norm_critic,
        model: BranchModel {
            shape: c.shape,
            params: &model,
            norm: &norm,
        },
        log_alpha: &log_alpha,
    };
    let shape = PathShape {
        rows: ROWS,
        obs_dim: o,
        act_dim: a,
        out_dim: c.shape.out_dim,
        members: c.shape.ensemble,
        horizon: c.horizon,
    };
    let noise = PathNoise::draw(4, 7, c.horizon, ROWS, a, c.shape.out_dim, 3);
    let mut path = DevicePath::new(be, shape, c.actor.len(), &c.sq).unwrap();
    path.set_noise(be, &noise).unwrap();
    path.poison(be).unwrap();
    let mut grad = up(&vec![f32::NAN; c.actor.len()]);
    let start = up(&c.start);
    let mut stats = be.zeros(mbrl_gpu::backend::sac_stats::LEN).unwrap();
    path.run(be, &n, c.spec, &start, &mut grad, &mut stats)
        .unwrap();
    // A second path on the same buffers (another draw) must not read the first one's
    // leftovers: compare that one.
    let noise = PathNoise::draw(4, 8, c.horizon, ROWS, a, c.shape.out_dim, 3);
    path.set_noise(be, &noise).unwrap();
    path.run(be, &n, c.spec, &start, &mut grad, &mut stats)
        .unwrap();
    (
        be.download(&grad).unwrap(),
        be.download(&path.report).unwrap(),
        be.download(&path.alpha_grad).unwrap()[0],
        be.download(&stats).unwrap(),
    )
}

/// Every case on `dev` against the CPU backend. Tolerances: the gradient within 2e-4 of
/// its largest entry (sums over H steps of three products, each rounded apart by the
/// device's own summation order and transcendental functions), the report's sums within
/// 1e-5 relative, the alive share exactly (flags).
pub fn parity<B: Backend>(dev: &B, label: &str) -> Vec<Compare> {
    let cpu = CpuBackend::new();
    let mut out = vec![];
    for c in cases() {
        let (g_want, r_want, a_want, s_want) = run(&cpu, &c);
        let (g_got, r_got, a_got, s_got) = run(dev, &c);
        assert_eq!(
            s_want[sac_stats::COUNT],
            2.0,
            "{}: two paths counted",
            c.name
        );
        let scale = g_want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            scale > 0.0 && g_want.iter().all(|v| v.is_finite()),
            "{}: the CPU's gradient must be finite and not zero",
            c.name
        );
        out.push(Compare {
            what: format!("{label} path {}: ∂θ", c.name),
            got: g_got,
            want: g_want,
            atol: 2e-4 * scale,
            rtol: 0.0,
        });
        out.push(Compare {
            what: format!("{label} path {}: report and α gradient", c.name),
            got: [&r_got[..path_report::ALIVE], &[a_got]].concat(),
            want: [&r_want[..path_report::ALIVE], &[a_want]].concat(),
            atol: 1e-5,
            rtol: 1e-5,
        });
        out.push(Compare {
            what: format!("{label} path {}: SAC statistics", c.name),
            got: s_got,
            want: s_want,
            atol: 1e-5,
            rtol: 1e-5,
        });
        out.push(Compare {
            what: format!("{label} path {}: alive share", c.name),
            got: vec![r_got[path_report::ALIVE]],
            want: vec![r_want[path_report::ALIVE]],
            atol: 0.0,
            rtol: 0.0,
        });
    }
    out
}

/// The CPU backend's composition runs every case with finite, non-zero gradients and the
/// terminations the cases are built for (the fixture's own check, backend-free).
pub fn cases_are_meaningful() {
    let cpu = CpuBackend::new();
    for c in cases() {
        let (g, r, _, _) = run(&cpu, &c);
        assert!(
            g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0),
            "{}",
            c.name
        );
        let alive = r[path_report::ALIVE];
        if c.name.starts_with("cartpole") || c.name.starts_with("mountain") {
            assert!(alive > 0.0 && alive < 1.0, "{}: alive {alive}", c.name);
        }
        // Each option that is set changes the gradient (is exercised), and the step clip
        // binds at some steps and not at others: were every step clipped, the gradient
        // would be homogeneous in the limit.
        let scale = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let apart = |spec: PathSpec, k: f32| {
            let other = run(&cpu, &Case { spec, ..c.clone() }).0;
            let d = other.iter().zip(&g).map(|(x, y)| (k * x - y).abs());
            d.fold(0.0f32, f32::max)
        };
        if c.spec.mean_penalty > 0.0 {
            let off = PathSpec {
                mean_penalty: 0.0,
                ..c.spec
            };
            assert!(
                apart(off, 1.0) > 1e-2 * scale,
                "{}: the penalty is idle",
                c.name
            );
        }
        if c.spec.step_grad_norm > 0.0 {
            let with = |step_grad_norm| PathSpec {
                step_grad_norm,
                ..c.spec
            };
            let limit = c.spec.step_grad_norm;
            assert!(
                apart(with(0.0), 1.0) > 1e-2 * scale,
                "{}: no step clipped",
                c.name
            );
            // (Rounding alone leaves ~1e-6·scale between the two.)
            assert!(
                apart(with(1e-3 * limit), 1e3) > 1e-4 * scale,
                "{}: every step clipped",
                c.name
            );
        }
    }
}
