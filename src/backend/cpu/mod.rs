//! The CPU backend: plain Rust + rayon. It is the specification every device backend is
//! checked against. Its numerics are generic over [`Real`] so that gradient checks run the
//! very same code in f64.
pub mod cem;
pub mod ensemble;
pub mod optim;
pub mod rollout;

use super::{
    AdamParams, Backend, EnsembleShape, LossConfig, RolloutParams, SampleParams, UpdateParams,
};
use crate::Result;
use std::sync::Mutex;

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
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }
}

fn need(what: &str, got: usize, want: usize) -> Result<()> {
    if got < want {
        return Err(crate::Error::Shape(format!(
            "{what} holds {got} values, the operation needs {want}"
        )));
    }
    Ok(())
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn upload(&self, host: &[f32]) -> Result<Vec<f32>> {
        Ok(host.to_vec())
    }
    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }
    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn write(&self, buf: &mut Vec<f32>, host: &[f32]) -> Result<()> {
        if buf.len() != host.len() {
            return Err(crate::Error::Shape(format!(
                "buffer of {} values written with {}",
                buf.len(),
                host.len()
            )));
        }
        buf.copy_from_slice(host);
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
        let (e, i, o) = (shape.ensemble, shape.in_dim, shape.out_dim);
        need("params", params.len(), shape.layout().total)?;
        need("norm", norm.len(), 2 * i)?;
        need("x", x.len(), e * rows * i)?;
        need("mean", mean.len(), e * rows * o)?;
        if shape.probabilistic {
            need("logvar", logvar.len(), e * rows * o)?;
        }
        let mut ws = self.ws.lock().unwrap_or_else(|p| p.into_inner());
        ensemble::forward(
            shape,
            params,
            &norm[..i],
            &norm[i..2 * i],
            x,
            rows,
            mean,
            logvar,
            &mut ws,
        );
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
        let (e, i, o) = (shape.ensemble, shape.in_dim, shape.out_dim);
        let total = shape.layout().total;
        need("params", params.len(), total)?;
        need("grad", grad.len(), total)?;
        need("norm", norm.len(), 2 * i)?;
        need("x", x.len(), e * rows * i)?;
        need("target", target.len(), e * rows * o)?;
        need("losses", losses.len(), e)?;
        if loss.weight_decay.len() != shape.num_layers + 1 {
            return Err(crate::Error::Shape(format!(
                "{} weight-decay coefficients for {} linear layers",
                loss.weight_decay.len(),
                shape.num_layers + 1
            )));
        }
        let mut ws = self.ws.lock().unwrap_or_else(|p| p.into_inner());
        ensemble::nll_backward(
            shape,
            loss,
            params,
            &norm[..i],
            &norm[i..2 * i],
            x,
            target,
            rows,
            grad,
            losses,
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
        let len = p.len as usize;
        if p.act_dim == 0 || len % p.act_dim as usize != 0 {
            return Err(crate::Error::Shape(format!(
                "sample length {len} is not a whole number of actions of dimension {}",
                p.act_dim
            )));
        }
        need("mean", mean.len(), len)?;
        need("var", var.len(), len)?;
        need("lower bounds", lower.len(), p.act_dim as usize)?;
        need("upper bounds", upper.len(), p.act_dim as usize)?;
        need("population", out.len(), p.population as usize * len)?;
        cem::sample(p, mean, var, lower, upper, out);
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
        let len = p.len as usize;
        if p.num_elites == 0 || p.num_elites > p.population {
            return Err(crate::invalid!(
                "elite count {} must be in 1..={} (the population)",
                p.num_elites,
                p.population
            ));
        }
        need("population", population.len(), p.population as usize * len)?;
        need("returns", returns.len(), p.population as usize)?;
        need("mean", mean.len(), len)?;
        need("var", var.len(), len)?;
        cem::update(p, population, returns, mean, var);
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
        check_rollout(p)?;
        let (od, ad) = (p.obs_dim as usize, p.act_dim as usize);
        let want_out = od + p.learn_reward as usize;
        if shape.in_dim != od + ad || shape.out_dim != want_out {
            return Err(crate::Error::Shape(format!(
                "model maps {} inputs to {} outputs; the rollout needs obs {od} + act {ad}                  inputs and {want_out} outputs",
                shape.in_dim, shape.out_dim
            )));
        }
        if p.num_elites == 0
            || p.elites[..p.num_elites as usize]
                .iter()
                .any(|&m| m as usize >= shape.ensemble)
        {
            return Err(crate::invalid!(
                "elites {:?} are not members of a {}-member ensemble",
                &p.elites[..p.num_elites as usize],
                shape.ensemble
            ));
        }
        if p.particles == 0 {
            return Err(crate::invalid!("particles must be at least 1"));
        }
        need("params", params.len(), shape.layout().total)?;
        need("norm", norm.len(), 2 * shape.in_dim)?;
        need("start", start.len(), od)?;
        let (np, h) = (p.population as usize, p.horizon as usize);
        need("actions", actions.len(), np * h * ad)?;
        need("returns", returns.len(), np)?;
        let i = shape.in_dim;
        let mut ws = self.rollout_ws.lock().unwrap_or_else(|p| p.into_inner());
        rollout::rollout(
            p,
            shape,
            params,
            &norm[..i],
            &norm[i..2 * i],
            start,
            actions,
            returns,
            &mut ws,
        );
        Ok(())
    }

    fn rollout_true(
        &self,
        p: &RolloutParams,
        start: &Vec<f32>,
        actions: &Vec<f32>,
        returns: &mut Vec<f32>,
    ) -> Result<()> {
        check_rollout(p)?;
        let env = crate::env::EnvId::from_code(p.env).ok_or_else(|| {
            crate::invalid!(
                "task code {} has no native dynamics to plan with; use a learned model",
                p.env
            )
        })?;
        let spec = env.spec();
        if p.obs_dim as usize != spec.obs_dim || p.act_dim as usize != spec.act_dim {
            return Err(crate::Error::Shape(format!(
                "{} has obs {} and act {}, the rollout was given {} and {}",
                spec.name, spec.obs_dim, spec.act_dim, p.obs_dim, p.act_dim
            )));
        }
        let (np, h) = (p.population as usize, p.horizon as usize);
        need("start state", start.len(), spec.state_dim)?;
        need("actions", actions.len(), np * h * spec.act_dim)?;
        need("returns", returns.len(), np)?;
        rollout::rollout_true(p, start, actions, returns);
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
        let n = p.len as usize;
        need("params", params.len(), n)?;
        need("grad", grad.len(), n)?;
        need("adam m", m.len(), n)?;
        need("adam v", v.len(), n)?;
        optim::adam(p, &mut params[..n], &grad[..n], &mut m[..n], &mut v[..n]);
        Ok(())
    }
}

/// Checks shared by both rollouts.
fn check_rollout(p: &RolloutParams) -> Result<()> {
    if !crate::env::task::known(p.env) {
        return Err(crate::invalid!("unknown task code {}", p.env));
    }
    if p.horizon == 0 {
        return Err(crate::invalid!("horizon must be at least 1"));
    }
    if p.propagation > 2 {
        return Err(crate::invalid!(
            "unknown propagation code {}",
            p.propagation
        ));
    }
    if p.num_elites as usize > super::MAX_ELITES {
        return Err(crate::invalid!(
            "at most {} elites fit a rollout, got {}",
            super::MAX_ELITES,
            p.num_elites
        ));
    }
    Ok(())
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
