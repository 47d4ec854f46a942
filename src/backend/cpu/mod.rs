//! The CPU backend: plain Rust + rayon. It is the specification every device backend is
//! checked against. Its numerics are generic over [`Real`] so that gradient checks run the
//! very same code in f64.
pub mod cem;
pub mod ensemble;
pub mod mppi;
pub mod optim;
pub mod rollout;
pub mod sac;

use super::{
    check, AdamParams, Backend, BranchParams, EliteParams, EnsembleShape, InitParams, LossConfig,
    MppiParams, PathParams, Precision, RolloutParams, SacParams, SampleParams, TerminalValue,
    UpdateParams,
};
use crate::Result;
use std::sync::Mutex;

/// Elements per parallel block of the passes over a parameter vector (Adam, weight decay,
/// Polyak, finiteness scans): large enough that rayon's overhead is
/// negligible, small enough that a one-member network's vectors still split over the cores.
pub(crate) const PAR_BLOCK: usize = 1 << 14;

/// The float types the specification runs in: f32 (production) and f64 (gradient checks).
pub trait Real:
    num_traits::Float
    + Send
    + Sync
    + 'static
    + Default
    + std::fmt::Debug
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
{
    fn c(x: f64) -> Self;
    fn to_f64(self) -> f64;
    /// exp, vectorisable in f32 (a branch-free polynomial), exact libm in f64.
    fn exp_fast(self) -> Self;
    /// ln(1 + x) for x ≥ 0, vectorisable in f32, libm in f64.
    fn ln_1p_fast(self) -> Self;
    /// An inference layer `dst[m×n] = act(src[m×k]·W + b)` through a faster kernel, if this
    /// type has one here: f32 on AVX-512 or AVX2 uses the fused kernel of [`crate::dense`].
    /// Returns false (nothing written) otherwise, and the caller runs the plain GEMM.
    #[allow(clippy::too_many_arguments)]
    fn dense_layer(
        _dst: &mut [Self],
        _src: &[Self],
        _m: usize,
        _w: &[Self],
        _k: usize,
        _n: usize,
        _bias: &[Self],
        _act: Option<crate::backend::Activation>,
    ) -> bool {
        false
    }
    /// This slice as f32, when `Self` is f32 (the fused kernels are f32-only).
    fn f32_slice(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn f32_slice_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

impl Real for f64 {
    #[inline(always)]
    fn c(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp_fast(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn ln_1p_fast(self) -> Self {
        self.ln_1p()
    }
}

impl Real for f32 {
    #[inline(always)]
    fn c(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp_fast(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn ln_1p_fast(self) -> Self {
        ln_1p_f32(self)
    }
    fn dense_layer(
        dst: &mut [f32],
        src: &[f32],
        m: usize,
        w: &[f32],
        k: usize,
        n: usize,
        bias: &[f32],
        act: Option<crate::backend::Activation>,
    ) -> bool {
        crate::dense::layer_unpacked(dst, src, m, w, k, n, bias, act)
    }
    fn f32_slice(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    fn f32_slice_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }
}

pub use crate::fastmath::{exp_f32, ln_1p_f32, ln_f32};

/// Logistic σ(x) = 1/(1+e^{−x}).
#[inline(always)]
pub fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp_fast())
}

/// softplus(x) = ln(1+eˣ), computed as max(x,0) + ln(1+e^{−|x|}) so it never overflows.
#[inline(always)]
pub fn softplus<T: Real>(x: T) -> T {
    x.max(T::zero()) + (-x.abs()).exp_fast().ln_1p_fast()
}

/// The CPU backend. Scratch memory is kept between calls (no allocation per planning step
/// once warm), behind a mutex so the backend can be shared.
#[derive(Default)]
pub struct CpuBackend {
    ws: Mutex<ensemble::Workspace<f32>>,
    rollout_ws: Mutex<rollout::RolloutWorkspace>,
    /// Planning rollouts multiply in bf16 with f32 sums ([`crate::bf16`]); training and
    /// `ensemble_forward` stay f32.
    bf16_planning: bool,
}

impl CpuBackend {
    /// `rollout`, closed by `value` when given (checked arguments, shared workspace).
    #[allow(clippy::too_many_arguments)]
    fn rollout_valued(
        &self,
        p: &RolloutParams,
        shape: &EnsembleShape,
        params: &[f32],
        norm: &[f32],
        start: &[f32],
        actions: &[f32],
        value: Option<&TerminalValue>,
        returns: &mut [f32],
    ) -> Result<()> {
        let lens = [
            params.len(),
            norm.len(),
            start.len(),
            actions.len(),
            returns.len(),
        ];
        check::rollout(p, shape, lens)?;
        let i = shape.in_dim;
        let mut ws = self.rollout_ws.lock().unwrap_or_else(|p| p.into_inner());
        let (m, s) = (&norm[..i], &norm[i..2 * i]);
        rollout::rollout(
            p,
            shape,
            params,
            m,
            s,
            start,
            actions,
            returns,
            &mut ws,
            self.bf16_planning,
            value,
        );
        Ok(())
    }

    pub fn new() -> Self {
        Self::default()
    }

    /// Runs a training call on the shared ensemble workspace with the loss's precision:
    /// the workspace serves the other ensemble ops too, so bf16 holds for this call only.
    fn training(&self, loss: &LossConfig, f: impl FnOnce(&mut ensemble::Workspace<f32>)) {
        let mut ws = self.ws.lock().unwrap_or_else(|p| p.into_inner());
        ws.bf16_training = loss.precision == Precision::Bf16;
        f(&mut ws);
        ws.bf16_training = false;
    }

    /// A CPU backend whose planning rollouts use bf16 products (on AMX tiles where the CPU
    /// has them, else bf16-rounded operands in the f32 GEMM).
    pub fn with_bf16_planning() -> Self {
        Self {
            bf16_planning: true,
            ..Self::default()
        }
    }

    pub fn bf16_planning(&self) -> bool {
        self.bf16_planning
    }

    /// How many times the planner's bf16 weights were packed (once per model update).
    pub fn bf16_packs(&self) -> usize {
        self.rollout_ws
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bf16_packs()
    }
}

/// The buffer lengths [`check::nll_backward`] validates, in its order.
fn nll_lens(
    params: &[f32],
    norm: &[f32],
    x: &[f32],
    target: &[f32],
    grad: &[f32],
    losses: &[f32],
) -> [usize; 6] {
    [params, norm, x, target, grad, losses].map(|b| b.len())
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn planning_precision(&self) -> crate::backend::Precision {
        if self.bf16_planning {
            crate::backend::Precision::Bf16
        } else {
            crate::backend::Precision::F32
        }
    }
    fn upload(&self, host: &[f32]) -> Result<Vec<f32>> {
        Ok(host.to_vec())
    }
    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }
    fn download_at(&self, buf: &Vec<f32>, offset: usize, len: usize) -> Result<Vec<f32>> {
        check::read_at(buf.len(), offset, len)?;
        Ok(buf[offset..offset + len].to_vec())
    }
    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn write(&self, buf: &mut Vec<f32>, host: &[f32]) -> Result<()> {
        check::write(buf.len(), host.len())?;
        buf.copy_from_slice(host);
        Ok(())
    }

    fn write_at(&self, buf: &mut Vec<f32>, offset: usize, host: &[f32]) -> Result<()> {
        check::write_at(buf.len(), offset, host.len())?;
        buf[offset..offset + host.len()].copy_from_slice(host);
        Ok(())
    }

    fn ensemble_forward(
        &self,
        shape: &EnsembleShape,
        params: &Vec<f32>,
        norm: &Vec<f32>,
        x: &Vec<f32>,
        rows: usize,
        mean: &mut Vec<f32>,
        logvar: &mut Vec<f32>,
    ) -> Result<()> {
        let lens = [params.len(), norm.len(), x.len(), mean.len(), logvar.len()];
        check::forward(shape, rows, lens)?;
        let i = shape.in_dim;
        let mut ws = self.ws.lock().unwrap_or_else(|p| p.into_inner());
        let (m, s) = (&norm[..i], &norm[i..2 * i]);
        ensemble::forward(shape, params, m, s, x, rows, mean, logvar, &mut ws);
        Ok(())
    }

    fn ensemble_nll_backward(
        &self,
        shape: &EnsembleShape,
        loss: &LossConfig,
        params: &Vec<f32>,
        norm: &Vec<f32>,
        x: &Vec<f32>,
        target: &Vec<f32>,
        rows: usize,
        grad: &mut Vec<f32>,
        losses: &mut Vec<f32>,
    ) -> Result<()> {
        check::nll_backward(
            shape,
            loss,
            rows,
            nll_lens(params, norm, x, target, grad, losses),
        )?;
        let i = shape.in_dim;
        let (m, s) = (&norm[..i], &norm[i..2 * i]);
        self.training(loss, |ws| {
            ensemble::nll_backward(shape, loss, params, m, s, x, target, rows, grad, losses, ws)
        });
        Ok(())
    }

    fn ensemble_nll_adam_step(
        &self,
        shape: &EnsembleShape,
        loss: &LossConfig,
        params: &mut Vec<f32>,
        norm: &Vec<f32>,
        x: &Vec<f32>,
        target: &Vec<f32>,
        rows: usize,
        grad: &mut Vec<f32>,
        losses: &mut Vec<f32>,
        adam: &AdamParams,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) -> Result<()> {
        check::nll_backward(
            shape,
            loss,
            rows,
            nll_lens(params, norm, x, target, grad, losses),
        )?;
        check::adam(adam, [params.len(), grad.len(), m.len(), v.len()])?;
        let total = shape.layout().total;
        if adam.len as usize != total {
            return Err(crate::Error::Shape(format!(
                "the fused training step updates all {total} parameters; Adam was given {}",
                adam.len
            )));
        }
        let i = shape.in_dim;
        let (nm, ns) = (&norm[..i], &norm[i..2 * i]);
        self.training(loss, |ws| {
            ensemble::nll_adam_step(
                shape,
                loss,
                &mut params[..total],
                nm,
                ns,
                x,
                target,
                rows,
                &mut grad[..total],
                losses,
                adam,
                &mut m[..total],
                &mut v[..total],
                ws,
            )
        });
        Ok(())
    }

    fn ensemble_vjp(
        &self,
        shape: &EnsembleShape,
        params: &Vec<f32>,
        norm: &Vec<f32>,
        x: &Vec<f32>,
        rows: usize,
        d_mean: &Vec<f32>,
        d_logvar: &Vec<f32>,
        grad: Option<&mut Vec<f32>>,
        dx: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let lens = [
            params.len(),
            norm.len(),
            x.len(),
            d_mean.len(),
            d_logvar.len(),
        ];
        let (gl, dl) = (grad.as_ref().map(|g| g.len()), dx.as_ref().map(|d| d.len()));
        check::vjp(shape, rows, lens, gl, dl)?;
        let (e, i, o) = (shape.ensemble, shape.in_dim, shape.out_dim);
        let total = shape.layout().total;
        let grad = grad.map(|g| &mut g[..total]);
        if rows == 0 {
            // The gradient of an empty sum.
            if let Some(g) = grad {
                g.iter_mut().for_each(|v| *v = 0.0);
            }
            return Ok(());
        }
        let mut ws = self.ws.lock().unwrap_or_else(|p| p.into_inner());
        let (m, s) = (&norm[..i], &norm[i..2 * i]);
        let mut mean = vec![0.0f32; e * rows * o];
        let lv_len = if shape.probabilistic { e * rows * o } else { 0 };
        let mut lv = vec![0.0f32; lv_len];
        ensemble::forward_cached(shape, params, m, s, x, rows, &mut mean, &mut lv, &mut ws);
        ensemble::backward(
            shape,
            params,
            s,
            rows,
            &d_mean[..e * rows * o],
            &d_logvar[..lv_len],
            grad,
            dx.map(|d| &mut d[..e * rows * i]),
            &mut ws,
        );
        Ok(())
    }

    fn cem_sample(
        &self,
        p: &SampleParams,
        mean: &Vec<f32>,
        var: &Vec<f32>,
        lower: &Vec<f32>,
        upper: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        check::sample(
            p,
            [mean.len(), var.len(), lower.len(), upper.len(), out.len()],
        )?;
        cem::sample(p, mean, var, lower, upper, out);
        Ok(())
    }

    fn cem_init(
        &self,
        p: &InitParams,
        lower: &Vec<f32>,
        upper: &Vec<f32>,
        prev: &Vec<f32>,
        mean: &mut Vec<f32>,
        var: &mut Vec<f32>,
    ) -> Result<()> {
        check::init(
            p,
            [lower.len(), upper.len(), prev.len(), mean.len(), var.len()],
        )?;
        cem::init(p, lower, upper, prev, mean, var);
        Ok(())
    }

    fn cem_update(
        &self,
        p: &UpdateParams,
        population: &Vec<f32>,
        returns: &Vec<f32>,
        mean: &mut Vec<f32>,
        var: &mut Vec<f32>,
    ) -> Result<()> {
        check::update(p, [population.len(), returns.len(), mean.len(), var.len()])?;
        cem::update(p, population, returns, mean, var);
        Ok(())
    }

    fn cem_select(
        &self,
        p: &EliteParams,
        population: &Vec<f32>,
        returns: &Vec<f32>,
        elites: &mut Vec<f32>,
        elite_returns: &mut Vec<f32>,
    ) -> Result<()> {
        check::select(
            p,
            [
                population.len(),
                returns.len(),
                elites.len(),
                elite_returns.len(),
            ],
        )?;
        cem::select(p, population, returns, elites, elite_returns);
        Ok(())
    }

    fn cem_keep(
        &self,
        p: &EliteParams,
        elites: &Vec<f32>,
        mean: &Vec<f32>,
        population: &mut Vec<f32>,
    ) -> Result<()> {
        check::keep(p, [elites.len(), mean.len(), population.len()])?;
        cem::keep(p, elites, mean, population);
        Ok(())
    }

    fn mppi_sample(
        &self,
        p: &MppiParams,
        mean: &Vec<f32>,
        chol: &Vec<f32>,
        lower: &Vec<f32>,
        upper: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        check::mppi_sample(
            p,
            [mean.len(), chol.len(), lower.len(), upper.len(), out.len()],
        )?;
        mppi::sample(p, mean, chol, lower, upper, out);
        Ok(())
    }

    fn mppi_update(
        &self,
        p: &MppiParams,
        population: &Vec<f32>,
        returns: &Vec<f32>,
        precision: &Vec<f32>,
        mean: &mut Vec<f32>,
    ) -> Result<()> {
        check::mppi_update(
            p,
            [population.len(), returns.len(), precision.len(), mean.len()],
        )?;
        mppi::update(p, population, returns, precision, mean);
        Ok(())
    }

    fn rollout(
        &self,
        p: &RolloutParams,
        shape: &EnsembleShape,
        params: &Vec<f32>,
        norm: &Vec<f32>,
        start: &Vec<f32>,
        actions: &Vec<f32>,
        returns: &mut Vec<f32>,
    ) -> Result<()> {
        self.rollout_valued(p, shape, params, norm, start, actions, None, returns)
    }

    fn rollout_with_value(
        &self,
        p: &RolloutParams,
        shape: &EnsembleShape,
        params: &Vec<f32>,
        norm: &Vec<f32>,
        start: &Vec<f32>,
        actions: &Vec<f32>,
        value: &TerminalValue,
        returns: &mut Vec<f32>,
    ) -> Result<()> {
        super::value::check(value, p.obs_dim)?;
        self.rollout_valued(p, shape, params, norm, start, actions, Some(value), returns)
    }

    fn rollout_true(
        &self,
        p: &RolloutParams,
        start: &Vec<f32>,
        actions: &Vec<f32>,
        returns: &mut Vec<f32>,
    ) -> Result<()> {
        check::rollout_true(p, [start.len(), actions.len(), returns.len()])?;
        rollout::rollout_true(p, start, actions, returns);
        Ok(())
    }

    fn sac_squash(
        &self,
        p: &SacParams,
        head: &Vec<f32>,
        eps: &Vec<f32>,
        obs: &Vec<f32>,
        sb: &Vec<f32>,
        act_in: &Vec<f32>,
        logp: &mut Vec<f32>,
        x: &mut Vec<f32>,
    ) -> Result<()> {
        let lens = [
            head.len(),
            eps.len(),
            obs.len(),
            sb.len(),
            act_in.len(),
            logp.len(),
            x.len(),
        ];
        check::sac_squash(p, lens)?;
        sac::squash(p, head, eps, obs, sb, act_in, logp, x);
        Ok(())
    }

    fn sac_critic_grad(
        &self,
        p: &SacParams,
        q_next: &Vec<f32>,
        logp_next: &Vec<f32>,
        reward: &Vec<f32>,
        mask: &Vec<f32>,
        log_alpha: &Vec<f32>,
        q: &Vec<f32>,
        dq: &mut Vec<f32>,
        stats: &mut Vec<f32>,
    ) -> Result<()> {
        let lens = [
            q_next.len(),
            logp_next.len(),
            reward.len(),
            mask.len(),
            log_alpha.len(),
            q.len(),
            dq.len(),
            stats.len(),
        ];
        check::sac_critic_grad(p, lens)?;
        sac::critic_grad(
            p,
            q_next,
            logp_next,
            reward,
            mask,
            log_alpha[0],
            q,
            dq,
            stats,
        );
        Ok(())
    }

    fn sac_actor_grad(
        &self,
        p: &SacParams,
        q: &Vec<f32>,
        logp: &Vec<f32>,
        log_alpha: &Vec<f32>,
        dq: &mut Vec<f32>,
        alpha_grad: &mut Vec<f32>,
        stats: &mut Vec<f32>,
    ) -> Result<()> {
        let lens = [
            q.len(),
            logp.len(),
            log_alpha.len(),
            dq.len(),
            alpha_grad.len(),
            stats.len(),
        ];
        check::sac_actor_grad(p, lens)?;
        sac::actor_grad(p, q, logp, log_alpha[0], dq, alpha_grad, stats);
        Ok(())
    }

    fn sac_squash_backward(
        &self,
        p: &SacParams,
        head: &Vec<f32>,
        eps: &Vec<f32>,
        sb: &Vec<f32>,
        dx: &Vec<f32>,
        log_alpha: &Vec<f32>,
        d_head: &mut Vec<f32>,
    ) -> Result<()> {
        let lens = [
            head.len(),
            eps.len(),
            sb.len(),
            dx.len(),
            log_alpha.len(),
            d_head.len(),
        ];
        check::sac_squash_backward(p, lens)?;
        sac::squash_backward(p, head, eps, sb, dx, log_alpha[0], d_head);
        Ok(())
    }

    fn sac_noise(
        &self,
        p: &SacParams,
        eps_next: &mut Vec<f32>,
        eps_pi: &mut Vec<f32>,
    ) -> Result<()> {
        check::sac_noise(p, [eps_next.len(), eps_pi.len()])?;
        sac::noise(p, eps_next, eps_pi);
        Ok(())
    }

    fn sac_minibatch(
        &self,
        p: &SacParams,
        ring: &Vec<f32>,
        obs: &mut Vec<f32>,
        act: &mut Vec<f32>,
        reward: &mut Vec<f32>,
        next_obs: &mut Vec<f32>,
        mask: &mut Vec<f32>,
    ) -> Result<()> {
        let lens = [
            ring.len(),
            obs.len(),
            act.len(),
            reward.len(),
            next_obs.len(),
            mask.len(),
        ];
        check::sac_minibatch(p, lens)?;
        sac::minibatch(p, ring, obs, act, reward, next_obs, mask);
        Ok(())
    }

    fn branch_route(
        &self,
        p: &BranchParams,
        x: &Vec<f32>,
        route: &mut Vec<f32>,
        xg: &mut Vec<f32>,
    ) -> Result<()> {
        check::branch_route(p, [x.len(), route.len(), xg.len()])?;
        rollout::branch_route(p, x, route, xg);
        Ok(())
    }

    fn branch_step(
        &self,
        p: &BranchParams,
        route: &Vec<f32>,
        mean: &Vec<f32>,
        logvar: &Vec<f32>,
        x: &Vec<f32>,
        obs: &mut Vec<f32>,
        stopped: &mut Vec<f32>,
        count: &mut Vec<f32>,
        ring: &mut Vec<f32>,
    ) -> Result<()> {
        let lens = [
            route.len(),
            mean.len(),
            logvar.len(),
            x.len(),
            obs.len(),
            stopped.len(),
            count.len(),
            ring.len(),
        ];
        check::branch_step(p, lens)?;
        rollout::branch_step(p, route, mean, logvar, x, obs, stopped, count, ring);
        Ok(())
    }

    fn path_squash(
        &self,
        p: &PathParams,
        head: &Vec<f32>,
        obs: &Vec<f32>,
        noise: &Vec<f32>,
        tape: &mut Vec<f32>,
        x: &mut Vec<f32>,
    ) -> Result<()> {
        let lens = [head.len(), obs.len(), noise.len(), tape.len(), x.len()];
        check::path_squash(p, lens)?;
        check::path_tables(p, noise)?;
        sac::path_squash(p, head, obs, noise, tape, x);
        Ok(())
    }

    fn path_step(
        &self,
        p: &PathParams,
        mean: &Vec<f32>,
        logvar: &Vec<f32>,
        noise: &Vec<f32>,
        tape: &mut Vec<f32>,
        state: &mut Vec<f32>,
    ) -> Result<()> {
        let lens = [
            mean.len(),
            logvar.len(),
            noise.len(),
            tape.len(),
            state.len(),
        ];
        check::path_step(p, lens)?;
        check::path_tables(p, noise)?;
        rollout::path_step(p, mean, logvar, noise, tape, state);
        Ok(())
    }

    fn path_terminal(
        &self,
        p: &PathParams,
        q: &Vec<f32>,
        log_alpha: &Vec<f32>,
        tape: &mut Vec<f32>,
        dq: &mut Vec<f32>,
        alpha_grad: &mut Vec<f32>,
        report: &mut Vec<f32>,
        stats: &mut Vec<f32>,
    ) -> Result<()> {
        let lens = [
            q.len(),
            log_alpha.len(),
            tape.len(),
            dq.len(),
            alpha_grad.len(),
            report.len(),
            stats.len(),
        ];
        check::path_terminal(p, lens)?;
        sac::path_terminal(p, q, log_alpha[0], tape, dq, alpha_grad, report, stats);
        Ok(())
    }

    fn path_model_back(
        &self,
        p: &PathParams,
        noise: &Vec<f32>,
        tape: &Vec<f32>,
        back: &mut Vec<f32>,
        xg: &mut Vec<f32>,
        d_mean: &mut Vec<f32>,
        d_logvar: &mut Vec<f32>,
    ) -> Result<()> {
        let lens = [
            noise.len(),
            tape.len(),
            back.len(),
            xg.len(),
            d_mean.len(),
            d_logvar.len(),
        ];
        check::path_model_back(p, lens)?;
        check::path_tables(p, noise)?;
        rollout::path_model_back(p, noise, tape, back, xg, d_mean, d_logvar);
        Ok(())
    }

    fn path_actor_back(
        &self,
        p: &PathParams,
        noise: &Vec<f32>,
        tape: &Vec<f32>,
        dx: &Vec<f32>,
        back: &mut Vec<f32>,
        d_head: &mut Vec<f32>,
        state: &mut Vec<f32>,
    ) -> Result<()> {
        let lens = [
            noise.len(),
            tape.len(),
            dx.len(),
            back.len(),
            d_head.len(),
            state.len(),
        ];
        check::path_actor_back(p, lens)?;
        check::path_tables(p, noise)?;
        sac::path_actor_back(p, noise, tape, dx, back, d_head, state);
        Ok(())
    }

    fn path_accumulate(
        &self,
        p: &PathParams,
        g_step: &Vec<f32>,
        ds: &Vec<f32>,
        grad: &mut Vec<f32>,
        back: &mut Vec<f32>,
    ) -> Result<()> {
        let lens = [g_step.len(), ds.len(), grad.len(), back.len()];
        check::path_accumulate(p, lens)?;
        sac::path_accumulate(p, g_step, ds, grad, back);
        Ok(())
    }

    fn polyak(&self, p: &SacParams, target: &mut Vec<f32>, online: &Vec<f32>) -> Result<()> {
        check::polyak(p, [target.len(), online.len()])?;
        sac::polyak(p, target, online);
        Ok(())
    }

    fn adam_step(
        &self,
        p: &AdamParams,
        params: &mut Vec<f32>,
        grad: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) -> Result<()> {
        check::adam(p, [params.len(), grad.len(), m.len(), v.len()])?;
        let n = p.len as usize;
        optim::adam(p, &mut params[..n], &grad[..n], &mut m[..n], &mut v[..n]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softplus_should_not_overflow() {
        assert_eq!(softplus(1000.0f32), 1000.0);
        assert!(softplus(-1000.0f32) >= 0.0);
        assert!((softplus(0.0f64) - 2f64.ln()).abs() < 1e-15);
    }
}
