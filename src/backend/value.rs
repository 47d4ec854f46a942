//! A [`TerminalValue`] evaluated on a device: the composition the device backends'
//! `rollout_with_value` runs on the rollout's final states, from the dense-layer engine's
//! forward and SAC's squash (the same stages `policy::device::DeviceSac` uses):
//! actor forward → ā = scale·tanh(μ) + bias (`sac_squash` with ε = 0) → both critics at
//! [s, ā]. The CPU's specification is `policy::sac::CriticValue::values`.
//!
//! The networks are uploaded once per value (a planner keeps its `TerminalValue` across
//! control steps); the cache holds a clone of the value's `Arc`, so a new value is never
//! mistaken for the cached one.
use super::{Backend, EnsembleShape, SacParams, TerminalValue};
use crate::{Error, Result};
use std::sync::Arc;

/// The device copy of one terminal value and its scratch for `rows` rows.
pub(crate) struct DeviceValue<Buf> {
    key: TerminalValue,
    actor_shape: EnsembleShape,
    critic_shape: EnsembleShape,
    obs_dim: usize,
    act_dim: usize,
    actor: Buf,
    critic: Buf,
    squash: Buf,
    norm_obs: Buf,
    norm_critic: Buf,
    dummy: Buf,
    rows: usize,
    scratch: Option<Scratch<Buf>>,
    /// The rollout's per-row final states [rows, O], flags [rows] and returns [rows], which a
    /// device backend's rollout leaves here for the value.
    pub(crate) paths: Option<Paths<Buf>>,
}

pub(crate) struct Paths<Buf> {
    rows: usize,
    pub(crate) states: Buf,
    pub(crate) flags: Buf,
    pub(crate) returns: Buf,
}

struct Scratch<Buf> {
    head: Buf,
    eps: Buf,
    logp: Buf,
    x: Buf,
    q: Buf,
}

