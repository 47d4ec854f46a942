//! Soft actor-critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications":
//! twin Q, target critics, automatic temperature), with every backward written by hand.
//!
//! The networks run on the ensemble's dense-layer engine ([`crate::backend::cpu::ensemble`]):
//! the twin critics are a deterministic ensemble of two members on `[s, a]`, the actor a
//! one-member ensemble on `s` whose head is `[μ (A), log σ (A)]`. Inputs are not normalised
//! (mean 0, std 1), as in pranz24's PyTorch SAC, which mbrl-lib's MBPO uses.
//!
//! Losses of one update, on a minibatch of B transitions (s, a, r, s', m), m = 1 − terminated:
//!
//! ```text
//! policy sample:  u = μ(s) + σ(s)·ε,  ã = scale·tanh(u) + bias,  σ = exp(clamp(log σ, −20, 2))
//!                 log π(ã|s) = Σ_j [ −ε_j²/2 − log σ_j − ½ log 2π − log(scale_j·(1 − tanh² u_j) + 10⁻⁶) ]
//! critic:  y = r + γ·m·( min_k Q̄_k(s', ã') − α·log π(ã'|s') )        (no gradient through y)
//!          J_Q = (1/B) Σ_b [ (Q_1(s,a) − y)² + (Q_2(s,a) − y)² ]
//! actor:   J_π = (1/B) Σ_b [ α·log π(ã|s) − min_k Q_k(s, ã) ]        (critics after their step)
//! alpha:   J_α = −(1/B) Σ_b log α · (log π(ã|s) + H̄)                 (log π held fixed)
//! targets: θ̄ ← τ·θ + (1 − τ)·θ̄ every `target_update_interval` updates
//! ```
//!
//! The ε of ã' (critic target) and of ã (actor) are Philox normals of stream SAC_NOISE at
//! step = update index, elements 0..B·A and B·A..2·B·A, so a run is a function of its seed.
use crate::backend::cpu::ensemble::{self as engine, Workspace};
use crate::backend::cpu::{optim, Real};
use crate::backend::{Activation, AdamParams, EnsembleShape, Precision};
use crate::rng::{normals, stream};
use crate::{setting, Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Bounds of the actor's log-standard-deviation (pranz24: LOG_SIG_MIN, LOG_SIG_MAX).
pub const LOG_STD_MIN: f64 = -20.0;
pub const LOG_STD_MAX: f64 = 2.0;
/// Keeps the tanh log-determinant finite when tanh saturates (pranz24's epsilon).
pub const TANH_EPS: f64 = 1e-6;

/// SAC's hyper-parameters (defaults: pranz24 SAC / mbrl-lib's `mbpo_*` overrides).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SacConfig {
    /// Width of every hidden layer of actor and critics.
    pub hidden: usize,
    /// Hidden layers per network.
    pub num_layers: usize,
    pub activation: Activation,
    /// Adam learning rate of actor, critics and temperature.
    pub lr: f32,
    /// Discount γ.
    pub gamma: f32,
    /// Polyak coefficient τ of the target critics.
    pub tau: f32,
    /// Transitions per gradient step.
    pub batch_size: usize,
    /// Target critics are updated every this many gradient steps.
    pub target_update_interval: usize,
    /// Initial temperature α (the fixed one without automatic tuning).
    pub alpha: f32,
    /// Learn α so that the policy's entropy tracks `target_entropy`.
    pub automatic_entropy_tuning: bool,
    /// Target entropy H̄; `None` is −(action dimension), SAC v2's heuristic.
    #[serde(default)]
    pub target_entropy: Option<f32>,
    /// Arithmetic of the gradient steps' hidden-layer products (the forward passes that
    /// keep activations, and the backward passes): f32, the specification; or bf16
    /// operands with f32 sums, on AMX tiles where the CPU has them (elsewhere the same
    /// roundings through the f32 GEMM, which is slower than f32).
    #[serde(default)]
    pub precision: Precision,
}

impl Default for SacConfig {
    fn default() -> Self {
        Self {
            hidden: 256,
            num_layers: 2,
            activation: Activation::Relu,
            lr: 3e-4,
            gamma: 0.99,
            tau: 0.005,
            batch_size: 256,
            target_update_interval: 1,
            alpha: 0.2,
            automatic_entropy_tuning: true,
            target_entropy: None,
            precision: Precision::F32,
        }
    }
}

