//! Policy gradients backpropagated through model paths: MAAC's objective (Clavera et al.
//! 2020; the seeds' appendix "Backpropagation through paths") in the soft form that shares
//! SAC's critics and temperature.
//!
//! For a batch of B start states s₀ and fixed noise (ε_t of the policy, ξ_t of the model, the
//! member m_t of each row at each step), with γ the discount and α the temperature:
//!
//! ```text
//! a_t = scale·tanh(μ(s_t) + σ(s_t)·ε_t) + bias                  (reparameterised, as SAC)
//! s_{t+1} = s_t + μ̂_m(s_t, a_t) + σ̂_m(s_t, a_t)·ξ_t               (member m = m_t, TS1)
//! r_t = r(s_t, a_t, s_{t+1})  (the task's reward function, or the model's reward output)
//! J = Σ_{t<H} γ^t·c_t·(r_t − α·log π(a_t|s_t)) + γ^H·c_H·(min_k Q_k(s_H, a_H) − α·log π(a_H|s_H))
//! loss = −(1/B)·Σ_b J_b
//! ```
//!
//! `c_t` is 1 while the path is alive: a row stops after the step whose s_{t+1} the task
//! terminates (that step's reward still counts), and at a step whose prediction is not
//! finite (that step's reward does not count). H = 0 is SAC's actor loss.
//!
//! Two options for SVG(∞)'s long paths, both off (0) in MAAC and in the published SVG(∞)
//! ([`PathSettings`]): a penalty λ·(1/B)·Σ_b Σ_t c_t·Σ_j max(0, |μ_j(s_t)| − m)² on the
//! pre-squash mean beyond m (its value is [`PathReport::penalty`], its gradient joins the
//! loss's), and a clip of each step's own contribution to ∂loss/∂θ (the actor VJP at s_t) to
//! norm `step_grad_norm`, after which the result is no longer the gradient of an objective.
//!
//! The backward runs the recursion of the slides' SVG/MAAC derivation in reverse mode:
//! g_{s_t} = ∂r_t/∂s_t + (∂r_t/∂s_{t+1} + g_{s_{t+1}})·(I + ∂μ̂/∂s + ξ·∂σ̂/∂s)
//!           + (∂r_t/∂a_t + …·∂f̂/∂a)·∂a_t/∂s_t, and every step's ∂a_t/∂θ adds to ∂loss/∂θ.
//! Only the layer caches of each step's actor and model passes are kept for it.
use crate::backend::cpu::ensemble::{self as engine, Workspace};
use crate::backend::cpu::Real;
use crate::backend::EnsembleShape;
use crate::env::task::{self, RewardGrad};
use crate::policy::sac::{critic_input, min_q_input_grad, squash_row, unit_norm, Nets, Squash};
use crate::rng::{below, normals, stream};

/// One step of the dynamics a path runs through, with its vector–Jacobian product.
pub trait PathDynamics<T: Real> {
    /// Step `t` of `rows` rows: `next` [rows, O] from `obs` [rows, O] and `act` [rows, A];
    /// returns true when it also wrote a reward per row into `reward` [rows].
    fn forward(
        &mut self,
        t: usize,
        obs: &[T],
        act: &[T],
        rows: usize,
        next: &mut [T],
        reward: &mut [T],
    ) -> bool;
    /// After `forward(t, …)`: from the upstream gradients on `next` [rows, O] and on the
    /// reward [rows] (zeros when the reward is not the model's), the gradients on `obs`
    /// [rows, O] and `act` [rows, A] (overwritten).
    fn backward(
        &mut self,
        t: usize,
        rows: usize,
        g_next: &[T],
        g_reward: &[T],
        g_obs: &mut [T],
        g_act: &mut [T],
    );
}

/// The learned model as path dynamics: one member per row and step, its Gaussian sample
/// reparameterised with fixed noise.
pub struct ModelPath<'a, T> {
    /// The members a path may use (the elites), `probabilistic` or not.
    pub shape: EnsembleShape,
    pub params: &'a [T],
    pub in_mean: &'a [T],
    pub in_std: &'a [T],
    pub obs_dim: usize,
    /// The output after the state change is the reward.
    pub learn_reward: bool,
    /// Member of row b at step t: `member[t·B + b]` < `shape.ensemble`.
    pub member: &'a [usize],
    /// Model noise ξ: [H, B, out_dim].
    pub xi: &'a [T],
    steps: Vec<ModelStep<T>>,
}

/// What step t's backward needs: the row grouping and the prediction.
#[derive(Default)]
struct ModelStep<T> {
    ws: Workspace<T>,
    /// Row b sits at position `slot[b]` of the member-grouped batch [E, per, ·].
    slot: Vec<usize>,
    per: usize,
    mean: Vec<T>,
    logvar: Vec<T>,
}

impl<'a, T: Real> ModelPath<'a, T> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shape: EnsembleShape,
        params: &'a [T],
        in_mean: &'a [T],
        in_std: &'a [T],
        obs_dim: usize,
        learn_reward: bool,
        member: &'a [usize],
        xi: &'a [T],
    ) -> Self {
        Self {
            shape,
            params,
            in_mean,
            in_std,
            obs_dim,
            learn_reward,
            member,
            xi,
            steps: vec![],
        }
    }

    fn sigma_xi(&self, st: &ModelStep<T>, i: usize, xi: T) -> T {
        if self.shape.probabilistic {
            (T::c(0.5) * st.logvar[i]).exp() * xi
        } else {
            T::zero()
        }
    }
}

