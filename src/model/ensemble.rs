//! The ensemble's parameters, normaliser and elites, and prediction of next observations.
use crate::backend::cpu::{ensemble as spec, CpuBackend};
use crate::backend::{Activation, Backend, EnsembleShape};
use crate::{invalid, setting, Result};
use serde::{Deserialize, Serialize};

/// Architecture of a probabilistic ensemble. Stored in checkpoint metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Observation dimension.
    pub obs_dim: usize,
    /// Action dimension.
    pub act_dim: usize,
    /// Number of members E (7 in PETS).
    pub ensemble_size: usize,
    /// Width of every hidden layer (200 in PETS / mbrl-lib).
    pub hidden: usize,
    /// Number of hidden layers (4 in mbrl-lib's PETS configs).
    pub num_layers: usize,
    /// Hidden activation.
    pub activation: Activation,
    /// Gaussian head (mean + bounded log-variance) trained by NLL; false: mean only, MSE.
    pub probabilistic: bool,
    /// Predict the reward as an extra output after the state change.
    pub learn_reward: bool,
    /// Members used for prediction/planning (the k best on holdout), 5 of 7 in PETS.
    pub num_elites: usize,
}

impl ModelConfig {
    /// mbrl-lib's PETS model: 7 members, 5 elites, 4 × 200 SiLU, Gaussian head.
    pub fn pets(obs_dim: usize, act_dim: usize) -> Self {
        Self {
            obs_dim,
            act_dim,
            ensemble_size: 7,
            hidden: 200,
            num_layers: 4,
            activation: Activation::Silu,
            probabilistic: true,
            learn_reward: false,
            num_elites: 5,
        }
    }

    pub fn in_dim(&self) -> usize {
        self.obs_dim + self.act_dim
    }

    pub fn out_dim(&self) -> usize {
        self.obs_dim + usize::from(self.learn_reward)
    }

    /// The model's input and output sizes are `env`'s (a [`crate::Error::Setting`] on
    /// `model.obs_dim/act_dim` otherwise), and a task without a reward function from
    /// observations has the model learn it (`model.learn_reward`). Returns `env`'s spec.
    pub fn check_env(&self, env: &crate::env::EnvName) -> Result<crate::env::EnvSpec> {
        let spec = env.spec()?;
        if self.obs_dim != spec.obs_dim || self.act_dim != spec.act_dim {
            return Err(setting!(
                "model.obs_dim/act_dim",
                "are ({}, {}), but {} has observation dimension {} and action dimension {}",
                self.obs_dim,
                self.act_dim,
                env,
                spec.obs_dim,
                spec.act_dim
            ));
        }
        if !crate::env::task::has_reward(env.task_code()) && !self.learn_reward {
            return Err(setting!(
                "model.learn_reward",
                "is false, but {env} has no reward function from observations here; the \
                 model must learn the reward (set it to true)"
            ));
        }
        Ok(spec)
    }

    pub fn shape(&self) -> EnsembleShape {
        EnsembleShape {
            ensemble: self.ensemble_size,
            in_dim: self.in_dim(),
            out_dim: self.out_dim(),
            hidden: self.hidden,
            num_layers: self.num_layers,
            activation: self.activation,
            probabilistic: self.probabilistic,
        }
    }

    /// Checks every size before anything is allocated from it: a config can come from a
    /// checkpoint, a `config.toml` or the command line, and a hostile one (`num_layers: 1e9`,
    /// `hidden: 2^62`) must be an error naming the field, not an allocation abort or an
    /// arithmetic overflow later. The caps are far above any model this crate trains (PETS:
    /// 7 × 4 × 200; a MuJoCo Humanoid has 376 observations and 17 actions).
    pub fn validate(&self) -> Result<()> {
        /// Per-field caps. 2^16 for widths keeps `in_dim · hidden` products small enough that
        /// the parameter count below never comes near overflow on a 64-bit host.
        const MAX_DIM: usize = 1 << 16;
        const MAX_HIDDEN: usize = 1 << 16;
        /// Deeper than any MLP dynamics model in the literature (PETS and MBPO use 4).
        const MAX_LAYERS: usize = 64;
        /// The ensemble index is a grid dimension on the devices (≤ 65535 in CUDA's y and z);
        /// PETS uses 7 members, ensembles of a few hundred are already unusual.
        const MAX_ENSEMBLE: usize = 1024;
        /// 2^31 f32 parameters = 8 GiB: every flat offset and element count then fits the u32
        /// indices the CUDA and WGSL kernels use, and Adam's state (3× this) still fits a
        /// large GPU.
        const MAX_PARAMS: usize = 1 << 31;
        let caps = [
            ("obs_dim", self.obs_dim, MAX_DIM),
            ("act_dim", self.act_dim, MAX_DIM),
            ("ensemble_size", self.ensemble_size, MAX_ENSEMBLE),
            ("hidden", self.hidden, MAX_HIDDEN),
            ("num_layers", self.num_layers, MAX_LAYERS),
        ];
        let over_cap = caps.iter().find(|(_, value, max)| value > max);
        // The count of `EnsembleShape::layout` in u128, which no usize config overflows.
        let total = crate::limits::model_params(self);
        if total > MAX_PARAMS as u128 {
            // Blame the field over its cap, else the width (or, for tiny widths, the size).
            let (field, value) = match over_cap {
                Some((f, v, _)) => (*f, *v),
                None if self.hidden as u128 * self.hidden as u128 >= self.ensemble_size as u128 => {
                    ("hidden", self.hidden)
                }
                None => ("ensemble_size", self.ensemble_size),
            };
            return Err(setting!(
                field,
                "{value} is too large: the ensemble would hold {total} parameters ({} of f32); \
                 at most {MAX_PARAMS} (8 GiB) are supported",
                crate::limits::fmt_bytes(total.saturating_mul(4))
            ));
        }
        if let Some((field, value, max)) = over_cap {
            return Err(setting!(*field, "is {value}; at most {max} is supported"));
        }
        for (field, value) in [
            ("obs_dim", self.obs_dim),
            ("act_dim", self.act_dim),
            ("ensemble_size", self.ensemble_size),
            ("hidden", self.hidden),
        ] {
            if value == 0 {
                return Err(setting!(field, "must be at least 1"));
            }
        }
        if self.num_elites == 0 || self.num_elites > self.ensemble_size {
            return Err(setting!(
                "num_elites",
                "is {}; it must be between 1 and the ensemble size ({})",
                self.num_elites,
                self.ensemble_size
            ));
        }
        debug_assert_eq!(total, self.shape().layout().total as u128);
        Ok(())
    }
}

