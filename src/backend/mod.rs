//! The `Backend` trait: a handful of coarse fused operations, each a whole step of an
//! algorithm, with buffers that stay on the device between them.
//!
//! `cpu` is the specification. Device backends (`wgpu`, `cuda`) implement the same trait and
//! are checked against it; [`Availability`] explains, for `mbrl-gpu devices`, why one is absent.
pub mod check;
pub mod cpu;
pub mod cuda;
pub(crate) mod value;
pub mod wgpu;

use crate::Result;
use serde::{Deserialize, Serialize};

/// Hidden-layer activation of the ensemble MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// x·σ(x), the PETS/mbrl-lib default.
    Silu,
    Relu,
    Tanh,
}

impl Activation {
    pub fn code(self) -> u32 {
        match self {
            Activation::Silu => 0,
            Activation::Relu => 1,
            Activation::Tanh => 2,
        }
    }
}

/// What a kernel needs to know about an ensemble MLP: E members, `num_layers` hidden layers
/// of width `hidden`, and a head predicting `out_dim` means (plus `out_dim` log-variances when
/// `probabilistic`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnsembleShape {
    pub ensemble: usize,
    pub in_dim: usize,
    pub out_dim: usize,
    pub hidden: usize,
    pub num_layers: usize,
    pub activation: Activation,
    pub probabilistic: bool,
}

/// Offsets of every tensor in the flat parameter vector. Layout (one contiguous f32 buffer, so
/// Adam is one elementwise pass and a device holds one allocation):
///
/// ```text
/// for l in 0..=num_layers:  W_l [E, in_l, out_l] row-major, then b_l [E, out_l]
/// then (probabilistic only): max_logvar [out_dim], min_logvar [out_dim]
/// ```
///
/// Layer 0 maps `in_dim → hidden`, layers 1..num_layers map `hidden → hidden`, and the head
/// (layer `num_layers`) maps `hidden → head_dim` (= 2·out_dim if probabilistic: mean then
/// raw log-variance).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamLayout {
    pub layers: Vec<LayerOffsets>,
    pub max_logvar: usize,
    pub min_logvar: usize,
    pub total: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerOffsets {
    pub fan_in: usize,
    pub fan_out: usize,
    pub weight: usize,
    pub bias: usize,
}

impl EnsembleShape {
    pub fn head_dim(&self) -> usize {
        if self.probabilistic {
            2 * self.out_dim
        } else {
            self.out_dim
        }
    }

    /// (fan_in, fan_out) of each linear layer, head last.
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        let mut dims = Vec::with_capacity(self.num_layers + 1);
        let mut fan_in = self.in_dim;
        for _ in 0..self.num_layers {
            dims.push((fan_in, self.hidden));
            fan_in = self.hidden;
        }
        dims.push((fan_in, self.head_dim()));
        dims
    }

    pub fn layout(&self) -> ParamLayout {
        let e = self.ensemble;
        let mut off = 0;
        let mut layers = Vec::new();
        for (fan_in, fan_out) in self.layer_dims() {
            let weight = off;
            off += e * fan_in * fan_out;
            let bias = off;
            off += e * fan_out;
            layers.push(LayerOffsets {
                fan_in,
                fan_out,
                weight,
                bias,
            });
        }
        let (max_logvar, min_logvar) = if self.probabilistic {
            let mx = off;
            off += self.out_dim;
            let mn = off;
            off += self.out_dim;
            (mx, mn)
        } else {
            (off, off)
        };
        ParamLayout {
            layers,
            max_logvar,
            min_logvar,
            total: off,
        }
    }

    /// Multiply-adds per row through one member (forward pass).
    pub fn macs_per_row(&self) -> usize {
        self.layer_dims().iter().map(|(i, o)| i * o).sum()
    }

    pub fn validate(&self) -> Result<()> {
        if self.ensemble == 0 || self.in_dim == 0 || self.out_dim == 0 || self.hidden == 0 {
            return Err(crate::invalid!(
                "ensemble size, input, output and hidden widths must all be at least 1 (got {self:?})"
            ));
        }
        Ok(())
    }
}

/// Loss settings of `ensemble_nll_backward`. The loss is (mbrl-lib `GaussianMLP._nll_loss`,
/// PETS eq. for the probabilistic ensemble):
///
/// ```text
/// L = Σ_e (1/(B·D)) Σ_{b,d} [ (μ−y)²·exp(−lv) + lv ]          (probabilistic)
///   | Σ_e (1/(B·D)) Σ_{b,d} (μ−y)²                              (deterministic, MSE)
///   + logvar_penalty · (Σ max_logvar − Σ min_logvar)
///   + Σ_l ½·weight_decay[l]·‖W_l‖²
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LossConfig {
    /// Coefficient of the log-variance bound penalty (0.01 in PETS and mbrl-lib).
    pub logvar_penalty: f32,
    /// One L2 coefficient per linear layer (head last); PETS uses growing values
    /// (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4), mbrl-lib one value for all.
    pub weight_decay: Vec<f32>,
    /// Arithmetic of the hidden layers' products in the forward and backward: f32 (the
    /// specification), or bf16 operands with f32 sums ([`crate::bf16::matmul_views`], AMX
    /// tiles where present). bf16 runs on the CPU backend only; the device backends refuse it.
    pub precision: Precision,
}

/// Adam hyper-parameters for one step, laid out as a kernel's uniform block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// 1-based step count, for the bias corrections 1 − βᵗ.
    pub step: u32,
    pub len: u32,
    pub _pad: [u32; 2],
}

/// Sizes and constants of the SAC device stages (`cpu/sac.rs`, `shaders/sac.wgsl`,
/// `kernels/sac.cu`), laid out as a kernel's uniform block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SacParams {
    /// Minibatch rows B.
    pub rows: u32,
    pub obs_dim: u32,
    pub act_dim: u32,
    /// `sac_squash`: 1 = the critic input's actions are `act_in` (the batch's), 0 = sampled.
    pub given: u32,
    pub gamma: f32,
    pub target_entropy: f32,
    /// `polyak`: θ̄ ← τ·θ + (1 − τ)·θ̄ over `len` values; `sac_minibatch`: the replay rows
    /// held (`len`).
    pub tau: f32,
    pub len: u32,
    /// Philox key and counter of `sac_noise` and `sac_minibatch` (the CPU's
    /// `rng::normals` / `Replay::sample` draws).
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub stream: u32,
    pub step: u32,
}