impl<T: Real> PathDynamics<T> for ModelPath<'_, T> {
    fn forward(
        &mut self,
        t: usize,
        obs: &[T],
        act: &[T],
        rows: usize,
        next: &mut [T],
        reward: &mut [T],
    ) -> bool {
        let (o, e, d, din) = (
            self.obs_dim,
            self.shape.ensemble,
            self.shape.out_dim,
            self.shape.in_dim,
        );
        let a = din - o;
        if self.steps.len() <= t {
            self.steps.resize_with(t + 1, ModelStep::default);
        }
        let member = &self.member[t * rows..(t + 1) * rows];
        let mut count = vec![0usize; e];
        let mut st = std::mem::take(&mut self.steps[t]);
        st.slot.clear();
        for &m in member {
            st.slot.push(count[m]);
            count[m] += 1;
        }
        st.per = count.iter().copied().max().unwrap_or(0).max(1);
        let per = st.per;
        for (s, &m) in st.slot.iter_mut().zip(member) {
            *s += m * per;
        }
        let mut x = vec![T::zero(); e * per * din];
        for b in 0..rows {
            let dst = &mut x[st.slot[b] * din..][..din];
            dst[..o].copy_from_slice(&obs[b * o..(b + 1) * o]);
            dst[o..].copy_from_slice(&act[b * a..(b + 1) * a]);
        }
        st.mean = vec![T::zero(); e * per * d];
        st.logvar = vec![
            T::zero();
            if self.shape.probabilistic {
                e * per * d
            } else {
                0
            }
        ];
        engine::forward_cached(
            &self.shape,
            self.params,
            self.in_mean,
            self.in_std,
            &x,
            per,
            &mut st.mean,
            &mut st.logvar,
            &mut st.ws,
        );
        let xi = &self.xi[t * rows * d..(t + 1) * rows * d];
        for b in 0..rows {
            let i = st.slot[b] * d;
            for j in 0..o {
                next[b * o + j] =
                    obs[b * o + j] + st.mean[i + j] + self.sigma_xi(&st, i + j, xi[b * d + j]);
            }
            if self.learn_reward {
                reward[b] = st.mean[i + o] + self.sigma_xi(&st, i + o, xi[b * d + o]);
            }
        }
        self.steps[t] = st;
        self.learn_reward
    }

    fn backward(
        &mut self,
        t: usize,
        rows: usize,
        g_next: &[T],
        g_reward: &[T],
        g_obs: &mut [T],
        g_act: &mut [T],
    ) {
        let (o, d, din) = (self.obs_dim, self.shape.out_dim, self.shape.in_dim);
        let a = din - o;
        let mut st = std::mem::take(&mut self.steps[t]);
        let n = self.shape.ensemble * st.per * d;
        let mut d_mean = vec![T::zero(); n];
        let mut d_lv = vec![T::zero(); if self.shape.probabilistic { n } else { 0 }];
        let xi = &self.xi[t * rows * d..(t + 1) * rows * d];
        let half = T::c(0.5);
        for b in 0..rows {
            let i = st.slot[b] * d;
            let mut put = |j: usize, g: T| {
                // A zero upstream gradient stays exactly zero, also where a dead row's
                // prediction overflowed (0·∞ would be NaN).
                if g == T::zero() {
                    return;
                }
                d_mean[i + j] = g;
                if self.shape.probabilistic {
                    // ∂(σ·ξ)/∂ log σ² = ½·σ·ξ.
                    d_lv[i + j] = g * half * (half * st.logvar[i + j]).exp() * xi[b * d + j];
                }
            };
            for j in 0..o {
                put(j, g_next[b * o + j]);
            }
            if self.learn_reward {
                put(o, g_reward[b]);
            }
        }
        let mut dx = vec![T::zero(); self.shape.ensemble * st.per * din];
        engine::backward(
            &self.shape,
            self.params,
            self.in_std,
            st.per,
            &d_mean,
            &d_lv,
            None,
            Some(&mut dx),
            &mut st.ws,
        );
        for b in 0..rows {
            let src = &dx[st.slot[b] * din..][..din];
            for j in 0..o {
                // s_{t+1} = s_t + Δ: the identity path plus the model's input gradient.
                g_obs[b * o + j] = g_next[b * o + j] + src[j];
            }
            g_act[b * a..(b + 1) * a].copy_from_slice(&src[o..]);
        }
        self.steps[t] = st;
    }
}

/// One row of an environment's true step on its observation (one action), and the
/// step's vector–Jacobian product, written by hand: the reference the model-path gradients
/// are measured against (Lemma 4.1).
pub trait TrueStep<T: Real> {
    const OBS: usize;
    /// `next` ← f(obs, a).
    fn step(obs: &[T], a: T, next: &mut [T]);
    /// `g_obs` ← g_nextᵀ·∂f/∂obs; returns g_nextᵀ·∂f/∂a.
    fn vjp(obs: &[T], a: T, g_next: &[T], g_obs: &mut [T]) -> T;
}

/// An environment's true dynamics as path dynamics; it keeps each step's inputs, and the
/// backward recomputes the rest.
pub struct TrueDynamics<T, S> {
    steps: Vec<(Vec<T>, Vec<T>)>,
    _step: std::marker::PhantomData<S>,
}

impl<T, S> Default for TrueDynamics<T, S> {
    fn default() -> Self {
        Self {
            steps: vec![],
            _step: std::marker::PhantomData,
        }
    }
}

impl<T: Real, S: TrueStep<T>> TrueDynamics<T, S> {
    pub fn new() -> Self {
        Self::default()
    }
}

impl<T: Real, S: TrueStep<T>> PathDynamics<T> for TrueDynamics<T, S> {
    fn forward(
        &mut self,
        t: usize,
        obs: &[T],
        act: &[T],
        rows: usize,
        next: &mut [T],
        _: &mut [T],
    ) -> bool {
        let o = S::OBS;
        for b in 0..rows {
            S::step(
                &obs[o * b..o * (b + 1)],
                act[b],
                &mut next[o * b..o * (b + 1)],
            );
        }
        if self.steps.len() <= t {
            self.steps.resize_with(t + 1, Default::default);
        }
        self.steps[t] = (obs[..o * rows].to_vec(), act[..rows].to_vec());
        false
    }

    fn backward(
        &mut self,
        t: usize,
        rows: usize,
        g_next: &[T],
        _: &[T],
        g_obs: &mut [T],
        g_act: &mut [T],
    ) {
        let o = S::OBS;
        let (obs, act) = &self.steps[t];
        for b in 0..rows {
            let r = o * b..o * (b + 1);
            g_act[b] = S::vjp(&obs[r.clone()], act[b], &g_next[r.clone()], &mut g_obs[r]);
        }
    }
}

/// Pendulum-v1 on observations `[cos θ, sin θ, θ̇]`:
///
/// ```text
/// θ = atan2(obs₁, obs₀), u = clip(a, −2, 2)
/// θ̇' = clip(θ̇ + (3g/(2l)·sin θ + 3/(m l²)·u)·dt, −8, 8),  θ' = θ + θ̇'·dt
/// obs' = [cos θ', sin θ', θ̇']
/// ```
pub struct PendulumStep;
pub type TruePendulum<T> = TrueDynamics<T, PendulumStep>;

/// The pendulum's constants as `T`: (3g/(2l), 3/(m l²), dt, max speed, max torque).
fn pendulum_consts<T: Real>() -> (T, T, T, T, T) {
    use crate::env::pendulum::{DT, G, L, M, MAX_SPEED, MAX_TORQUE};
    (
        T::c(3.0 * G / (2.0 * L)),
        T::c(3.0 / (M * L * L)),
        T::c(DT),
        T::c(MAX_SPEED),
        T::c(MAX_TORQUE as f64),
    )
}

impl<T: Real> TrueStep<T> for PendulumStep {
    const OBS: usize = 3;

    fn step(obs: &[T], a: T, next: &mut [T]) {
        let (k1, k2, dt, vmax, umax) = pendulum_consts::<T>();
        let th = obs[1].atan2(obs[0]);
        let u = a.max(-umax).min(umax);
        let nd = (obs[2] + (k1 * th.sin() + k2 * u) * dt)
            .max(-vmax)
            .min(vmax);
        let nth = th + nd * dt;
        next[0] = nth.cos();
        next[1] = nth.sin();
        next[2] = nd;
    }

