//! The path gradient of [`crate::policy::path::path_loss`] on any backend: MAAC's objective
//! through the learned model, composed of the dense-layer engine's products
//! (`ensemble_forward`, `ensemble_vjp`) and six per-row stages (`Backend::path_*`) that keep
//! everything the backward needs on the device, in one tape.
//!
//! Per path of horizon H: the host draws [`PathNoise`], lays out each step's member slots (as
//! `ModelPath` groups rows by member) and uploads the noise once. The forward then runs per
//! step t < H the actor, `path_squash` (action, log π, grouped model input), the elites and
//! `path_step` (Gaussian next state, reward, termination); at H the actor, `path_squash`, the
//! critics and `path_terminal` (loss, ∂/∂Q, the temperature's gradient). The reverse sweep
//! runs the critics' VJP, then per step from H down to 0 (`path_model_back` and the elites'
//! VJP for t < H) `path_actor_back`, the actor's VJP and `path_accumulate`: 9H + 8 launches
//! with a terminal value, and no transfer but the noise.
//!
//! On the CPU backend the result equals `path_loss` with `ModelPath` up to the rounding of
//! the fused forward kernel (a test below); the device backends are checked against the CPU
//! in their parity tests.
use super::device::BranchModel;
use super::path::PathNoise;
use super::sac::{Nets, Squash};
use crate::backend::cpu::sac::EMPTY_SLOT;
use crate::backend::{path_report, Backend, PathParams, PathShape};
use crate::Result;

/// The networks a path runs through, on the device: the actor and the critics with their
/// unit input normalisations ([mean, std], as `DeviceSac` holds them) and the elites.
pub struct PathNets<'n, Buf> {
    pub nets: &'n Nets,
    pub actor: &'n Buf,
    pub critic: &'n Buf,
    pub norm_obs: &'n Buf,
    pub norm_critic: &'n Buf,
    pub model: BranchModel<'n, Buf>,
    pub log_alpha: &'n Buf,
}

/// What a path objective computes besides its networks (`PathSettings` of the host path,
/// with α read from the device's log α).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PathSpec {
    pub gamma: f32,
    pub task: u32,
    pub learn_reward: bool,
    pub terminal_value: bool,
    pub target_entropy: f32,
    /// `PathSettings::step_grad_norm`, `mean_limit` and `mean_penalty` (0: off).
    pub step_grad_norm: f32,
    pub mean_limit: f32,
    pub mean_penalty: f32,
}

/// Device buffers of path batches of one size, kept between updates.
pub struct DevicePath<Buf> {
    p: PathParams,
    /// Rows per member slot at each step t < H.
    per: Vec<usize>,
    noise_host: Vec<f32>,
    noise: Buf,
    tape: Buf,
    back: Buf,
    head: Buf,
    state: Buf,
    /// The grouped model input (and its rebuild in the backward), [members·B, O + A].
    xg: Buf,
    mean: Buf,
    logvar: Buf,
    xc: Buf,
    q: Buf,
    dq: Buf,
    dxc: Buf,
    dxg: Buf,
    d_mean: Buf,
    d_logvar: Buf,
    d_head: Buf,
    ds: Buf,
    g_step: Buf,
    /// [`path_report`]: loss, mean log π₀, mean reward, alive share.
    pub report: Buf,
    /// −(mean log π₀ + H̄), the temperature's gradient.
    pub alpha_grad: Buf,
}

impl<Buf> DevicePath<Buf> {
    /// The sizes it was made for.
    pub fn shape(&self) -> PathShape {
        let p = &self.p;
        PathShape {
            rows: p.rows as usize,
            obs_dim: p.obs_dim as usize,
            act_dim: p.act_dim as usize,
            out_dim: p.out_dim as usize,
            members: p.members as usize,
            horizon: p.horizon as usize,
        }
    }
}