impl SacParams {
    /// Values per packed replay row: [obs, act, reward, next_obs, terminated].
    pub fn replay_width(&self) -> usize {
        2 * self.obs_dim as usize + self.act_dim as usize + 2
    }
}

/// Sizes and Philox coordinates of one step of MBPO's branched rollout on the device
/// (`branch_route`, `branch_step`: `cpu/rollout.rs`, `shaders/rollout.wgsl`,
/// `kernels/rollout.cu`), laid out as a kernel's uniform block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BranchParams {
    /// Rollout rows.
    pub rows: u32,
    pub obs_dim: u32,
    pub act_dim: u32,
    /// The model's outputs: obs_dim (+ 1 with a learned reward).
    pub out_dim: u32,
    /// Elite members the rows are routed among (the grouped input is [members, per, O + A]).
    pub members: u32,
    /// Rows per member slot: at least the most rows any member draws this step.
    pub per: u32,
    /// The task's reward and termination functions (`env::task` codes).
    pub task: u32,
    /// 1: the reward is the model's last output.
    pub learn_reward: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    /// Philox step of this rollout step's member and noise draws.
    pub step: u32,
    /// Rows of the replay ring the transitions are appended to.
    pub capacity: u32,
    /// Ring slot of the rollout's first transition (later ones follow it, modulo capacity).
    pub base: u32,
    /// Streams of the member draw (row r: below(seed, member_stream, r, step, members)) and
    /// of the model noise (output j of row r: normal(seed, noise_stream, r·out_dim + j,
    /// step)).
    pub member_stream: u32,
    pub noise_stream: u32,
    /// 1 at a rollout's first step: every row starts live and the count at zero, whatever
    /// `stopped` and `count` hold (so a rollout reuses its buffers without resetting them).
    pub fresh: u32,
}

impl BranchParams {
    /// Values per packed replay row: [obs, act, reward, next_obs, terminated].
    pub fn replay_width(&self) -> usize {
        2 * self.obs_dim as usize + self.act_dim as usize + 2
    }
}

/// Sizes, step and buffer offsets of one stage of the path gradient on the device (MAAC's
/// and SVG's objective, `policy::path`; the stages `path_squash`, `path_terminal`,
/// `path_actor_back`, `path_accumulate` in `cpu/sac.rs` and `path_step`, `path_model_back` in
/// `cpu/rollout.rs`, with their twins in `shaders/` and `kernels/`), laid out as a kernel's
/// uniform block. [`PathParams::new`] fills the offsets; the stages then differ in `t`,
/// `per` and `disc` only.
///
/// Three buffers carry a path between the stages (offsets in values, all f32 except the
/// tables, which hold u32 bits):
/// - noise (the host's, uploaded once per path): ε [H+1, B, A] at `n_eps`, ξ [H, B, D] at
///   `n_xi`, the member slot of each row [H, B] at `n_slot` (m·per_t + its rank among the rows
///   drawing m), and each step's inverse table [H, G] at `n_rowof` (the row in a slot, or
///   u32::MAX for an empty one; G = `grouped`);
/// - tape (what the forward keeps for the backward): s_t [H+1, B, O] at `t_states`, the
///   actor's raw heads [H+1, B, 2A] at `t_heads`, the actions [H+1, B, A] at `t_act`, log π
///   [H+1, B] at `t_logp`, alive flags [H+1, B] at `t_alive` and counted flags [H, B] at
///   `t_counted` (1.0 or 0.0), rewards [H, B] at `t_reward`, the model's log σ² by row
///   [H, B, D] at `t_logvar`, α at `t_alpha` and the squash [scale (A), bias (A)] at
///   `t_squash` (written once by the host);
/// - back (the reverse sweep's row gradients): g_s [B, O], then the reward's ∂/∂s_t [B, O],
///   then its ∂/∂a_t [B, A].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PathParams {
    /// Start states B.
    pub rows: u32,
    pub obs_dim: u32,
    pub act_dim: u32,
    /// The model's outputs D: obs_dim (+ 1 with a learned reward).
    pub out_dim: u32,
    /// Elite members the rows are routed among.
    pub members: u32,
    /// Rows per member slot at step `t` (the grouped batch is [members, per, O + A]).
    pub per: u32,
    /// Room of the grouped batch in rows, G = members · B: the stride of the inverse tables.
    pub grouped: u32,
    /// The step of this stage (H for the terminal one).
    pub t: u32,
    pub horizon: u32,
    /// The task's reward and termination functions (`env::task` codes).
    pub task: u32,
    /// 1: the reward is the model's last output.
    pub learn_reward: u32,
    /// 1: the model predicts log σ² (s' = s + μ + σ·ξ), 0: s' = s + μ.
    pub probabilistic: u32,
    /// 1: the path closes with γ^H·(min Q − α log π) at s_H (MAAC), 0: it ends at r_{H−1}.
    pub terminal_value: u32,
    pub gamma: f32,
    /// γ^t, the product of t factors γ in f32 as the host forms it.
    pub disc: f32,
    /// −1/B: the weight of each row's objective in the loss.
    pub w: f32,
    /// The temperature's target entropy H̄ (its gradient is −(mean log π₀ + H̄)).
    pub target_entropy: f32,
    /// Actor parameters (`path_accumulate`).
    pub len: u32,
    pub n_eps: u32,
    pub n_xi: u32,
    pub n_slot: u32,
    pub n_rowof: u32,
    pub t_states: u32,
    pub t_heads: u32,
    pub t_act: u32,
    pub t_logp: u32,
    pub t_alive: u32,
    pub t_counted: u32,
    pub t_reward: u32,
    pub t_logvar: u32,
    pub t_alpha: u32,
    pub t_squash: u32,
    /// `path_accumulate`: the largest norm of one step's g_step (scaled down where longer;
    /// 0: off, and the backends then may split the stage across workgroups).
    pub step_grad_norm: f32,
    /// `path_actor_back`: the penalty λ·max(0, |μ| − m)² on each counted row's pre-squash
    /// mean, m = `mean_limit`, λ = `mean_penalty` (0: off).
    pub mean_limit: f32,
    pub mean_penalty: f32,
    /// To 36 words: WGSL's uniform struct size, a multiple of 16 bytes.
    pub _pad: u32,
}