impl SacConfig {
    /// Errors are [`Error::Setting`]s keyed by field.
    pub fn validate(&self) -> Result<()> {
        const MAX_HIDDEN: usize = 1 << 14;
        const MAX_LAYERS: usize = 16;
        if self.hidden == 0 || self.hidden > MAX_HIDDEN {
            return Err(setting!(
                "hidden",
                "is {}; it must be between 1 and {MAX_HIDDEN}",
                self.hidden
            ));
        }
        if self.num_layers == 0 || self.num_layers > MAX_LAYERS {
            return Err(setting!(
                "num_layers",
                "is {}; it must be between 1 and {MAX_LAYERS}",
                self.num_layers
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(setting!("lr", "must be a positive number, got {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.gamma) {
            return Err(setting!("gamma", "must be in [0, 1], got {}", self.gamma));
        }
        if !(self.tau > 0.0 && self.tau <= 1.0) {
            return Err(setting!("tau", "must be in (0, 1], got {}", self.tau));
        }
        if self.batch_size == 0 || self.batch_size > 1 << 20 {
            return Err(setting!(
                "batch_size",
                "is {}; it must be between 1 and 2^20",
                self.batch_size
            ));
        }
        if self.target_update_interval == 0 {
            return Err(setting!("target_update_interval", "must be at least 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(setting!(
                "alpha",
                "must be a positive number, got {}",
                self.alpha
            ));
        }
        if let Some(h) = self.target_entropy {
            if !h.is_finite() {
                return Err(setting!("target_entropy", "must be finite, got {h}"));
            }
        }
        Ok(())
    }
}

/// The two network shapes of a SAC agent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nets {
    pub obs_dim: usize,
    pub act_dim: usize,
    /// One member: s → [μ, log σ].
    pub actor: EnsembleShape,
    /// Two members (Q₁, Q₂): [s, a] → Q.
    pub critic: EnsembleShape,
}

impl Nets {
    pub fn new(obs_dim: usize, act_dim: usize, cfg: &SacConfig) -> Self {
        let mlp = |ensemble, in_dim, out_dim| EnsembleShape {
            ensemble,
            in_dim,
            out_dim,
            hidden: cfg.hidden,
            num_layers: cfg.num_layers,
            activation: cfg.activation,
            probabilistic: false,
        };
        Self {
            obs_dim,
            act_dim,
            actor: mlp(1, obs_dim, 2 * act_dim),
            critic: mlp(2, obs_dim + act_dim, 1),
        }
    }

    /// Multiply-adds of one gradient step at batch `b`: critic target (actor + two critics
    /// forward on s'), critic forward and backward (×3), actor forward and backward (×3),
    /// and at the actor's actions both critics forward and the input gradient of the
    /// smaller one (a row's gradient of min(Q₁, Q₂) reaches one critic; no critic weight
    /// gradient). Until 2026-12-05 the last term was counted as both critics' full backward
    /// (×3 instead of ×1.5), which put a step at 0.62 GFLOP instead of 0.52 at Pendulum-v1
    /// sizes.
    pub fn macs_per_update(&self, b: usize) -> u64 {
        let a = self.actor.macs_per_row() as u64;
        let c = (2 * self.critic.macs_per_row()) as u64;
        b as u64 * ((a + c) + 3 * c + 3 * a + c + c / 2)
    }
}

/// Xavier-uniform weights and zero biases (pranz24's `weights_init_`), from Philox stream
/// INIT_POLICY; `salt` separates actor and critics.
pub fn init_params(shape: &EnsembleShape, seed: u64, salt: u32) -> Vec<f32> {
    let lay = shape.layout();
    let mut p = vec![0.0f32; lay.total];
    let mut g = crate::rng::Philox::new(seed, stream::INIT_POLICY, salt);
    for lo in &lay.layers {
        let bound = (6.0 / (lo.fan_in + lo.fan_out) as f32).sqrt();
        let n = shape.ensemble * lo.fan_in * lo.fan_out;
        for w in &mut p[lo.weight..lo.weight + n] {
            *w = (2.0 * g.uniform() - 1.0) * bound;
        }
    }
    p
}

/// Action squashing: `a = scale·tanh(u) + bias` maps the policy onto the action box.
#[derive(Clone, Debug, PartialEq)]
pub struct Squash<T> {
    pub scale: Vec<T>,
    pub bias: Vec<T>,
}

impl Squash<f32> {
    pub fn from_bounds(low: &[f32], high: &[f32]) -> Self {
        Self {
            scale: low.iter().zip(high).map(|(l, h)| (h - l) / 2.0).collect(),
            bias: low.iter().zip(high).map(|(l, h)| (h + l) / 2.0).collect(),
        }
    }
    pub fn cast<T: Real>(&self) -> Squash<T> {
        Squash {
            scale: self.scale.iter().map(|v| T::c(*v as f64)).collect(),
            bias: self.bias.iter().map(|v| T::c(*v as f64)).collect(),
        }
    }
}

/// From the actor's head row `[μ, log σ_raw]` and noise ε: the action and log π. With
/// `grad = Some((g_a, g_logp, out))` also the chain rule back to the head:
/// `out = ∂/∂head` of `Σ_j g_a[j]·a_j + g_logp·log π` (total derivatives, ε fixed).
pub(crate) fn squash_row<T: Real>(
    head: &[T],
    eps: &[T],
    sq: &Squash<T>,
    act: &mut [T],
    grad: Option<(&[T], T, &mut [T])>,
) -> T {
    let a_dim = eps.len();
    let half_ln_2pi = T::c(0.5 * (2.0 * std::f64::consts::PI).ln());
    let (lo, hi) = (T::c(LOG_STD_MIN), T::c(LOG_STD_MAX));
    let mut logp = T::zero();
    let mut g = grad;
    for j in 0..a_dim {
        let mu = head[j];
        let raw = head[a_dim + j];
        let ls = raw.max(lo).min(hi);
        let sigma = ls.exp();
        let u = mu + sigma * eps[j];
        let t = u.tanh();
        let one_m_t2 = T::one() - t * t;
        act[j] = sq.scale[j] * t + sq.bias[j];
        let det = sq.scale[j] * one_m_t2 + T::c(TANH_EPS);
        logp += -T::c(0.5) * eps[j] * eps[j] - ls - half_ln_2pi - det.ln();
        if let Some((g_a, g_logp, out)) = g.as_mut() {
            // ∂a/∂u = scale·(1 − t²); ∂(−ln det)/∂u = 2t·scale·(1 − t²)/det.
            let du = g_a[j] * sq.scale[j] * one_m_t2
                + *g_logp * T::c(2.0) * t * sq.scale[j] * one_m_t2 / det;
            out[j] = du;
            // ∂u/∂ls = σε; ∂log π/∂ls = −1 (the Gaussian term's total derivative is 0);
            // the clamp passes the gradient inside [lo, hi] (torch.clamp: inclusive).
            let inside = raw >= lo && raw <= hi;
            out[a_dim + j] = if inside {
                du * sigma * eps[j] - *g_logp
            } else {
                T::zero()
            };
        }
    }
    logp
}

/// Rows per parallel block of [`squash_rows`] and [`squash_rows_grad`].
const SQUASH_ROWS: usize = 32;

/// [`squash_row`] on every row of `head` [B, 2A] with noise `eps` [B, A]: actions into
/// `act` [B, A], log π into `logp` [B]. The rows are independent, and each costs three
/// libm calls per action dimension, so blocks of rows run in parallel (serial, this was a
/// tenth of a SAC step on two cores, with the other core idle); results are the serial ones.
pub(crate) fn squash_rows<T: Real>(
    head: &[T],
    eps: &[T],
    sq: &Squash<T>,
    act: &mut [T],
    logp: &mut [T],
) {
    let a = sq.scale.len().max(1);
    let rows = logp.len();
    act[..rows * a]
        .par_chunks_mut(SQUASH_ROWS * a)
        .zip(logp.par_chunks_mut(SQUASH_ROWS))
        .enumerate()
        .for_each(|(blk, (act, logp))| {
            for (i, lp) in logp.iter_mut().enumerate() {
                let b = blk * SQUASH_ROWS + i;
                *lp = squash_row(
                    &head[b * 2 * a..(b + 1) * 2 * a],
                    &eps[b * a..(b + 1) * a],
                    sq,
                    &mut act[i * a..(i + 1) * a],
                    None,
                );
            }
        });
}

/// The chain rule of [`squash_row`] on every row, in parallel blocks as [`squash_rows`]:
/// `d_head` [B, 2A] from ∂J/∂a of row b, `g_act(b, j)`, and the weight `g_logp` of log π.
pub(crate) fn squash_rows_grad<T: Real>(
    head: &[T],
    eps: &[T],
    sq: &Squash<T>,
    g_act: impl Fn(usize, usize) -> T + Sync,
    g_logp: T,
    d_head: &mut [T],
) {
    let a = sq.scale.len().max(1);
    d_head
        .par_chunks_mut(SQUASH_ROWS * 2 * a)
        .enumerate()
        .for_each(|(blk, d_head)| {
            let (mut g_a, mut scratch) = (vec![T::zero(); a], vec![T::zero(); a]);
            for (i, out) in d_head.chunks_exact_mut(2 * a).enumerate() {
                let b = blk * SQUASH_ROWS + i;
                for (j, g) in g_a.iter_mut().enumerate() {
                    *g = g_act(b, j);
                }
                squash_row(
                    &head[b * 2 * a..(b + 1) * 2 * a],
                    &eps[b * a..(b + 1) * a],
                    sq,
                    &mut scratch,
                    Some((&g_a, g_logp, out)),
                );
            }
        });
}

/// Scratch of the spec functions: one engine workspace per network role.
#[derive(Default)]
pub struct SacWorkspace<T> {
    actor: Workspace<T>,
    critic: Workspace<T>,
}

impl<T: Default> SacWorkspace<T> {
    /// Scratch whose training products run in `precision`.
    pub fn new(precision: Precision) -> Self {
        let mut w = Self::default();
        w.actor.bf16_training = precision == Precision::Bf16;
        w.critic.bf16_training = precision == Precision::Bf16;
        w
    }
}

/// `[s, a]` rows, twice (one copy per critic member): [2, B, O + A].
pub(crate) fn critic_input<T: Real>(
    obs: &[T],
    act: &[T],
    rows: usize,
    o: usize,
    a: usize,
) -> Vec<T> {
    let mut x = Vec::with_capacity(2 * rows * (o + a));
    for _ in 0..2 {
        for b in 0..rows {
            x.extend_from_slice(&obs[b * o..(b + 1) * o]);
            x.extend_from_slice(&act[b * a..(b + 1) * a]);
        }
    }
    x
}

pub(crate) fn unit_norm<T: Real>(n: usize) -> (Vec<T>, Vec<T>) {
    (vec![T::zero(); n], vec![T::one(); n])
}

/// Sample the policy on `rows` observations: actions [B, A] and log π [B]; `eps` [B, A] is
/// the noise (zeros with `deterministic`: the action is then `scale·tanh(μ) + bias`).
#[allow(clippy::too_many_arguments)]
pub fn sample<T: Real>(
    nets: &Nets,
    actor: &[T],
    sq: &Squash<T>,
    obs: &[T],
    rows: usize,
    eps: &[T],
    act: &mut [T],
    logp: &mut [T],
    ws: &mut Workspace<T>,
) {
    let a = nets.act_dim;
    let mut head = vec![T::zero(); rows * 2 * a];
    let (m, s) = unit_norm(nets.obs_dim);
    engine::forward(
        &nets.actor,
        actor,
        &m,
        &s,
        obs,
        rows,
        &mut head,
        &mut [],
        ws,
    );
    squash_rows(&head, eps, sq, act, &mut logp[..rows]);
}

/// A trained agent's value of a state, for closing planning horizons (LOOP, TD-MPC):
/// V(s) = min_k Q_k(s, ā(s)) with ā = scale·tanh(μ(s)) + bias, the policy's deterministic
/// action, through the online critics. A copy of the weights: the planner holds it while the
/// agent may train on.
#[derive(Clone, Debug)]
pub struct CriticValue {
    nets: Nets,
    actor: Vec<f32>,
    critic: Vec<f32>,
    squash: Squash<f32>,
    /// The agent's discount γ, which its critics' values are sums under.
    pub gamma: f32,
}

impl CriticValue {
    pub fn from_agent(sac: &Sac) -> Self {
        Self {
            nets: sac.nets,
            actor: sac.actor.clone(),
            critic: sac.critic.clone(),
            squash: sac.squash.clone(),
            gamma: sac.cfg.gamma,
        }
    }

    pub fn obs_dim(&self) -> usize {
        self.nets.obs_dim
    }

    pub fn act_dim(&self) -> usize {
        self.nets.act_dim
    }
}

impl crate::backend::StateValue for CriticValue {
    fn obs_dim(&self) -> usize {
        self.nets.obs_dim
    }

    fn values(&self, states: &[f32], rows: usize, out: &mut [f32]) {
        let (o, a) = (self.nets.obs_dim, self.nets.act_dim);
        let mut ws = SacWorkspace::<f32>::default();
        let eps = vec![0.0f32; rows * a];
        let mut act = vec![0.0f32; rows * a];
        let mut logp = vec![0.0f32; rows];
        sample(
            &self.nets,
            &self.actor,
            &self.squash,
            &states[..rows * o],
            rows,
            &eps,
            &mut act,
            &mut logp,
            &mut ws.actor,
        );
        let (m, sd) = unit_norm(o + a);
        let x = critic_input(&states[..rows * o], &act, rows, o, a);
        let mut q = vec![0.0f32; 2 * rows];
        engine::forward(
            &self.nets.critic,
            &self.critic,
            &m,
            &sd,
            &x,
            rows,
            &mut q,
            &mut [],
            &mut ws.critic,
        );
        for (b, v) in out[..rows].iter_mut().enumerate() {
            *v = q[b].min(q[rows + b]);
        }
    }

    fn nets(&self) -> Option<crate::backend::ValueNets<'_>> {
        let mut squash = self.squash.scale.clone();
        squash.extend_from_slice(&self.squash.bias);
        Some(crate::backend::ValueNets {
            actor: self.nets.actor,
            critic: self.nets.critic,
            obs_dim: self.nets.obs_dim,
            act_dim: self.nets.act_dim,
            actor_params: &self.actor,
            critic_params: &self.critic,
            squash,
        })
    }
}

/// A minibatch of transitions, row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch<T> {
    pub rows: usize,
    pub obs: Vec<T>,
    pub act: Vec<T>,
    pub reward: Vec<T>,
    pub next_obs: Vec<T>,
    /// 1 − terminated: whether the target bootstraps from s'.
    pub mask: Vec<T>,
}

impl Batch<f32> {
    pub fn cast<T: Real>(&self) -> Batch<T> {
        let c = |v: &[f32]| v.iter().map(|x| T::c(*x as f64)).collect();
        Batch {
            rows: self.rows,
            obs: c(&self.obs),
            act: c(&self.act),
            reward: c(&self.reward),
            next_obs: c(&self.next_obs),
            mask: c(&self.mask),
        }
    }
}

/// What the critic loss reports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CriticReport<T> {
    pub loss: T,
    pub q_mean: T,
}

