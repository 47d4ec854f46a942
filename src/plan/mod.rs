//! Shooting planners (random shooting, CEM, iCEM, MPPI) over action sequences, the
//! trajectory-sampling objectives they optimise, and model-predictive control.
//!
//! A planner knows nothing of models (as in mbrl-lib): it optimises an [`Objective`] that
//! scores a population of action sequences [P, H, A] held in device buffers. The objectives
//! wire a learned ensemble ([`ModelObjective`]) or the environment's true dynamics
//! ([`TrueObjective`]) into the backend's fused rollout.
pub mod mpc;

pub use mpc::Mpc;

use crate::backend::{
    Backend, EliteParams, InitParams, MppiParams, Precision, Propagation, RolloutParams,
    SampleParams, UpdateParams,
};
use crate::backend::{EnsembleShape, TerminalValue, MAX_ELITES};
use crate::model::Ensemble;
use crate::{invalid, setting, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Which shooting method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Optimizer {
    /// Cross-entropy method: iterate sample → score → refit to the elites.
    Cem,
    /// Random shooting: one round of uniform samples, keep the best.
    RandomShooting,
    /// MPPI (Williams et al. 2017): Gaussian perturbations of the nominal plan averaged with
    /// weights exp(−cost/λ), as pytorch_mppi and MPPI-Generic do.
    Mppi,
    /// iCEM (Pinneri et al. 2020): CEM with coloured noise, elites kept across iterations and
    /// control steps, a decaying population, and the best sequence executed.
    Icem,
}

/// Planner settings (defaults: mbrl-lib 0.2.0 `pets_cartpole`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannerConfig {
    /// cem or random-shooting.
    pub optimizer: Optimizer,
    /// Planning horizon H (steps).
    pub horizon: usize,
    /// Candidates per iteration P.
    pub population: usize,
    /// Elites per iteration (CEM).
    pub num_elites: usize,
    /// CEM iterations per action.
    pub iterations: usize,
    /// Smoothing α: mean ← α·mean + (1−α)·elite mean.
    pub alpha: f32,
    /// Lower bound on the sampling variance.
    pub min_var: f32,
    /// Shift the previous solution by one step to start the next (warm start).
    pub warm_start: bool,
    /// Arithmetic of the rollouts: f32 (the specification) or bf16 products with f32 sums
    /// (AMX tiles on CPUs that have them); the backend is built for it.
    #[serde(default)]
    pub precision: Precision,
    /// MPPI temperature λ of the weights exp(−S/λ) and of the control cost.
    #[serde(default = "default_lambda")]
    pub lambda: f32,
    /// MPPI noise covariance Σ: empty for diag((ub − lb)²/16) (CEM's initial variance),
    /// act_dim values for a diagonal, act_dim² values (row-major) for a full matrix.
    #[serde(default)]
    pub noise_covariance: Vec<f32>,
    /// iCEM coloured-noise exponent β (0: white noise; the paper uses 2–2.5).
    #[serde(default = "default_beta")]
    pub colored_noise_exponent: f32,
    /// iCEM population decay γ ≥ 1: iteration i samples max(⌊P·γ^−i⌋, 2·elites) candidates.
    #[serde(default = "default_decay")]
    pub population_decay_factor: f32,
    /// iCEM fraction of the elites carried into the next iteration (and, shifted, into the
    /// next control step).
    #[serde(default = "default_keep")]
    pub keep_elite_frac: f32,
}

fn default_lambda() -> f32 {
    1.0
}
fn default_beta() -> f32 {
    2.0
}
fn default_decay() -> f32 {
    1.25
}
fn default_keep() -> f32 {
    0.3
}

impl PlannerConfig {
    pub fn pets_cartpole() -> Self {
        Self {
            optimizer: Optimizer::Cem,
            horizon: 15,
            population: 350,
            num_elites: 35,
            iterations: 5,
            alpha: 0.1,
            min_var: 1e-6,
            warm_start: true,
            precision: Precision::F32,
            lambda: default_lambda(),
            noise_covariance: vec![],
            colored_noise_exponent: default_beta(),
            population_decay_factor: default_decay(),
            keep_elite_frac: default_keep(),
        }
    }