    fn vjp(obs: &[T], a: T, g: &[T], g_obs: &mut [T]) -> T {
        let (k1, k2, dt, vmax, umax) = pendulum_consts::<T>();
        let (c, s, td) = (obs[0], obs[1], obs[2]);
        let th = s.atan2(c);
        let u = a.max(-umax).min(umax);
        let pre = td + (k1 * th.sin() + k2 * u) * dt;
        let nth = th + pre.max(-vmax).min(vmax) * dt;
        let g_nth = -nth.sin() * g[0] + nth.cos() * g[1];
        let g_nd = g[2] + g_nth * dt;
        // The speed and torque clips pass the gradient strictly inside.
        let g_pre = if pre > -vmax && pre < vmax {
            g_nd
        } else {
            T::zero()
        };
        let g_th = g_nth + g_pre * k1 * th.cos() * dt;
        let rho2 = c * c + s * s;
        g_obs[0] = g_th * (-s / rho2);
        g_obs[1] = g_th * (c / rho2);
        g_obs[2] = g_pre;
        if a > -umax && a < umax {
            g_pre * k2 * dt
        } else {
            T::zero()
        }
    }
}

/// The continuous cart-pole (CartPole-v1 physics, Euler steps, force 10 N × action,
/// observation = state):
///
/// ```text
/// F = 10·a, temp = (F + m_p l·ω²·sin θ)/M, den = l·(4/3 − m_p cos²θ/M)
/// θ̈ = (g sin θ − cos θ·temp)/den,  ẍ = temp − m_p l·θ̈·cos θ/M
/// (x, ẋ, θ, ω)' = (x + τẋ, ẋ + τẍ, θ + τω, ω + τθ̈)
/// ```
pub struct CartPoleStep;
pub type TrueCartPole<T> = TrueDynamics<T, CartPoleStep>;

/// The cart-pole's intermediate quantities at (state, action): (sin θ, cos θ, temp, den, θ̈, ẍ).
fn cartpole_terms<T: Real>(s: &[T], a: T) -> (T, T, T, T, T, T) {
    use crate::env::cartpole::{FORCE_MAG, GRAVITY, LENGTH, MASSPOLE, POLEMASS_LENGTH, TOTAL_MASS};
    let c = T::c;
    let (om, th) = (s[3], s[2]);
    let (sn, cs) = (th.sin(), th.cos());
    let temp = (a * c(FORCE_MAG as f64) + c(POLEMASS_LENGTH) * om * om * sn) / c(TOTAL_MASS);
    let den = c(LENGTH) * (c(4.0 / 3.0) - c(MASSPOLE) * cs * cs / c(TOTAL_MASS));
    let thacc = (c(GRAVITY) * sn - cs * temp) / den;
    let xacc = temp - c(POLEMASS_LENGTH) * thacc * cs / c(TOTAL_MASS);
    (sn, cs, temp, den, thacc, xacc)
}

impl<T: Real> TrueStep<T> for CartPoleStep {
    const OBS: usize = 4;

    fn step(s: &[T], a: T, next: &mut [T]) {
        let tau = T::c(crate::env::cartpole::TAU);
        let (_, _, _, _, thacc, xacc) = cartpole_terms(s, a);
        next[0] = s[0] + tau * s[1];
        next[1] = s[1] + tau * xacc;
        next[2] = s[2] + tau * s[3];
        next[3] = s[3] + tau * thacc;
    }

    fn vjp(s: &[T], a: T, g: &[T], out: &mut [T]) -> T {
        use crate::env::cartpole::{
            FORCE_MAG, GRAVITY, LENGTH, MASSPOLE, POLEMASS_LENGTH, TAU, TOTAL_MASS,
        };
        let c = T::c;
        let (tau, ml, mt) = (c(TAU), c(POLEMASS_LENGTH), c(TOTAL_MASS));
        let (sn, cs, temp, den, thacc, _) = cartpole_terms(s, a);
        let om = s[3];
        // Through ẍ = temp − ml·θ̈·cos θ/M and θ̈ = (g sin θ − cos θ·temp)/den.
        let g_xacc = tau * g[1];
        let g_thacc = tau * g[3] - g_xacc * ml * cs / mt;
        let g_temp = g_xacc - g_thacc * cs / den;
        let g_den = -g_thacc * thacc / den;
        let g_cs = -g_xacc * ml * thacc / mt - g_thacc * temp / den
            + g_den * c(LENGTH) * (-c(2.0) * c(MASSPOLE) * cs / mt);
        let g_sn = g_thacc * c(GRAVITY) / den + g_temp * ml * om * om / mt;
        out[0] = g[0];
        out[1] = tau * g[0] + g[1];
        out[2] = g[2] + g_sn * cs - g_cs * sn;
        out[3] = tau * g[2] + g[3] + g_temp * c(2.0) * ml * om * sn / mt;
        g_temp * c(FORCE_MAG as f64) / mt
    }
}

/// MountainCarContinuous-v0 on observations `[p, v]` (= state):
///
/// ```text
/// F = clip(a, −1, 1),  v₁ = clip(v + P·F − 0.0025·cos 3p, −v_max, v_max)
/// p' = clip(p + v₁, p_min, p_max),  v' = 0 if p' = p_min and v₁ < 0, else v₁
/// ```
///
/// Every clip is a constant where it binds, so the gradient flows only strictly inside each
/// range, and not at all through a speed zeroed at the left wall.
pub struct MountainCarStep;
pub type TrueMountainCar<T> = TrueDynamics<T, MountainCarStep>;

/// The mountain car's (power, gravity coefficient, max speed, min position, max position).
fn mountain_car_consts<T: Real>() -> (T, T, T, T, T) {
    use crate::env::mountain_car::{GRAVITY_COEF, MAX_POSITION, MAX_SPEED, MIN_POSITION, POWER};
    (
        T::c(POWER),
        T::c(GRAVITY_COEF),
        T::c(MAX_SPEED),
        T::c(MIN_POSITION),
        T::c(MAX_POSITION),
    )
}

impl<T: Real> TrueStep<T> for MountainCarStep {
    const OBS: usize = 2;

    fn step(s: &[T], a: T, next: &mut [T]) {
        let (power, grav, vmax, pmin, pmax) = mountain_car_consts::<T>();
        let f = a.max(-T::one()).min(T::one());
        let v1 = (s[1] + f * power - grav * (T::c(3.0) * s[0]).cos())
            .max(-vmax)
            .min(vmax);
        let p = (s[0] + v1).max(pmin).min(pmax);
        next[0] = p;
        next[1] = if p == pmin && v1 < T::zero() {
            T::zero()
        } else {
            v1
        };
    }