/// A probabilistic ensemble: parameters in the flat layout of [`crate::backend::ParamLayout`],
/// the input normaliser and the elite members.
#[derive(Clone, Debug)]
pub struct Ensemble {
    pub config: ModelConfig,
    pub params: Vec<f32>,
    /// Per input column, fitted on the training inputs.
    pub input_mean: Vec<f32>,
    pub input_std: Vec<f32>,
    /// Indices of the elite members, best first.
    pub elites: Vec<usize>,
}

/// Standard deviations below this are replaced by 1 (a constant input column carries no
/// information; dividing by ~0 would blow it up).
pub const MIN_STD: f32 = 1e-6;

impl Ensemble {
    pub fn new(config: ModelConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let shape = config.shape();
        let params = spec::init_params(&shape, seed);
        let i = config.in_dim();
        Ok(Self {
            elites: (0..config.num_elites).collect(),
            config,
            params,
            input_mean: vec![0.0; i],
            input_std: vec![1.0; i],
        })
    }

    pub fn shape(&self) -> EnsembleShape {
        self.config.shape()
    }

    /// [mean; std] as the backends take it.
    pub fn norm(&self) -> Vec<f32> {
        let mut n = self.input_mean.clone();
        n.extend_from_slice(&self.input_std);
        n
    }

    /// Fit the normaliser to inputs [rows, in_dim] (population statistics, in f64).
    pub fn fit_normaliser(&mut self, inputs: &[f32]) {
        let d = self.config.in_dim();
        let n = inputs.len() / d;
        if n == 0 {
            return;
        }
        for j in 0..d {
            let mean = (0..n).map(|r| inputs[r * d + j] as f64).sum::<f64>() / n as f64;
            let var = (0..n)
                .map(|r| (inputs[r * d + j] as f64 - mean).powi(2))
                .sum::<f64>()
                / n as f64;
            let std = var.sqrt() as f32;
            self.input_mean[j] = mean as f32;
            self.input_std[j] = if std < MIN_STD { 1.0 } else { std };
        }
    }

    /// Every parameter and normaliser value is finite.
    pub fn is_finite(&self) -> bool {
        self.params
            .iter()
            .chain(&self.input_mean)
            .chain(&self.input_std)
            .all(|v| v.is_finite())
    }

    /// Predict next observations for `rows` (obs, act) pairs with every member.
    /// Returns (mean, variance), each [E, rows, out_dim]: the mean is obs + predicted change
    /// (reward appended when learned); variance = exp(log-variance), zero for deterministic
    /// members.
    pub fn predict(&self, obs: &[f32], act: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let (od, ad) = (self.config.obs_dim, self.config.act_dim);
        if !obs.len().is_multiple_of(od)
            || !act.len().is_multiple_of(ad)
            || obs.len() / od != act.len() / ad
        {
            return Err(crate::Error::Shape(format!(
                "{} observation values and {} action values do not make whole rows of \
                 obs_dim {od} and act_dim {ad}",
                obs.len(),
                act.len()
            )));
        }
        if let Some(v) = obs.iter().chain(act).find(|v| !v.is_finite()) {
            return Err(invalid!("prediction input contains {v}"));
        }
        let rows = obs.len() / od;
        let e = self.config.ensemble_size;
        let i = self.config.in_dim();
        let o = self.config.out_dim();
        let mut x = vec![0.0f32; e * rows * i];
        for m in 0..e {
            for r in 0..rows {
                let dst = &mut x[(m * rows + r) * i..(m * rows + r + 1) * i];
                dst[..od].copy_from_slice(&obs[r * od..(r + 1) * od]);
                dst[od..].copy_from_slice(&act[r * ad..(r + 1) * ad]);
            }
        }
        let be = CpuBackend::new();
        let mut mean = vec![0.0f32; e * rows * o];
        let mut lv = vec![0.0f32; e * rows * o];
        be.ensemble_forward(
            &self.shape(),
            &self.params,
            &self.norm(),
            &x,
            rows,
            &mut mean,
            &mut lv,
        )?;
        for m in 0..e {
            for r in 0..rows {
                for j in 0..od {
                    mean[(m * rows + r) * o + j] += obs[r * od + j];
                }
            }
        }
        let var = if self.config.probabilistic {
            lv.iter().map(|v| v.exp()).collect()
        } else {
            vec![0.0; e * rows * o]
        };
        Ok((mean, var))
    }
}