/// J_Q and, with `grad`, ∂J_Q/∂θ_Q (flat critic layout). `eps_next` [B, A] is the noise of ã'.
#[allow(clippy::too_many_arguments)]
pub fn critic_loss<T: Real>(
    nets: &Nets,
    gamma: T,
    alpha: T,
    actor: &[T],
    critic: &[T],
    target: &[T],
    sq: &Squash<T>,
    batch: &Batch<T>,
    eps_next: &[T],
    grad: Option<&mut [T]>,
    ws: &mut SacWorkspace<T>,
) -> CriticReport<T> {
    let (o, a, rows) = (nets.obs_dim, nets.act_dim, batch.rows);
    // Target y: no gradient flows through it.
    let mut a_next = vec![T::zero(); rows * a];
    let mut logp_next = vec![T::zero(); rows];
    sample(
        nets,
        actor,
        sq,
        &batch.next_obs,
        rows,
        eps_next,
        &mut a_next,
        &mut logp_next,
        &mut ws.actor,
    );
    let (m, s) = unit_norm(o + a);
    let x_next = critic_input(&batch.next_obs, &a_next, rows, o, a);
    let mut q_next = vec![T::zero(); 2 * rows];
    engine::forward(
        &nets.critic,
        target,
        &m,
        &s,
        &x_next,
        rows,
        &mut q_next,
        &mut [],
        &mut ws.critic,
    );
    let y: Vec<T> = (0..rows)
        .map(|b| {
            let v = q_next[b].min(q_next[rows + b]) - alpha * logp_next[b];
            batch.reward[b] + gamma * batch.mask[b] * v
        })
        .collect();
    let x = critic_input(&batch.obs, &batch.act, rows, o, a);
    let mut q = vec![T::zero(); 2 * rows];
    let inv_b = T::one() / T::c(rows as f64);
    let mut loss = T::zero();
    let mut q_sum = T::zero();
    let Some(grad) = grad else {
        engine::forward(
            &nets.critic,
            critic,
            &m,
            &s,
            &x,
            rows,
            &mut q,
            &mut [],
            &mut ws.critic,
        );
        for (i, qv) in q.iter().enumerate() {
            loss += (*qv - y[i % rows]).powi(2) * inv_b;
            q_sum += *qv;
        }
        return CriticReport {
            loss,
            q_mean: q_sum * inv_b * T::c(0.5),
        };
    };
    engine::forward_cached(
        &nets.critic,
        critic,
        &m,
        &s,
        &x,
        rows,
        &mut q,
        &mut [],
        &mut ws.critic,
    );
    let mut dq = vec![T::zero(); 2 * rows];
    for (i, qv) in q.iter().enumerate() {
        let diff = *qv - y[i % rows];
        loss += diff * diff * inv_b;
        q_sum += *qv;
        dq[i] = T::c(2.0) * diff * inv_b;
    }
    engine::backward(
        &nets.critic,
        critic,
        &s,
        rows,
        &dq,
        &[],
        Some(grad),
        None,
        &mut ws.critic,
    );
    CriticReport {
        loss,
        q_mean: q_sum * inv_b * T::c(0.5),
    }
}