    fn vjp(s: &[T], a: T, g: &[T], g_obs: &mut [T]) -> T {
        let (power, grav, vmax, pmin, pmax) = mountain_car_consts::<T>();
        let f = a.max(-T::one()).min(T::one());
        let pre_v = s[1] + f * power - grav * (T::c(3.0) * s[0]).cos();
        let v1 = pre_v.max(-vmax).min(vmax);
        let pre_p = s[0] + v1;
        let p = pre_p.max(pmin).min(pmax);
        let g_pre_p = if pre_p > pmin && pre_p < pmax {
            g[0]
        } else {
            T::zero()
        };
        let g_v1 = g_pre_p
            + if p == pmin && v1 < T::zero() {
                T::zero()
            } else {
                g[1]
            };
        let g_pre_v = if pre_v > -vmax && pre_v < vmax {
            g_v1
        } else {
            T::zero()
        };
        // ∂(−0.0025·cos 3p)/∂p = 0.0075·sin 3p.
        g_obs[0] = g_pre_p + g_pre_v * grav * T::c(3.0) * (T::c(3.0) * s[0]).sin();
        g_obs[1] = g_pre_v;
        if a > -T::one() && a < T::one() {
            g_pre_v * power
        } else {
            T::zero()
        }
    }
}

/// The fixed noise of one path batch.
#[derive(Clone, Debug, PartialEq)]
pub struct PathNoise<T> {
    pub horizon: usize,
    pub rows: usize,
    /// Policy ε: [H + 1, B, A].
    pub eps: Vec<T>,
    /// Member per row and step: [H, B].
    pub member: Vec<usize>,
    /// Model ξ: [H, B, D].
    pub xi: Vec<T>,
}

impl PathNoise<f32> {
    /// Philox draws at step `step`: ε from element 0 of stream MAAC_PATH, ξ after it, the
    /// members from stream MAAC_MEMBER.
    pub fn draw(
        seed: u64,
        step: u32,
        horizon: usize,
        rows: usize,
        act_dim: usize,
        out_dim: usize,
        members: usize,
    ) -> Self {
        let ne = (horizon + 1) * rows * act_dim;
        let mut v = vec![0.0f32; ne + horizon * rows * out_dim];
        normals(seed, stream::MAAC_PATH, 0, step, &mut v);
        let xi = v.split_off(ne);
        let member = (0..horizon * rows)
            .map(|i| {
                below(
                    seed,
                    stream::MAAC_MEMBER,
                    i as u32,
                    step,
                    members.max(1) as u32,
                ) as usize
            })
            .collect();
        Self {
            horizon,
            rows,
            eps: v,
            member,
            xi,
        }
    }

    pub fn cast<T: Real>(&self) -> PathNoise<T> {
        let c = |v: &[f32]| v.iter().map(|x| T::c(*x as f64)).collect();
        PathNoise {
            horizon: self.horizon,
            rows: self.rows,
            eps: c(&self.eps),
            member: self.member.clone(),
            xi: c(&self.xi),
        }
    }
}

/// What the path objective reports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PathReport<T> {
    pub loss: T,
    /// Mean log π(a₀|s₀): the temperature loss's estimate, as SAC's.
    pub logp_mean: T,
    /// Mean reward per counted model step.
    pub reward_mean: T,
    /// Share of rows still alive at the horizon.
    pub alive: T,
    /// The mean-penalty term (1/B)·Σ λ·max(0, |μ| − m)², not part of `loss`; the gradient
    /// is of `loss + penalty`.
    pub penalty: T,
}

/// Scratch of [`path_loss`]: the caches of every step's actor pass and of the critics.
#[derive(Default)]
pub struct PathWorkspace<T> {
    actor: Vec<Workspace<T>>,
    critic: Workspace<T>,
}

/// The discount, temperature and task of a path objective.
#[derive(Clone, Copy, Debug)]
pub struct PathSettings<T> {
    pub gamma: T,
    pub alpha: T,
    /// Reward and termination function ([`crate::env::task`]), used unless the dynamics
    /// predict the reward.
    pub task: u32,
    /// Close the path with γ^H·(min Q − α log π) at s_H; false ends it at r_{H−1} (the
    /// finite-horizon value of SVG(∞)).
    pub terminal_value: bool,
    /// Largest norm of one step's contribution to ∂loss/∂θ (the actor's VJP at s_t, summed
    /// over rows), scaled down where longer; 0: off. SVG(∞) on the pendulum: the steps near
    /// the upright, where 200-step paths are most sensitive, otherwise set the direction.
    pub step_grad_norm: T,
    /// m and λ of the penalty λ·Σ_t max(0, |μ(s_t)| − m)² on the pre-squash mean (λ = 0:
    /// off): the tanh's derivative vanishes where |μ| is large, and with it the gradient
    /// that could bring a saturated policy back.
    pub mean_limit: T,
    pub mean_penalty: T,
}

impl<T: Real> PathSettings<T> {
    /// Without the penalty or the step clip (MAAC, SVG(∞) as published).
    pub fn plain(gamma: T, alpha: T, task: u32, terminal_value: bool) -> Self {
        Self {
            gamma,
            alpha,
            task,
            terminal_value,
            step_grad_norm: T::zero(),
            mean_limit: T::zero(),
            mean_penalty: T::zero(),
        }
    }

    /// The penalty's term of one head row's means and its derivative on each (into `d`).
    fn penalty(&self, mu: &[T], mut d: Option<&mut [T]>) -> T {
        let mut sum = T::zero();
        for (j, m) in mu.iter().enumerate() {
            let excess = m.abs() - self.mean_limit;
            if excess > T::zero() {
                sum += self.mean_penalty * excess * excess;
                if let Some(d) = d.as_deref_mut() {
                    d[j] += self.mean_penalty * T::c(2.0) * excess * m.signum();
                }
            }
        }
        sum
    }
}