impl<Buf> DevicePath<Buf> {
    /// Buffers for paths of `shape` with an actor of `actor_len` parameters and the policy's
    /// action squash.
    pub fn new<B: Backend<Buf = Buf>>(
        be: &B,
        shape: PathShape,
        actor_len: usize,
        squash: &Squash<f32>,
    ) -> Result<Self> {
        let p = PathParams {
            len: actor_len as u32,
            ..PathParams::new(shape)
        };
        let (b, o, a, d) = (shape.rows, shape.obs_dim, shape.act_dim, shape.out_dim);
        let g = p.grouped as usize;
        let z = |n: usize| be.zeros(n.max(1));
        let mut tape = z(p.tape_len())?;
        let mut sb = squash.scale.clone();
        sb.extend_from_slice(&squash.bias);
        be.write_at(&mut tape, p.t_squash as usize, &sb)?;
        Ok(Self {
            per: vec![1; shape.horizon],
            noise_host: vec![0.0; p.noise_len()],
            noise: z(p.noise_len())?,
            tape,
            back: z(p.back_len())?,
            head: z(b * 2 * a)?,
            state: z(b * o)?,
            xg: z(g * (o + a))?,
            mean: z(g * d)?,
            logvar: z(g * d)?,
            xc: z(2 * b * (o + a))?,
            q: z(2 * b)?,
            dq: z(2 * b)?,
            dxc: z(2 * b * (o + a))?,
            dxg: z(g * (o + a))?,
            d_mean: z(g * d)?,
            d_logvar: z(g * d)?,
            d_head: z(b * 2 * a)?,
            ds: z(b * o)?,
            g_step: z(actor_len)?,
            report: z(path_report::LEN)?,
            alpha_grad: z(1)?,
            p,
        })
    }

    /// Lay out `noise` (drawn for this shape) with its member tables and upload it: ε and ξ
    /// as drawn, each step's slots as `ModelPath` groups rows (members in order, rows in row
    /// order within a member, `per` the most rows any member draws).
    pub fn set_noise<B: Backend<Buf = Buf>>(
        &mut self,
        be: &B,
        noise: &PathNoise<f32>,
    ) -> Result<()> {
        let p = self.p;
        let (b, h, e, g) = (
            p.rows as usize,
            p.horizon as usize,
            p.members as usize,
            p.grouped as usize,
        );
        let a = p.act_dim as usize;
        let d = p.out_dim as usize;
        if noise.rows != b
            || noise.horizon != h
            || noise.eps.len() != (h + 1) * b * a
            || noise.xi.len() != h * b * d
            || noise.member.len() != h * b
        {
            return Err(crate::invalid!(
                "path noise for {} rows over {} steps does not fit paths of {b} rows over {h} \
                 steps with {a} actions and {d} model outputs",
                noise.rows,
                noise.horizon
            ));
        }
        if let Some(m) = noise.member.iter().find(|m| **m >= e) {
            return Err(crate::invalid!(
                "path noise draws member {m} of a model with {e} elites"
            ));
        }
        let host = &mut self.noise_host;
        host[p.n_eps as usize..][..noise.eps.len()].copy_from_slice(&noise.eps);
        host[p.n_xi as usize..][..noise.xi.len()].copy_from_slice(&noise.xi);
        let empty = f32::from_bits(EMPTY_SLOT);
        for t in 0..h {
            let member = &noise.member[t * b..(t + 1) * b];
            let mut count = vec![0usize; e];
            let mut rank = vec![0usize; b];
            for (r, &m) in member.iter().enumerate() {
                rank[r] = count[m];
                count[m] += 1;
            }
            let per = count.iter().copied().max().unwrap_or(0).max(1);
            self.per[t] = per;
            let table = &mut host[p.n_rowof as usize + t * g..][..g];
            table.fill(empty);
            for (r, &m) in member.iter().enumerate() {
                let slot = m * per + rank[r];
                host[p.n_slot as usize + t * b + r] = f32::from_bits(slot as u32);
                host[p.n_rowof as usize + t * g + slot] = f32::from_bits(r as u32);
            }
        }
        be.write(&mut self.noise, &self.noise_host)
    }