    /// Candidates of iteration `i` (iCEM decays the population; the others keep it).
    pub fn population_at(&self, i: usize) -> usize {
        if self.optimizer != Optimizer::Icem {
            return self.population;
        }
        let decayed = (self.population as f64
            * f64::from(self.population_decay_factor).powi(-(i as i32)))
        .floor() as usize;
        decayed.max(2 * self.num_elites).min(self.population)
    }

    /// Elites iCEM carries over (0 for the other optimisers).
    pub fn kept_elites(&self) -> usize {
        if self.optimizer != Optimizer::Icem {
            return 0;
        }
        ((self.num_elites as f32 * self.keep_elite_frac).floor() as usize).min(self.num_elites)
    }

    /// Rounds of sampling and scoring per action.
    pub fn rounds(&self) -> usize {
        match self.optimizer {
            Optimizer::RandomShooting => 1,
            _ => self.iterations,
        }
    }

    /// Errors are [`crate::Error::Setting`]s keyed by field (`num_elites`).
    pub fn validate(&self) -> Result<()> {
        if self.horizon == 0 {
            return Err(setting!("horizon", "must be at least 1"));
        }
        if self.population == 0 {
            return Err(setting!("population", "must be at least 1"));
        }
        if matches!(self.optimizer, Optimizer::Cem | Optimizer::Icem)
            && (self.num_elites == 0 || self.num_elites > self.population)
        {
            return Err(setting!(
                "num_elites",
                "is {}; it must be between 1 and the population ({})",
                self.num_elites,
                self.population
            ));
        }
        if self.optimizer != Optimizer::RandomShooting && self.iterations == 0 {
            return Err(setting!("iterations", "must be at least 1"));
        }
        if !(self.lambda.is_finite() && self.lambda > 0.0) {
            return Err(setting!(
                "lambda",
                "must be finite and > 0, got {}",
                self.lambda
            ));
        }
        if !(self.colored_noise_exponent.is_finite()
            && (0.0..=8.0).contains(&self.colored_noise_exponent))
        {
            return Err(setting!(
                "colored_noise_exponent",
                "must be in [0, 8], got {}",
                self.colored_noise_exponent
            ));
        }
        if !(self.population_decay_factor.is_finite() && self.population_decay_factor >= 1.0) {
            return Err(setting!(
                "population_decay_factor",
                "must be finite and ≥ 1, got {}",
                self.population_decay_factor
            ));
        }
        if !(0.0..=1.0).contains(&self.keep_elite_frac) {
            return Err(setting!(
                "keep_elite_frac",
                "must be in [0, 1], got {}",
                self.keep_elite_frac
            ));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(setting!("alpha", "must be in [0, 1], got {}", self.alpha));
        }
        if !(self.min_var.is_finite() && self.min_var >= 0.0) {
            return Err(setting!(
                "min_var",
                "must be finite and ≥ 0, got {}",
                self.min_var
            ));
        }
        Ok(())
    }
}

/// Scores a population of action sequences. `step` is a counter distinct for every call
/// within a run, which the objective uses as its Philox step.
pub trait Objective<B: Backend> {
    fn evaluate(
        &mut self,
        backend: &B,
        population: &B::Buf,
        population_size: usize,
        step: u32,
        returns: &mut B::Buf,
    ) -> Result<()>;
}

/// What one planning step did, for callers that must answer on time (the `serve` command).
#[derive(Clone, Debug, PartialEq)]
pub struct PlanOutcome {
    /// The planned sequence [H·A]: CEM's and MPPI's mean, iCEM's best candidate, random
    /// shooting's best candidate, or the fallback below.
    pub plan: Vec<f32>,
    /// Sample-score-update rounds that ran.
    pub iterations: usize,
    /// The deadline cut the rounds: fewer ran than configured.
    pub deadline_hit: bool,
    /// The plan was ready only after the deadline (the first round, which always runs, or
    /// the last one, ended past it).
    pub late: bool,
    /// No candidate of the last round had a finite return (checked only with
    /// [`Planner::check_returns`]); the plan is the previous one shifted by one step.
    pub fallback: bool,
}

