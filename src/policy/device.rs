//! SAC's gradient step on any backend, composed of the dense-layer engine's products
//! (`ensemble_forward`, `ensemble_vjp`), the SAC stages (`sac_*`), Adam and Polyak: the same
//! step as [`Sac::update`] (the CPU specification, checked against finite differences),
//! with every parameter, moment, activation and statistic kept on the device. The minibatch
//! is drawn on the device from a mirror of the replay buffer ([`DeviceReplay`],
//! [`DeviceSac::update_from`]) or written from the host ([`DeviceSac::update`]); the noise is
//! drawn on the device. Nothing is read back until [`DeviceSac::sync`], which copies the agent
//! to the host at evaluation points (and [`DeviceSac::read_actor`], before the host acts).
//!
//! A diverged update cannot be refused one at a time without reading every gradient back;
//! instead [`DeviceSac::sync`] checks the whole agent and, if anything is non-finite, leaves
//! the host agent at its last good values and resets the device copy to them.
use super::device_path::{DevicePath, PathNets, PathSpec};
use super::path::PathNoise;
use super::sac::{Batch, Nets, Sac};
use crate::backend::{sac_stats, AdamParams, Backend, PathShape, Precision, SacParams};
use crate::policy::Replay;
use crate::rng::stream;
use crate::{Error, Result};

/// Means of the update statistics since the last [`DeviceSac::sync`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DeviceStats {
    pub updates: u64,
    /// Updates rolled back because the agent became non-finite (then the others are 0).
    pub diverged: u64,
    pub critic_loss: f64,
    pub actor_loss: f64,
    pub alpha_loss: f64,
    pub q_mean: f64,
    pub entropy: f64,
    /// Mean α after each update (as [`crate::policy::sac::UpdateStats::alpha`]).
    pub alpha: f64,
}

/// A minibatch's columns on the device: what [`Backend::sac_minibatch`] draws from a packed
/// replay ring.
struct Columns<Buf> {
    obs: Buf,
    act: Buf,
    reward: Buf,
    next_obs: Buf,
    mask: Buf,
}

impl<Buf> Columns<Buf> {
    fn zeros<B: Backend<Buf = Buf>>(be: &B, rows: usize, o: usize, a: usize) -> Result<Self> {
        let z = |n: usize| be.zeros(n.max(1));
        Ok(Self {
            obs: z(rows * o)?,
            act: z(rows * a)?,
            reward: z(rows)?,
            next_obs: z(rows * o)?,
            mask: z(rows)?,
        })
    }

    /// The rows `p` draws from `ring` (the CPU's `Replay::sample`).
    fn draw<B: Backend<Buf = Buf>>(&mut self, be: &B, p: &SacParams, ring: &Buf) -> Result<()> {
        be.sac_minibatch(
            p,
            ring,
            &mut self.obs,
            &mut self.act,
            &mut self.reward,
            &mut self.next_obs,
            &mut self.mask,
        )
    }
}

/// Per-minibatch buffers, sized for `rows`.
struct Scratch<Buf> {
    rows: usize,
    batch: Columns<Buf>,
    eps_next: Buf,
    eps_pi: Buf,
    head: Buf,
    logp: Buf,
    x: Buf,
    q: Buf,
    q_next: Buf,
    dq: Buf,
    dx: Buf,
    d_head: Buf,
}

/// Adam state of one parameter vector on the device.
struct Moments<Buf> {
    m: Buf,
    v: Buf,
    step: u32,
}

/// A device mirror of a host [`Replay`]: its slots packed as rows of
/// [obs, act, reward, next_obs, terminated], updated with the rows written since the last
/// [`DeviceReplay::sync`] (one or two ranged writes), so minibatches are drawn on the device.
pub struct DeviceReplay<Buf> {
    ring: Buf,
    capacity: usize,
    /// The host buffer's `written()` at the last sync.
    uploaded: usize,
    /// Rows held (the draws' range).
    len: usize,
}

impl<Buf> DeviceReplay<Buf> {
    /// An empty mirror, allocated at the first sync.
    pub fn empty<B: Backend<Buf = Buf>>(be: &B) -> Result<Self> {
        Ok(Self {
            ring: be.zeros(1)?,
            capacity: 0,
            uploaded: 0,
            len: 0,
        })
    }

    /// Bring the mirror up to `host`'s contents.
    pub fn sync<B: Backend<Buf = Buf>>(&mut self, be: &B, host: &Replay) -> Result<()> {
        let (cap, written) = (host.capacity(), host.written());
        let w = host.packed_width();
        let fresh = written < self.uploaded || cap != self.capacity;
        if fresh {
            self.ring = be.zeros(cap * w)?;
            self.capacity = cap;
            self.uploaded = 0;
        }
        let new = written - self.uploaded;
        if new >= cap || (fresh && written > 0) {
            let n = host.len();
            be.write_at(&mut self.ring, 0, &host.packed(0..n))?;
        } else if new > 0 {
            let first = self.uploaded % cap;
            let end = first + new;
            be.write_at(&mut self.ring, first * w, &host.packed(first..end.min(cap)))?;
            if end > cap {
                be.write_at(&mut self.ring, 0, &host.packed(0..end - cap))?;
            }
        }
        self.uploaded = written;
        self.len = host.len();
        Ok(())
    }
}