/// The path loss and, with `grad`, ∂loss/∂θ_π (flat actor layout, overwritten).
#[allow(clippy::too_many_arguments)]
pub fn path_loss<T: Real>(
    nets: &Nets,
    actor: &[T],
    critic: &[T],
    sq: &Squash<T>,
    dynamics: &mut dyn PathDynamics<T>,
    set: PathSettings<T>,
    start: &[T],
    noise: &PathNoise<T>,
    grad: Option<&mut [T]>,
    ws: &mut PathWorkspace<T>,
) -> PathReport<T> {
    let (o, a, rows, h) = (nets.obs_dim, nets.act_dim, noise.rows, noise.horizon);
    let want = grad.is_some();
    let (mo, so) = unit_norm::<T>(o);
    let (mc, sc) = unit_norm::<T>(o + a);
    if ws.actor.len() < h + 1 {
        ws.actor.resize_with(h + 1, Workspace::default);
    }
    // Forward, keeping s_t, the heads, actions and the alive/counted masks.
    let mut states = vec![start.to_vec()];
    let mut heads: Vec<Vec<T>> = vec![];
    let mut acts: Vec<Vec<T>> = vec![];
    let mut alive = vec![vec![true; rows]];
    let mut counted: Vec<Vec<bool>> = vec![];
    let mut j_sum = T::zero();
    let mut logp0 = T::zero();
    let (mut r_sum, mut r_n) = (T::zero(), 0usize);
    let mut disc = T::one();
    let mut reward = vec![T::zero(); rows];
    let mut learned = false;
    let mut penalty = T::zero();
    for t in 0..=h {
        let s = &states[t];
        let mut head = vec![T::zero(); rows * 2 * a];
        let f = if want {
            engine::forward_cached
        } else {
            engine::forward
        };
        f(
            &nets.actor,
            actor,
            &mo,
            &so,
            s,
            rows,
            &mut head,
            &mut [],
            &mut ws.actor[t],
        );
        let eps = &noise.eps[t * rows * a..(t + 1) * rows * a];
        let mut act = vec![T::zero(); rows * a];
        let mut logp = vec![T::zero(); rows];
        for b in 0..rows {
            logp[b] = squash_row(
                &head[b * 2 * a..(b + 1) * 2 * a],
                &eps[b * a..(b + 1) * a],
                sq,
                &mut act[b * a..(b + 1) * a],
                None,
            );
        }
        if t == 0 {
            logp0 = logp.iter().copied().sum::<T>() / T::c(rows as f64);
        }
        let live = &alive[t];
        if set.mean_penalty > T::zero() && (t < h || set.terminal_value) {
            for b in (0..rows).filter(|b| live[*b]) {
                penalty += set.penalty(&head[b * 2 * a..b * 2 * a + a], None);
            }
        }
        if t == h {
            // The terminal soft value γ^H·(min Q − α log π); SVG(∞)'s finite horizon has
            // none, and no critic pass.
            let mut q = vec![T::zero(); if set.terminal_value { 2 * rows } else { 0 }];
            if set.terminal_value {
                let x = critic_input(s, &act, rows, o, a);
                let f = if want {
                    engine::forward_cached
                } else {
                    engine::forward
                };
                f(
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
                for b in (0..rows).filter(|b| live[*b]) {
                    j_sum += disc * (q[b].min(q[rows + b]) - set.alpha * logp[b]);
                }
            }
            heads.push(head);
            if let Some(grad) = grad {
                let path = Path {
                    states: &states,
                    heads: &heads,
                    acts: &acts,
                    alive: &alive,
                    counted: &counted,
                    learned,
                    q: &q,
                };
                backward(
                    nets, actor, critic, sq, dynamics, set, noise, path, grad, ws,
                );
            }
            break;
        }
        let mut next = vec![T::zero(); rows * o];
        learned = dynamics.forward(t, s, &act, rows, &mut next, &mut reward);
        let mut next_alive = vec![false; rows];
        let mut cnt = vec![false; rows];
        for b in 0..rows {
            let nx = &mut next[b * o..(b + 1) * o];
            if !live[b] {
                nx.iter_mut().for_each(|v| *v = T::zero());
                continue;
            }
            j_sum -= disc * set.alpha * logp[b];
            let r = if learned {
                reward[b]
            } else {
                task::reward_vjp(
                    set.task,
                    &s[b * o..(b + 1) * o],
                    &act[b * a..(b + 1) * a],
                    nx,
                    None,
                )
            };
            if !(r.is_finite() && nx.iter().all(|v| v.is_finite())) {
                // Stops here, unrewarded; zeros keep the later passes finite.
                nx.iter_mut().for_each(|v| *v = T::zero());
                continue;
            }
            cnt[b] = true;
            j_sum += disc * r;
            r_sum += r;
            r_n += 1;
            let nx32: Vec<f32> = nx.iter().map(|v| Real::to_f64(*v) as f32).collect();
            next_alive[b] = !task::terminated(set.task, &nx32);
        }
        disc *= set.gamma;
        heads.push(head);
        acts.push(act);
        counted.push(cnt);
        alive.push(next_alive);
        states.push(next);
    }
    let inv_b = T::one() / T::c(rows as f64);
    PathReport {
        loss: -j_sum * inv_b,
        logp_mean: logp0,
        reward_mean: if r_n > 0 {
            r_sum / T::c(r_n as f64)
        } else {
            T::zero()
        },
        alive: T::c(alive[h].iter().filter(|v| **v).count() as f64) * inv_b,
        penalty: penalty * inv_b,
    }
}

/// What the forward sweep kept for the backward: s_t [H+1][B·O], the actor heads and
/// actions of steps 0..=H (actions 0..H), the masks, whether the dynamics predicted the
/// reward, and the critics' values at the horizon [2, B].
struct Path<'p, T> {
    states: &'p [Vec<T>],
    heads: &'p [Vec<T>],
    acts: &'p [Vec<T>],
    alive: &'p [Vec<bool>],
    counted: &'p [Vec<bool>],
    learned: bool,
    q: &'p [T],
}