/// Random shooting, CEM, iCEM and MPPI with their buffers on the device. A planning step
/// uploads nothing itself (the objective uploads its start observation) and downloads the
/// plan: the warm start and the variance reset run on the device (`cem_init`), alternating
/// two mean buffers so the shift never reads what it writes.
pub struct Planner<B: Backend> {
    pub cfg: PlannerConfig,
    act_dim: usize,
    lower: Vec<f32>,
    upper: Vec<f32>,
    lower_buf: B::Buf,
    upper_buf: B::Buf,
    /// The plan being optimised and the previous step's plan.
    mean: B::Buf,
    prev: B::Buf,
    var: B::Buf,
    /// Candidates [P + kept elites, H·A] and their returns.
    population: B::Buf,
    returns: B::Buf,
    /// MPPI: the Cholesky factor and the inverse of the noise covariance [A·A].
    chol: B::Buf,
    precision: B::Buf,
    /// iCEM: the elites of the last round, best first [K, H·A], and their returns [K].
    elites: B::Buf,
    elite_returns: B::Buf,
    /// Whether `elites` holds a previous round's elites (false after `reset`).
    have_elites: bool,
    /// Whether the next plan starts from the previous one shifted (false after `reset`).
    warm: bool,
    /// The last plan returned, on the host: the fallback's source.
    last_plan: Vec<f32>,
    /// Download the last round's returns and fall back when none is finite.
    pub check_returns: bool,
    seed: u64,
    counter: u32,
}

/// The Cholesky factor L (row-major, lower) and the inverse of the MPPI noise covariance
/// `cov` (empty: diag((ub − lb)²/16); A values: diagonal; A² values: full, symmetric).
pub fn noise_factors(cov: &[f32], lower: &[f32], upper: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
    let a = lower.len();
    let mut full = vec![0.0f64; a * a];
    match cov.len() {
        0 => {
            for d in 0..a {
                full[d * a + d] = f64::from((upper[d] - lower[d]).powi(2) / 16.0);
            }
        }
        n if n == a => {
            for d in 0..a {
                full[d * a + d] = f64::from(cov[d]);
            }
        }
        n if n == a * a => {
            for (f, c) in full.iter_mut().zip(cov) {
                *f = f64::from(*c);
            }
        }
        n => {
            return Err(setting!(
                "noise_covariance",
                "has {n} values; give none, {a} (a diagonal) or {} (a full matrix)",
                a * a
            ))
        }
    }
    for d in 0..a {
        for b in 0..a {
            let (x, y) = (full[d * a + b], full[b * a + d]);
            if !x.is_finite() || (x - y).abs() > 1e-6 * x.abs().max(y.abs()).max(1.0) {
                return Err(setting!(
                    "noise_covariance",
                    "must be finite and symmetric; entries ({d}, {b}) and ({b}, {d}) are {x} and {y}"
                ));
            }
        }
    }
    // Cholesky–Banachiewicz in f64; a non-positive pivot means Σ is not positive definite.
    let mut l = vec![0.0f64; a * a];
    for i in 0..a {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * a + k] * l[j * a + k]).sum();
            if i == j {
                let pivot = full[i * a + i] - s;
                if pivot.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                    return Err(setting!(
                        "noise_covariance",
                        "must be positive definite (pivot {i} is {pivot})"
                    ));
                }
                l[i * a + i] = pivot.sqrt();
            } else {
                l[i * a + j] = (full[i * a + j] - s) / l[j * a + j];
            }
        }
    }
    // Σ⁻¹ = L⁻ᵀ L⁻¹, column by column: solve L y = e_k, then Lᵀ x = y.
    let mut inv = vec![0.0f64; a * a];
    for k in 0..a {
        let mut y = vec![0.0f64; a];
        for i in 0..a {
            let e = if i == k { 1.0 } else { 0.0 };
            let s: f64 = (0..i).map(|j| l[i * a + j] * y[j]).sum();
            y[i] = (e - s) / l[i * a + i];
        }
        for i in (0..a).rev() {
            let s: f64 = (i + 1..a).map(|j| l[j * a + i] * inv[j * a + k]).sum();
            inv[i * a + k] = (y[i] - s) / l[i * a + i];
        }
    }
    let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    Ok((to32(l), to32(inv)))
}