/// What [`PathParams::new`] is given: the sizes of one path batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathShape {
    pub rows: usize,
    pub obs_dim: usize,
    pub act_dim: usize,
    pub out_dim: usize,
    pub members: usize,
    pub horizon: usize,
}

/// Slots of `path_terminal`'s report [`path_report::LEN`].
pub mod path_report {
    /// −(1/B)·Σ_b J_b.
    pub const LOSS: usize = 0;
    /// Mean log π(a₀|s₀).
    pub const LOGP_MEAN: usize = 1;
    /// Mean reward per counted model step (0 without one).
    pub const REWARD_MEAN: usize = 2;
    /// Share of rows alive at the horizon.
    pub const ALIVE: usize = 3;
    pub const LEN: usize = 4;
}

impl PathParams {
    /// Step 0's parameters with every offset laid out for `s` (see the type's documentation).
    pub fn new(s: PathShape) -> Self {
        let (b, o, a, d, h) = (s.rows, s.obs_dim, s.act_dim, s.out_dim, s.horizon);
        let g = s.members * b;
        let mut at = 0usize;
        let mut take = |n: usize| {
            let v = at;
            at += n;
            v as u32
        };
        let (n_eps, n_xi, n_slot, n_rowof) = (
            take((h + 1) * b * a),
            take(h * b * d),
            take(h * b),
            take(h * g),
        );
        let mut at = 0usize;
        let mut take = |n: usize| {
            let v = at;
            at += n;
            v as u32
        };
        let t_states = take((h + 1) * b * o);
        let t_heads = take((h + 1) * b * 2 * a);
        let t_act = take((h + 1) * b * a);
        let t_logp = take((h + 1) * b);
        let t_alive = take((h + 1) * b);
        let t_counted = take(h * b);
        let t_reward = take(h * b);
        let t_logvar = take(h * b * d);
        let t_alpha = take(1);
        let t_squash = take(2 * a);
        Self {
            rows: b as u32,
            obs_dim: o as u32,
            act_dim: a as u32,
            out_dim: d as u32,
            members: s.members as u32,
            per: 1,
            grouped: g as u32,
            t: 0,
            horizon: h as u32,
            disc: 1.0,
            w: -1.0 / b as f32,
            n_eps,
            n_xi,
            n_slot,
            n_rowof,
            t_states,
            t_heads,
            t_act,
            t_logp,
            t_alive,
            t_counted,
            t_reward,
            t_logvar,
            t_alpha,
            t_squash,
            ..Self::default()
        }
    }

    /// Values of the noise buffer.
    pub fn noise_len(&self) -> usize {
        let h = self.horizon as usize;
        self.n_rowof as usize + h * self.grouped as usize
    }

    /// Values of the tape.
    pub fn tape_len(&self) -> usize {
        self.t_squash as usize + 2 * self.act_dim as usize
    }

    /// Values of the back buffer: g_s, ∂r/∂s, ∂r/∂a.
    pub fn back_len(&self) -> usize {
        let (b, o, a) = (
            self.rows as usize,
            self.obs_dim as usize,
            self.act_dim as usize,
        );
        b * (2 * o + a)
    }
}

/// Slots of the SAC statistics buffer, sums over the updates since it was cleared.
pub mod sac_stats {
    pub const CRITIC_LOSS: usize = 0;
    pub const Q_MEAN: usize = 1;
    pub const ACTOR_LOSS: usize = 2;
    pub const ALPHA_LOSS: usize = 3;
    pub const ENTROPY: usize = 4;
    /// Updates counted (by the actor stage).
    pub const COUNT: usize = 5;
    /// α = exp(log α) as each update's actor stage read it (before its temperature step).
    pub const ALPHA_BEFORE: usize = 6;
    pub const LEN: usize = 8;
}

impl AdamParams {
    /// `torch.optim.Adam`'s defaults (β = (0.9, 0.999), ε = 1e-8) at learning rate `lr`, for
    /// the 1-based step `step` over `len` parameters.
    pub fn torch(lr: f32, step: u32, len: usize) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step,
            len: len as u32,
            _pad: [0; 2],
        }
    }
}

/// Arithmetic of the planning rollouts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout: the specification.
    #[default]
    F32,
    /// Weights (on the CPU also layer inputs) rounded to bf16, products summed in f32: on
    /// the CPU through AMX tiles where present ([`crate::bf16`]), on CUDA from bf16 weights.
    Bf16,
}

/// How particles are propagated through the ensemble (PETS §4.2, trajectory sampling).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// TS1: every particle re-draws its bootstrap (elite member) at every step.
    Ts1 = 0,
    /// TS∞: every particle keeps one bootstrap for the whole horizon.
    TsInf = 1,
    /// Expectation: no sampling; the next state is the mean over elites of the mean
    /// predictions (particles are then identical).
    Expectation = 2,
}

/// Most elite members a rollout can name (the list travels inside the parameter block).
pub const MAX_ELITES: usize = 16;

/// Parameters of `cem_sample`. Candidate c, element j (= t·act_dim + a) is Philox element
/// `c·len + j` of stream CEM_SAMPLE at step `step`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SampleParams {
    pub seed_lo: u32,
    pub seed_hi: u32,
    /// Philox step: distinct for every (control step, CEM iteration).
    pub step: u32,
    pub population: u32,
    /// Elements per candidate: horizon · act_dim.
    pub len: u32,
    pub act_dim: u32,
    /// 0: truncated normal around (mean, var) as CEM samples; 1: uniform in the bounds
    /// (random shooting; mean and var are ignored); 2: iCEM's coloured noise (Pinneri et al.
    /// 2020): `mean + √var · x` clipped to the bounds, where every action dimension of a
    /// candidate is a Gaussian sequence over the horizon with power spectrum ∝ 1/f^β
    /// (`backend::cpu::cem::colored_noise` specifies it).
    pub dist: u32,
    /// Exponent β of the coloured noise (dist 2): 0 is white noise, 2 is Brownian-like.
    pub beta: f32,
}