/// The reverse sweep of [`path_loss`] (its forward caches in `ws` and the dynamics).
#[allow(clippy::too_many_arguments)]
fn backward<T: Real>(
    nets: &Nets,
    actor: &[T],
    critic: &[T],
    sq: &Squash<T>,
    dynamics: &mut dyn PathDynamics<T>,
    set: PathSettings<T>,
    noise: &PathNoise<T>,
    path: Path<'_, T>,
    grad: &mut [T],
    ws: &mut PathWorkspace<T>,
) {
    let Path {
        states,
        heads,
        acts,
        alive,
        counted,
        learned,
        q,
    } = path;
    let (o, a, rows, h) = (nets.obs_dim, nets.act_dim, noise.rows, noise.horizon);
    let (_, so) = unit_norm::<T>(o);
    let w = -T::one() / T::c(rows as f64);
    let disc: Vec<T> = (0..=h)
        .scan(T::one(), |d, _| {
            let v = *d;
            *d *= set.gamma;
            Some(v)
        })
        .collect();
    grad.iter_mut().for_each(|g| *g = T::zero());
    let mut g_theta = vec![T::zero(); grad.len()];
    // Terminal: ∂loss/∂Q_k = w·γ^H on the smaller critic; through the critics' input
    // gradient into s_H and a_H.
    let mut g_s = vec![T::zero(); rows * o];
    let mut g_a = vec![T::zero(); rows * a];
    if set.terminal_value {
        let c_end = w * disc[h];
        let dx = min_q_input_grad(
            nets,
            critic,
            q,
            |b| if alive[h][b] { c_end } else { T::zero() },
            &mut ws.critic,
        );
        for b in 0..rows {
            let (r1, r2) = (
                &dx[b * (o + a)..][..o + a],
                &dx[(rows + b) * (o + a)..][..o + a],
            );
            for j in 0..o {
                g_s[b * o + j] = r1[j] + r2[j];
            }
            for j in 0..a {
                g_a[b * a + j] = r1[o + j] + r2[o + j];
            }
        }
    }
    let mut d_head = vec![T::zero(); rows * 2 * a];
    let mut ds = vec![T::zero(); rows * o];
    let mut scratch = vec![T::zero(); a];
    let mut d_pen = vec![T::zero(); a];
    let mut actor_step = |t: usize, g_s: &mut [T], g_a: &[T], g_theta: &mut [T], grad: &mut [T]| {
        // a_t and log π_t back to the head, then through the actor to θ and to s_t.
        let eps = &noise.eps[t * rows * a..(t + 1) * rows * a];
        for b in 0..rows {
            let counts = alive[t][b] && (t < h || set.terminal_value);
            let g_logp = if counts {
                -set.alpha * w * disc[t]
            } else {
                T::zero()
            };
            squash_row(
                &heads[t][b * 2 * a..(b + 1) * 2 * a],
                &eps[b * a..(b + 1) * a],
                sq,
                &mut scratch,
                Some((
                    &g_a[b * a..(b + 1) * a],
                    g_logp,
                    &mut d_head[b * 2 * a..(b + 1) * 2 * a],
                )),
            );
            if counts && set.mean_penalty > T::zero() {
                // ∂/∂μ of (1/B)·λ·max(0, |μ| − m)²; w = −1/B.
                d_pen.fill(T::zero());
                set.penalty(&heads[t][b * 2 * a..b * 2 * a + a], Some(&mut d_pen));
                for (o, v) in d_head[b * 2 * a..b * 2 * a + a].iter_mut().zip(&d_pen) {
                    *o -= w * *v;
                }
            }
        }
        engine::backward(
            &nets.actor,
            actor,
            &so,
            rows,
            &d_head,
            &[],
            Some(g_theta),
            Some(&mut ds),
            &mut ws.actor[t],
        );
        let mut k = T::one();
        if set.step_grad_norm > T::zero() {
            let norm = g_theta
                .iter()
                .map(|v| Real::to_f64(*v).powi(2))
                .sum::<f64>()
                .sqrt();
            if norm > Real::to_f64(set.step_grad_norm) {
                k = T::c(Real::to_f64(set.step_grad_norm) / norm);
            }
        }
        for (g, d) in grad.iter_mut().zip(g_theta.iter()) {
            *g += k * *d;
        }
        for (g, d) in g_s.iter_mut().zip(&ds) {
            *g += *d;
        }
    };
    actor_step(h, &mut g_s, &g_a, &mut g_theta, grad);
    let mut g_r = vec![T::zero(); rows];
    let mut g_obs = vec![T::zero(); rows * o];
    for t in (0..h).rev() {
        // g_s holds ∂loss/∂s_{t+1}; add the reward's own derivatives.
        let mut g_next = std::mem::take(&mut g_s);
        let mut g_a_r = vec![T::zero(); rows * a];
        let mut g_s_r = vec![T::zero(); rows * o];
        for b in 0..rows {
            let c = w * disc[t];
            g_r[b] = if counted[t][b] && learned {
                c
            } else {
                T::zero()
            };
            if !counted[t][b] {
                g_next[b * o..(b + 1) * o]
                    .iter_mut()
                    .for_each(|v| *v = T::zero());
                continue;
            }
            if learned {
                continue;
            }
            task::reward_vjp(
                set.task,
                &states[t][b * o..(b + 1) * o],
                &acts[t][b * a..(b + 1) * a],
                &states[t + 1][b * o..(b + 1) * o],
                Some(RewardGrad {
                    w: c,
                    obs: &mut g_s_r[b * o..(b + 1) * o],
                    act: &mut g_a_r[b * a..(b + 1) * a],
                    next: &mut g_next[b * o..(b + 1) * o],
                }),
            );
        }
        let mut g_act = vec![T::zero(); rows * a];
        dynamics.backward(t, rows, &g_next, &g_r, &mut g_obs, &mut g_act);
        let mut gs: Vec<T> = g_obs.iter().zip(&g_s_r).map(|(x, y)| *x + *y).collect();
        let ga: Vec<T> = g_act.iter().zip(&g_a_r).map(|(x, y)| *x + *y).collect();
        actor_step(t, &mut gs, &ga, &mut g_theta, grad);
        g_s = gs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Activation;
    use crate::env::EnvId;
    use crate::policy::sac::{actor_loss, init_params, SacConfig, SacWorkspace};

    fn rand_vec(n: usize, seed: u64, scale: f64) -> Vec<f64> {
        let mut g = crate::rng::Philox::new(seed, 98, 0);
        (0..n).map(|_| g.normal() as f64 * scale).collect()
    }

    fn to64(v: Vec<f32>) -> Vec<f64> {
        v.into_iter().map(|x| x as f64).collect()
    }

    /// Small actor, critics and a three-member model for `o` observations, one action.
    struct Setup {
        nets: Nets,
        sq: Squash<f64>,
        actor: Vec<f64>,
        critic: Vec<f64>,
        shape: EnsembleShape,
        model: Vec<f64>,
        mean: Vec<f64>,
        std: Vec<f64>,
    }

    fn setup(o: usize, learn_reward: bool) -> Setup {
        let cfg = SacConfig {
            hidden: 7,
            num_layers: 2,
            activation: Activation::Tanh,
            ..SacConfig::default()
        };
        let nets = Nets::new(o, 1, &cfg);
        let mut actor = to64(init_params(&nets.actor, 3, 0));
        // A larger log σ so that the policy noise matters.
        let head = *nets.actor.layout().layers.last().unwrap();
        actor[head.bias + 1] = -0.5;
        let critic = to64(init_params(&nets.critic, 3, 1));
        let shape = EnsembleShape {
            ensemble: 3,
            in_dim: o + 1,
            out_dim: o + usize::from(learn_reward),
            hidden: 6,
            num_layers: 2,
            activation: Activation::Silu,
            probabilistic: true,
        };
        let mut model = to64(engine::init_params(&shape, 5));
        // Log-variances near −2 (σ ≈ 0.37): the noise path carries gradient.
        let lay = shape.layout();
        for v in &mut model[lay.max_logvar..lay.max_logvar + shape.out_dim] {
            *v = -1.0;
        }
        Setup {
            nets,
            sq: Squash::from_bounds(&[-2.0], &[2.0]).cast::<f64>(),
            actor,
            critic,
            mean: rand_vec(o + 1, 7, 0.2),
            std: rand_vec(o + 1, 8, 0.3)
                .iter()
                .map(|v| 1.0 + v.abs())
                .collect(),
            shape,
            model,
        }
    }

    fn loss(
        s: &Setup,
        actor: &[f64],
        set: PathSettings<f64>,
        start: &[f64],
        noise: &PathNoise<f64>,
        grad: Option<&mut [f64]>,
    ) -> PathReport<f64> {
        let mut dynamics = ModelPath::new(
            s.shape,
            &s.model,
            &s.mean,
            &s.std,
            s.nets.obs_dim,
            s.shape.out_dim > s.nets.obs_dim,
            &noise.member,
            &noise.xi,
        );
        path_loss(
            &s.nets,
            actor,
            &s.critic,
            &s.sq,
            &mut dynamics,
            set,
            start,
            noise,
            grad,
            &mut PathWorkspace::default(),
        )
    }

    /// Worst relative error of `grad` against central differences of `f` over every entry.
    fn worst_error(params: &[f64], grad: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> f64 {
        let mut p = params.to_vec();
        let mut worst = 0.0f64;
        for i in 0..p.len() {
            let x = p[i];
            p[i] = x + h;
            let up = f(&p);
            p[i] = x - h;
            let dn = f(&p);
            p[i] = x;
            let fd = (up - dn) / (2.0 * h);
            worst = worst.max((fd - grad[i]).abs() / (1e-4 + fd.abs().max(grad[i].abs())));
        }
        worst
    }

    fn pendulum_starts(rows: usize) -> Vec<f64> {
        let th = rand_vec(rows, 11, 1.5);
        let td = rand_vec(rows, 12, 1.0);
        (0..rows)
            .flat_map(|b| [th[b].cos(), th[b].sin(), td[b]])
            .collect()
    }

    #[test]
    fn pendulum_path_gradient_should_match_central_differences() {
        let s = setup(3, false);
        let (rows, h) = (5, 3);
        let noise = PathNoise::draw(4, 0, h, rows, 1, 3, 3).cast::<f64>();
        let set = PathSettings::plain(0.95, 0.3, EnvId::Pendulum.code(), true);
        let start = pendulum_starts(rows);
        let mut g = vec![0.0; s.actor.len()];
        let rep = loss(&s, &s.actor, set, &start, &noise, Some(&mut g));
        assert!(rep.loss.is_finite() && rep.alive == 1.0);
        assert!(rep.reward_mean < 0.0, "pendulum rewards are costs");
        assert!(g.iter().any(|v| v.abs() > 1e-6));
        let err = worst_error(&s.actor, &g, 1e-6, |p| {
            loss(&s, p, set, &start, &noise, None).loss
        });
        assert!(err < 1e-5, "path gradient: worst relative error {err}");
    }

    /// The mean penalty is part of the objective: ∂(loss + penalty)/∂θ against central
    /// differences, with a limit that most rows' means exceed, with and without the critics
    /// at the horizon (whose step's mean counts only with them).
    #[test]
    fn mean_penalty_gradient_should_match_central_differences() {
        let s = setup(3, false);
        let (rows, h) = (5, 3);
        let noise = PathNoise::draw(4, 0, h, rows, 1, 3, 3).cast::<f64>();
        let start = pendulum_starts(rows);
        for terminal_value in [true, false] {
            let plain = PathSettings::plain(0.95, 0.3, EnvId::Pendulum.code(), terminal_value);
            let set = PathSettings {
                mean_limit: 0.05,
                mean_penalty: 0.7,
                ..plain
            };
            let mut g = vec![0.0; s.actor.len()];
            let rep = loss(&s, &s.actor, set, &start, &noise, Some(&mut g));
            let mut g0 = vec![0.0; s.actor.len()];
            let rep0 = loss(&s, &s.actor, plain, &start, &noise, Some(&mut g0));
            assert!(rep.penalty > 1e-3 && rep0.penalty == 0.0);
            assert_eq!(
                rep.loss, rep0.loss,
                "the penalty is reported apart from the loss"
            );
            assert!(g.iter().zip(&g0).any(|(a, b)| (a - b).abs() > 1e-4));
            let err = worst_error(&s.actor, &g, 1e-6, |p| {
                let r = loss(&s, p, set, &start, &noise, None);
                r.loss + r.penalty
            });
            assert!(err < 1e-5, "with the penalty: worst relative error {err}");
        }
    }

    /// Each step's contribution to ∂loss/∂θ clipped to a norm: a limit no step reaches
    /// changes nothing; at H = 0 the gradient is the one step's, scaled to the limit; with a
    /// limit below every step's norm each of the H + 1 steps is scaled to it, so the result
    /// is homogeneous in the limit and its norm is at most (H + 1)·limit.
    #[test]
    fn step_clip_should_bound_each_steps_contribution() {
        let s = setup(3, false);
        let rows = 5;
        let start = pendulum_starts(rows);
        let grad = |h: usize, clip: f64| {
            let noise = PathNoise::draw(4, 0, h, rows, 1, 3, 3).cast::<f64>();
            let set = PathSettings {
                step_grad_norm: clip,
                ..PathSettings::plain(0.95, 0.3, EnvId::Pendulum.code(), true)
            };
            let mut g = vec![0.0; s.actor.len()];
            loss(&s, &s.actor, set, &start, &noise, Some(&mut g));
            g
        };
        let norm = |g: &[f64]| g.iter().map(|v| v * v).sum::<f64>().sqrt();
        let h = 3;
        let free = grad(h, 0.0);
        assert_eq!(grad(h, 1e12), free);
        let g0 = norm(&grad(0, 0.0));
        assert!(g0 > 1e-3);
        assert!((norm(&grad(0, 0.5 * g0)) - 0.5 * g0).abs() < 1e-12 * g0);
        let tiny = 1e-6 * norm(&free);
        let (a, b) = (grad(h, tiny), grad(h, 2.0 * tiny));
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| (2.0 * x - y).abs() <= 1e-9 * y.abs().max(tiny)));
        assert!(norm(&a) <= (h + 1) as f64 * tiny * (1.0 + 1e-12));
        // Not the direction of the unclipped sum: the steps now count alike.
        let cos = a.iter().zip(&free).map(|(x, y)| x * y).sum::<f64>() / (norm(&a) * norm(&free));
        assert!(cos < 1.0 - 1e-6, "cosine {cos}");
    }

    /// Learned rewards and termination inside the horizon: the cart-pole starts near the
    /// track's edge, so some rows stop before H, and the stopped rows' later steps must not
    /// contribute (finite differences see them exactly as the masks do).
    #[test]
    fn learned_reward_path_with_termination_should_match_central_differences() {
        let mut s = setup(4, true);
        // Small steps (a tenth of the head, σ ≈ 0.08), so that only the rows started at the
        // edge terminate.
        let lay = s.shape.layout();
        let head = *lay.layers.last().unwrap();
        let n = s.shape.ensemble * head.fan_in * head.fan_out;
        s.model[head.weight..head.weight + n]
            .iter_mut()
            .for_each(|w| *w *= 0.1);
        for v in &mut s.model[lay.max_logvar..lay.max_logvar + s.shape.out_dim] {
            *v = -5.0;
        }
        let (rows, h) = (8, 4);
        let noise = PathNoise::draw(6, 1, h, rows, 1, 5, 3).cast::<f64>();
        let set = PathSettings::plain(0.9, 0.2, EnvId::CartPole.code(), true);
        let r = rand_vec(rows * 4, 13, 0.02);
        let start: Vec<f64> = (0..rows * 4)
            .map(|i| match (i / 4 % 2, i % 4) {
                (0, 0) => 2.37 + r[i],
                _ => r[i],
            })
            .collect();
        let mut g = vec![0.0; s.actor.len()];
        let rep = loss(&s, &s.actor, set, &start, &noise, Some(&mut g));
        assert!(
            rep.alive > 0.0 && rep.alive < 1.0,
            "the test needs rows that terminate and rows that do not (alive {})",
            rep.alive
        );
        let err = worst_error(&s.actor, &g, 1e-6, |p| {
            loss(&s, p, set, &start, &noise, None).loss
        });
        assert!(err < 1e-5, "path gradient: worst relative error {err}");
    }

    /// ∂loss/∂θ through `S`'s true dynamics against central differences of step `h_fd`
    /// (H = `h`, 6 rows from `start`); returns the report.
    fn check_true_path<S: TrueStep<f64>>(
        task: EnvId,
        start: &[f64],
        h: usize,
        h_fd: f64,
    ) -> PathReport<f64> {
        let s = setup(S::OBS, false);
        let rows = start.len() / S::OBS;
        let noise = PathNoise::draw(9, 2, h, rows, 1, S::OBS, 1).cast::<f64>();
        let set = PathSettings::plain(0.97, 0.1, task.code(), true);
        let run = |p: &[f64], grad: Option<&mut [f64]>| {
            path_loss(
                &s.nets,
                p,
                &s.critic,
                &s.sq,
                &mut TrueDynamics::<f64, S>::new(),
                set,
                start,
                &noise,
                grad,
                &mut PathWorkspace::default(),
            )
        };
        let mut g = vec![0.0; s.actor.len()];
        let rep = run(&s.actor, Some(&mut g));
        let err = worst_error(&s.actor, &g, h_fd, |p| run(p, None).loss);
        assert!(
            err < 1e-5,
            "{}: true-dynamics path gradient: worst relative error {err}",
            task.name()
        );
        rep
    }

    /// The hand-derived pendulum Jacobian, through a whole path objective; its step agrees
    /// with the environment's own.
    #[test]
    fn true_pendulum_path_gradient_should_match_central_differences() {
        let start = pendulum_starts(6);
        // A step of 1e-5: the loss sums ~30 units of cost, so 1e-6 leaves ~1e-9 of
        // cancellation noise per difference, above the tolerance on the small entries.
        check_true_path::<PendulumStep>(EnvId::Pendulum, &start, 5, 1e-5);
        let mut next = vec![0.0; 3];
        PendulumStep::step(&start[..3], 0.7, &mut next);
        let th = start[1].atan2(start[0]);
        let mut state = [th, start[2]];
        crate::env::pendulum::step(&mut state, &[0.7]);
        assert!((next[0] - state[0].cos()).abs() < 1e-6 && (next[2] - state[1]).abs() < 1e-6);
    }

    /// The hand-derived cart-pole Jacobian, through a whole path objective with
    /// termination (rows started near the edge stop inside the horizon); its step agrees
    /// with the environment's own.
    #[test]
    fn true_cartpole_path_gradient_should_match_central_differences() {
        let r = rand_vec(6 * 4, 21, 0.3);
        let start: Vec<f64> = (0..6 * 4)
            .map(|i| match (i / 4 % 3, i % 4) {
                (0, 0) => 2.38,
                (_, 2) => r[i] * 0.2,
                _ => r[i],
            })
            .collect();
        let rep = check_true_path::<CartPoleStep>(EnvId::CartPole, &start, 6, 1e-6);
        assert!(rep.alive > 0.0 && rep.alive < 1.0, "alive {}", rep.alive);
        let mut next = vec![0.0; 4];
        CartPoleStep::step(&start[4..8], 0.3, &mut next);
        let mut state: Vec<f64> = start[4..8].to_vec();
        crate::env::cartpole::step(&mut state, &[0.3]);
        for (x, y) in next.iter().zip(&state) {
            assert!((x - y).abs() < 1e-6, "{next:?} vs {state:?}");
        }
    }

    /// The hand-derived mountain-car Jacobian, through a whole path objective whose rows hit
    /// the left wall, the speed limit and the goal (termination) inside the horizon, with
    /// actions inside and outside the force range; its step equals the environment's own
    /// (which rounds through float32 as NumPy does, hence the tolerance).
    #[test]
    fn true_mountain_car_path_gradient_should_match_central_differences() {
        let start = [
            -0.5, 0.0, // the valley
            -1.15, -0.06, // rolling into the left wall
            0.40, 0.068, // a step from the goal, near the speed limit
            0.2, -0.03, // descending
            -0.9, 0.01, 0.0, 0.0,
        ];
        // A step of 1e-5: the goal's reward of 100 in the loss leaves cancellation noise that
        // grows as 1/step (2e-4 relative at 1e-7, 2e-5 at 1e-6).
        let rep = check_true_path::<MountainCarStep>(EnvId::MountainCar, &start, 6, 1e-5);
        assert!(rep.alive > 0.0 && rep.alive < 1.0, "alive {}", rep.alive);
        for (row, a) in [(0, 0.4f32), (1, -0.8), (2, 1.7), (3, -0.2)] {
            let mut next = vec![0.0; 2];
            MountainCarStep::step(&start[2 * row..2 * row + 2], f64::from(a), &mut next);
            let mut state = start[2 * row..2 * row + 2].to_vec();
            crate::env::mountain_car::step(
                &mut state,
                crate::env::mountain_car::StateWidth::F64,
                &[a],
            );
            for (x, y) in next.iter().zip(&state) {
                assert!((x - y).abs() < 1e-7, "row {row}: {next:?} vs {state:?}");
            }
        }
        // Where the wall binds, the step carries no gradient to the speed.
        let mut g = [0.0; 2];
        MountainCarStep::vjp(&[-1.19, -0.05], 0.0, &[0.0, 1.0], &mut g);
        assert_eq!(g, [0.0, 0.0]);
    }

    #[test]
    fn horizon_zero_should_be_sacs_actor_loss() {
        let s = setup(3, false);
        let rows = 6;
        let noise = PathNoise::draw(2, 3, 0, rows, 1, 3, 3).cast::<f64>();
        let start = pendulum_starts(rows);
        let alpha = 0.4;
        let set = PathSettings::plain(0.99, alpha, EnvId::Pendulum.code(), true);
        let mut g = vec![0.0; s.actor.len()];
        let rep = loss(&s, &s.actor, set, &start, &noise, Some(&mut g));
        let mut g_sac = vec![0.0; s.actor.len()];
        let sac = actor_loss(
            &s.nets,
            alpha,
            &s.actor,
            &s.critic,
            &s.sq,
            &start,
            rows,
            &noise.eps,
            Some(&mut g_sac),
            &mut SacWorkspace::default(),
        );
        assert!(
            (rep.loss - sac.loss).abs() < 1e-12,
            "{} vs {}",
            rep.loss,
            sac.loss
        );
        assert!((rep.logp_mean - sac.logp_mean).abs() < 1e-12);
        for (x, y) in g.iter().zip(&g_sac) {
            assert!((x - y).abs() < 1e-12, "{x} vs {y}");
        }
    }
}