impl<B: Backend> Planner<B> {
    pub fn new(
        backend: &B,
        cfg: PlannerConfig,
        lower: &[f32],
        upper: &[f32],
        seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        if cfg.precision != backend.planning_precision() {
            return Err(setting!(
                "precision",
                "is {:?} but the {} backend plans in {:?}; build the backend for it \
                 (AnyBackend::with_precision, CpuBackend::with_bf16_planning)",
                cfg.precision,
                backend.name(),
                backend.planning_precision()
            ));
        }
        if lower.len() != upper.len() || lower.is_empty() {
            return Err(invalid!(
                "action bounds must have one lower and one upper value per dimension"
            ));
        }
        for (l, u) in lower.iter().zip(upper) {
            if !(l.is_finite() && u.is_finite()) || l > u {
                return Err(invalid!(
                    "action bounds must be finite with lower ≤ upper, got [{l}, {u}]"
                ));
            }
        }
        let a = lower.len();
        let len = cfg.horizon * a;
        let (chol, precision) = if cfg.optimizer == Optimizer::Mppi {
            noise_factors(&cfg.noise_covariance, lower, upper)?
        } else {
            (vec![0.0; a * a], vec![0.0; a * a])
        };
        let rows = cfg.population + cfg.kept_elites();
        let k = if cfg.optimizer == Optimizer::Icem {
            cfg.num_elites
        } else {
            1
        };
        Ok(Self {
            act_dim: a,
            lower_buf: backend.upload(lower)?,
            upper_buf: backend.upload(upper)?,
            mean: backend.zeros(len)?,
            prev: backend.zeros(len)?,
            var: backend.zeros(len)?,
            population: backend.zeros(rows * len)?,
            returns: backend.zeros(rows)?,
            chol: backend.upload(&chol)?,
            precision: backend.upload(&precision)?,
            elites: backend.zeros(k * len)?,
            elite_returns: backend.zeros(k)?,
            have_elites: false,
            lower: lower.to_vec(),
            upper: upper.to_vec(),
            warm: false,
            last_plan: vec![],
            check_returns: false,
            seed,
            counter: 0,
            cfg,
        })
    }

    pub fn act_dim(&self) -> usize {
        self.act_dim
    }

    pub fn lower(&self) -> &[f32] {
        &self.lower
    }

    pub fn upper(&self) -> &[f32] {
        &self.upper
    }

    pub fn horizon(&self) -> usize {
        self.cfg.horizon
    }

    /// Forget the previous solution (start of an episode): the next plan starts at the
    /// middle of the bounds.
    pub fn reset(&mut self, _backend: &B) -> Result<()> {
        self.warm = false;
        self.have_elites = false;
        self.last_plan.clear();
        Ok(())
    }

    /// Optimise the objective; returns the whole planned sequence [H·A].
    pub fn plan(&mut self, backend: &B, objective: &mut impl Objective<B>) -> Result<Vec<f32>> {
        Ok(self.plan_until(backend, objective, None)?.plan)
    }