/// Parameters of `cem_select` and `cem_keep` (iCEM's elite memory).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EliteParams {
    /// `cem_select`: candidates ranked.
    pub population: u32,
    /// Elements per candidate: horizon · act_dim.
    pub len: u32,
    pub act_dim: u32,
    /// `cem_select`: elites kept (K); `cem_keep`: elite rows copied into the population.
    pub num_elites: u32,
    /// `cem_keep`: the population row the first copied elite lands in.
    pub dst_row: u32,
    /// `cem_keep`: 1 shifts every elite one action earlier (a new control step), its last
    /// action taken from `mean`; 0 copies it as it is (the next iteration of the same step).
    pub shift: u32,
    pub _pad: [u32; 2],
}

/// Parameters of `mppi_sample` and `mppi_update` (Williams et al. 2017, information-theoretic
/// MPPI as pytorch_mppi and MPPI-Generic implement it). Candidate c, element j = t·act_dim + a:
/// `V[c, j] = clip(U[j] + Σ_{b ≤ a} L[a, b] · z[c, t·act_dim + b])`, z the Philox `normal` of
/// stream MPPI_SAMPLE at element `c·len + t·act_dim + b`, L the Cholesky factor of the noise
/// covariance Σ.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MppiParams {
    pub seed_lo: u32,
    pub seed_hi: u32,
    /// Philox step: distinct for every (control step, iteration).
    pub step: u32,
    pub population: u32,
    pub len: u32,
    pub act_dim: u32,
    /// Temperature λ > 0 of the weights exp(−(S − min S)/λ) and of the control cost.
    pub lambda: f32,
    /// Smoothing of the nominal plan: U ← α·U + (1−α)·Σ w·V / Σ w.
    pub alpha: f32,
}

/// Parameters of `cem_init`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct InitParams {
    /// Elements of a plan: horizon · act_dim.
    pub len: u32,
    pub act_dim: u32,
    /// 1: warm start, `mean[j] = prev[j + act_dim]` with the last action at the middle of
    /// the bounds; 0: every element at the middle of the bounds.
    pub shift: u32,
    pub _pad: u32,
}

/// Parameters of `cem_update`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct UpdateParams {
    pub population: u32,
    pub len: u32,
    pub num_elites: u32,
    pub _pad: u32,
    /// Smoothing: mean ← α·mean + (1−α)·elite mean (same for the variance).
    pub alpha: f32,
    /// Variances are clamped below by this, so the search never collapses to a point.
    pub min_var: f32,
    pub _pad2: [u32; 2],
}

/// Parameters of `rollout` / `rollout_true`. Row r = c·particles + k (candidate c, particle k).
/// Randomness: the member of row r at horizon step t is Philox `below` of stream TS_MEMBER at
/// (element r, step `step·horizon + t`) for TS1, and at (r, `step·horizon`) for TS∞; the
/// noise of output j is `normal` of stream TS_NOISE at (element r·out_dim + j, step
/// `step·horizon + t`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RolloutParams {
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub step: u32,
    pub population: u32,
    pub particles: u32,
    pub horizon: u32,
    pub obs_dim: u32,
    pub act_dim: u32,
    /// `Propagation as u32`.
    pub propagation: u32,
    /// `EnvId::code()`: whose reward and termination (and, for `rollout_true`, dynamics).
    pub env: u32,
    /// 1 when the model's last output is the reward (then the env's reward is not used).
    pub learn_reward: u32,
    pub num_elites: u32,
    pub elites: [u32; MAX_ELITES],
}

/// A learned state value V(s) for closing planning paths (e.g. a SAC critic at its policy's
/// action): `values(states [rows, obs], rows, out [rows])`.
pub trait StateValue: Send + Sync {
    /// The state width it takes.
    fn obs_dim(&self) -> usize;
    fn values(&self, states: &[f32], rows: usize, out: &mut [f32]);
    /// The networks behind it, for backends that evaluate it on the device; `None`: only the
    /// CPU backend can use it.
    fn nets(&self) -> Option<ValueNets<'_>> {
        None
    }
}

/// A value a device can evaluate itself: V(s) = min(Q₁, Q₂)(s, ā(s)) with
/// ā = scale·tanh(μ(s)) + bias, the actor's deterministic action (SAC's networks, inputs
/// unnormalised). `actor` maps obs → [μ, log σ] (one member), `critic` is the two critics as a
/// 2-member ensemble on [obs, act].
pub struct ValueNets<'a> {
    pub actor: EnsembleShape,
    pub critic: EnsembleShape,
    pub obs_dim: usize,
    pub act_dim: usize,
    pub actor_params: &'a [f32],
    pub critic_params: &'a [f32],
    /// [scale (A), bias (A)].
    pub squash: Vec<f32>,
}

/// A terminal value for model rollouts (as LOOP and TD-MPC close short horizons): a path's
/// return becomes Σ_{t<H} γ^t r_t + γ^H V(s_H), the last term only for paths that did not
/// terminate inside the horizon.
#[derive(Clone)]
pub struct TerminalValue {
    /// Discount γ of the rewards and of the terminal value (the critic's own γ).
    pub gamma: f32,
    pub value: std::sync::Arc<dyn StateValue>,
}

impl std::fmt::Debug for TerminalValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalValue")
            .field("gamma", &self.gamma)
            .finish_non_exhaustive()
    }
}

/// The operations every backend provides. Buffers are the backend's own (`Vec<f32>` on the
/// CPU, device allocations elsewhere); only `upload`/`download` cross to the host.
pub trait Backend: Send + Sync {
    type Buf: Send + Sync;

    fn name(&self) -> &'static str;
    /// The arithmetic this backend's `rollout` uses.
    fn planning_precision(&self) -> Precision {
        Precision::F32
    }
    fn upload(&self, host: &[f32]) -> Result<Self::Buf>;
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// Values `offset .. offset + len` of a buffer, after all issued work (only those cross
    /// to the host).
    fn download_at(&self, buf: &Self::Buf, offset: usize, len: usize) -> Result<Vec<f32>>;
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// Overwrite a buffer from the host (same length).
    fn write(&self, buf: &mut Self::Buf, host: &[f32]) -> Result<()>;
    /// Overwrite values `offset .. offset + host.len()` of a buffer from the host.
    fn write_at(&self, buf: &mut Self::Buf, offset: usize, host: &[f32]) -> Result<()>;