/// ∂(Σ_b w(b)·min(Q₁, Q₂)(x_b))/∂x after a cached critic forward on `ws` that gave `q`
/// [2, B]: w(b) on the smaller critic, split evenly on a tie (as torch.min's backward); only
/// the input gradient [2, B, O + A], as the critics' parameters are not trained by it.
pub(crate) fn min_q_input_grad<T: Real>(
    nets: &Nets,
    critic: &[T],
    q: &[T],
    w: impl Fn(usize) -> T,
    ws: &mut Workspace<T>,
) -> Vec<T> {
    let rows = q.len() / 2;
    let mut dq = vec![T::zero(); 2 * rows];
    for b in 0..rows {
        let (q1, q2, c) = (q[b], q[rows + b], w(b));
        if q1 < q2 {
            dq[b] = c;
        } else if q2 < q1 {
            dq[rows + b] = c;
        } else {
            dq[b] = c * T::c(0.5);
            dq[rows + b] = c * T::c(0.5);
        }
    }
    // Each row's chain runs through the critics that take a share of its gradient only (the
    // smaller one, both on a tie): `engine::backward` skips the rows with no upstream gradient.
    let (_, sc) = unit_norm::<T>(nets.obs_dim + nets.act_dim);
    let mut dx = vec![T::zero(); 2 * rows * (nets.obs_dim + nets.act_dim)];
    engine::backward(
        &nets.critic,
        critic,
        &sc,
        rows,
        &dq,
        &[],
        None,
        Some(&mut dx),
        ws,
    );
    dx
}

/// What the actor loss reports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ActorReport<T> {
    pub loss: T,
    /// Mean log π of the sampled actions (−entropy estimate), for the temperature loss.
    pub logp_mean: T,
}

/// J_π and, with `grad`, ∂J_π/∂θ_π (flat actor layout), through the reparameterised sample,
/// the tanh log-determinant and min(Q₁, Q₂) at ã. `eps` [B, A].
#[allow(clippy::too_many_arguments)]
pub fn actor_loss<T: Real>(
    nets: &Nets,
    alpha: T,
    actor: &[T],
    critic: &[T],
    sq: &Squash<T>,
    obs: &[T],
    rows: usize,
    eps: &[T],
    grad: Option<&mut [T]>,
    ws: &mut SacWorkspace<T>,
) -> ActorReport<T> {
    let (o, a) = (nets.obs_dim, nets.act_dim);
    let (mo, so) = unit_norm(o);
    let (mc, sc) = unit_norm(o + a);
    let mut head = vec![T::zero(); rows * 2 * a];
    let want = grad.is_some();
    if want {
        engine::forward_cached(
            &nets.actor,
            actor,
            &mo,
            &so,
            obs,
            rows,
            &mut head,
            &mut [],
            &mut ws.actor,
        );
    } else {
        engine::forward(
            &nets.actor,
            actor,
            &mo,
            &so,
            obs,
            rows,
            &mut head,
            &mut [],
            &mut ws.actor,
        );
    }
    let mut act = vec![T::zero(); rows * a];
    let mut logp = vec![T::zero(); rows];
    squash_rows(&head, eps, sq, &mut act, &mut logp);
    let x = critic_input(obs, &act, rows, o, a);
    let mut q = vec![T::zero(); 2 * rows];
    let inv_b = T::one() / T::c(rows as f64);
    let Some(grad) = grad else {
        engine::forward(
            &nets.critic,
            critic,
            &mc,
            &sc,
            &x,
            rows,
            &mut q,
            &mut [],
            &mut ws.critic,
        );
        let mut loss = T::zero();
        for b in 0..rows {
            loss += (alpha * logp[b] - q[b].min(q[rows + b])) * inv_b;
        }
        let logp_mean = logp.iter().copied().sum::<T>() * inv_b;
        return ActorReport { loss, logp_mean };
    };
    debug_assert!(want);
    engine::forward_cached(
        &nets.critic,
        critic,
        &mc,
        &sc,
        &x,
        rows,
        &mut q,
        &mut [],
        &mut ws.critic,
    );
    let mut loss = T::zero();
    for b in 0..rows {
        loss += (alpha * logp[b] - q[b].min(q[rows + b])) * inv_b;
    }
    let dx = min_q_input_grad(nets, critic, &q, |_| -inv_b, &mut ws.critic);
    // ∂J/∂ã: the action columns of both members' input gradients.
    let mut d_head = vec![T::zero(); rows * 2 * a];
    let g_act = |b: usize, j: usize| dx[b * (o + a) + o + j] + dx[(rows + b) * (o + a) + o + j];
    squash_rows_grad(&head, eps, sq, g_act, alpha * inv_b, &mut d_head);
    engine::backward(
        &nets.actor,
        actor,
        &so,
        rows,
        &d_head,
        &[],
        Some(grad),
        None,
        &mut ws.actor,
    );
    let logp_mean = logp.iter().copied().sum::<T>() * inv_b;
    ActorReport { loss, logp_mean }
}