    /// Optimise the objective, stopping after the round during which `deadline` passes (the
    /// first round always runs: there is no plan without it).
    pub fn plan_until(
        &mut self,
        backend: &B,
        objective: &mut impl Objective<B>,
        deadline: Option<Instant>,
    ) -> Result<PlanOutcome> {
        let a = self.act_dim;
        let len = (self.cfg.horizon * a) as u32;
        let shift = self.warm && self.cfg.warm_start;
        let init = InitParams {
            len,
            act_dim: a as u32,
            shift: u32::from(shift),
            _pad: 0,
        };
        backend.cem_init(
            &init,
            &self.lower_buf,
            &self.upper_buf,
            &self.prev,
            &mut self.mean,
            &mut self.var,
        )?;
        let rounds = self.cfg.rounds();
        let mut done = 0;
        let mut last_rows = 0;
        // The longest round so far: a round is started only if one a quarter longer would
        // still end before the deadline (rounds vary with the machine's load), so that a cut
        // answers on time instead of one round late.
        let mut longest = std::time::Duration::ZERO;
        for i in 0..rounds {
            if i > 0 && deadline.is_some_and(|d| Instant::now() + longest * 5 / 4 > d) {
                break;
            }
            let t0 = Instant::now();
            self.counter = self.counter.wrapping_add(1);
            last_rows = self.round(backend, objective, i, shift)?;
            if deadline.is_some() && backend.name() != "cpu" {
                // Device operations are queued, not finished, when they return: wait for the
                // round (a download of one value) so that its time is the device's.
                backend.download(&self.elite_returns)?;
            }
            longest = longest.max(t0.elapsed());
            done += 1;
        }
        if self.cfg.optimizer == Optimizer::Icem {
            // Execute the best sequence found (iCEM §3): the update with one elite and α = 0
            // copies elite 0 into the mean.
            self.update_from_elites(backend, self.cfg.num_elites as u32, 1, len, 0.0)?;
            self.have_elites = true;
        }
        let mut fallback = false;
        if self.check_returns {
            let r = backend.download(&self.returns)?;
            fallback = !r[..last_rows].iter().any(|v| v.is_finite());
        }
        let solution = if fallback {
            let f = self.shifted_last_plan();
            backend.write(&mut self.mean, &f)?;
            f
        } else {
            backend.download(&self.mean)?
        };
        // This plan is the next step's starting point.
        std::mem::swap(&mut self.mean, &mut self.prev);
        self.warm = true;
        self.last_plan.clone_from(&solution);
        Ok(PlanOutcome {
            plan: solution,
            iterations: done,
            deadline_hit: done < rounds,
            late: deadline.is_some_and(|d| Instant::now() > d),
            fallback,
        })
    }

    /// The previous plan shifted one step earlier with the middle of the bounds appended, or
    /// the middle of the bounds everywhere after a reset.
    fn shifted_last_plan(&self) -> Vec<f32> {
        let a = self.act_dim;
        let len = self.cfg.horizon * a;
        (0..len)
            .map(|j| {
                if self.last_plan.len() == len && j + a < len {
                    self.last_plan[j + a]
                } else {
                    0.5 * (self.lower[j % a] + self.upper[j % a])
                }
            })
            .collect()
    }

