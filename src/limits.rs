//! Sizes checked before anything is allocated: an absurd `--hidden`, `--population` or
//! `--particles` is an error that names the setting and the memory it would need, never an
//! allocation abort, a capacity-overflow panic or a count wrapped around in a kernel's u32.
use crate::model::ModelConfig;
use crate::plan::PlannerConfig;
use crate::{setting, Result};

/// Physical memory of this machine (`MemTotal`), when the system says.
pub fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `1.5 GiB`-style sizes for messages.
pub fn fmt_bytes(b: u128) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if v >= 1024.0 {
        "more than 1024 EiB".into()
    } else if u == 0 {
        format!("{b} bytes")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Product of `factors` in u128 (cannot overflow for the few usize factors used here).
fn product(factors: &[usize]) -> u128 {
    factors
        .iter()
        .fold(1u128, |p, &f| p.saturating_mul(f as u128))
}

/// Parameters of an ensemble (weights, biases, log-variance bounds), exactly as
/// [`crate::backend::ParamLayout`] lays them out; saturating, so no config overflows it.
pub fn model_params(m: &ModelConfig) -> u128 {
    let u = |v: usize| v as u128;
    let (e, h, l) = (u(m.ensemble_size), u(m.hidden), u(m.num_layers));
    let i = u(m.obs_dim).saturating_add(u(m.act_dim));
    let o = u(m.obs_dim).saturating_add(u(usize::from(m.learn_reward)));
    let head = if m.probabilistic { 2 * o } else { o };
    // fan_in · fan_out weights and fan_out biases per member.
    let layer = |fi: u128, fo: u128| fi.saturating_add(1).saturating_mul(fo);
    let per_member = if l == 0 {
        layer(i, head)
    } else {
        layer(i, h)
            .saturating_add((l - 1).saturating_mul(layer(h, h)))
            .saturating_add(layer(h, head))
    };
    e.saturating_mul(per_member)
        .saturating_add(if m.probabilistic { 2 * o } else { 0 })
}

fn refuse_over_memory(key: &str, what: String, bytes: u128) -> Result<()> {
    if let Some(mem) = machine_memory() {
        if bytes > mem as u128 {
            return Err(setting!(
                key,
                "is too large: {what} would need {} of memory; this machine has {}",
                fmt_bytes(bytes),
                fmt_bytes(mem as u128)
            ));
        }
    }
    // Without /proc/meminfo, at least refuse what no 64-bit address space holds.
    if bytes > (isize::MAX as u128) {
        return Err(setting!(
            key,
            "is too large: {what} would need {}",
            fmt_bytes(bytes)
        ));
    }
    Ok(())
}

/// Memory for training the model on minibatches of `batch` rows per member: parameters with
/// their gradients and two Adam moments, plus each layer's activations for the backward.
pub fn check_model(m: &ModelConfig, batch: usize) -> Result<()> {
    let params = model_params(m);
    let key = if m.hidden as u128 * m.hidden as u128 >= m.ensemble_size as u128 {
        "model.hidden"
    } else {
        "model.ensemble_size"
    };
    refuse_over_memory(
        key,
        format!(
            "{} members of {}×{} ({} parameters, with gradients and Adam moments)",
            m.ensemble_size, m.num_layers, m.hidden, params
        ),
        params * 4 * 4,
    )?;
    let acts = product(&[
        m.ensemble_size,
        batch,
        m.hidden.max(m.in_dim()),
        m.num_layers + 2,
    ]);
    refuse_over_memory(
        "train.batch_size",
        format!(
            "minibatches of {batch} rows for {} members of width {}",
            m.ensemble_size, m.hidden
        ),
        acts * 4 * 3,
    )
}

/// Planning buffers: the population of action sequences and, per candidate and particle, a
/// state in flight. Every count a kernel indexes with a u32 must fit one.
pub fn check_planning(
    m: Option<&ModelConfig>,
    p: &PlannerConfig,
    act_dim: usize,
    obs_dim: usize,
    particles: usize,
) -> Result<()> {
    let factors = [
        ("planner.population", p.population),
        ("particles", particles),
        ("planner.horizon", p.horizon),
    ];
    // The largest factor is the one to blame.
    let key = factors.iter().max_by_key(|(_, v)| *v).expect("three").0;
    let rows = product(&[p.population, particles]);
    let actions = product(&[p.population, p.horizon, act_dim]);
    let evals = product(&[p.population, particles, p.horizon]);
    let u32_max = u32::MAX as u128;
    if rows > u32_max || actions > u32_max || evals > u32_max {
        return Err(setting!(
            key,
            "is too large: {} candidates × {} particles × {} steps is more than the 2^32 \
             rows and action values one planning step can index",
            p.population,
            particles,
            p.horizon
        ));
    }
    let bytes = 4 * (4 * actions + rows * (2 * obs_dim as u128 + 2) + p.population as u128);
    refuse_over_memory(
        key,
        format!(
            "{} candidates × {} particles over {} steps",
            p.population, particles, p.horizon
        ),
        bytes,
    )?;
    if let Some(m) = m {
        refuse_over_memory(
            "model.hidden",
            format!("the model ({} parameters)", model_params(m)),
            model_params(m) * 4,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_params_should_match_the_layout() {
        for (probabilistic, learn_reward, layers) in
            [(true, false, 4), (false, true, 1), (true, true, 2)]
        {
            let mut m = ModelConfig::pets(5, 2);
            m.probabilistic = probabilistic;
            m.learn_reward = learn_reward;
            m.num_layers = layers;
            m.hidden = 13;
            m.ensemble_size = 3;
            assert_eq!(model_params(&m), m.shape().layout().total as u128);
        }
    }

    #[test]
    fn model_params_should_saturate_instead_of_overflowing() {
        let mut m = ModelConfig::pets(usize::MAX, usize::MAX);
        m.hidden = usize::MAX;
        m.num_layers = usize::MAX;
        m.ensemble_size = usize::MAX;
        assert_eq!(model_params(&m), u128::MAX);
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("is too large"), "{e}");
    }

    #[test]
    fn absurd_sizes_should_name_the_setting_and_the_memory() {
        let p = PlannerConfig {
            population: 1 << 40,
            ..PlannerConfig::pets_cartpole()
        };
        let e = check_planning(None, &p, 1, 4, 20).unwrap_err().to_string();
        assert!(e.starts_with("planner.population is too large"), "{e}");
        let p = PlannerConfig::pets_cartpole();
        let e = check_planning(None, &p, 1, 4, usize::MAX)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("particles is too large"), "{e}");
        let mut m = ModelConfig::pets(4, 1);
        m.hidden = 1 << 20;
        let e = check_model(&m, 256).unwrap_err().to_string();
        assert!(e.starts_with("model.hidden") && e.contains("TiB"), "{e}");
        assert!(check_model(&ModelConfig::pets(4, 1), 256).is_ok());
        assert!(check_planning(
            Some(&ModelConfig::pets(4, 1)),
            &PlannerConfig::pets_cartpole(),
            1,
            4,
            20
        )
        .is_ok());
    }
}