impl<Buf> DeviceReplay<Buf> {
    /// Rows held on the device.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// After `added` rows were appended on the device from the ring slot `host.written()`
    /// (a branched rollout), bring `host` level with the mirror: those rows are read back
    /// (one ranged read, two where they wrap around the ring) and pushed in order, so the
    /// host buffer (checkpoints, the CPU's draws) and the mirror agree without uploading
    /// anything.
    pub fn pull<B: Backend<Buf = Buf>>(
        &mut self,
        be: &B,
        added: usize,
        host: &mut Replay,
    ) -> Result<()> {
        if added == 0 {
            return Ok(());
        }
        let cap = self.capacity;
        if self.uploaded != host.written() || cap != host.capacity() || added > cap {
            return Err(crate::invalid!(
                "the replay mirror ({} rows written, capacity {cap}) does not extend the host \
                 buffer ({} written, capacity {}) by {added} rows",
                self.uploaded,
                host.written(),
                host.capacity()
            ));
        }
        let (o, a, w) = (host.obs_dim, host.act_dim, host.packed_width());
        let first = host.written() % cap;
        let tail = added.min(cap - first);
        let mut rows = be.download_at(&self.ring, first * w, tail * w)?;
        if added > tail {
            rows.extend(be.download_at(&self.ring, 0, (added - tail) * w)?);
        }
        for row in rows.chunks_exact(w) {
            host.push(
                &row[..o],
                &row[o..o + a],
                row[o + a],
                &row[o + a + 1..2 * o + a + 1],
                row[w - 1] != 0.0,
            );
        }
        self.uploaded = host.written();
        self.len = host.len();
        Ok(())
    }
}

/// The elite members a branched rollout steps, on the device: their shape as an ensemble of
/// `shape.ensemble` members, parameters and input normalisation ([mean, std]).
pub struct BranchModel<'m, Buf> {
    pub shape: crate::backend::EnsembleShape,
    pub params: &'m Buf,
    pub norm: &'m Buf,
}

/// One branched rollout's sizes and draws (algo::mbpo::branched_rollout's): `rows` start
/// states from stream MBPO_START at step `batch`; at rollout step t (Philox step
/// batch·1024 + t) the policy's noise from MBPO_ROLLOUT (if `sample_actions`), each row's
/// elite from MBPO_MEMBER and the model's noise from MBPO_NOISE.
#[derive(Clone, Copy, Debug)]
pub struct BranchSpec {
    pub seed: u64,
    pub batch: u32,
    pub k: usize,
    pub rows: usize,
    pub task: u32,
    pub learn_reward: bool,
    pub sample_actions: bool,
}

/// A SAC agent's trainable state on backend `B`.
pub struct DeviceSac<'b, B: Backend> {
    be: &'b B,
    nets: Nets,
    seed: u64,
    lr: f32,
    gamma: f32,
    tau: f32,
    interval: u64,
    auto_alpha: bool,
    target_entropy: f32,
    /// Gradient steps taken (the Philox step of their noise).
    pub updates: u64,
    /// `updates` at the last sync.
    synced: u64,
    /// Whether the host has the current actor (no update since it was read).
    actor_read: bool,
    actor: B::Buf,
    critic: B::Buf,
    target: B::Buf,
    log_alpha: B::Buf,
    actor_opt: Moments<B::Buf>,
    critic_opt: Moments<B::Buf>,
    alpha_opt: Moments<B::Buf>,
    g_actor: B::Buf,
    g_critic: B::Buf,
    g_alpha: B::Buf,
    norm_obs: B::Buf,
    norm_critic: B::Buf,
    squash: B::Buf,
    dummy: B::Buf,
    stats: B::Buf,
    scratch: Option<Scratch<B::Buf>>,
    branch_scratch: Option<BranchScratch<B::Buf>>,
}

/// A branched rollout's device buffers, kept between rollouts (one per model training) of
/// the same rows and model width; the grouped model buffers grow to the most rows any
/// member has drawn.
struct BranchScratch<Buf> {
    rows: usize,
    din: usize,
    out: usize,
    /// Room of the grouped input and outputs, in rows (members × per).
    grouped: usize,
    /// The start states' minibatch; its `obs` then holds the rollout's states.
    batch: Columns<Buf>,
    head: Buf,
    eps: Buf,
    eps_pi: Buf,
    /// Never written: the policy's noise when actions are not sampled.
    eps_zero: Buf,
    logp: Buf,
    x: Buf,
    route: Buf,
    xg: Buf,
    mean: Buf,
    logvar: Buf,
    stopped: Buf,
    count: Buf,
}