    /// Write NaN over every buffer the stages fill (tests: a stage that leaves a value
    /// unwritten and a later one that reads it show up as NaN).
    pub fn poison<B: Backend<Buf = Buf>>(&mut self, be: &B) -> Result<()> {
        let p = self.p;
        let nan = |be: &B, buf: &mut Buf, n: usize| be.write(buf, &vec![f32::NAN; n.max(1)]);
        let squash = be.download_at(&self.tape, p.t_squash as usize, 2 * p.act_dim as usize)?;
        nan(be, &mut self.tape, p.tape_len())?;
        be.write_at(&mut self.tape, p.t_squash as usize, &squash)?;
        let (b, o, a, d) = (
            p.rows as usize,
            p.obs_dim as usize,
            p.act_dim as usize,
            p.out_dim as usize,
        );
        let g = p.grouped as usize;
        nan(be, &mut self.back, p.back_len())?;
        nan(be, &mut self.head, b * 2 * a)?;
        nan(be, &mut self.state, b * o)?;
        nan(be, &mut self.xg, g * (o + a))?;
        nan(be, &mut self.mean, g * d)?;
        nan(be, &mut self.logvar, g * d)?;
        nan(be, &mut self.xc, 2 * b * (o + a))?;
        nan(be, &mut self.q, 2 * b)?;
        nan(be, &mut self.dq, 2 * b)?;
        nan(be, &mut self.dxc, 2 * b * (o + a))?;
        nan(be, &mut self.dxg, g * (o + a))?;
        nan(be, &mut self.d_mean, g * d)?;
        nan(be, &mut self.d_logvar, g * d)?;
        nan(be, &mut self.d_head, b * 2 * a)?;
        nan(be, &mut self.ds, b * o)?;
        nan(be, &mut self.g_step, p.len as usize)?;
        nan(be, &mut self.report, path_report::LEN)?;
        nan(be, &mut self.alpha_grad, 1)
    }

