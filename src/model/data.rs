//! Logged transitions (obs, act, next_obs[, reward]) and their checks.
use crate::{invalid, Result};

/// Row-major arrays of N transitions.
#[derive(Clone, Debug, Default)]
pub struct Transitions {
    pub obs_dim: usize,
    pub act_dim: usize,
    /// [N, obs_dim]
    pub obs: Vec<f32>,
    /// [N, act_dim]
    pub act: Vec<f32>,
    /// [N, obs_dim]
    pub next_obs: Vec<f32>,
    /// [N], empty when rewards were not logged.
    pub reward: Vec<f32>,
}

impl Transitions {
    pub fn new(obs_dim: usize, act_dim: usize) -> Self {
        Self {
            obs_dim,
            act_dim,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.obs.len().checked_div(self.obs_dim).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn has_reward(&self) -> bool {
        !self.reward.is_empty()
    }

    /// Append one transition (reward may be `None` only if no transition so far has one).
    pub fn push(&mut self, obs: &[f32], act: &[f32], next_obs: &[f32], reward: Option<f32>) {
        debug_assert_eq!(obs.len(), self.obs_dim);
        debug_assert_eq!(act.len(), self.act_dim);
        self.obs.extend_from_slice(obs);
        self.act.extend_from_slice(act);
        self.next_obs.extend_from_slice(next_obs);
        if let Some(r) = reward {
            self.reward.push(r);
        }
    }

    /// Dimensions agree and every value is finite; the error names the first bad row (0-based
    /// transition index) and column.
    pub fn validate(&self) -> Result<()> {
        let n = self.len();
        if self.obs_dim == 0 || self.act_dim == 0 {
            return Err(invalid!(
                "transitions need at least one observation and one action column"
            ));
        }
        if self.obs.len() != n * self.obs_dim
            || self.act.len() != n * self.act_dim
            || self.next_obs.len() != n * self.obs_dim
            || (!self.reward.is_empty() && self.reward.len() != n)
        {
            return Err(crate::Error::Shape(format!(
                "transition arrays disagree: {} obs values, {} act, {} next_obs, {} rewards for \
                 obs_dim {} and act_dim {}",
                self.obs.len(),
                self.act.len(),
                self.next_obs.len(),
                self.reward.len(),
                self.obs_dim,
                self.act_dim
            )));
        }
        for i in 0..n {
            let check = |name: &str, v: &[f32]| -> Result<()> {
                if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                    return Err(invalid!(
                        "transition {i}: {name}_{j} is {} (only finite values can be trained on)",
                        v[j]
                    ));
                }
                Ok(())
            };
            check("obs", &self.obs[i * self.obs_dim..(i + 1) * self.obs_dim])?;
            check("act", &self.act[i * self.act_dim..(i + 1) * self.act_dim])?;
            check(
                "next_obs",
                &self.next_obs[i * self.obs_dim..(i + 1) * self.obs_dim],
            )?;
            if !self.reward.is_empty() {
                check("reward", &self.reward[i..i + 1])?;
            }
        }
        Ok(())
    }

    /// Model input of transition i: [obs, act].
    pub fn input_row(&self, i: usize, out: &mut [f32]) {
        let (o, a) = (self.obs_dim, self.act_dim);
        out[..o].copy_from_slice(&self.obs[i * o..(i + 1) * o]);
        out[o..o + a].copy_from_slice(&self.act[i * a..(i + 1) * a]);
    }

    /// Model target of transition i: [next_obs − obs, (reward)].
    pub fn target_row(&self, i: usize, learn_reward: bool, out: &mut [f32]) {
        let o = self.obs_dim;
        let (next, obs) = (
            &self.next_obs[i * o..(i + 1) * o],
            &self.obs[i * o..(i + 1) * o],
        );
        for ((t, n), s) in out[..o].iter_mut().zip(next).zip(obs) {
            *t = n - s;
        }
        if learn_reward {
            out[o] = self.reward[i];
        }
    }

    pub fn extend(&mut self, other: &Transitions) {
        self.obs.extend_from_slice(&other.obs);
        self.act.extend_from_slice(&other.act);
        self.next_obs.extend_from_slice(&other.next_obs);
        self.reward.extend_from_slice(&other.reward);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_should_name_the_first_non_finite_row() {
        let mut t = Transitions::new(2, 1);
        t.push(&[0.0, 1.0], &[0.5], &[0.1, 1.1], None);
        t.push(&[0.0, 1.0], &[f32::NAN], &[0.1, 1.1], None);
        t.push(&[f32::INFINITY, 1.0], &[0.5], &[0.1, 1.1], None);
        let msg = t.validate().unwrap_err().to_string();
        assert!(
            msg.contains("transition 1") && msg.contains("act_0"),
            "{msg}"
        );
    }

    #[test]
    fn validate_should_reject_ragged_arrays() {
        let mut t = Transitions::new(2, 1);
        t.push(&[0.0, 1.0], &[0.5], &[0.1, 1.1], None);
        t.next_obs.pop();
        assert!(matches!(t.validate(), Err(crate::Error::Shape(_))));
    }
}