impl<'b, B: Backend> DeviceSac<'b, B> {
    /// The device copy of `agent` (parameters, targets, Adam moments, temperature).
    pub fn new(be: &'b B, agent: &Sac) -> Result<Self> {
        if agent.cfg.precision != Precision::F32 {
            return Err(crate::setting!(
                "sac.precision",
                "bf16 gradient steps run on the cpu backend only; on {} SAC trains in f32 \
                 (set sac.precision = \"f32\" or choose --backend cpu)",
                be.name()
            ));
        }
        let nets = agent.nets;
        let (o, a) = (nets.obs_dim, nets.act_dim);
        let unit = |n: usize| {
            let mut v = vec![0.0f32; n];
            v.extend(std::iter::repeat_n(1.0f32, n));
            v
        };
        let mut sb = agent.squash.scale.clone();
        sb.extend_from_slice(&agent.squash.bias);
        let moments = |s: &super::sac::AdamState| -> Result<Moments<B::Buf>> {
            Ok(Moments {
                m: be.upload(&s.m)?,
                v: be.upload(&s.v)?,
                step: s.step,
            })
        };
        Ok(Self {
            be,
            nets,
            seed: agent.seed,
            lr: agent.cfg.lr,
            gamma: agent.cfg.gamma,
            tau: agent.cfg.tau,
            interval: agent.cfg.target_update_interval as u64,
            auto_alpha: agent.cfg.automatic_entropy_tuning,
            target_entropy: agent.target_entropy(),
            updates: agent.updates,
            synced: agent.updates,
            actor_read: true,
            actor: be.upload(&agent.actor)?,
            critic: be.upload(&agent.critic)?,
            target: be.upload(&agent.critic_target)?,
            log_alpha: be.upload(&[agent.log_alpha])?,
            actor_opt: moments(&agent.actor_opt)?,
            critic_opt: moments(&agent.critic_opt)?,
            alpha_opt: moments(&agent.alpha_opt)?,
            g_actor: be.zeros(agent.actor.len())?,
            g_critic: be.zeros(agent.critic.len())?,
            g_alpha: be.zeros(1)?,
            norm_obs: be.upload(&unit(o))?,
            norm_critic: be.upload(&unit(o + a))?,
            squash: be.upload(&sb)?,
            dummy: be.zeros(1)?,
            stats: be.zeros(sac_stats::LEN)?,
            scratch: None,
            branch_scratch: None,
        })
    }

    fn scratch(&mut self, rows: usize) -> Result<()> {
        if self.scratch.as_ref().is_some_and(|s| s.rows == rows) {
            return Ok(());
        }
        let (o, a) = (self.nets.obs_dim, self.nets.act_dim);
        let z = |n: usize| self.be.zeros(n.max(1));
        self.scratch = Some(Scratch {
            rows,
            batch: Columns::zeros(self.be, rows, o, a)?,
            eps_next: z(rows * a)?,
            eps_pi: z(rows * a)?,
            head: z(rows * 2 * a)?,
            logp: z(rows)?,
            x: z(2 * rows * (o + a))?,
            q: z(2 * rows)?,
            q_next: z(2 * rows)?,
            dq: z(2 * rows)?,
            dx: z(2 * rows * (o + a))?,
            d_head: z(rows * 2 * a)?,
        });
        Ok(())
    }

    fn adam(
        be: &B,
        lr: f32,
        params: &mut B::Buf,
        grad: &B::Buf,
        opt: &mut Moments<B::Buf>,
        len: usize,
    ) -> Result<()> {
        opt.step += 1;
        let p = AdamParams::torch(lr, opt.step, len);
        be.adam_step(&p, params, grad, &mut opt.m, &mut opt.v)
    }

    /// One gradient step of critics, actor and temperature on `batch`, then the Polyak update
    /// when due: [`Sac::update`]'s order, noise and expressions.
    pub fn update(&mut self, batch: &Batch<f32>) -> Result<()> {
        let rows = batch.rows;
        if rows == 0 {
            return Err(crate::invalid!(
                "a SAC update needs at least one transition"
            ));
        }
        self.scratch(rows)?;
        let be = self.be;
        let s = self.scratch.as_mut().expect("sized above");
        be.write(&mut s.batch.obs, &batch.obs)?;
        be.write(&mut s.batch.act, &batch.act)?;
        be.write(&mut s.batch.reward, &batch.reward)?;
        be.write(&mut s.batch.next_obs, &batch.next_obs)?;
        be.write(&mut s.batch.mask, &batch.mask)?;
        self.step(rows)
    }

    /// [`DeviceSac::update`] on the minibatch `Replay::sample(seed, stream, step, rows)` would
    /// draw from the host buffer `ring` mirrors, drawn on the device: no host transfer at all.
    pub fn update_from(
        &mut self,
        ring: &DeviceReplay<B::Buf>,
        seed: u64,
        stream: u32,
        step: u32,
        rows: usize,
    ) -> Result<()> {
        if rows == 0 || ring.len == 0 {
            return Err(crate::invalid!(
                "a SAC update needs at least one transition (asked for {rows} of {})",
                ring.len
            ));
        }
        self.scratch(rows)?;
        let p = SacParams {
            len: ring.len as u32,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            stream,
            step,
            ..self.params(rows)
        };
        let s = self.scratch.as_mut().expect("sized above");
        s.batch.draw(self.be, &p, &ring.ring)?;
        self.step(rows)
    }