/// J_α's derivative with respect to log α: −(mean log π + H̄).
pub fn alpha_grad(logp_mean: f64, target_entropy: f64) -> f64 {
    -(logp_mean + target_entropy)
}

/// θ̄ ← τ·θ + (1 − τ)·θ̄, in blocks on all threads (element by element, so the result
/// does not depend on the split; serial, it was the other core's idle time in every step).
pub fn polyak(target: &mut [f32], online: &[f32], tau: f32) {
    const BLOCK: usize = crate::backend::cpu::PAR_BLOCK;
    target
        .par_chunks_mut(BLOCK)
        .zip(online.par_chunks(BLOCK))
        .for_each(|(t, o)| {
            for (t, o) in t.iter_mut().zip(o) {
                *t += tau * (*o - *t);
            }
        });
}

/// Adam moments of one parameter vector.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdamState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u32,
}

impl AdamState {
    pub fn new(len: usize) -> Self {
        Self {
            m: vec![0.0; len],
            v: vec![0.0; len],
            step: 0,
        }
    }
    /// One `torch.optim.Adam` step (default betas and eps).
    pub fn step(&mut self, lr: f32, params: &mut [f32], grad: &[f32]) {
        self.step += 1;
        let p = AdamParams::torch(lr, self.step, params.len());
        optim::adam(&p, params, grad, &mut self.m, &mut self.v);
    }
}

/// What one gradient step did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UpdateStats {
    pub critic_loss: f64,
    pub actor_loss: f64,
    pub alpha_loss: f64,
    pub alpha: f64,
    pub q_mean: f64,
    pub entropy: f64,
}

/// What an actor step sees: the networks after this update's critic step, the temperature,
/// SAC's own actor noise [B, A] of this update, the update index and the agent's scratch.
pub struct ActorInputs<'a> {
    pub nets: &'a Nets,
    pub actor: &'a [f32],
    pub critic: &'a [f32],
    pub squash: &'a Squash<f32>,
    pub alpha: f32,
    pub eps: &'a [f32],
    pub updates: u64,
    pub ws: &'a mut SacWorkspace<f32>,
}

/// A SAC agent: parameters, targets, optimiser state. Everything a resumed run needs.
pub struct Sac {
    pub cfg: SacConfig,
    pub nets: Nets,
    pub squash: Squash<f32>,
    pub actor: Vec<f32>,
    pub critic: Vec<f32>,
    pub critic_target: Vec<f32>,
    pub log_alpha: f32,
    pub actor_opt: AdamState,
    pub critic_opt: AdamState,
    pub alpha_opt: AdamState,
    /// Gradient steps taken (the Philox step of their noise).
    pub updates: u64,
    pub seed: u64,
    ws: SacWorkspace<f32>,
}

impl std::fmt::Debug for Sac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sac")
            .field("cfg", &self.cfg)
            .field("nets", &self.nets)
            .field("updates", &self.updates)
            .field("alpha", &self.alpha())
            .finish_non_exhaustive()
    }
}

impl Clone for Sac {
    fn clone(&self) -> Self {
        Self {
            cfg: self.cfg.clone(),
            nets: self.nets,
            squash: self.squash.clone(),
            actor: self.actor.clone(),
            critic: self.critic.clone(),
            critic_target: self.critic_target.clone(),
            log_alpha: self.log_alpha,
            actor_opt: self.actor_opt.clone(),
            critic_opt: self.critic_opt.clone(),
            alpha_opt: self.alpha_opt.clone(),
            updates: self.updates,
            seed: self.seed,
            ws: SacWorkspace::new(self.cfg.precision),
        }
    }
}

impl Sac {
    /// A fresh agent for observation dimension `obs_dim` and the action box [low, high].
    pub fn new(
        cfg: SacConfig,
        obs_dim: usize,
        act_low: &[f32],
        act_high: &[f32],
        seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        if obs_dim == 0 || act_low.is_empty() || act_low.len() != act_high.len() {
            return Err(crate::invalid!(
                "SAC needs at least one observation and one action dimension, and as many \
                 lower as upper action bounds (got obs {obs_dim}, bounds {} and {})",
                act_low.len(),
                act_high.len()
            ));
        }
        if act_low
            .iter()
            .zip(act_high)
            .any(|(l, h)| !(l.is_finite() && h.is_finite() && l < h))
        {
            return Err(crate::invalid!(
                "SAC needs a finite action box with low < high in every dimension (got \
                 {act_low:?} .. {act_high:?})"
            ));
        }
        let nets = Nets::new(obs_dim, act_low.len(), &cfg);
        // Checked before anything is allocated: a hostile file's metadata (obs 65536,
        // hidden 16384, 16 layers) would otherwise ask for tens of GiB. An agent holds
        // about eight copies (parameters, targets, gradients, Adam moments).
        const MAX_PARAMS: usize = 1 << 26;
        if obs_dim > 1 << 16 || act_low.len() > 1 << 16 {
            return Err(crate::invalid!(
                "SAC supports at most 65536 observation and action dimensions (got {obs_dim} \
                 and {})",
                act_low.len()
            ));
        }
        let total = nets.actor.layout().total + nets.critic.layout().total;
        if total > MAX_PARAMS {
            return Err(setting!(
                "hidden",
                "{} with {} layers gives actor and critics {total} parameters for {obs_dim} \
                 observations and {} actions; at most {MAX_PARAMS} are supported",
                cfg.hidden,
                cfg.num_layers,
                act_low.len()
            ));
        }
        let actor = init_params(&nets.actor, seed, 0);
        let critic = init_params(&nets.critic, seed, 1);
        let (na, nc) = (actor.len(), critic.len());
        let ws = SacWorkspace::new(cfg.precision);
        Ok(Self {
            log_alpha: cfg.alpha.ln(),
            cfg,
            nets,
            squash: Squash::from_bounds(act_low, act_high),
            critic_target: critic.clone(),
            actor,
            critic,
            actor_opt: AdamState::new(na),
            critic_opt: AdamState::new(nc),
            alpha_opt: AdamState::new(1),
            updates: 0,
            seed,
            ws,
        })
    }

