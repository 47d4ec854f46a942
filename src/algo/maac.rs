//! MAAC's horizon trade-off (Clavera et al. 2020, Lemma 4.1): the error of the model-path
//! gradient against the gradient through the true dynamics, as H grows.
//!
//! MAAC itself is MBPO's loop with a `[maac]` section ([`super::mbpo::MaacSettings`]).
use super::mbpo::elite_view;
use crate::env::EnvId;
use crate::model::Ensemble;
use crate::policy::path::{
    path_loss, ModelPath, PathDynamics, PathNoise, PathSettings, PathWorkspace, TrueCartPole,
    TrueMountainCar, TruePendulum,
};
use crate::policy::Sac;
use crate::{invalid, Result};

/// The model-path gradient of one horizon against the true-dynamics one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradientError {
    pub horizon: usize,
    /// cos∠(∇J_model, ∇J_true).
    pub cosine: f64,
    /// ‖∇J_model − ∇J_true‖ / ‖∇J_true‖.
    pub relative_error: f64,
    pub model_norm: f64,
    pub true_norm: f64,
}

/// ∇θ of the path loss of horizon `h` from `rows` start states of the task's initial
/// distribution (reset seeds from `seed`), once through the model's elites and once through
/// the true dynamics, in f64, with the same policy noise and critics. The model runs its
/// mean prediction (ξ = 0): the lemma compares derivatives of the dynamics, and the true
/// dynamics are deterministic. Each row's member is drawn per step, as in MAAC.
pub fn gradient_error(
    agent: &Sac,
    model: &Ensemble,
    env: EnvId,
    h: usize,
    rows: usize,
    seed: u64,
) -> Result<GradientError> {
    let mut truth: Box<dyn PathDynamics<f64>> = match env {
        EnvId::Pendulum => Box::new(TruePendulum::new()),
        EnvId::CartPole => Box::new(TrueCartPole::new()),
        EnvId::MountainCar => Box::new(TrueMountainCar::new()),
    };
    let spec = env.spec();
    if model.config.obs_dim != spec.obs_dim || agent.nets.obs_dim != spec.obs_dim {
        return Err(invalid!(
            "the model ({} observations) and the policy ({}) must both be for {} ({})",
            model.config.obs_dim,
            agent.nets.obs_dim,
            env.name(),
            spec.obs_dim
        ));
    }
    let c64 = |v: &[f32]| v.iter().map(|x| *x as f64).collect::<Vec<f64>>();
    let mut start = vec![0.0f64; rows * spec.obs_dim];
    let mut state = vec![0.0f64; spec.state_dim];
    let mut obs = vec![0.0f32; spec.obs_dim];
    for (b, row) in start.chunks_exact_mut(spec.obs_dim).enumerate() {
        env.reset_state_f64(
            seed.wrapping_mul(1_000_003).wrapping_add(b as u64),
            &mut state,
        );
        env.observe_f64(&state, &mut obs);
        row.copy_from_slice(&c64(&obs));
    }
    let (shape, params) = elite_view(model);
    let mut noise = PathNoise::draw(
        seed,
        0,
        h,
        rows,
        agent.nets.act_dim,
        shape.out_dim,
        shape.ensemble,
    )
    .cast::<f64>();
    noise.xi.iter_mut().for_each(|x| *x = 0.0);
    let (actor, critic) = (c64(&agent.actor), c64(&agent.critic));
    let (params, mean, std) = (c64(&params), c64(&model.input_mean), c64(&model.input_std));
    let sq = agent.squash.cast::<f64>();
    let set = PathSettings::plain(
        agent.cfg.gamma as f64,
        agent.alpha() as f64,
        env.code(),
        true,
    );
    let mut g_model = vec![0.0; actor.len()];
    let mut dynamics = ModelPath::new(
        shape,
        &params,
        &mean,
        &std,
        spec.obs_dim,
        model.config.learn_reward,
        &noise.member,
        &noise.xi,
    );
    let mut ws = PathWorkspace::default();
    path_loss(
        &agent.nets,
        &actor,
        &critic,
        &sq,
        &mut dynamics,
        set,
        &start,
        &noise,
        Some(&mut g_model),
        &mut ws,
    );
    let mut g_true = vec![0.0; actor.len()];
    path_loss(
        &agent.nets,
        &actor,
        &critic,
        &sq,
        truth.as_mut(),
        set,
        &start,
        &noise,
        Some(&mut g_true),
        &mut ws,
    );
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let (nm, nt) = (dot(&g_model, &g_model).sqrt(), dot(&g_true, &g_true).sqrt());
    let diff: Vec<f64> = g_model.iter().zip(&g_true).map(|(x, y)| x - y).collect();
    Ok(GradientError {
        horizon: h,
        // Clamped: ‖a‖·‖a‖ rounds apart from a·a, and a cosine of 1 + 2⁻⁵² means nothing.
        cosine: (dot(&g_model, &g_true) / (nm * nt).max(f64::MIN_POSITIVE)).clamp(-1.0, 1.0),
        relative_error: dot(&diff, &diff).sqrt() / nt.max(f64::MIN_POSITIVE),
        model_norm: nm,
        true_norm: nt,
    })
}