    /// MAAC's gradient step on the device (`algo::mbpo`'s `path_update`, the CPU
    /// specification): the minibatch `Replay::sample(seed, stream, step, rows)` drawn on the
    /// device from `ring`, SAC's critic step on it, then the actor's step on the path
    /// objective of `path`'s horizon through the elites `model`, started at the minibatch's
    /// states with the noise `PathNoise::draw(seed, updates, …)` (the only upload), and the
    /// temperature's step on that path's log π₀.
    #[allow(clippy::too_many_arguments)]
    pub fn path_update_from(
        &mut self,
        ring: &DeviceReplay<B::Buf>,
        (seed, stream, step): (u64, u32, u32),
        rows: usize,
        path: &mut DevicePath<B::Buf>,
        model: &BranchModel<'_, B::Buf>,
        task: u32,
        learn_reward: bool,
    ) -> Result<()> {
        let shape = path.shape();
        if rows == 0 || ring.len == 0 || shape.rows != rows {
            return Err(crate::invalid!(
                "a path update needs transitions and path buffers for its {rows} rows (asked \
                 for {rows} of {}, buffers for {})",
                ring.len,
                shape.rows
            ));
        }
        self.scratch(rows)?;
        let p = SacParams {
            len: ring.len as u32,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            stream,
            step,
            ..self.params(rows)
        };
        let be = self.be;
        self.scratch
            .as_mut()
            .expect("sized above")
            .batch
            .draw(be, &p, &ring.ring)?;
        let sampled = self.critic_step(rows)?;
        let noise = PathNoise::draw(
            self.seed,
            self.updates as u32,
            shape.horizon,
            rows,
            shape.act_dim,
            shape.out_dim,
            shape.members,
        );
        path.set_noise(be, &noise)?;
        let s = self.scratch.as_ref().expect("sized above");
        let nets = PathNets {
            nets: &self.nets,
            actor: &self.actor,
            critic: &self.critic,
            norm_obs: &self.norm_obs,
            norm_critic: &self.norm_critic,
            model: BranchModel {
                shape: model.shape,
                params: model.params,
                norm: model.norm,
            },
            log_alpha: &self.log_alpha,
        };
        let spec = PathSpec {
            gamma: self.gamma,
            task,
            learn_reward,
            terminal_value: true,
            target_entropy: self.target_entropy,
            ..PathSpec::default()
        };
        path.run(
            be,
            &nets,
            spec,
            &s.batch.obs,
            &mut self.g_actor,
            &mut self.stats,
        )?;
        self.finish(&sampled, Some(&path.alpha_grad))
    }

    /// Path buffers for MAAC's updates of `rows` rows through `members` elites predicting
    /// `out_dim` values, over `horizon` steps.
    pub fn path_buffers(
        &self,
        rows: usize,
        members: usize,
        out_dim: usize,
        horizon: usize,
    ) -> Result<DevicePath<B::Buf>> {
        let (o, a) = (self.nets.obs_dim, self.nets.act_dim);
        let sb = self.be.download(&self.squash)?;
        let squash = super::sac::Squash {
            scale: sb[..a].to_vec(),
            bias: sb[a..2 * a].to_vec(),
        };
        let shape = PathShape {
            rows,
            obs_dim: o,
            act_dim: a,
            out_dim,
            members,
            horizon,
        };
        DevicePath::new(self.be, shape, self.nets.actor.layout().total, &squash)
    }

    /// The stages' parameters for `rows` (noise: SAC_NOISE at the update's step).
    fn params(&self, rows: usize) -> SacParams {
        SacParams {
            rows: rows as u32,
            obs_dim: self.nets.obs_dim as u32,
            act_dim: self.nets.act_dim as u32,
            given: 0,
            gamma: self.gamma,
            target_entropy: self.target_entropy,
            tau: self.tau,
            len: 0,
            seed_lo: self.seed as u32,
            seed_hi: (self.seed >> 32) as u32,
            stream: stream::SAC_NOISE,
            step: self.updates as u32,
        }
    }

    /// One update on the minibatch in the scratch buffers.
    fn step(&mut self, rows: usize) -> Result<()> {
        let sampled = self.critic_step(rows)?;
        self.actor_grad(rows, &sampled)?;
        self.finish(&sampled, None)
    }

    /// The noise of update `updates` and the critics' step on the minibatch in the scratch
    /// buffers; returns the stages' parameters.
    fn critic_step(&mut self, rows: usize) -> Result<SacParams> {
        let be = self.be;
        let sampled = self.params(rows);
        let given = SacParams {
            given: 1,
            ..sampled
        };
        let s = self.scratch.as_mut().expect("sized by the caller");
        be.sac_noise(&sampled, &mut s.eps_next, &mut s.eps_pi)?;
        let (actor, critic) = (&self.nets.actor, &self.nets.critic);

        // Critics: y from the target critics at (s', ã' ~ π(s')), then ∂J_Q.
        be.ensemble_forward(
            actor,
            &self.actor,
            &self.norm_obs,
            &s.batch.next_obs,
            rows,
            &mut s.head,
            &mut self.dummy,
        )?;
        be.sac_squash(
            &sampled,
            &s.head,
            &s.eps_next,
            &s.batch.next_obs,
            &self.squash,
            &self.dummy,
            &mut s.logp,
            &mut s.x,
        )?;
        be.ensemble_forward(
            critic,
            &self.target,
            &self.norm_critic,
            &s.x,
            rows,
            &mut s.q_next,
            &mut self.dummy,
        )?;
        be.sac_squash(
            &given,
            &self.dummy,
            &self.dummy,
            &s.batch.obs,
            &self.squash,
            &s.batch.act,
            &mut s.logp,
            &mut s.x,
        )?;
        be.ensemble_forward(
            critic,
            &self.critic,
            &self.norm_critic,
            &s.x,
            rows,
            &mut s.q,
            &mut self.dummy,
        )?;
        be.sac_critic_grad(
            &sampled,
            &s.q_next,
            &s.logp,
            &s.batch.reward,
            &s.batch.mask,
            &self.log_alpha,
            &s.q,
            &mut s.dq,
            &mut self.stats,
        )?;
        be.ensemble_vjp(
            critic,
            &self.critic,
            &self.norm_critic,
            &s.x,
            rows,
            &s.dq,
            &s.dq,
            Some(&mut self.g_critic),
            None,
        )?;
        let nc = critic.layout().total;
        Self::adam(
            be,
            self.lr,
            &mut self.critic,
            &self.g_critic,
            &mut self.critic_opt,
            nc,
        )?;

        Ok(sampled)
    }