    pub fn alpha(&self) -> f32 {
        self.log_alpha.exp()
    }

    pub fn target_entropy(&self) -> f32 {
        self.cfg
            .target_entropy
            .unwrap_or(-(self.nets.act_dim as f32))
    }

    /// Actions for `rows` observations: the mean action when `noise` is None, else a sample
    /// whose ε is Philox stream POLICY_ACT at (element, step `noise`).
    pub fn act(&mut self, obs: &[f32], rows: usize, noise: Option<u32>) -> Vec<f32> {
        self.act_with(obs, rows, noise.map(|s| (stream::POLICY_ACT, s)))
    }

    /// [`Sac::act`] with the noise's (stream, step) given.
    pub fn act_with(&mut self, obs: &[f32], rows: usize, noise: Option<(u32, u32)>) -> Vec<f32> {
        let a = self.nets.act_dim;
        let mut eps = vec![0.0f32; rows * a];
        if let Some((st, step)) = noise {
            normals(self.seed, st, 0, step, &mut eps);
        }
        let mut act = vec![0.0f32; rows * a];
        let mut logp = vec![0.0f32; rows];
        sample(
            &self.nets,
            &self.actor,
            &self.squash,
            obs,
            rows,
            &eps,
            &mut act,
            &mut logp,
            &mut self.ws.actor,
        );
        act
    }

    /// One gradient step of critics, actor and temperature on `batch`, then the Polyak
    /// update when due. A non-finite loss or gradient is refused before it reaches the
    /// parameters: the step returns [`Error::Diverged`] and the agent keeps its last good
    /// values (the critics may already hold this step's finite update).
    pub fn update(&mut self, batch: &Batch<f32>) -> Result<UpdateStats> {
        let rows = batch.rows;
        self.update_with(batch, |x, grad| {
            let p = actor_loss(
                x.nets,
                x.alpha,
                x.actor,
                x.critic,
                x.squash,
                &batch.obs,
                rows,
                x.eps,
                Some(grad),
                x.ws,
            );
            (p.loss, p.logp_mean)
        })
    }