    /// Ensemble forward: `x` [E, rows, in] (raw inputs; normalised inside with
    /// `norm` = [mean (in), std (in)]) → `mean`, `logvar` [E, rows, out]. For deterministic
    /// ensembles `logvar` is left untouched.
    #[allow(clippy::too_many_arguments)]
    fn ensemble_forward(
        &self,
        shape: &EnsembleShape,
        params: &Self::Buf,
        norm: &Self::Buf,
        x: &Self::Buf,
        rows: usize,
        mean: &mut Self::Buf,
        logvar: &mut Self::Buf,
    ) -> Result<()>;

    /// Forward, loss and backward in one call: gradient of [`LossConfig`]'s loss with respect to
    /// the flat parameters into `grad`, and each member's data term into `losses` [E].
    #[allow(clippy::too_many_arguments)]
    fn ensemble_nll_backward(
        &self,
        shape: &EnsembleShape,
        loss: &LossConfig,
        params: &Self::Buf,
        norm: &Self::Buf,
        x: &Self::Buf,
        target: &Self::Buf,
        rows: usize,
        grad: &mut Self::Buf,
        losses: &mut Self::Buf,
    ) -> Result<()>;

    /// One training step: [`Backend::ensemble_nll_backward`] into `grad`, then
    /// [`Backend::adam_step`] with `adam` on all of it (`adam.len` must be the layout's
    /// total). A backend may fuse the two; the result is the two calls' (the CPU applies the
    /// decay and the update to each weight block as it is made).
    #[allow(clippy::too_many_arguments)]
    fn ensemble_nll_adam_step(
        &self,
        shape: &EnsembleShape,
        loss: &LossConfig,
        params: &mut Self::Buf,
        norm: &Self::Buf,
        x: &Self::Buf,
        target: &Self::Buf,
        rows: usize,
        grad: &mut Self::Buf,
        losses: &mut Self::Buf,
        adam: &AdamParams,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<()> {
        self.ensemble_nll_backward(shape, loss, params, norm, x, target, rows, grad, losses)?;
        self.adam_step(adam, params, grad, m, v)
    }

    /// Vector–Jacobian product of the ensemble at `x` [E, rows, in]: given upstream
    /// gradients on the predicted mean `d_mean` and log-variance `d_logvar` [E, rows, out]
    /// (`d_logvar` is not read for deterministic ensembles), write ∂/∂params (flat layout,
    /// overwriting every entry; the log-variance bounds' too) into `grad` and ∂/∂x
    /// [E, rows, in] into `dx`, each only when given. The forward is recomputed inside. This
    /// is the dense-layer engine's backward for losses formed outside it: SAC's critics and
    /// actor, and paths through a learned model (MAAC, SVG).
    #[allow(clippy::too_many_arguments)]
    fn ensemble_vjp(
        &self,
        shape: &EnsembleShape,
        params: &Self::Buf,
        norm: &Self::Buf,
        x: &Self::Buf,
        rows: usize,
        d_mean: &Self::Buf,
        d_logvar: &Self::Buf,
        grad: Option<&mut Self::Buf>,
        dx: Option<&mut Self::Buf>,
    ) -> Result<()>;

    /// Sample a population [P, H·A] for CEM (truncated normal, see [`SampleParams`]) or
    /// random shooting (uniform). `lower`/`upper` are the action bounds [act_dim].
    fn cem_sample(
        &self,
        p: &SampleParams,
        mean: &Self::Buf,
        var: &Self::Buf,
        lower: &Self::Buf,
        upper: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Start of a planning step, on the device so that a step uploads only its observation:
    /// `mean` ← `prev` shifted one action earlier (warm start, [`InitParams::shift`]) or the
    /// middle of the bounds, and `var` ← (ub − lb)²/16 (PETS / mbrl-lib's initial variance).
    /// `prev` and `mean` are distinct buffers (the planner alternates two).
    fn cem_init(
        &self,
        p: &InitParams,
        lower: &Self::Buf,
        upper: &Self::Buf,
        prev: &Self::Buf,
        mean: &mut Self::Buf,
        var: &mut Self::Buf,
    ) -> Result<()>;

    /// CEM update: the `num_elites` candidates of highest return (ties to the lower index,
    /// NaN ranked as −∞) give the new mean and (biased) variance, smoothed by α and clamped
    /// below by `min_var`.
    fn cem_update(
        &self,
        p: &UpdateParams,
        population: &Self::Buf,
        returns: &Self::Buf,
        mean: &mut Self::Buf,
        var: &mut Self::Buf,
    ) -> Result<()>;

    /// iCEM's elite memory, step 1: the `num_elites` candidates of highest return (the order
    /// of `cem_update`) copied, best first, into `elites` [K, len] and their returns into
    /// `elite_returns` [K].
    fn cem_select(
        &self,
        p: &EliteParams,
        population: &Self::Buf,
        returns: &Self::Buf,
        elites: &mut Self::Buf,
        elite_returns: &mut Self::Buf,
    ) -> Result<()>;

    /// iCEM's elite memory, step 2: elite rows `0..num_elites` copied into population rows
    /// `dst_row..`, shifted one action earlier when [`EliteParams::shift`] is 1 (their last
    /// action then comes from `mean`, the start of the new plan).
    fn cem_keep(
        &self,
        p: &EliteParams,
        elites: &Self::Buf,
        mean: &Self::Buf,
        population: &mut Self::Buf,
    ) -> Result<()>;

    /// MPPI sampling (see [`MppiParams`]): `out` [P, len] around the nominal plan `mean`
    /// [len], with `chol` [A·A] the row-major lower Cholesky factor of the noise covariance.
    fn mppi_sample(
        &self,
        p: &MppiParams,
        mean: &Self::Buf,
        chol: &Self::Buf,
        lower: &Self::Buf,
        upper: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// MPPI update of the nominal plan `mean` [len]: the cost of candidate c is
    /// S_c = −R_c + λ Σ_t U_tᵀ Σ⁻¹ (V_{c,t} − U_t) (`precision` [A·A] = Σ⁻¹), its weight
    /// w_c = exp(−(S_c − min S)/λ) (0 for a non-finite S_c), and
    /// U ← α·U + (1−α)·Σ_c w_c V_c / Σ_c w_c. With no finite S_c, U is left as it is.
    fn mppi_update(
        &self,
        p: &MppiParams,
        population: &Self::Buf,
        returns: &Self::Buf,
        precision: &Self::Buf,
        mean: &mut Self::Buf,
    ) -> Result<()>;

    /// Trajectory sampling through the learned ensemble: every candidate's action sequence
    /// [P, H, A] from the start observation `start` [obs_dim] with `particles` particles;
    /// `returns` [P] ← mean over particles of the summed rewards (none after a particle
    /// terminates), −∞ for a candidate any of whose particles left the finite numbers.
    #[allow(clippy::too_many_arguments)]
    fn rollout(
        &self,
        p: &RolloutParams,
        shape: &EnsembleShape,
        params: &Self::Buf,
        norm: &Self::Buf,
        start: &Self::Buf,
        actions: &Self::Buf,
        returns: &mut Self::Buf,
    ) -> Result<()>;

    /// [`Backend::rollout`] with a terminal value closing every path (see [`TerminalValue`]).
    /// The CPU backend evaluates any [`StateValue`]; the device backends run the value's
    /// networks ([`StateValue::nets`]) on the rollout's final states. A backend without it
    /// says so.
    #[allow(clippy::too_many_arguments)]
    fn rollout_with_value(
        &self,
        p: &RolloutParams,
        shape: &EnsembleShape,
        params: &Self::Buf,
        norm: &Self::Buf,
        start: &Self::Buf,
        actions: &Self::Buf,
        value: &TerminalValue,
        returns: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (p, shape, params, norm, start, actions, value, returns);
        Err(crate::Error::Unavailable(format!(
            "a terminal value in planning runs on the CPU backend only; use --backend cpu \
             (the {} backend has no critic on the device yet)",
            self.name()
        )))
    }

    /// The same with the environment's true dynamics from its internal state `start`
    /// [state_dim]; deterministic, so one particle per candidate.
    fn rollout_true(
        &self,
        p: &RolloutParams,
        start: &Self::Buf,
        actions: &Self::Buf,
        returns: &mut Self::Buf,
    ) -> Result<()>;

    /// SAC's policy sample (Haarnoja et al. 2018, eq. 26 with the tanh change of variables
    /// of appendix C): per row b, from the actor's raw head [B, 2A] = [μ, log σ] and noise
    /// `eps` [B, A], the action `scale·tanh(μ + σ·ε) + bias` (`sb` = [scale (A), bias (A)])
    /// and its log π into `logp` [B]; the critics' input `x` [2, B, O + A] = [obs, action]
    /// once per critic. With `p.given` the actions are `act_in` [B, A] and `logp` is not
    /// written.
    #[allow(clippy::too_many_arguments)]
    fn sac_squash(
        &self,
        p: &SacParams,
        head: &Self::Buf,
        eps: &Self::Buf,
        obs: &Self::Buf,
        sb: &Self::Buf,
        act_in: &Self::Buf,
        logp: &mut Self::Buf,
        x: &mut Self::Buf,
    ) -> Result<()>;

    /// The critics' TD loss gradient: y = r + γ·mask·(min(Q̄₁, Q̄₂)(s', ã') − α·log π(ã'|s'))
    /// from the target critics' `q_next` [2, B] and `logp_next` [B] (α = exp(log_alpha[0])),
    /// then `dq` [2, B] = ∂/∂Q of Σ_k Σ_b (Q_k − y_b)² / B at the critics' `q` [2, B]; adds
    /// the loss and the mean Q to `stats` ([`sac_stats`]).
    #[allow(clippy::too_many_arguments)]
    fn sac_critic_grad(
        &self,
        p: &SacParams,
        q_next: &Self::Buf,
        logp_next: &Self::Buf,
        reward: &Self::Buf,
        mask: &Self::Buf,
        log_alpha: &Self::Buf,
        q: &Self::Buf,
        dq: &mut Self::Buf,
        stats: &mut Self::Buf,
    ) -> Result<()>;

    /// The actor loss Σ_b (α·log π_b − min(Q₁, Q₂)_b) / B at the sampled actions: `dq`
    /// [2, B] = −1/B on the smaller critic (half each on a tie, as torch.min), the
    /// temperature's gradient −(mean log π + H̄) into `alpha_grad` [1]; adds the actor loss,
    /// the temperature loss, the entropy estimate, α and one update to `stats`.
    #[allow(clippy::too_many_arguments)]
    fn sac_actor_grad(
        &self,
        p: &SacParams,
        q: &Self::Buf,
        logp: &Self::Buf,
        log_alpha: &Self::Buf,
        dq: &mut Self::Buf,
        alpha_grad: &mut Self::Buf,
        stats: &mut Self::Buf,
    ) -> Result<()>;

    /// Back through [`Backend::sac_squash`]: from the critics' input gradients `dx`
    /// [2, B, O + A] (their action columns, summed over both critics) and α/B on each log π,
    /// the gradient with respect to the actor's raw head, `d_head` [B, 2A].
    #[allow(clippy::too_many_arguments)]
    fn sac_squash_backward(
        &self,
        p: &SacParams,
        head: &Self::Buf,
        eps: &Self::Buf,
        sb: &Self::Buf,
        dx: &Self::Buf,
        log_alpha: &Self::Buf,
        d_head: &mut Self::Buf,
    ) -> Result<()>;

    /// SAC's noise of one update: `eps_next`[i] = normal(seed, p.stream, i, p.step) and
    /// `eps_pi`[i] = normal(…, B·A + i, …) for i < B·A (the CPU's `rng::normals` over 2·B·A
    /// values, split).
    fn sac_noise(
        &self,
        p: &SacParams,
        eps_next: &mut Self::Buf,
        eps_pi: &mut Self::Buf,
    ) -> Result<()>;

    /// A minibatch drawn from a packed replay ring `ring` [capacity, 2O + A + 2] holding
    /// `p.len` rows: row b is slot below(seed, p.stream, b, p.step, len) (the CPU's
    /// `Replay::sample`), written to `obs`, `act`, `reward`, `next_obs` and `mask`
    /// (1 − terminated).
    #[allow(clippy::too_many_arguments)]
    fn sac_minibatch(
        &self,
        p: &SacParams,
        ring: &Self::Buf,
        obs: &mut Self::Buf,
        act: &mut Self::Buf,
        reward: &mut Self::Buf,
        next_obs: &mut Self::Buf,
        mask: &mut Self::Buf,
    ) -> Result<()>;

    /// MBPO's TS1 routing of a branched-rollout step: row r of the model input `x`
    /// [rows, O + A] (the first rows of `sac_squash`'s output) goes to member
    /// m = below(seed, member_stream, r, step, members), at position q (its rank among the
    /// rows drawing m, in row order) of the grouped input `xg` [members, per, O + A];
    /// `route` [rows] ← the slot m·per + q as u32 bits (`u32::MAX` if q ≥ per, which the
    /// caller's `per` rules out).
    fn branch_route(
        &self,
        p: &BranchParams,
        x: &Self::Buf,
        route: &mut Self::Buf,
        xg: &mut Self::Buf,
    ) -> Result<()>;

    /// MBPO's branched-rollout step after the model: row r's next state
    /// s' = s + μ + exp(½·log σ²)·ε from its slot of `mean`/`logvar` [members, per, out]
    /// (ε from noise_stream), the reward (the task's, or the model's last output) and
    /// termination; a live row with a finite transition appends [s, a, r, s', term] to the
    /// packed `ring` [capacity, 2O + A + 2] at slot (base + n) mod capacity, n counting the
    /// transitions appended so far (`count` [1], u32 bits, row order); a row stays alive
    /// until it terminates or leaves the finite numbers. `obs` [rows, O] ← s' for live rows,
    /// 0 for the others; `stopped` [rows] holds 0 for a live row, 1 for a stopped one. With
    /// `p.fresh` (a rollout's first step) every row starts live and `count` at zero, whatever
    /// the two buffers hold, so nothing is uploaded and a rollout reuses the last one's.
    #[allow(clippy::too_many_arguments)]
    fn branch_step(
        &self,
        p: &BranchParams,
        route: &Self::Buf,
        mean: &Self::Buf,
        logvar: &Self::Buf,
        x: &Self::Buf,
        obs: &mut Self::Buf,
        stopped: &mut Self::Buf,
        count: &mut Self::Buf,
        ring: &mut Self::Buf,
    ) -> Result<()>;

    /// The path gradient's forward, step `p.t`, after the actor's forward on s_t (`obs` at
    /// t = 0, the states `path_step` wrote since): from the raw heads `head` [B, 2A] and ε_t
    /// (noise), each row's squashed action and log π into the tape (with its head; at t = 0
    /// also s₀ = `obs` and alive₀ = 1). For t < H, `x` ← the grouped model input
    /// [members·per, O + A]: slot i holds [s_t, a_t] of the row the inverse table puts there,
    /// zeros where it is empty. At t = H, `x` ← the critics' input [2, B, O + A].
    fn path_squash(
        &self,
        p: &PathParams,
        head: &Self::Buf,
        obs: &Self::Buf,
        noise: &Self::Buf,
        tape: &mut Self::Buf,
        x: &mut Self::Buf,
    ) -> Result<()>;

    /// The path gradient's model step t < H after the elites' forward on the grouped input
    /// (`mean`, `logvar` [members·per, D]): a row alive at t gets s_{t+1} = s_t + μ + σ·ξ_t
    /// from its slot (σ = exp(½·log σ²), 0 for a deterministic model), its reward (the task's
    /// or the model's last output, sampled alike), counted = 1 and alive_{t+1} = not
    /// terminated; a dead row, or one whose next state or reward is not finite, gets
    /// s_{t+1} = 0, reward 0 and both flags 0. Each row's log σ² is copied to the tape, and
    /// s_{t+1} also to `state` [B, O] (the actor's next input).
    fn path_step(
        &self,
        p: &PathParams,
        mean: &Self::Buf,
        logvar: &Self::Buf,
        noise: &Self::Buf,
        tape: &mut Self::Buf,
        state: &mut Self::Buf,
    ) -> Result<()>;

    /// The path objective's close, one pass in row-major order: J summed as
    /// Σ_{t<H} γ^t·(counted·r_t − alive_t·α·log π_t) + γ^H·alive_H·(min Q − α log π_H) (the
    /// last term with `p.terminal_value`, from the critics' `q` [2, B]); `report`
    /// ([`path_report`]) ← loss, mean log π₀, mean counted reward, alive share; `dq` [2, B]
    /// ← ∂loss/∂Q on the smaller critic (half each on a tie), `alpha_grad` [1] ←
    /// −(mean log π₀ + H̄); α = exp(log α) into the tape for the backward. Like
    /// `sac_actor_grad`, it adds the actor loss (the path loss), the temperature loss, the
    /// entropy estimate (−mean log π₀), α and one update to `stats` ([`sac_stats`]).
    #[allow(clippy::too_many_arguments)]
    fn path_terminal(
        &self,
        p: &PathParams,
        q: &Self::Buf,
        log_alpha: &Self::Buf,
        tape: &mut Self::Buf,
        dq: &mut Self::Buf,
        alpha_grad: &mut Self::Buf,
        report: &mut Self::Buf,
        stats: &mut Self::Buf,
    ) -> Result<()>;

    /// The reverse sweep's model stage at t < H, before the elites' VJP: `back`'s g_s holds
    /// ∂loss/∂s_{t+1}. For the row in grouped slot i: `xg` ← [s_t, a_t] again; a counted row
    /// adds w·γ^t·∂r_t to g_s (∂/∂s_{t+1}), to the reward's ∂/∂s_t and ∂/∂a_t in `back` (both
    /// overwritten; a learned reward's instead goes to d_mean's last column), an uncounted
    /// row's g_s becomes 0; `d_mean` [members·per, D] ← g_s and `d_logvar` ← g·½·σ·ξ (zero
    /// where g is). Empty slots get zeros everywhere.
    #[allow(clippy::too_many_arguments)]
    fn path_model_back(
        &self,
        p: &PathParams,
        noise: &Self::Buf,
        tape: &Self::Buf,
        back: &mut Self::Buf,
        xg: &mut Self::Buf,
        d_mean: &mut Self::Buf,
        d_logvar: &mut Self::Buf,
    ) -> Result<()>;

    /// The reverse sweep's actor stage at t: the gradients on s_t and a_t, from the critics'
    /// input gradient `dx` [2, B, O + A] at t = H (zeros without a terminal value; `dx` is
    /// then not read), or at t < H from the elites' `dx` [members·per, O + A] at the row's
    /// slot plus g_s (∂/∂s_{t+1}, the identity path) and the reward's terms in `back`; then
    /// back through the squash with −α·w·γ^t on log π of an alive row into `d_head`
    /// [B, 2A]. g_s ← the gradient on s_t so far, `state` [B, O] ← s_t (the actor VJP's input).
    #[allow(clippy::too_many_arguments)]
    fn path_actor_back(
        &self,
        p: &PathParams,
        noise: &Self::Buf,
        tape: &Self::Buf,
        dx: &Self::Buf,
        back: &mut Self::Buf,
        d_head: &mut Self::Buf,
        state: &mut Self::Buf,
    ) -> Result<()>;

    /// After the actor's VJP at step t: `grad` [len] ← (0 at t = H, else `grad`) + `g_step`,
    /// and g_s += `ds` [B, O].
    fn path_accumulate(
        &self,
        p: &PathParams,
        g_step: &Self::Buf,
        ds: &Self::Buf,
        grad: &mut Self::Buf,
        back: &mut Self::Buf,
    ) -> Result<()>;

    /// Polyak averaging of `p.len` values: target ← τ·online + (1 − τ)·target.
    fn polyak(&self, p: &SacParams, target: &mut Self::Buf, online: &Self::Buf) -> Result<()>;

    /// One Adam step over the flat parameters (coupled L2 lives in the loss).
    fn adam_step(
        &self,
        p: &AdamParams,
        params: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<()>;
}

/// Whether a backend can run here, and if not, why — one sentence for `mbrl-gpu devices`.
#[derive(Clone, Debug)]
pub struct Availability {
    pub backend: &'static str,
    pub available: bool,
    pub detail: String,
}

/// What this machine offers, in the order `--backend auto` considers them.
pub fn probe_all() -> Vec<Availability> {
    let threads = rayon::current_num_threads();
    vec![
        cuda::availability(),
        wgpu::availability(),
        Availability {
            backend: "cpu",
            available: true,
            detail: format!(
                "rayon on {threads} thread(s); GEMM by the `gemm` crate ({})",
                crate::linalg::simd_level()
            ),
        },
    ]
}

/// Names accepted by `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// cuda, then a hardware wgpu adapter, then cpu.
    Auto,
    Cpu,
    Wgpu,
    Cuda,
}

/// Resolve `--backend`: the chosen name and one line per backend passed over, with why.
/// `auto` takes cuda when a device exists, then wgpu only on a hardware adapter (a software
/// rasteriser such as lavapipe is slower than the CPU backend), then cpu.
pub fn resolve(choice: BackendChoice) -> Result<(&'static str, Vec<String>)> {
    let want = match choice {
        BackendChoice::Cpu => return Ok(("cpu", vec![])),
        BackendChoice::Wgpu => Some(wgpu::availability()),
        BackendChoice::Cuda => Some(cuda::availability()),
        BackendChoice::Auto => None,
    };
    if let Some(a) = want {
        return if a.available {
            Ok((a.backend, vec![]))
        } else {
            Err(crate::Error::Unavailable(format!(
                "{}: {}",
                a.backend, a.detail
            )))
        };
    }
    let mut skipped = vec![];
    let c = cuda::availability();
    if c.available {
        return Ok(("cuda", skipped));
    }
    skipped.push(format!("cuda: {}", c.detail));
    let w = wgpu::availability();
    if w.available && wgpu::is_hardware() {
        return Ok(("wgpu", skipped));
    }
    skipped.push(format!(
        "wgpu: {}",
        if w.available {
            format!("{} (no hardware adapter)", w.detail)
        } else {
            w.detail
        }
    ));
    Ok(("cpu", skipped))
}

/// One of the three backends, chosen at run time.
// One value per process: the CPU variant's inline workspaces cost nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum AnyBackend {
    Cpu(cpu::CpuBackend),
    Wgpu(Box<wgpu::WgpuBackend>),
    Cuda(Box<cuda::CudaBackend>),
}

impl AnyBackend {
    /// Resolve `choice` and construct the backend; returns it with the lines explaining
    /// which backends were passed over and why.
    pub fn new(choice: BackendChoice) -> Result<(Self, Vec<String>)> {
        Self::with_precision(choice, Precision::F32)
    }

    /// [`AnyBackend::new`] with planning rollouts in `precision`.
    pub fn with_precision(
        choice: BackendChoice,
        precision: Precision,
    ) -> Result<(Self, Vec<String>)> {
        let (name, skipped) = resolve(choice)?;
        let bf16 = precision == Precision::Bf16;
        let b = match name {
            "cuda" => AnyBackend::Cuda(Box::new(cuda::CudaBackend::with_options(
                cuda::CudaOptions {
                    bf16_weights: bf16,
                    fp32_planning: std::env::var("MBRL_GPU_FP32_PLANNING").is_ok_and(|v| v == "1"),
                    ..Default::default()
                },
            )?)),
            "wgpu" if bf16 => {
                return Err(crate::invalid!(
                    "bf16 planning is implemented on the cpu and cuda backends, not on wgpu \
                     (choose --backend cpu or cuda, or precision f32)"
                ))
            }
            "wgpu" => AnyBackend::Wgpu(Box::new(wgpu::WgpuBackend::new()?)),
            _ if bf16 => AnyBackend::Cpu(cpu::CpuBackend::with_bf16_planning()),
            _ => AnyBackend::Cpu(cpu::CpuBackend::new()),
        };
        Ok((b, skipped))
    }

    pub fn name(&self) -> &'static str {
        match self {
            AnyBackend::Cpu(b) => b.name(),
            AnyBackend::Wgpu(b) => b.name(),
            AnyBackend::Cuda(b) => b.name(),
        }
    }

    /// Whether planning rollouts run on TF32 tensor cores (CUDA on sm_80+, by default).
    pub fn planning_on_tensor_cores(&self) -> bool {
        matches!(self, AnyBackend::Cuda(b) if b.planning_tensor_cores())
    }
}

/// Run `$body` with `$b` bound to the concrete backend inside an [`AnyBackend`], so generic
/// code is monomorphised once per backend.
#[macro_export]
macro_rules! with_backend {
    ($any:expr, |$b:ident| $body:expr) => {
        match $any {
            $crate::backend::AnyBackend::Cpu($b) => $body,
            $crate::backend::AnyBackend::Wgpu($b) => {
                let $b = &**$b;
                $body
            }
            $crate::backend::AnyBackend::Cuda($b) => {
                let $b = &**$b;
                $body
            }
        }
    };
}