    /// SAC's actor gradient into `g_actor` and the temperature's into `g_alpha`.
    fn actor_grad(&mut self, rows: usize, sampled: &SacParams) -> Result<()> {
        let be = self.be;
        let s = self.scratch.as_mut().expect("sized by the caller");
        let (actor, critic) = (&self.nets.actor, &self.nets.critic);
        // Actor: ã ~ π(s) through the updated critics, back through min Q and the squash.
        be.ensemble_forward(
            actor,
            &self.actor,
            &self.norm_obs,
            &s.batch.obs,
            rows,
            &mut s.head,
            &mut self.dummy,
        )?;
        be.sac_squash(
            sampled,
            &s.head,
            &s.eps_pi,
            &s.batch.obs,
            &self.squash,
            &self.dummy,
            &mut s.logp,
            &mut s.x,
        )?;
        be.ensemble_forward(
            critic,
            &self.critic,
            &self.norm_critic,
            &s.x,
            rows,
            &mut s.q,
            &mut self.dummy,
        )?;
        be.sac_actor_grad(
            sampled,
            &s.q,
            &s.logp,
            &self.log_alpha,
            &mut s.dq,
            &mut self.g_alpha,
            &mut self.stats,
        )?;
        be.ensemble_vjp(
            critic,
            &self.critic,
            &self.norm_critic,
            &s.x,
            rows,
            &s.dq,
            &s.dq,
            None,
            Some(&mut s.dx),
        )?;
        be.sac_squash_backward(
            sampled,
            &s.head,
            &s.eps_pi,
            &self.squash,
            &s.dx,
            &self.log_alpha,
            &mut s.d_head,
        )?;
        be.ensemble_vjp(
            actor,
            &self.actor,
            &self.norm_obs,
            &s.batch.obs,
            rows,
            &s.d_head,
            &s.d_head,
            Some(&mut self.g_actor),
            None,
        )?;
        Ok(())
    }

    /// Adam on the actor (`g_actor`) and the temperature (`alpha_grad`, else `g_alpha`),
    /// the Polyak update when due, and the update counted.
    fn finish(&mut self, sampled: &SacParams, alpha_grad: Option<&B::Buf>) -> Result<()> {
        let be = self.be;
        let na = self.nets.actor.layout().total;
        let nc = self.nets.critic.layout().total;
        Self::adam(
            be,
            self.lr,
            &mut self.actor,
            &self.g_actor,
            &mut self.actor_opt,
            na,
        )?;
        if self.auto_alpha {
            Self::adam(
                be,
                self.lr,
                &mut self.log_alpha,
                alpha_grad.unwrap_or(&self.g_alpha),
                &mut self.alpha_opt,
                1,
            )?;
        }
        if self.updates.is_multiple_of(self.interval) {
            let p = SacParams {
                len: nc as u32,
                ..*sampled
            };
            be.polyak(&p, &mut self.target, &self.critic)?;
        }
        self.updates += 1;
        self.actor_read = false;
        Ok(())
    }

    /// The current actor into `actor` (for acting between syncs), read only if an update
    /// changed it since the last read.
    pub fn read_actor(&mut self, actor: &mut Vec<f32>) -> Result<()> {
        if !self.actor_read {
            *actor = self.be.download(&self.actor)?;
            self.actor_read = true;
        }
        Ok(())
    }