    /// One sample → score → update round (iteration `i` of a step); returns the rows scored.
    fn round(
        &mut self,
        backend: &B,
        objective: &mut impl Objective<B>,
        i: usize,
        shift: bool,
    ) -> Result<usize> {
        let a = self.act_dim as u32;
        let len = self.cfg.horizon as u32 * a;
        let (seed_lo, seed_hi) = (self.seed as u32, (self.seed >> 32) as u32);
        if self.cfg.optimizer == Optimizer::Mppi {
            let mp = MppiParams {
                seed_lo,
                seed_hi,
                step: self.counter,
                population: self.cfg.population as u32,
                len,
                act_dim: a,
                lambda: self.cfg.lambda,
                alpha: self.cfg.alpha,
            };
            backend.mppi_sample(
                &mp,
                &self.mean,
                &self.chol,
                &self.lower_buf,
                &self.upper_buf,
                &mut self.population,
            )?;
            objective.evaluate(
                backend,
                &self.population,
                self.cfg.population,
                self.counter,
                &mut self.returns,
            )?;
            backend.mppi_update(
                &mp,
                &self.population,
                &self.returns,
                &self.precision,
                &mut self.mean,
            )?;
            return Ok(self.cfg.population);
        }
        let n = self.cfg.population_at(i);
        let (dist, elites, alpha) = match self.cfg.optimizer {
            Optimizer::RandomShooting => (1, 1, 0.0),
            Optimizer::Icem => (2, self.cfg.num_elites, self.cfg.alpha),
            _ => (0, self.cfg.num_elites, self.cfg.alpha),
        };
        let sp = SampleParams {
            seed_lo,
            seed_hi,
            step: self.counter,
            population: n as u32,
            len,
            act_dim: a,
            dist,
            beta: self.cfg.colored_noise_exponent,
        };
        backend.cem_sample(
            &sp,
            &self.mean,
            &self.var,
            &self.lower_buf,
            &self.upper_buf,
            &mut self.population,
        )?;
        if self.cfg.optimizer != Optimizer::Icem {
            objective.evaluate(
                backend,
                &self.population,
                n,
                self.counter,
                &mut self.returns,
            )?;
            // Random shooting: one uniform round; the update with one elite and α = 0 copies
            // the best candidate into the mean.
            let up = UpdateParams {
                population: n as u32,
                len,
                num_elites: elites as u32,
                _pad: 0,
                alpha,
                min_var: self.cfg.min_var,
                _pad2: [0; 2],
            };
            backend.cem_update(
                &up,
                &self.population,
                &self.returns,
                &mut self.mean,
                &mut self.var,
            )?;
            return Ok(n);
        }
        // iCEM: the kept elites join the sampled candidates (shifted at a new step).
        let keep = self.cfg.kept_elites();
        let mut rows = n;
        if keep > 0 && self.have_elites && (i > 0 || shift) {
            let kp = EliteParams {
                population: 0,
                len,
                act_dim: a,
                num_elites: keep as u32,
                dst_row: n as u32,
                shift: u32::from(i == 0),
                _pad: [0; 2],
            };
            backend.cem_keep(&kp, &self.elites, &self.mean, &mut self.population)?;
            rows += keep;
        }
        objective.evaluate(
            backend,
            &self.population,
            rows,
            self.counter,
            &mut self.returns,
        )?;
        let ep = EliteParams {
            population: rows as u32,
            len,
            act_dim: a,
            num_elites: elites as u32,
            dst_row: 0,
            shift: 0,
            _pad: [0; 2],
        };
        backend.cem_select(
            &ep,
            &self.population,
            &self.returns,
            &mut self.elites,
            &mut self.elite_returns,
        )?;
        self.have_elites = true;
        // The elites are already ranked: the CEM update over exactly them is their mean and
        // variance, smoothed by α.
        self.update_from_elites(backend, elites as u32, elites as u32, len, alpha)?;
        Ok(rows)
    }

    /// The CEM update over the ranked elite memory: the first `num_elites` of its `kept` rows
    /// give the new mean and variance, smoothed by `alpha`.
    fn update_from_elites(
        &mut self,
        backend: &B,
        kept: u32,
        num_elites: u32,
        len: u32,
        alpha: f32,
    ) -> Result<()> {
        let up = UpdateParams {
            population: kept,
            len,
            num_elites,
            _pad: 0,
            alpha,
            min_var: self.cfg.min_var,
            _pad2: [0; 2],
        };
        backend.cem_update(
            &up,
            &self.elites,
            &self.elite_returns,
            &mut self.mean,
            &mut self.var,
        )
    }

    /// Plan and return the first action, finite and inside the bounds whatever the objective
    /// did; the next call starts from this plan shifted one step (if `warm_start`).
    pub fn act(&mut self, backend: &B, objective: &mut impl Objective<B>) -> Result<Vec<f32>> {
        let seq = self.plan(backend, objective)?;
        Ok(safe_action(&seq[..self.act_dim], &self.lower, &self.upper))
    }
}

/// Clamp to the bounds; a non-finite component becomes the middle of its bounds.
pub fn safe_action(a: &[f32], lower: &[f32], upper: &[f32]) -> Vec<f32> {
    a.iter()
        .zip(lower.iter().zip(upper))
        .map(|(v, (l, u))| {
            if v.is_finite() {
                v.clamp(*l, *u)
            } else {
                0.5 * (l + u)
            }
        })
        .collect()
}