    /// [`Sac::update`] with the actor's loss and gradient from `actor_step` (which returns
    /// the loss and the mean log π of its samples, for the temperature): MAAC's path
    /// gradient ([`crate::policy::path`]) replaces SAC's there.
    pub fn update_with(
        &mut self,
        batch: &Batch<f32>,
        actor_step: impl FnOnce(ActorInputs<'_>, &mut [f32]) -> (f32, f32) + Send,
    ) -> Result<UpdateStats> {
        crate::in_hot_pool(|| self.step_with(batch, actor_step))
    }

    fn step_with(
        &mut self,
        batch: &Batch<f32>,
        actor_step: impl FnOnce(ActorInputs<'_>, &mut [f32]) -> (f32, f32),
    ) -> Result<UpdateStats> {
        let (a, rows) = (self.nets.act_dim, batch.rows);
        let step = self.updates as u32;
        let mut eps = vec![0.0f32; 2 * rows * a];
        normals(self.seed, stream::SAC_NOISE, 0, step, &mut eps);
        let (eps_next, eps_pi) = eps.split_at(rows * a);
        let alpha = self.alpha();
        let mut g_critic = vec![0.0f32; self.critic.len()];
        let c = critic_loss(
            &self.nets,
            self.cfg.gamma,
            alpha,
            &self.actor,
            &self.critic,
            &self.critic_target,
            &self.squash,
            batch,
            eps_next,
            Some(&mut g_critic),
            &mut self.ws,
        );
        finite("critic loss", c.loss, &g_critic)?;
        self.critic_opt
            .step(self.cfg.lr, &mut self.critic, &g_critic);
        let mut g_actor = vec![0.0f32; self.actor.len()];
        let inputs = ActorInputs {
            nets: &self.nets,
            actor: &self.actor,
            critic: &self.critic,
            squash: &self.squash,
            alpha,
            eps: eps_pi,
            updates: self.updates,
            ws: &mut self.ws,
        };
        let (actor_loss, logp_mean) = actor_step(inputs, &mut g_actor);
        finite("actor loss", actor_loss, &g_actor)?;
        self.actor_opt.step(self.cfg.lr, &mut self.actor, &g_actor);
        let mut alpha_loss = 0.0;
        if self.cfg.automatic_entropy_tuning {
            let h = self.target_entropy() as f64;
            let g = alpha_grad(logp_mean as f64, h) as f32;
            alpha_loss = -(self.log_alpha as f64) * (logp_mean as f64 + h);
            let mut la = [self.log_alpha];
            self.alpha_opt.step(self.cfg.lr, &mut la, &[g]);
            self.log_alpha = la[0];
        }
        if self
            .updates
            .is_multiple_of(self.cfg.target_update_interval as u64)
        {
            polyak(&mut self.critic_target, &self.critic, self.cfg.tau);
        }
        self.updates += 1;
        Ok(UpdateStats {
            critic_loss: c.loss as f64,
            actor_loss: actor_loss as f64,
            alpha_loss,
            alpha: self.alpha() as f64,
            q_mean: c.q_mean as f64,
            entropy: -(logp_mean as f64),
        })
    }

    /// Whether every parameter is finite (checked before anything is saved).
    pub fn is_finite(&self) -> bool {
        self.log_alpha.is_finite()
            && [&self.actor, &self.critic, &self.critic_target]
                .iter()
                .all(|v| v.iter().all(|x| x.is_finite()))
    }
}

fn finite(what: &str, loss: f32, grad: &[f32]) -> Result<()> {
    if !loss.is_finite() {
        return Err(Error::Diverged(format!(
            "SAC {what} is {loss}; the update was not applied"
        )));
    }
    // In blocks on all threads: a serial scan of the critics' gradient is the other core's
    // idle time.
    const BLOCK: usize = crate::backend::cpu::PAR_BLOCK;
    let bad = grad
        .par_chunks(BLOCK)
        .enumerate()
        .find_map_first(|(c, g)| g.iter().position(|v| !v.is_finite()).map(|i| c * BLOCK + i));
    if let Some(i) = bad {
        return Err(Error::Diverged(format!(
            "SAC {what}: gradient element {i} is {}; the update was not applied",
            grad[i]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(n: usize, seed: u64, scale: f64) -> Vec<f64> {
        let mut g = crate::rng::Philox::new(seed, 99, 0);
        (0..n).map(|_| g.normal() as f64 * scale).collect()
    }

    /// Networks, squashing, a batch, and actor, critic and target parameters.
    type Setup = (Nets, Squash<f64>, Batch<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

    fn setup() -> Setup {
        let cfg = SacConfig {
            hidden: 7,
            num_layers: 2,
            activation: Activation::Tanh,
            ..SacConfig::default()
        };
        let (o, a, rows) = (3, 2, 5);
        let nets = Nets::new(o, a, &cfg);
        let sq = Squash::from_bounds(&[-2.0, -0.5], &[2.0, 1.5]).cast::<f64>();
        let to64 = |v: Vec<f32>| v.into_iter().map(|x| x as f64).collect::<Vec<_>>();
        let actor = to64(init_params(&nets.actor, 3, 0));
        let critic = to64(init_params(&nets.critic, 3, 1));
        let target: Vec<f64> = critic.iter().map(|c| c * 0.9 + 0.01).collect();
        let batch = Batch {
            rows,
            obs: rand_vec(rows * o, 1, 1.0),
            act: rand_vec(rows * a, 2, 0.5),
            reward: rand_vec(rows, 3, 1.0),
            next_obs: rand_vec(rows * o, 4, 1.0),
            mask: vec![1.0, 0.0, 1.0, 1.0, 1.0],
        };
        (nets, sq, batch, actor, critic, target)
    }

    /// Max relative error of `grad` against central differences of `f`, over every entry.
    fn check(params: &[f64], grad: &[f64], f: impl Fn(&[f64]) -> f64) -> f64 {
        let h = 1e-6;
        let mut worst = 0.0f64;
        let mut p = params.to_vec();
        for i in 0..p.len() {
            let x = p[i];
            p[i] = x + h;
            let up = f(&p);
            p[i] = x - h;
            let dn = f(&p);
            p[i] = x;
            let fd = (up - dn) / (2.0 * h);
            // Relative, with a floor so that entries near zero compare absolutely.
            let err = (fd - grad[i]).abs() / (1e-4 + fd.abs().max(grad[i].abs()));
            worst = worst.max(err);
        }
        worst
    }

    #[test]
    fn critic_gradient_should_match_central_differences() {
        let (nets, sq, batch, actor, critic, target) = setup();
        let eps = rand_vec(batch.rows * 2, 5, 1.0);
        let mut ws = SacWorkspace::default();
        let mut g = vec![0.0; critic.len()];
        let (gamma, alpha) = (0.97, 0.3);
        let rep = critic_loss(
            &nets,
            gamma,
            alpha,
            &actor,
            &critic,
            &target,
            &sq,
            &batch,
            &eps,
            Some(&mut g),
            &mut ws,
        );
        assert!(rep.loss > 0.0);
        let err = check(&critic, &g, |p| {
            critic_loss(
                &nets,
                gamma,
                alpha,
                &actor,
                p,
                &target,
                &sq,
                &batch,
                &eps,
                None,
                &mut SacWorkspace::default(),
            )
            .loss
        });
        assert!(err < 1e-5, "critic gradient: max relative error {err}");
    }

    #[test]
    fn actor_gradient_should_match_central_differences() {
        let (nets, sq, batch, mut actor, critic, _) = setup();
        // A larger log σ so that the noise matters, and the second one below the clamp at
        // −20 (its gradient is then zero on both sides). Not above it: σ = e² saturates
        // tanh, where f64 differences of ln(1 − tanh²) lose 5 digits to rounding.
        let lay = nets.actor.layout();
        let head = lay.layers.last().unwrap();
        actor[head.bias + 2] = 0.3;
        actor[head.bias + 3] = -25.0;
        let eps = rand_vec(batch.rows * 2, 6, 1.0);
        let alpha = 0.7;
        let mut ws = SacWorkspace::default();
        let mut g = vec![0.0; actor.len()];
        let rep = actor_loss(
            &nets,
            alpha,
            &actor,
            &critic,
            &sq,
            &batch.obs,
            batch.rows,
            &eps,
            Some(&mut g),
            &mut ws,
        );
        assert!(rep.loss.is_finite() && rep.logp_mean.is_finite());
        assert!(g.iter().any(|v| v.abs() > 1e-4), "gradient is all zero");
        let err = check(&actor, &g, |p| {
            actor_loss(
                &nets,
                alpha,
                p,
                &critic,
                &sq,
                &batch.obs,
                batch.rows,
                &eps,
                None,
                &mut SacWorkspace::default(),
            )
            .loss
        });
        assert!(err < 1e-5, "actor gradient: max relative error {err}");
    }

    #[test]
    fn alpha_gradient_should_match_central_differences() {
        // J_α(log α) = −log α·(mean log π + H̄): linear, so the difference is exact.
        let (lp, h) = (-0.8, -2.0);
        let j = |la: f64| -la * (lp + h);
        let fd = (j(0.3 + 1e-6) - j(0.3 - 1e-6)) / 2e-6;
        assert!((fd - alpha_grad(lp, h)).abs() < 1e-8);
    }

    #[test]
    fn squash_should_keep_actions_in_bounds_and_match_the_gaussian_density() {
        let sq = Squash::from_bounds(&[-2.0], &[2.0]).cast::<f64>();
        let mut a = [0.0];
        // μ = 0.1, log σ = −0.5, ε = 0.3: log π = log N(u; μ, σ) − log(2(1 − tanh²u) + 1e−6).
        let lp = squash_row(&[0.1, -0.5], &[0.3], &sq, &mut a, None);
        let s = (-0.5f64).exp();
        let u = 0.1 + s * 0.3;
        let gauss = -0.5 * 0.09 - (-0.5) - 0.5 * (2.0 * std::f64::consts::PI).ln();
        let want = gauss - (2.0 * (1.0 - u.tanh().powi(2)) + 1e-6).ln();
        assert!((lp - want).abs() < 1e-12, "{lp} vs {want}");
        assert!((a[0] - 2.0 * u.tanh()).abs() < 1e-12);
        // Saturated: still inside the box and finite.
        let lp = squash_row(&[50.0, 2.0], &[3.0], &sq, &mut a, None);
        assert!(a[0] <= 2.0 && a[0] > 1.99 && lp.is_finite());
    }

    /// The bf16 training mode changes the gradient by bf16 rounding only: on a realistic
    /// batch the f32 and bf16 gradients of critic and actor point the same way (cosine >
    /// 0.999) and differ by less than 5 % in norm (2 % seen). (The f64 checks above hold the f32/f64
    /// specification; bf16 rounds each product's operands to 8 significant bits.)
    #[test]
    fn bf16_training_gradients_should_follow_the_f32_ones() {
        let cfg = SacConfig::default();
        let (o, a, rows) = (3, 1, 256);
        let nets = Nets::new(o, a, &cfg);
        let sq = Squash::from_bounds(&[-2.0], &[2.0]);
        let actor = init_params(&nets.actor, 1, 0);
        let critic = init_params(&nets.critic, 1, 1);
        let target: Vec<f32> = critic.iter().map(|c| c * 0.95).collect();
        let r = |seed, n, s| {
            rand_vec(n, seed, s)
                .into_iter()
                .map(|v| v as f32)
                .collect::<Vec<f32>>()
        };
        let batch = Batch {
            rows,
            obs: r(1, rows * o, 1.0),
            act: r(2, rows * a, 0.5),
            reward: r(3, rows, 1.0),
            next_obs: r(4, rows * o, 1.0),
            mask: vec![1.0; rows],
        };
        let eps = r(5, rows * a, 1.0);
        let grads = |p: Precision| {
            let mut ws = SacWorkspace::new(p);
            let mut gc = vec![0.0f32; critic.len()];
            critic_loss(
                &nets,
                0.99,
                0.2,
                &actor,
                &critic,
                &target,
                &sq,
                &batch,
                &eps,
                Some(&mut gc),
                &mut ws,
            );
            let mut ga = vec![0.0f32; actor.len()];
            actor_loss(
                &nets,
                0.2,
                &actor,
                &critic,
                &sq,
                &batch.obs,
                rows,
                &eps,
                Some(&mut ga),
                &mut ws,
            );
            (gc, ga)
        };
        let (c32, a32) = grads(Precision::F32);
        let (c16, a16) = grads(Precision::Bf16);
        for (what, x, y) in [("critic", &c32, &c16), ("actor", &a32, &a16)] {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
            let nx = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            let ny = y.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            let diff = x
                .iter()
                .zip(y)
                .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            eprintln!(
                "{what}: cosine {:.6}, relative difference {:.2e}",
                dot / (nx * ny),
                diff / nx
            );
            assert!(
                dot / (nx * ny) > 0.999 && diff / nx < 0.05,
                "{what} gradient"
            );
            assert!(
                x != y || !crate::bf16::Path::Amx.available(),
                "bf16 mode did nothing"
            );
        }
    }

    #[test]
    fn update_should_refuse_a_non_finite_batch_and_keep_the_parameters() {
        let cfg = SacConfig {
            hidden: 8,
            batch_size: 4,
            ..SacConfig::default()
        };
        let mut sac = Sac::new(cfg, 3, &[-2.0], &[2.0], 0).unwrap();
        let before = (sac.actor.clone(), sac.critic.clone(), sac.log_alpha);
        let batch = Batch {
            rows: 2,
            obs: vec![0.0; 6],
            act: vec![0.0; 2],
            reward: vec![f32::NAN, 0.0],
            next_obs: vec![0.0; 6],
            mask: vec![1.0; 2],
        };
        let err = sac.update(&batch).unwrap_err();
        assert!(matches!(err, Error::Diverged(_)), "{err}");
        assert_eq!(
            before,
            (sac.actor.clone(), sac.critic.clone(), sac.log_alpha)
        );
        assert_eq!(sac.updates, 0);
    }

    /// A plain f64 MLP over the flat layout: member `e` of `shape` on one input row.
    fn mlp_row(shape: &EnsembleShape, params: &[f32], e: usize, x: &[f64]) -> Vec<f64> {
        let lay = shape.layout();
        let mut h = x.to_vec();
        for (l, lo) in lay.layers.iter().enumerate() {
            let (fi, fo) = (lo.fan_in, lo.fan_out);
            let w = &params[lo.weight + e * fi * fo..][..fi * fo];
            let b = &params[lo.bias + e * fo..][..fo];
            let mut y: Vec<f64> = (0..fo)
                .map(|j| b[j] as f64 + (0..fi).map(|i| h[i] * w[i * fo + j] as f64).sum::<f64>())
                .collect();
            if l < shape.num_layers {
                y.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            h = y;
        }
        h
    }

    #[test]
    fn critic_value_should_be_the_smaller_q_at_the_mean_action() {
        let (low, high) = ([-2.0f32, -0.5], [2.0f32, 1.5]);
        let cfg = SacConfig {
            hidden: 9,
            ..SacConfig::default()
        };
        let mut agent = Sac::new(cfg, 3, &low, &high, 4).unwrap();
        // Biases away from zero, so that the two critics and the squash are not symmetric.
        for (i, w) in agent.critic.iter_mut().enumerate() {
            *w += 0.05 * ((i % 7) as f32 - 3.0);
        }
        let v = CriticValue::from_agent(&agent);
        let rows = 6;
        let obs: Vec<f32> = rand_vec(rows * 3, 5, 1.5)
            .iter()
            .map(|x| *x as f32)
            .collect();
        let mut out = vec![f32::NAN; rows];
        crate::backend::StateValue::values(&v, &obs, rows, &mut out);
        for b in 0..rows {
            let s: Vec<f64> = obs[b * 3..(b + 1) * 3].iter().map(|x| *x as f64).collect();
            let head = mlp_row(&agent.nets.actor, &agent.actor, 0, &s);
            let mut x = s.clone();
            for j in 0..2 {
                let (sc, bi) = (
                    (high[j] - low[j]) as f64 / 2.0,
                    (high[j] + low[j]) as f64 / 2.0,
                );
                x.push(sc * head[j].tanh() + bi);
            }
            let q: Vec<f64> = (0..2)
                .map(|e| mlp_row(&agent.nets.critic, &agent.critic, e, &x)[0])
                .collect();
            let want = q[0].min(q[1]);
            assert!(
                (out[b] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                "row {b}: {} vs {want}",
                out[b]
            );
        }
        assert_eq!(v.gamma, agent.cfg.gamma);
        assert_eq!(crate::backend::StateValue::obs_dim(&v), 3);
    }
}