    /// MBPO's branched rollout with the current actor, entirely on the device: start states
    /// drawn from `start` (a mirror of D_env), k steps of policy sample → TS1 elite →
    /// Gaussian step → reward and termination, every live row's finite transition appended
    /// to `out` (a mirror of D_model, which must have room for rows·k transitions) in the
    /// CPU's order; `host_out` is then brought level with it ([`DeviceReplay::pull`]).
    /// Per step: the actor's forward, its noise and squash, the route, the elites' forward
    /// and the step (6 operations); the host computes only how many rows each elite draws
    /// (to size the grouped input) and reads back the count and the ring at the end.
    /// Returns the transitions added.
    pub fn branch(
        &mut self,
        spec: &BranchSpec,
        model: &BranchModel<'_, B::Buf>,
        start: &DeviceReplay<B::Buf>,
        out: &mut DeviceReplay<B::Buf>,
        host_out: &mut Replay,
    ) -> Result<usize> {
        use crate::backend::cpu::rollout::branch_per;
        use crate::backend::BranchParams;
        let be = self.be;
        let (o, a) = (self.nets.obs_dim, self.nets.act_dim);
        let din = o + a;
        let (rows, ne, d) = (spec.rows, model.shape.ensemble, model.shape.out_dim);
        if rows == 0 || start.len == 0 || spec.k == 0 {
            return Ok(0);
        }
        if ne == 0 || model.shape.in_dim != din {
            return Err(crate::Error::Shape(format!(
                "a branched rollout needs a model of at least one member on obs {o} + act {a} \
                 inputs (got {ne} members on {} inputs)",
                model.shape.in_dim
            )));
        }
        if host_out.obs_dim != o || host_out.act_dim != a {
            return Err(crate::Error::Shape(format!(
                "a branched rollout of obs {o} and act {a} into a buffer of obs {} and act {}",
                host_out.obs_dim, host_out.act_dim
            )));
        }
        if rows.saturating_mul(spec.k) > out.capacity || out.uploaded != host_out.written() {
            return Err(crate::invalid!(
                "a branched rollout of {rows} rows × {} steps needs a synced model buffer of \
                 at least {} rows (it has {})",
                spec.k,
                rows.saturating_mul(spec.k),
                out.capacity
            ));
        }
        let step_of = |t: usize| spec.batch.wrapping_mul(1024).wrapping_add(t as u32);
        let pers: Vec<usize> = (0..spec.k)
            .map(|t| branch_per(spec.seed, stream::MBPO_MEMBER, step_of(t), rows, ne))
            .collect();
        let grouped = ne * pers.iter().copied().max().unwrap_or(1);
        let z = |n: usize| be.zeros(n.max(1));
        // The buffers of the previous rollout serve this one when the sizes allow: after the
        // first model training a rollout allocates nothing.
        let keep = self
            .branch_scratch
            .as_ref()
            .is_some_and(|s| s.rows == rows && s.din == din && s.out == d && s.grouped >= grouped);
        if !keep {
            self.branch_scratch = Some(BranchScratch {
                rows,
                din,
                out: d,
                grouped,
                batch: Columns::zeros(be, rows, o, a)?,
                head: z(rows * 2 * a)?,
                eps: z(rows * a)?,
                eps_pi: z(rows * a)?,
                eps_zero: z(rows * a)?,
                logp: z(rows)?,
                x: z(2 * rows * din)?,
                route: z(rows)?,
                xg: z(grouped * din)?,
                mean: z(grouped * d)?,
                logvar: z(grouped * d)?,
                stopped: z(rows)?,
                count: z(1)?,
            });
        }
        let sc = self.branch_scratch.as_mut().expect("made above");
        // Start states are the run's draws (spec.seed), the policy's noise the agent's own
        // (`Sac::act_with`).
        let sac = |seed: u64, stream: u32, step: u32, len: usize| SacParams {
            rows: rows as u32,
            obs_dim: o as u32,
            act_dim: a as u32,
            given: 0,
            gamma: 0.0,
            target_entropy: 0.0,
            tau: 0.0,
            len: len as u32,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            stream,
            step,
        };
        // Start states: the rows Replay::sample_obs draws (sac_minibatch's draw).
        let p = sac(spec.seed, stream::MBPO_START, spec.batch, start.len);
        sc.batch.draw(be, &p, &start.ring)?;
        let cap = out.capacity;
        for (t, &per) in pers.iter().enumerate() {
            let step = step_of(t);
            be.ensemble_forward(
                &self.nets.actor,
                &self.actor,
                &self.norm_obs,
                &sc.batch.obs,
                rows,
                &mut sc.head,
                &mut self.dummy,
            )?;
            if spec.sample_actions {
                let p = sac(self.seed, stream::MBPO_ROLLOUT, step, 0);
                be.sac_noise(&p, &mut sc.eps, &mut sc.eps_pi)?;
            }
            be.sac_squash(
                &sac(self.seed, stream::MBPO_ROLLOUT, step, 0),
                &sc.head,
                if spec.sample_actions {
                    &sc.eps
                } else {
                    &sc.eps_zero
                },
                &sc.batch.obs,
                &self.squash,
                &self.dummy,
                &mut sc.logp,
                &mut sc.x,
            )?;
            let p = BranchParams {
                rows: rows as u32,
                obs_dim: o as u32,
                act_dim: a as u32,
                out_dim: d as u32,
                members: ne as u32,
                per: per as u32,
                task: spec.task,
                learn_reward: spec.learn_reward as u32,
                seed_lo: spec.seed as u32,
                seed_hi: (spec.seed >> 32) as u32,
                step,
                capacity: cap as u32,
                base: (out.uploaded % cap) as u32,
                member_stream: stream::MBPO_MEMBER,
                noise_stream: stream::MBPO_NOISE,
                fresh: (t == 0) as u32,
            };
            be.branch_route(&p, &sc.x, &mut sc.route, &mut sc.xg)?;
            be.ensemble_forward(
                &model.shape,
                model.params,
                model.norm,
                &sc.xg,
                per,
                &mut sc.mean,
                &mut sc.logvar,
            )?;
            be.branch_step(
                &p,
                &sc.route,
                &sc.mean,
                &sc.logvar,
                &sc.x,
                &mut sc.batch.obs,
                &mut sc.stopped,
                &mut sc.count,
                &mut out.ring,
            )?;
        }
        let added = be.download(&sc.count)?[0].to_bits() as usize;
        out.pull(be, added, host_out)?;
        Ok(added)
    }