/// Trajectory-sampling settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TsConfig {
    pub particles: usize,
    pub propagation: Propagation,
}

/// Scores action sequences by trajectory sampling through a learned ensemble.
pub struct ModelObjective<B: Backend> {
    shape: EnsembleShape,
    params: B::Buf,
    norm: B::Buf,
    start: B::Buf,
    template: RolloutParams,
    /// A learned value closing each path (`plan --terminal-value`).
    terminal: Option<TerminalValue>,
}

impl<B: Backend> ModelObjective<B> {
    /// `task` is the reward/termination code (`EnvId::code()` or a code of `env::task`).
    pub fn new(
        backend: &B,
        model: &Ensemble,
        task: u32,
        ts: TsConfig,
        horizon: usize,
        seed: u64,
    ) -> Result<Self> {
        if ts.particles == 0 {
            return Err(invalid!("particles must be at least 1"));
        }
        if model.elites.is_empty() || model.elites.len() > MAX_ELITES {
            return Err(invalid!(
                "the model needs between 1 and {MAX_ELITES} elites, it has {}",
                model.elites.len()
            ));
        }
        let mut elites = [0u32; MAX_ELITES];
        for (d, s) in elites.iter_mut().zip(&model.elites) {
            *d = *s as u32;
        }
        let cfg = &model.config;
        Ok(Self {
            shape: model.shape(),
            params: backend.upload(&model.params)?,
            norm: backend.upload(&model.norm())?,
            start: backend.zeros(cfg.obs_dim)?,
            template: RolloutParams {
                seed_lo: seed as u32,
                seed_hi: (seed >> 32) as u32,
                step: 0,
                population: 0,
                particles: ts.particles as u32,
                horizon: horizon as u32,
                obs_dim: cfg.obs_dim as u32,
                act_dim: cfg.act_dim as u32,
                propagation: ts.propagation as u32,
                env: task,
                learn_reward: cfg.learn_reward as u32,
                num_elites: model.elites.len() as u32,
                elites,
            },
            terminal: None,
        })
    }

    /// Close every rollout path with γ^H·V(s_H) (see [`TerminalValue`]); `None` removes it.
    pub fn set_terminal_value(&mut self, value: Option<TerminalValue>) -> Result<()> {
        if let Some(v) = &value {
            let od = self.template.obs_dim as usize;
            if v.value.obs_dim() != od {
                return Err(crate::Error::Shape(format!(
                    "the terminal value takes {} observation values, the model's states have {od}",
                    v.value.obs_dim()
                )));
            }
            if !(v.gamma > 0.0 && v.gamma <= 1.0) {
                return Err(invalid!(
                    "the terminal value's discount must be in (0, 1], got {}",
                    v.gamma
                ));
            }
        }
        self.terminal = value;
        Ok(())
    }

    /// Replace the parameters, normaliser and elites by those of a retrained model of the
    /// same architecture.
    pub fn update_model(&mut self, backend: &B, model: &Ensemble) -> Result<()> {
        if model.shape() != self.shape {
            return Err(crate::Error::Shape(format!(
                "the new model's shape {:?} differs from the planner's {:?}",
                model.shape(),
                self.shape
            )));
        }
        backend.write(&mut self.params, &model.params)?;
        backend.write(&mut self.norm, &model.norm())?;
        let n = model.elites.len().min(MAX_ELITES);
        for (d, s) in self.template.elites.iter_mut().zip(&model.elites[..n]) {
            *d = *s as u32;
        }
        self.template.num_elites = n as u32;
        Ok(())
    }

    /// The observation to plan from (the one upload of a planning step).
    pub fn set_start(&mut self, backend: &B, obs: &[f32]) -> Result<()> {
        backend.write(&mut self.start, obs)
    }