    /// The path loss from the start states `start` [B, O] with the noise last set: ∂loss/∂θ
    /// of the actor into `grad` (overwritten), the report into [`DevicePath::report`], the
    /// temperature's gradient into [`DevicePath::alpha_grad`], and SAC's actor statistics
    /// added to `stats` ([`crate::backend::sac_stats`]).
    pub fn run<B: Backend<Buf = Buf>>(
        &mut self,
        be: &B,
        n: &PathNets<'_, Buf>,
        spec: PathSpec,
        start: &Buf,
        grad: &mut Buf,
        stats: &mut Buf,
    ) -> Result<()> {
        let h = self.p.horizon as usize;
        let rows = self.p.rows as usize;
        let model = &n.model;
        if model.shape.ensemble != self.p.members as usize
            || model.shape.out_dim != self.p.out_dim as usize
            || model.shape.in_dim != (self.p.obs_dim + self.p.act_dim) as usize
            || n.nets.obs_dim != self.p.obs_dim as usize
            || n.nets.act_dim != self.p.act_dim as usize
            || n.nets.actor.layout().total != self.p.len as usize
        {
            return Err(crate::invalid!(
                "the networks do not fit path buffers made for {:?}",
                self.shape()
            ));
        }
        let base = PathParams {
            gamma: spec.gamma,
            task: spec.task,
            learn_reward: u32::from(spec.learn_reward),
            probabilistic: u32::from(model.shape.probabilistic),
            terminal_value: u32::from(spec.terminal_value),
            target_entropy: spec.target_entropy,
            step_grad_norm: spec.step_grad_norm,
            mean_limit: spec.mean_limit,
            mean_penalty: spec.mean_penalty,
            ..self.p
        };
        // γ^t as `path_loss` forms it: t products in f32.
        let mut disc = vec![1.0f32; h + 1];
        for t in 1..=h {
            disc[t] = disc[t - 1] * spec.gamma;
        }
        let at = |t: usize| PathParams {
            t: t as u32,
            per: if t < h { self.per[t] as u32 } else { 1 },
            disc: disc[t],
            ..base
        };
        for t in 0..=h {
            let p = at(t);
            let input = if t == 0 { start } else { &self.state };
            be.ensemble_forward(
                &n.nets.actor,
                n.actor,
                n.norm_obs,
                input,
                rows,
                &mut self.head,
                &mut self.d_head,
            )?;
            let x = if t < h { &mut self.xg } else { &mut self.xc };
            be.path_squash(&p, &self.head, start, &self.noise, &mut self.tape, x)?;
            if t < h {
                be.ensemble_forward(
                    &model.shape,
                    model.params,
                    model.norm,
                    &self.xg,
                    self.per[t],
                    &mut self.mean,
                    &mut self.logvar,
                )?;
                be.path_step(
                    &p,
                    &self.mean,
                    &self.logvar,
                    &self.noise,
                    &mut self.tape,
                    &mut self.state,
                )?;
            }
        }
        let p = at(h);
        if spec.terminal_value {
            be.ensemble_forward(
                &n.nets.critic,
                n.critic,
                n.norm_critic,
                &self.xc,
                rows,
                &mut self.q,
                &mut self.dxc,
            )?;
        }
        be.path_terminal(
            &p,
            &self.q,
            n.log_alpha,
            &mut self.tape,
            &mut self.dq,
            &mut self.alpha_grad,
            &mut self.report,
            stats,
        )?;
        if spec.terminal_value {
            be.ensemble_vjp(
                &n.nets.critic,
                n.critic,
                n.norm_critic,
                &self.xc,
                rows,
                &self.dq,
                &self.dq,
                None,
                Some(&mut self.dxc),
            )?;
        }
        for t in (0..=h).rev() {
            let p = at(t);
            let dx = if t < h {
                be.path_model_back(
                    &p,
                    &self.noise,
                    &self.tape,
                    &mut self.back,
                    &mut self.xg,
                    &mut self.d_mean,
                    &mut self.d_logvar,
                )?;
                be.ensemble_vjp(
                    &model.shape,
                    model.params,
                    model.norm,
                    &self.xg,
                    self.per[t],
                    &self.d_mean,
                    &self.d_logvar,
                    None,
                    Some(&mut self.dxg),
                )?;
                &self.dxg
            } else if spec.terminal_value {
                &self.dxc
            } else {
                // Not read: no terminal value.
                &self.q
            };
            be.path_actor_back(
                &p,
                &self.noise,
                &self.tape,
                dx,
                &mut self.back,
                &mut self.d_head,
                &mut self.state,
            )?;
            be.ensemble_vjp(
                &n.nets.actor,
                n.actor,
                n.norm_obs,
                &self.state,
                rows,
                &self.d_head,
                &self.d_head,
                Some(&mut self.g_step),
                Some(&mut self.ds),
            )?;
            be.path_accumulate(&p, &self.g_step, &self.ds, grad, &mut self.back)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::EnsembleShape;
    use crate::env::EnvId;
    use crate::policy::path::{path_loss, ModelPath, PathSettings, PathWorkspace};
    use crate::policy::sac::{init_params, SacConfig};

    /// A small actor, critics and a three-member model (f32) for `o` observations, 1 action.
    struct Case {
        nets: Nets,
        sq: Squash<f32>,
        actor: Vec<f32>,
        critic: Vec<f32>,
        shape: EnsembleShape,
        model: Vec<f32>,
        norm: Vec<f32>,
    }

    fn case(o: usize, learn_reward: bool, probabilistic: bool) -> Case {
        let cfg = SacConfig {
            hidden: 9,
            num_layers: 2,
            ..SacConfig::default()
        };
        let nets = Nets::new(o, 1, &cfg);
        let mut actor = init_params(&nets.actor, 3, 0);
        let head = *nets.actor.layout().layers.last().unwrap();
        actor[head.bias + 1] = -0.5;
        let critic = init_params(&nets.critic, 3, 1);
        let shape = EnsembleShape {
            ensemble: 3,
            in_dim: o + 1,
            out_dim: o + usize::from(learn_reward),
            hidden: 7,
            num_layers: 2,
            activation: crate::backend::Activation::Silu,
            probabilistic,
        };
        let mut model = crate::backend::cpu::ensemble::init_params(&shape, 5);
        let lay = shape.layout();
        if probabilistic {
            for v in &mut model[lay.max_logvar..lay.max_logvar + shape.out_dim] {
                *v = -1.0;
            }
        }
        let mut norm: Vec<f32> = (0..o + 1).map(|i| 0.1 * i as f32 - 0.2).collect();
        norm.extend((0..o + 1).map(|i| 1.0 + 0.2 * i as f32));
        Case {
            nets,
            sq: Squash::from_bounds(&[-2.0], &[2.0]),
            actor,
            critic,
            shape,
            model,
            norm,
        }
    }

    /// `path_loss` through `ModelPath` in f32: the host's reference.
    fn host(
        c: &Case,
        set: PathSettings<f32>,
        start: &[f32],
        noise: &PathNoise<f32>,
    ) -> (Vec<f32>, crate::policy::path::PathReport<f32>) {
        let i = c.shape.in_dim;
        let mut dynamics = ModelPath::new(
            c.shape,
            &c.model,
            &c.norm[..i],
            &c.norm[i..],
            c.nets.obs_dim,
            c.shape.out_dim > c.nets.obs_dim,
            &noise.member,
            &noise.xi,
        );
        let mut g = vec![0.0f32; c.actor.len()];
        let rep = path_loss(
            &c.nets,
            &c.actor,
            &c.critic,
            &c.sq,
            &mut dynamics,
            set,
            start,
            noise,
            Some(&mut g),
            &mut PathWorkspace::default(),
        );
        (g, rep)
    }

    /// The composition on backend `be`: (∂loss/∂θ, report, α gradient).
    fn on_backend<B: Backend>(
        be: &B,
        c: &Case,
        spec: PathSpec,
        log_alpha: f32,
        start: &[f32],
        noise: &PathNoise<f32>,
        poison: bool,
    ) -> Result<(Vec<f32>, Vec<f32>, f32)> {
        let (o, a) = (c.nets.obs_dim, c.nets.act_dim);
        let unit = |n: usize| {
            let mut v = vec![0.0f32; n];
            v.extend(std::iter::repeat_n(1.0f32, n));
            v
        };
        let (actor, critic) = (be.upload(&c.actor)?, be.upload(&c.critic)?);
        let (norm_obs, norm_critic) = (be.upload(&unit(o))?, be.upload(&unit(o + a))?);
        let (model, norm) = (be.upload(&c.model)?, be.upload(&c.norm)?);
        let log_alpha = be.upload(&[log_alpha])?;
        let n = PathNets {
            nets: &c.nets,
            actor: &actor,
            critic: &critic,
            norm_obs: &norm_obs,
            norm_critic: &norm_critic,
            model: BranchModel {
                shape: c.shape,
                params: &model,
                norm: &norm,
            },
            log_alpha: &log_alpha,
        };
        let shape = PathShape {
            rows: noise.rows,
            obs_dim: o,
            act_dim: a,
            out_dim: c.shape.out_dim,
            members: c.shape.ensemble,
            horizon: noise.horizon,
        };
        let mut path = DevicePath::new(be, shape, c.actor.len(), &c.sq)?;
        path.set_noise(be, noise)?;
        let mut grad = be.upload(&vec![f32::NAN; c.actor.len()])?;
        if poison {
            path.poison(be)?;
        }
        let start = be.upload(start)?;
        let mut stats = be.zeros(crate::backend::sac_stats::LEN)?;
        path.run(be, &n, spec, &start, &mut grad, &mut stats)?;
        Ok((
            be.download(&grad)?,
            be.download(&path.report)?,
            be.download(&path.alpha_grad)?[0],
        ))
    }

    fn pendulum_starts(rows: usize) -> Vec<f32> {
        let mut g = crate::rng::Philox::new(11, 98, 0);
        (0..rows)
            .flat_map(|_| {
                let (th, td) = (g.normal() * 1.5, g.normal());
                [th.cos(), th.sin(), td]
            })
            .collect()
    }

    fn cartpole_edge_starts(rows: usize) -> Vec<f32> {
        let mut g = crate::rng::Philox::new(13, 98, 0);
        (0..rows * 4)
            .map(|i| {
                let r = g.normal() * 0.02;
                if i / 4 % 2 == 0 && i % 4 == 0 {
                    2.37 + r
                } else {
                    r
                }
            })
            .collect()
    }

    /// Checks the composition on the CPU backend against `path_loss`. Not bit for bit: the
    /// backend's `ensemble_forward` is the fused inference kernel, whose sums round apart from
    /// `forward_cached`'s (which `path_loss` runs) by an ulp in some sizes; the stages
    /// themselves keep `path_loss`'s order, so the pendulum cases do agree bit for bit on
    /// the machines we have measured.
    fn same_as_host(c: &Case, spec: PathSpec, start: &[f32], rows: usize, h: usize) -> f32 {
        let log_alpha = -1.3f32;
        let (g_host, rep, noise) = host_of_spec(c, spec, log_alpha, start, rows, h);
        let (g, report, alpha_grad) =
            on_backend(&CpuBackend::new(), c, spec, log_alpha, start, &noise, true).unwrap();
        let scale = g_host.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        for (i, (x, y)) in g.iter().zip(&g_host).enumerate() {
            let err = (x - y).abs() / (y.abs() + 1e-3 * scale);
            assert!(err < 1e-4, "∂θ[{i}]: {x} vs {y}");
        }
        let close = |x: f32, y: f32| (x - y).abs() <= 1e-5 * (1.0 + y.abs());
        assert!(
            close(report[path_report::LOSS], rep.loss),
            "{report:?} vs {rep:?}"
        );
        assert!(close(report[path_report::LOGP_MEAN], rep.logp_mean));
        assert!(close(report[path_report::REWARD_MEAN], rep.reward_mean));
        assert_eq!(report[path_report::ALIVE], rep.alive);
        assert!(close(alpha_grad, -(rep.logp_mean + spec.target_entropy)));
        rep.alive
    }

    /// `host` with the settings of `spec` and the noise `same_as_host` draws.
    fn host_of_spec(
        c: &Case,
        spec: PathSpec,
        log_alpha: f32,
        start: &[f32],
        rows: usize,
        h: usize,
    ) -> (
        Vec<f32>,
        crate::policy::path::PathReport<f32>,
        PathNoise<f32>,
    ) {
        let noise = PathNoise::draw(4, 7, h, rows, 1, c.shape.out_dim, c.shape.ensemble);
        let set = PathSettings {
            step_grad_norm: spec.step_grad_norm,
            mean_limit: spec.mean_limit,
            mean_penalty: spec.mean_penalty,
            ..PathSettings::plain(spec.gamma, log_alpha.exp(), spec.task, spec.terminal_value)
        };
        let (g, rep) = host(c, set, start, &noise);
        (g, rep, noise)
    }

    fn spec(task: EnvId, learn_reward: bool, terminal_value: bool) -> PathSpec {
        PathSpec {
            gamma: 0.95,
            task: task.code(),
            learn_reward,
            terminal_value,
            target_entropy: -1.0,
            ..PathSpec::default()
        }
    }

    #[test]
    fn cpu_composition_should_equal_path_loss() {
        // Pendulum rewards with their hand-written gradients, a probabilistic model.
        let c = case(3, false, true);
        // H = 0: SAC's actor loss.
        let s = spec(EnvId::Pendulum, false, true);
        same_as_host(&c, s, &pendulum_starts(6), 6, 0);
        // A deterministic model.
        let d = case(3, false, false);
        same_as_host(&d, s, &pendulum_starts(5), 5, 1);
        assert_eq!(same_as_host(&c, s, &pendulum_starts(7), 7, 3), 1.0);
        // SVG(∞)'s finite horizon: no critic.
        let s = spec(EnvId::Pendulum, false, false);
        same_as_host(&c, s, &pendulum_starts(5), 5, 4);
        // With SVG(∞)'s step clip and mean penalty, with and without a terminal value;
        // each changes the gradient here (so each is exercised).
        for terminal_value in [false, true] {
            let plain = spec(EnvId::Pendulum, false, terminal_value);
            let s = PathSpec {
                step_grad_norm: 0.02,
                mean_limit: 0.05,
                mean_penalty: 0.5,
                ..plain
            };
            same_as_host(&c, s, &pendulum_starts(5), 5, 4);
            let start = pendulum_starts(5);
            let g = |s: PathSpec| host_of_spec(&c, s, -1.3, &start, 5, 4).0;
            let base = g(plain);
            let clip_only = PathSpec {
                mean_penalty: 0.0,
                ..s
            };
            let pen_only = PathSpec {
                step_grad_norm: 0.0,
                ..s
            };
            let moved = |x: &[f32]| x.iter().zip(&base).any(|(p, q)| (p - q).abs() > 1e-4);
            assert!(moved(&g(clip_only)) && moved(&g(pen_only)));
        }
    }

    #[test]
    fn cpu_composition_with_learned_rewards_and_termination_should_equal_path_loss() {
        // Small steps (a tenth of the head, σ ≈ 0.08), so that only the rows started at the
        // track's edge terminate.
        let calm = |mut c: Case| {
            let lay = c.shape.layout();
            let head = *lay.layers.last().unwrap();
            let n = c.shape.ensemble * head.fan_in * head.fan_out;
            c.model[head.weight..head.weight + n]
                .iter_mut()
                .for_each(|w| *w *= 0.1);
            for v in &mut c.model[lay.max_logvar..lay.max_logvar + c.shape.out_dim] {
                *v = -5.0;
            }
            c
        };
        let c = calm(case(4, true, true));
        let s = spec(EnvId::CartPole, true, true);
        let alive = same_as_host(&c, s, &cartpole_edge_starts(8), 8, 4);
        assert!(alive > 0.0 && alive < 1.0, "alive {alive}");
        // The task's reward (1 while alive) with the same termination.
        let c = calm(case(4, false, true));
        let s = spec(EnvId::CartPole, false, true);
        same_as_host(&c, s, &cartpole_edge_starts(8), 8, 3);
    }

    #[test]
    fn bad_noise_and_networks_should_be_refused_by_name() {
        let be = CpuBackend::new();
        let c = case(3, false, true);
        let shape = PathShape {
            rows: 4,
            obs_dim: 3,
            act_dim: 1,
            out_dim: 3,
            members: 3,
            horizon: 2,
        };
        let mut path = DevicePath::new(&be, shape, c.actor.len(), &c.sq).unwrap();
        let wrong = PathNoise::draw(1, 0, 3, 4, 1, 3, 3);
        let e = path.set_noise(&be, &wrong).unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
        let mut far = PathNoise::draw(1, 0, 2, 4, 1, 3, 3);
        far.member[5] = 3;
        let e = path.set_noise(&be, &far).unwrap_err().to_string();
        assert!(e.contains("member 3"), "{e}");
        // Hand-made tables that do not route every row are refused by the CPU's check.
        let p = PathParams {
            len: c.actor.len() as u32,
            per: 2,
            ..PathParams::new(shape)
        };
        let noise = vec![0.0f32; p.noise_len()];
        let mut tape = vec![0.0f32; p.tape_len()];
        let mut x = vec![0.0f32; 24 * 4];
        let e = be
            .path_squash(&p, &vec![0.0; 8], &vec![0.0; 12], &noise, &mut tape, &mut x)
            .unwrap_err()
            .to_string();
        assert!(e.contains("grouped batch holds"), "{e}");
        // Offsets that are not the layout's.
        let q = PathParams { t_act: 1, ..p };
        let e = be
            .path_squash(&q, &vec![0.0; 8], &vec![0.0; 12], &noise, &mut tape, &mut x)
            .unwrap_err()
            .to_string();
        assert!(e.contains("offsets"), "{e}");
    }
}