    /// The backend the agent lives on.
    pub fn backend(&self) -> &'b B {
        self.be
    }

    /// Block until every launched update has finished (reads the statistics back: a few
    /// bytes), for timing.
    pub fn wait(&self) -> Result<()> {
        self.be.download(&self.stats).map(drop)
    }

    /// The last update's gradients (actor, critics, log α), read back: for tests and
    /// debugging.
    pub fn gradients(&self) -> Result<(Vec<f32>, Vec<f32>, f32)> {
        let be = self.be;
        Ok((
            be.download(&self.g_actor)?,
            be.download(&self.g_critic)?,
            be.download(&self.g_alpha)?[0],
        ))
    }

    /// Copy the device agent into `agent` and return the statistics' means since the last
    /// sync. If anything on the device is non-finite, `agent` keeps its parameters, the
    /// device copy is reset to them, the updates since the last sync are counted as
    /// `diverged`, and the update counter (the minibatch and noise draws) moves on past them.
    pub fn sync(&mut self, agent: &mut Sac) -> Result<DeviceStats> {
        let be = self.be;
        let before = agent.alpha() as f64;
        let st = be.download(&self.stats)?;
        be.write(&mut self.stats, &[0.0; sac_stats::LEN])?;
        let n = st[sac_stats::COUNT] as f64;
        let mean = |i: usize| if n > 0.0 { st[i] as f64 / n } else { 0.0 };
        let stats = DeviceStats {
            updates: n as u64,
            diverged: 0,
            critic_loss: mean(sac_stats::CRITIC_LOSS),
            actor_loss: mean(sac_stats::ACTOR_LOSS),
            alpha_loss: mean(sac_stats::ALPHA_LOSS),
            q_mean: mean(sac_stats::Q_MEAN),
            entropy: mean(sac_stats::ENTROPY),
            alpha: 0.0,
        };
        let take = |b: &B::Buf| be.download(b);
        let actor = take(&self.actor)?;
        let critic = take(&self.critic)?;
        let target = take(&self.target)?;
        let log_alpha = take(&self.log_alpha)?[0];
        let opts = [&self.actor_opt, &self.critic_opt, &self.alpha_opt]
            .map(|o| Ok::<_, Error>((take(&o.m)?, take(&o.v)?, o.step)));
        let [ao, co, lo] = opts;
        let (ao, co, lo) = (ao?, co?, lo?);
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        let ok = log_alpha.is_finite()
            && [&actor, &critic, &target, &ao.0, &ao.1, &co.0, &co.1]
                .iter()
                .all(|v| finite(v))
            && finite(&lo.0)
            && finite(&lo.1);
        if !ok {
            let (updates, rolled_back) = (self.updates, self.updates - self.synced);
            agent.updates = updates;
            *self = Self::new(be, agent)?;
            return Ok(DeviceStats {
                updates: 0,
                diverged: rolled_back,
                ..DeviceStats::default()
            });
        }
        agent.actor = actor;
        agent.critic = critic;
        agent.critic_target = target;
        agent.log_alpha = log_alpha;
        for (dst, (m, v, step)) in [
            (&mut agent.actor_opt, ao),
            (&mut agent.critic_opt, co),
            (&mut agent.alpha_opt, lo),
        ] {
            dst.m = m;
            dst.v = v;
            dst.step = step;
        }
        // The stages summed α before each update's temperature step; after update k it is
        // what update k + 1 read, and after the last one it is the value read back now.
        let now = log_alpha.exp() as f64;
        let alpha = if n > 0.0 {
            (st[sac_stats::ALPHA_BEFORE] as f64 - before + now) / n
        } else {
            0.0
        };
        agent.updates = self.updates;
        self.synced = self.updates;
        self.actor_read = true;
        Ok(DeviceStats { alpha, ..stats })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Activation;
    use crate::policy::sac::SacConfig;
    use crate::policy::Replay;

    /// An agent of awkward sizes and a replay of random transitions, some terminal.
    fn case() -> (Sac, Replay) {
        let cfg = SacConfig {
            hidden: 37,
            num_layers: 2,
            activation: Activation::Relu,
            batch_size: 29,
            target_update_interval: 2,
            ..SacConfig::default()
        };
        let agent = Sac::new(cfg, 3, &[-2.0, -0.5], &[2.0, 1.5], 5).unwrap();
        let mut replay = Replay::new(3, 2, 100);
        let mut g = crate::rng::Philox::new(9, 99, 0);
        for i in 0..60 {
            let mut v = |n: usize| (0..n).map(|_| g.normal()).collect::<Vec<f32>>();
            let (o, a, n) = (v(3), v(2), v(3));
            replay.push(&o, &a, 0.1 * i as f32 - 2.0, &n, i % 7 == 3);
        }
        (agent, replay)
    }

    #[test]
    fn device_steps_on_the_cpu_backend_should_equal_the_agents_own_bit_for_bit() {
        let (mut host, replay) = case();
        let be = CpuBackend::new();
        let mut synced = Sac::new(host.cfg.clone(), 3, &[-2.0, -0.5], &[2.0, 1.5], 5).unwrap();
        let mut dev = DeviceSac::new(&be, &synced).unwrap();
        let (mut critic_loss, mut entropy, mut alpha) = (0.0, 0.0, 0.0);
        for k in 0..5u32 {
            let batch = replay.sample(1, 2, k, host.cfg.batch_size);
            let s = host.update(&batch).unwrap();
            critic_loss += s.critic_loss / 5.0;
            entropy += s.entropy / 5.0;
            alpha += s.alpha / 5.0;
            dev.update(&batch).unwrap();
        }
        let stats = dev.sync(&mut synced).unwrap();
        assert_eq!(synced.actor, host.actor);
        assert_eq!(synced.critic, host.critic);
        assert_eq!(synced.critic_target, host.critic_target);
        assert_eq!(synced.log_alpha, host.log_alpha);
        assert_eq!(synced.actor_opt, host.actor_opt);
        assert_eq!(synced.critic_opt, host.critic_opt);
        assert_eq!(synced.alpha_opt, host.alpha_opt);
        assert_eq!(synced.updates, 5);
        assert_eq!(stats.updates, 5);
        assert!((stats.critic_loss - critic_loss).abs() <= 1e-6 * critic_loss.abs().max(1.0));
        assert!((stats.entropy - entropy).abs() <= 1e-6 * entropy.abs().max(1.0));
        assert!(
            (stats.alpha - alpha).abs() <= 1e-6 * alpha,
            "{} vs {alpha}",
            stats.alpha
        );
        // The statistics restart after a sync.
        assert_eq!(dev.sync(&mut synced).unwrap().updates, 0);
    }

    #[test]
    fn minibatches_drawn_on_the_device_should_be_the_host_buffers_own() {
        // A ring of 100 filled past its capacity between updates (pushes of 7, 93 and 150
        // rows: a partial sync, one that wraps, one that replaces everything).
        let (mut host, mut replay) = case();
        let be = CpuBackend::new();
        let mut synced = host.clone();
        let mut dev = DeviceSac::new(&be, &synced).unwrap();
        let mut ring = DeviceReplay::empty(&be).unwrap();
        let mut g = crate::rng::Philox::new(10, 99, 0);
        for (k, more) in [0usize, 7, 93, 150].into_iter().enumerate() {
            for i in 0..more {
                let mut v = |n: usize| (0..n).map(|_| g.normal()).collect::<Vec<f32>>();
                let (o, a, n) = (v(3), v(2), v(3));
                replay.push(&o, &a, 0.01 * i as f32, &n, i % 5 == 1);
            }
            ring.sync(&be, &replay).unwrap();
            let n = replay.len();
            assert_eq!(ring.ring[..n * 10], replay.packed(0..n)[..]);
            let step = k as u32 + 3;
            let batch = replay.sample(1, 2, step, host.cfg.batch_size);
            host.update(&batch).unwrap();
            dev.update_from(&ring, 1, 2, step, host.cfg.batch_size)
                .unwrap();
        }
        dev.sync(&mut synced).unwrap();
        assert_eq!(synced.actor, host.actor);
        assert_eq!(synced.critic, host.critic);
        assert_eq!(synced.critic_target, host.critic_target);
        assert_eq!(synced.log_alpha, host.log_alpha);
    }

    #[test]
    fn a_diverged_device_agent_should_be_reset_to_the_last_synced_values() {
        let (host, replay) = case();
        let be = CpuBackend::new();
        let mut synced = host.clone();
        let mut dev = DeviceSac::new(&be, &synced).unwrap();
        let mut batch = replay.sample(1, 2, 0, host.cfg.batch_size);
        batch.reward[3] = f32::NAN;
        dev.update(&batch).unwrap();
        dev.update(&batch).unwrap();
        let stats = dev.sync(&mut synced).unwrap();
        assert_eq!((stats.diverged, stats.updates), (2, 0));
        assert_eq!(synced.actor, host.actor);
        assert_eq!(synced.critic, host.critic);
        // The draws move on past the rolled-back updates.
        assert_eq!(synced.updates, 2);
        // The device copy holds the good values again and trains on.
        let good = replay.sample(1, 2, 1, host.cfg.batch_size);
        dev.update(&good).unwrap();
        let stats = dev.sync(&mut synced).unwrap();
        assert_eq!((stats.diverged, stats.updates), (0, 1));
        assert!(synced.is_finite());
        assert_eq!(synced.updates, 3);
        assert_ne!(synced.actor, host.actor);
    }

    #[test]
    fn bf16_agents_should_be_refused_by_name() {
        let (mut host, _) = case();
        host.cfg.precision = Precision::Bf16;
        let err = DeviceSac::new(&CpuBackend::new(), &host).err().unwrap();
        assert!(err.to_string().contains("sac.precision"), "{err}");
    }
}