    /// Member-rows per call to `evaluate` (for throughput reports): rows × the members each
    /// passes through (every elite under expectation, one otherwise).
    pub fn rows_per_eval(&self, population: usize) -> usize {
        let members = if self.template.propagation == Propagation::Expectation as u32 {
            self.template.num_elites as usize
        } else {
            1
        };
        population * self.template.particles as usize * self.template.horizon as usize * members
    }

    pub fn shape(&self) -> &EnsembleShape {
        &self.shape
    }
}

impl<B: Backend> Objective<B> for ModelObjective<B> {
    fn evaluate(
        &mut self,
        backend: &B,
        population: &B::Buf,
        population_size: usize,
        step: u32,
        returns: &mut B::Buf,
    ) -> Result<()> {
        let p = RolloutParams {
            step,
            population: population_size as u32,
            ..self.template
        };
        match &self.terminal {
            None => backend.rollout(
                &p,
                &self.shape,
                &self.params,
                &self.norm,
                &self.start,
                population,
                returns,
            ),
            Some(v) => backend.rollout_with_value(
                &p,
                &self.shape,
                &self.params,
                &self.norm,
                &self.start,
                population,
                v,
                returns,
            ),
        }
    }
}

/// Scores action sequences with the environment's true dynamics.
pub struct TrueObjective<B: Backend> {
    start: B::Buf,
    template: RolloutParams,
}

impl<B: Backend> TrueObjective<B> {
    pub fn new(backend: &B, env: crate::env::EnvId, horizon: usize) -> Result<Self> {
        let spec = env.spec();
        Ok(Self {
            start: backend.zeros(spec.state_dim)?,
            template: RolloutParams {
                seed_lo: 0,
                seed_hi: 0,
                step: 0,
                population: 0,
                particles: 1,
                horizon: horizon as u32,
                obs_dim: spec.obs_dim as u32,
                act_dim: spec.act_dim as u32,
                propagation: Propagation::Expectation as u32,
                env: env.code(),
                learn_reward: 0,
                num_elites: 0,
                elites: [0; MAX_ELITES],
            },
        })
    }

    /// The environment's internal state to plan from.
    pub fn set_start(&mut self, backend: &B, state: &[f32]) -> Result<()> {
        backend.write(&mut self.start, state)
    }
}

impl<B: Backend> Objective<B> for TrueObjective<B> {
    fn evaluate(
        &mut self,
        backend: &B,
        population: &B::Buf,
        population_size: usize,
        step: u32,
        returns: &mut B::Buf,
    ) -> Result<()> {
        let p = RolloutParams {
            step,
            population: population_size as u32,
            ..self.template
        };
        backend.rollout_true(&p, &self.start, population, returns)
    }
}

/// Scores action sequences with a MuJoCo task's true dynamics on the CPU (whatever the
/// backend holds the population on), from the state of [`MujocoObjective::set_start`].
#[cfg(feature = "mujoco")]
pub struct MujocoObjective {
    rollouts: crate::env::mujoco::Rollouts,
    horizon: usize,
    start: Vec<f64>,
}

#[cfg(feature = "mujoco")]
impl MujocoObjective {
    pub fn new(task: crate::env::mujoco::MujocoTask, horizon: usize) -> Result<Self> {
        Ok(Self {
            rollouts: crate::env::mujoco::Rollouts::new(task)?,
            horizon,
            start: vec![],
        })
    }

    /// The state to plan from: qpos ++ qvel ([`crate::env::Env::state`] of the task).
    pub fn set_start(&mut self, state: &[f32]) {
        self.start = state.iter().map(|v| f64::from(*v)).collect();
    }
}

#[cfg(feature = "mujoco")]
impl<B: Backend> Objective<B> for MujocoObjective {
    fn evaluate(
        &mut self,
        backend: &B,
        population: &B::Buf,
        population_size: usize,
        _step: u32,
        returns: &mut B::Buf,
    ) -> Result<()> {
        let actions = backend.download(population)?;
        let mut r = vec![0.0f32; population_size];
        self.rollouts
            .returns(&self.start, &actions, self.horizon, &mut r)?;
        backend.write(returns, &r)
    }
}