impl<Buf> DeviceValue<Buf> {
    /// The cached copy of `tv` in `slot`, uploaded if `slot` holds another value (or none).
    pub(crate) fn cached<'s, B: Backend<Buf = Buf>>(
        be: &B,
        slot: &'s mut Option<Self>,
        tv: &TerminalValue,
        obs_dim: usize,
    ) -> Result<&'s mut Self> {
        let same = slot
            .as_ref()
            .is_some_and(|d| Arc::ptr_eq(&d.key.value, &tv.value) && d.key.gamma == tv.gamma);
        if !same {
            *slot = Some(Self::new(be, tv, obs_dim)?);
        }
        Ok(slot.as_mut().expect("filled above"))
    }

    fn new<B: Backend<Buf = Buf>>(be: &B, tv: &TerminalValue, obs_dim: usize) -> Result<Self> {
        let Some(n) = tv.value.nets() else {
            return Err(Error::Unavailable(format!(
                "this terminal value is a host-side function without networks the {} \
                 backend could run; use --backend cpu",
                be.name()
            )));
        };
        let (o, a) = (n.obs_dim, n.act_dim);
        if o != obs_dim {
            return Err(Error::Shape(format!(
                "the terminal value takes {o} observation values, the rollout has {obs_dim}"
            )));
        }
        let shapes_fit = n.actor.in_dim == o
            && n.actor.out_dim == 2 * a
            && n.actor.ensemble == 1
            && n.critic.in_dim == o + a
            && n.critic.out_dim == 1
            && n.critic.ensemble == 2
            && n.actor_params.len() == n.actor.layout().total
            && n.critic_params.len() == n.critic.layout().total
            && n.squash.len() == 2 * a;
        if !shapes_fit {
            return Err(Error::Shape(
                "the terminal value's actor and critics do not fit together (actor obs → \
                 [μ, log σ], two critics on [obs, act])"
                    .into(),
            ));
        }
        let unit = |n: usize| {
            let mut v = vec![0.0f32; n];
            v.extend(std::iter::repeat_n(1.0f32, n));
            v
        };
        Ok(Self {
            key: tv.clone(),
            actor_shape: n.actor,
            critic_shape: n.critic,
            obs_dim: o,
            act_dim: a,
            actor: be.upload(n.actor_params)?,
            critic: be.upload(n.critic_params)?,
            squash: be.upload(&n.squash)?,
            norm_obs: be.upload(&unit(o))?,
            norm_critic: be.upload(&unit(o + a))?,
            dummy: be.zeros(1)?,
            rows: 0,
            scratch: None,
            paths: None,
        })
    }

    /// The per-row path buffers for `rows` rows (kept while the row count stays).
    pub(crate) fn paths<B: Backend<Buf = Buf>>(
        &mut self,
        be: &B,
        rows: usize,
    ) -> Result<&mut Paths<Buf>> {
        if self.paths.as_ref().is_none_or(|p| p.rows != rows) {
            self.paths = Some(Paths {
                rows,
                states: be.zeros((rows * self.obs_dim).max(1))?,
                flags: be.zeros(rows.max(1))?,
                returns: be.zeros(rows.max(1))?,
            });
        }
        Ok(self.paths.as_mut().expect("filled above"))
    }

    /// Both critics' values at (s, ā(s)) for the paths' final states [rows, O], into the
    /// buffer [`DeviceValue::closing`] returns: q [2, rows].
    pub(crate) fn q<B: Backend<Buf = Buf>>(&mut self, be: &B, rows: usize) -> Result<()> {
        let (o, a) = (self.obs_dim, self.act_dim);
        let states = match &self.paths {
            Some(p) if p.rows == rows => &p.states,
            _ => {
                return Err(Error::Invalid(
                    "the terminal value was asked for before the rollout left its states".into(),
                ))
            }
        };
        if self.scratch.is_none() || self.rows != rows {
            let z = |n: usize| be.zeros(n.max(1));
            self.scratch = Some(Scratch {
                head: z(rows * 2 * a)?,
                eps: z(rows * a)?,
                logp: z(rows)?,
                x: z(2 * rows * (o + a))?,
                q: z(2 * rows)?,
            });
            self.rows = rows;
        }
        let s = self.scratch.as_mut().expect("sized above");
        be.ensemble_forward(
            &self.actor_shape,
            &self.actor,
            &self.norm_obs,
            states,
            rows,
            &mut s.head,
            &mut self.dummy,
        )?;
        let p = SacParams {
            rows: rows as u32,
            obs_dim: o as u32,
            act_dim: a as u32,
            ..SacParams::default()
        };
        be.sac_squash(
            &p,
            &s.head,
            &s.eps,
            states,
            &self.squash,
            &self.dummy,
            &mut s.logp,
            &mut s.x,
        )?;
        be.ensemble_forward(
            &self.critic_shape,
            &self.critic,
            &self.norm_critic,
            &s.x,
            rows,
            &mut s.q,
            &mut self.dummy,
        )?;
        Ok(())
    }

    /// After [`DeviceValue::q`]: the critics' values and the paths they close.
    pub(crate) fn closing(&self) -> Result<(&Buf, &Paths<Buf>)> {
        match (&self.scratch, &self.paths) {
            (Some(s), Some(p)) => Ok((&s.q, p)),
            _ => Err(Error::Invalid(
                "the terminal value has not been evaluated on a rollout's paths".into(),
            )),
        }
    }
}

/// γ^H as the CPU's rollout forms it: a running product of f32 factors from 1.
pub(crate) fn discount(gamma: f32, steps: usize) -> f32 {
    (0..steps).fold(1.0f32, |d, _| d * gamma)
}

/// A terminal value for rollouts of `obs_dim`-wide states: its discount must lie in (0, 1]
/// and it must take states of that width (every backend checks, before any work).
pub(crate) fn check(tv: &TerminalValue, obs_dim: u32) -> Result<()> {
    if !(tv.gamma > 0.0 && tv.gamma <= 1.0) {
        return Err(crate::invalid!(
            "the terminal value's discount must be in (0, 1], got {}",
            tv.gamma
        ));
    }
    let o = tv.value.obs_dim();
    if o != obs_dim as usize {
        return Err(Error::Shape(format!(
            "the terminal value takes {o} observation values, the rollout has {obs_dim}"
        )));
    }
    Ok(())
}
