//! Gymnasium's v5 MuJoCo tasks stepped in-process by the MuJoCo C library (feature
//! `mujoco`, through `mujoco-rs`, linked against the `libmujoco` of the PyPI `mujoco==3.17.0`
//! wheel). The models are Gymnasium's own XML files, read from the installed Gymnasium package.
//!
//! | [`MujocoTask`] | Gymnasium | obs | act | frame skip |
//! |---|---|---|---|---|
//! | `halfcheetah` | HalfCheetah-v5 | 17 | 6 | 5 |
//! | `hopper` | Hopper-v5 | 11 | 3 | 4 |
//! | `walker2d` | Walker2d-v5 | 17 | 6 | 4 |
//! | `ant` | Ant-v5 | 105 | 8 | 5 |
//! | `inverted-pendulum` | InvertedPendulum-v5 | 4 | 1 | 2 |
//!
//! # Fidelity
//! Each step does what Gymnasium's `MujocoEnv` does, in its order: read the position before,
//! write the (unclipped) f32 action into `ctrl` as f64, `mj_step` frame-skip times,
//! `mj_rnePostConstraint` once, then the observation, reward and health check of the task's
//! `step`. The arithmetic is NumPy 2's: the control cost is f32 (`w as f32 · Σ a²` with NumPy's
//! pairwise summation, whose 8-lane blocks differ from a plain sum from 8 terms on), the
//! forward velocity `(after − before) / (timestep · frame_skip)` in f64, Ant's position the
//! torso's `xpos` (computed before the last integration, as Gymnasium reads it) and its contact
//! cost the f64 pairwise sum over every body's clipped `cfrc_ext`. `tests/mujoco_parity.rs`
//! replays trajectories recorded from Gymnasium (`scripts/record_mujoco.py`) and checks
//! observations and rewards bit for bit.
//!
//! # Resets
//! Exactly Gymnasium's: `reset(seed)` draws the noise (uniform ±scale on qpos; uniform or
//! scale·N(0, 1) on qvel) from NumPy's `Generator(PCG64(SeedSequence(seed)))`
//! ([`super::np_random`]), so a seed gives the start Gymnasium gives for it, bit for bit.
//! [`MujocoEnv::set_state_f64`] starts from any other (qpos, qvel) as Gymnasium's reset would.
use super::{EnvError, EnvSpec};
use std::path::PathBuf;

/// Which MuJoCo task. The names and shapes exist in every build; stepping needs the feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MujocoTask {
    HalfCheetah,
    Hopper,
    Walker2d,
    Ant,
    InvertedPendulum,
}

/// The constants of one task (Gymnasium v5's defaults).
#[derive(Clone, Copy, Debug)]
pub struct TaskInfo {
    pub name: &'static str,
    pub gym_id: &'static str,
    pub xml: &'static str,
    pub frame_skip: usize,
    pub obs_dim: usize,
    pub act_dim: usize,
    pub nq: usize,
    pub nv: usize,
    /// Reset noise scale.
    pub noise: f64,
    /// qvel noise is `noise · N(0, 1)` (else uniform ±noise).
    pub qvel_normal: bool,
    pub ctrl_cost_weight: f32,
    pub description: &'static str,
}

impl MujocoTask {
    pub const ALL: [MujocoTask; 5] = [
        MujocoTask::HalfCheetah,
        MujocoTask::Hopper,
        MujocoTask::Walker2d,
        MujocoTask::Ant,
        MujocoTask::InvertedPendulum,
    ];

    pub const fn info(self) -> TaskInfo {
        match self {
            MujocoTask::HalfCheetah => TaskInfo {
                name: "halfcheetah",
                gym_id: "HalfCheetah-v5",
                xml: "half_cheetah.xml",
                frame_skip: 5,
                obs_dim: 17,
                act_dim: 6,
                nq: 9,
                nv: 9,
                noise: 0.1,
                qvel_normal: true,
                ctrl_cost_weight: 0.1,
                description:
                    "HalfCheetah-v5 (MuJoCo): run forward; reward = x velocity − 0.1‖a‖², \
                              never terminates, 1000 steps; obs = qpos[1:] ++ qvel",
            },
            MujocoTask::Hopper => TaskInfo {
                name: "hopper",
                gym_id: "Hopper-v5",
                xml: "hopper.xml",
                frame_skip: 4,
                obs_dim: 11,
                act_dim: 3,
                nq: 6,
                nv: 6,
                noise: 5e-3,
                qvel_normal: false,
                ctrl_cost_weight: 1e-3,
                description:
                    "Hopper-v5 (MuJoCo): hop forward; reward = x velocity + 1 (healthy) − \
                              0.001‖a‖², terminates when unhealthy, 1000 steps",
            },
            MujocoTask::Walker2d => TaskInfo {
                name: "walker2d",
                gym_id: "Walker2d-v5",
                xml: "walker2d_v5.xml",
                frame_skip: 4,
                obs_dim: 17,
                act_dim: 6,
                nq: 9,
                nv: 9,
                noise: 5e-3,
                qvel_normal: false,
                ctrl_cost_weight: 1e-3,
                description:
                    "Walker2d-v5 (MuJoCo): walk forward; reward = x velocity + 1 (healthy) \
                              − 0.001‖a‖², terminates when unhealthy, 1000 steps",
            },
            MujocoTask::Ant => TaskInfo {
                name: "ant",
                gym_id: "Ant-v5",
                xml: "ant.xml",
                frame_skip: 5,
                obs_dim: 105,
                act_dim: 8,
                nq: 15,
                nv: 14,
                noise: 0.1,
                qvel_normal: true,
                ctrl_cost_weight: 0.5,
                description: "Ant-v5 (MuJoCo): walk forward; reward = torso x velocity + 1 \
                              (healthy) − 0.5‖a‖² − 5e-4‖clip(cfrc_ext)‖², terminates when \
                              unhealthy, 1000 steps; obs includes contact forces",
            },
            MujocoTask::InvertedPendulum => TaskInfo {
                name: "inverted-pendulum",
                gym_id: "InvertedPendulum-v5",
                xml: "inverted_pendulum.xml",
                frame_skip: 2,
                obs_dim: 4,
                act_dim: 1,
                nq: 2,
                nv: 2,
                noise: 0.01,
                qvel_normal: false,
                ctrl_cost_weight: 0.0,
                description: "InvertedPendulum-v5 (MuJoCo): keep the pole up; reward 1 per step \
                              alive, terminates when |angle| > 0.2, 1000 steps; action in [-3, 3]",
            },
        }
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// A task by its command-line name.
    pub fn parse(s: &str) -> Option<MujocoTask> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    /// The reward/termination code of [`super::task`] planners and model rollouts use.
    pub fn task_code(self) -> u32 {
        use super::task;
        match self {
            // Gymnasium's forward reward is a finite difference over the frame skip, which
            // the observation does not hold: the model learns the reward.
            MujocoTask::HalfCheetah => task::NONE,
            MujocoTask::Hopper => task::HOPPER,
            MujocoTask::Walker2d => task::WALKER2D,
            MujocoTask::Ant => task::ANT,
            MujocoTask::InvertedPendulum => task::INVERTED_PENDULUM,
        }
    }

    /// Dimensions, bounds and episode length (the action bounds are the actuators'
    /// `ctrlrange`, as Gymnasium's action space).
    pub fn spec(self) -> EnvSpec {
        let i = self.info();
        let bound = if self == MujocoTask::InvertedPendulum {
            3.0
        } else {
            1.0
        };
        EnvSpec {
            name: i.name.into(),
            obs_dim: i.obs_dim,
            act_dim: i.act_dim,
            state_dim: i.nq + i.nv,
            act_low: vec![-bound; i.act_dim],
            act_high: vec![bound; i.act_dim],
            max_episode_steps: 1000,
            description: i.description.into(),
        }
    }
}

/// Environment variable naming the folder of Gymnasium's MuJoCo XML files.
pub const ASSETS_VAR: &str = "MBRL_GPU_MUJOCO_ASSETS";

/// The folder of Gymnasium's MuJoCo models: `MBRL_GPU_MUJOCO_ASSETS`, else
/// `gymnasium/envs/mujoco/assets` of the Gymnasium the bridge's interpreter imports.
pub fn assets_dir() -> Result<PathBuf, EnvError> {
    static DIR: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let r = DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os(ASSETS_VAR).filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(d));
        }
        let opts = super::gym::GymOptions::from_env().map_err(|e| e.to_string())?;
        let out = std::process::Command::new(&opts.python)
            .args([
                "-c",
                "import gymnasium, os; print(os.path.join(os.path.dirname(gymnasium.__file__), \
                 'envs', 'mujoco', 'assets'))",
            ])
            .output()
            .map_err(|e| format!("cannot run {:?} to find Gymnasium: {e}", opts.python))?;
        if !out.status.success() {
            return Err(format!(
                "{:?} cannot import gymnasium ({}); install it, or name the folder of \
                 Gymnasium's MuJoCo XML files with {ASSETS_VAR}",
                opts.python,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    r.clone().map_err(|message| EnvError::Gym {
        env: "mujoco".into(),
        message,
    })
}

/// NumPy's pairwise sum of `a` with accumulators of `a`'s type (`np.sum` on one contiguous
/// axis shorter than 128): plain in order below 8 terms; else 8 lanes, combined as
/// ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), then the remainder in order.
pub fn numpy_sum<T: Copy + std::ops::Add<Output = T> + Default>(a: &[T]) -> T {
    let n = a.len();
    if n < 8 {
        return a.iter().fold(T::default(), |r, x| r + *x);
    }
    debug_assert!(n <= 128, "NumPy blocks longer sums by 128");
    let mut r = [T::default(); 8];
    r.copy_from_slice(&a[..8]);
    let full = n - n % 8;
    for block in a[8..full].chunks_exact(8) {
        for (rj, x) in r.iter_mut().zip(block) {
            *rj = *rj + *x;
        }
    }
    let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for x in &a[full..] {
        res = res + *x;
    }
    res
}

/// Gymnasium's `control_cost`: `w · np.sum(np.square(a))` in float32 (NumPy 2 casts the
/// Python weight to the array's type). At most 128 actions (NumPy's pairwise block).
pub fn control_cost(w: f32, a: &[f32]) -> f32 {
    let mut sq = [0.0f32; 128];
    let sq = &mut sq[..a.len()];
    for (s, x) in sq.iter_mut().zip(a) {
        *s = x * x;
    }
    w * numpy_sum(sq)
}

#[cfg(feature = "mujoco")]
pub use sim::{MujocoEnv, Rollouts, StepF64};

#[cfg(feature = "mujoco")]
mod sim {
    use super::{assets_dir, control_cost, numpy_sum, MujocoTask, TaskInfo};
    use crate::env::np_random::Pcg64;
    use crate::env::{Env, EnvError, EnvSpec, Transition};
    use mujoco_rs::prelude::*;
    use rayon::prelude::*;
    use std::sync::Arc;

    /// Copies stepped on rayon's threads from this many on (below, threads cost more than
    /// the physics).
    const PARALLEL_FROM: usize = 4;

    /// One copy's outcome of a step, in Gymnasium's f64.
    #[derive(Clone, Debug, PartialEq)]
    pub struct StepF64 {
        pub obs: Vec<f64>,
        pub reward: f64,
        pub terminated: bool,
    }

    /// N copies of a MuJoCo task, semantics of `gymnasium.make(ID)` per copy (TimeLimit of
    /// 1000 steps, no auto-reset), as [`crate::env::NativeEnv`].
    pub struct MujocoEnv {
        task: MujocoTask,
        info: TaskInfo,
        spec: EnvSpec,
        data: Vec<MjData<Arc<MjModel>>>,
        init_qpos: Vec<f64>,
        dt: f64,
        elapsed: Vec<usize>,
        ready: bool,
        state_f32: Vec<f32>,
    }

    fn quiet_logging() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // MuJoCo appends every warning (half_cheetah.xml's deprecated settotalmass, on
            // every load) to MUJOCO_LOG.TXT in the working directory; keep the console only.
            // SAFETY: runs once, before this process loads any model (every load comes
            // through here); no MuJoCo call is in flight.
            unsafe { set_log_config(log_config().with_logto_file(false)) }
        });
    }

    impl MujocoEnv {
        /// `copies` copies of `task`, the model loaded from Gymnasium's XML ([`assets_dir`]).
        pub fn new(task: MujocoTask, copies: usize) -> Result<Self, EnvError> {
            let info = task.info();
            let fail = |message: String| EnvError::Gym {
                env: info.name.into(),
                message,
            };
            if copies == 0 || copies > 1 << 16 {
                return Err(fail(format!("{copies} copies asked for; give 1 to 65536")));
            }
            let path = assets_dir()?.join(info.xml);
            if !path.is_file() {
                return Err(fail(format!(
                    "{} not found: is Gymnasium ≥ 1.0 installed (its MuJoCo assets)?",
                    path.display()
                )));
            }
            quiet_logging();
            let model = MjModel::from_xml(&path)
                .map_err(|e| fail(format!("loading {}: {e}", path.display())))?;
            let (nq, nv, nu) = (
                model.nq() as usize,
                model.nv() as usize,
                model.nu() as usize,
            );
            if (nq, nv, nu) != (info.nq, info.nv, info.act_dim) {
                return Err(fail(format!(
                    "{} has nq {nq}, nv {nv}, nu {nu}; Gymnasium's {} has {}, {}, {}",
                    path.display(),
                    info.gym_id,
                    info.nq,
                    info.nv,
                    info.act_dim
                )));
            }
            let mut spec = task.spec();
            for (i, r) in model.actuator_ctrlrange().iter().enumerate() {
                // Gymnasium's action space: ctrlrange as float32.
                spec.act_low[i] = r[0] as f32;
                spec.act_high[i] = r[1] as f32;
            }
            let init_qpos = model.qpos0().to_vec();
            let dt = model.opt().timestep * info.frame_skip as f64;
            let model = Arc::new(model);
            let data = (0..copies).map(|_| MjData::new(model.clone())).collect();
            Ok(Self {
                task,
                info,
                spec,
                data,
                init_qpos,
                dt,
                elapsed: vec![0; copies],
                ready: false,
                state_f32: vec![0.0; copies * (nq + nv)],
            })
        }

        pub fn task(&self) -> MujocoTask {
            self.task
        }

        /// Start every copy from `states` `[N, nq + nv]` (qpos then qvel) exactly as
        /// Gymnasium's reset does with that noise drawn: `mj_resetData`, the state, `mj_forward`.
        pub fn set_state_f64(&mut self, states: &[f64]) -> Result<(), EnvError> {
            let sd = self.info.nq + self.info.nv;
            if states.len() != self.data.len() * sd {
                return Err(EnvError::WrongLength {
                    what: format!(
                        "states of {} × {} ([N, nq + nv] = [{}, {sd}])",
                        self.data.len(),
                        self.info.name,
                        self.data.len()
                    ),
                    expected: self.data.len() * sd,
                    got: states.len(),
                });
            }
            if let Some(i) = states.iter().position(|v| !v.is_finite()) {
                return Err(EnvError::NonFinite {
                    what: "state",
                    row: i / sd,
                    component: i % sd,
                    value: states[i],
                });
            }
            let nq = self.info.nq;
            for (d, s) in self.data.iter_mut().zip(states.chunks_exact(sd)) {
                d.reset();
                d.qpos_mut().copy_from_slice(&s[..nq]);
                d.qvel_mut().copy_from_slice(&s[nq..]);
                d.forward();
            }
            self.begin();
            Ok(())
        }

        fn begin(&mut self) {
            self.elapsed.fill(0);
            self.ready = true;
            self.sync_state();
        }

        fn sync_state(&mut self) {
            let sd = self.info.nq + self.info.nv;
            for (d, s) in self.data.iter().zip(self.state_f32.chunks_exact_mut(sd)) {
                for (o, v) in s.iter_mut().zip(d.qpos().iter().chain(d.qvel())) {
                    *o = *v as f32;
                }
            }
        }

        /// Every copy's observation, in f64.
        pub fn observations_f64(&self) -> Vec<f64> {
            let mut out = Vec::with_capacity(self.data.len() * self.info.obs_dim);
            for d in &self.data {
                observe(self.task, d, &mut out);
            }
            out
        }

        /// The (qpos, qvel) of each copy that Gymnasium's `reset(seed=seeds[i])` starts from:
        /// `reset_model`'s draws from NumPy's generator for that seed ([`Pcg64`]), qpos first,
        /// in its order and arithmetic (`init_qvel` is zero in every task; adding it, as
        /// Gymnasium does, turns a −0.0 draw into +0.0).
        pub fn reset_states_f64(&self, seeds: &[u64]) -> Vec<f64> {
            let (nq, nv, s) = (self.info.nq, self.info.nv, self.info.noise);
            let mut states = Vec::with_capacity(seeds.len() * (nq + nv));
            for seed in seeds {
                let mut rng = Pcg64::new(*seed);
                for q in &self.init_qpos {
                    states.push(q + rng.uniform(-s, s));
                }
                for _ in 0..nv {
                    let v = if self.info.qvel_normal {
                        s * rng.standard_normal()
                    } else {
                        rng.uniform(-s, s)
                    };
                    states.push(0.0 + v);
                }
            }
            states
        }

        /// One step of every copy in Gymnasium's f64 (what [`Env::step`] rounds to f32).
        pub fn step_f64(&mut self, actions: &[f32]) -> Result<Vec<StepF64>, EnvError> {
            let ad = self.info.act_dim;
            crate::env::check_step(actions, self.data.len(), ad, self.info.name, self.ready)?;
            let (task, info, dt) = (self.task, self.info, self.dt);
            let one = |(d, a): (&mut MjData<Arc<MjModel>>, &[f32])| {
                let mut obs = Vec::with_capacity(info.obs_dim);
                let (reward, terminated) = step_one(task, &info, dt, d, a, &mut obs);
                StepF64 {
                    obs,
                    reward,
                    terminated,
                }
            };
            let out: Vec<StepF64> = if self.data.len() >= PARALLEL_FROM {
                self.data
                    .par_iter_mut()
                    .zip(actions.par_chunks_exact(ad))
                    .map(one)
                    .collect()
            } else {
                self.data
                    .iter_mut()
                    .zip(actions.chunks_exact(ad))
                    .map(one)
                    .collect()
            };
            for e in &mut self.elapsed {
                *e += 1;
            }
            self.sync_state();
            Ok(out)
        }
    }

    /// Gymnasium's `_get_obs` of the task.
    fn observe(task: MujocoTask, d: &MjData<Arc<MjModel>>, out: &mut Vec<f64>) {
        let (q, v) = (d.qpos(), d.qvel());
        match task {
            MujocoTask::HalfCheetah => {
                out.extend_from_slice(&q[1..]);
                out.extend_from_slice(v);
            }
            MujocoTask::Hopper | MujocoTask::Walker2d => {
                out.extend_from_slice(&q[1..]);
                out.extend(v.iter().map(|x| x.clamp(-10.0, 10.0)));
            }
            MujocoTask::Ant => {
                out.extend_from_slice(&q[2..]);
                out.extend_from_slice(v);
                for row in &d.cfrc_ext()[1..] {
                    out.extend(row.iter().map(|x| x.clamp(-1.0, 1.0)));
                }
            }
            MujocoTask::InvertedPendulum => {
                out.extend_from_slice(q);
                out.extend_from_slice(v);
            }
        }
    }

    /// Gymnasium's `step` of the task on one copy.
    fn step_one(
        task: MujocoTask,
        info: &TaskInfo,
        dt: f64,
        d: &mut MjData<Arc<MjModel>>,
        a: &[f32],
        obs: &mut Vec<f64>,
    ) -> (f64, bool) {
        // Ant: the torso body's xpos (as Gymnasium reads it: from before the last
        // integration); the others: qpos[0].
        let x = |d: &MjData<Arc<MjModel>>| match task {
            MujocoTask::Ant => d.xpos()[1][0],
            _ => d.qpos()[0],
        };
        let before = x(d);
        for (c, v) in d.ctrl_mut().iter_mut().zip(a) {
            *c = f64::from(*v);
        }
        for _ in 0..info.frame_skip {
            d.step();
        }
        d.rne_post_constraint();
        obs.clear();
        observe(task, d, obs);
        if task == MujocoTask::InvertedPendulum {
            let terminated = !obs.iter().all(|v| v.is_finite()) || obs[1].abs() > 0.2;
            return (if terminated { 0.0 } else { 1.0 }, terminated);
        }
        let xv = (x(d) - before) / dt;
        let ctrl = f64::from(control_cost(info.ctrl_cost_weight, a));
        let (q, v) = (d.qpos(), d.qvel());
        let (reward, terminated) = match task {
            MujocoTask::HalfCheetah => (xv - ctrl, false),
            MujocoTask::Hopper => {
                let (z, angle) = (q[1], q[2]);
                let state_ok = q[2..].iter().chain(v).all(|s| -100.0 < *s && *s < 100.0);
                let healthy =
                    state_ok && 0.7 < z && z < f64::INFINITY && -0.2 < angle && angle < 0.2;
                ((xv + if healthy { 1.0 } else { 0.0 }) - ctrl, !healthy)
            }
            MujocoTask::Walker2d => {
                let (z, angle) = (q[1], q[2]);
                let healthy = 0.8 < z && z < 2.0 && -1.0 < angle && angle < 1.0;
                ((xv + if healthy { 1.0 } else { 0.0 }) - ctrl, !healthy)
            }
            MujocoTask::Ant => {
                let healthy =
                    q.iter().chain(v).all(|s| s.is_finite()) && 0.2 <= q[2] && q[2] <= 1.0;
                // Every body's 6 forces, the world's included (84 values).
                let forces = d.cfrc_ext();
                let mut sq = [0.0f64; 128];
                let sq = &mut sq[..forces.len() * 6];
                for (s, f) in sq.iter_mut().zip(forces.iter().flatten()) {
                    let c = f.clamp(-1.0, 1.0);
                    *s = c * c;
                }
                let contact = 5e-4 * numpy_sum(sq);
                (
                    (xv + if healthy { 1.0 } else { 0.0 }) - (ctrl + contact),
                    !healthy,
                )
            }
            MujocoTask::InvertedPendulum => unreachable!("returned above"),
        };
        (reward, terminated)
    }

    /// Returns of action sequences on the true dynamics from one start state ("planning with
    /// the simulator", as MJPC's predictive sampling does): each candidate restarts a copy
    /// from the start (`mj_resetData`, the state, `mj_forward`) and steps it through its
    /// sequence, summing the task's rewards until it terminates (the terminating step's reward
    /// included, as Gymnasium reports it). Candidates run on rayon's threads, one copy each.
    pub struct Rollouts {
        task: MujocoTask,
        info: TaskInfo,
        dt: f64,
        pool: Vec<std::sync::Mutex<MjData<Arc<MjModel>>>>,
    }

    impl Rollouts {
        pub fn new(task: MujocoTask) -> Result<Self, EnvError> {
            let env = MujocoEnv::new(task, 1)?;
            let model = env.data[0].model().clone();
            let model = Arc::new(model);
            let pool = (0..rayon::current_num_threads().max(1))
                .map(|_| std::sync::Mutex::new(MjData::new(model.clone())))
                .collect();
            Ok(Self {
                task,
                info: env.info,
                dt: env.dt,
                pool,
            })
        }

        /// `returns[c]` for candidate c of `actions` `[P, horizon, act_dim]`, from `start`
        /// (qpos ++ qvel). A candidate whose state leaves the finite numbers returns −∞.
        pub fn returns(
            &self,
            start: &[f64],
            actions: &[f32],
            horizon: usize,
            returns: &mut [f32],
        ) -> Result<(), EnvError> {
            let (nq, nv, ad) = (self.info.nq, self.info.nv, self.info.act_dim);
            if start.len() != nq + nv || actions.len() != returns.len() * horizon * ad {
                return Err(EnvError::WrongLength {
                    what: format!(
                        "a {} rollout: start [nq + nv] and actions [P, horizon, act_dim]",
                        self.info.name
                    ),
                    expected: (nq + nv) + returns.len() * horizon * ad,
                    got: start.len() + actions.len(),
                });
            }
            let workers = self.pool.len();
            let per = returns.len().div_ceil(workers).max(1);
            returns
                .par_chunks_mut(per)
                .zip(actions.par_chunks(per * horizon * ad))
                .enumerate()
                .for_each(|(w, (rets, acts))| {
                    let mut d = self.pool[w % workers].lock().expect("rollout copy");
                    let mut obs = Vec::with_capacity(self.info.obs_dim);
                    for (ret, seq) in rets.iter_mut().zip(acts.chunks_exact(horizon * ad)) {
                        d.reset();
                        d.qpos_mut().copy_from_slice(&start[..nq]);
                        d.qvel_mut().copy_from_slice(&start[nq..]);
                        d.forward();
                        let mut total = 0.0f64;
                        for a in seq.chunks_exact(ad) {
                            let (reward, terminated) =
                                step_one(self.task, &self.info, self.dt, &mut d, a, &mut obs);
                            total += reward;
                            if !obs.iter().all(|v| v.is_finite()) {
                                total = f64::NEG_INFINITY;
                                break;
                            }
                            if terminated {
                                break;
                            }
                        }
                        *ret = if total.is_finite() {
                            total as f32
                        } else {
                            f32::NEG_INFINITY
                        };
                    }
                });
            Ok(())
        }
    }

    impl Env for MujocoEnv {
        fn spec(&self) -> &EnvSpec {
            &self.spec
        }

        fn num_envs(&self) -> usize {
            self.data.len()
        }

        /// Gymnasium's `reset(seed=seeds[i])` for copy i, from the states of
        /// [`MujocoEnv::reset_states_f64`].
        fn reset(&mut self, seeds: &[u64]) -> Result<Vec<f32>, EnvError> {
            crate::env::check_seeds(seeds, self.data.len())?;
            let states = self.reset_states_f64(seeds);
            self.set_state_f64(&states)?;
            Ok(self.observations_f64().iter().map(|v| *v as f32).collect())
        }

        fn step(&mut self, actions: &[f32]) -> Result<Vec<Transition>, EnvError> {
            let steps = self.step_f64(actions)?;
            let mut out = Vec::with_capacity(steps.len());
            for (i, s) in steps.into_iter().enumerate() {
                let obs: Vec<f32> = s.obs.iter().map(|v| *v as f32).collect();
                if let Some(c) = obs.iter().position(|v| !v.is_finite()) {
                    return Err(EnvError::NonFiniteResult {
                        step: self.elapsed[i],
                        what: "observation",
                        value: s.obs[c],
                    });
                }
                out.push(Transition {
                    obs,
                    reward: s.reward as f32,
                    terminated: s.terminated,
                    truncated: self.elapsed[i] >= self.spec.max_episode_steps,
                });
            }
            Ok(out)
        }

        /// qpos then qvel of every copy, rounded to f32.
        fn state(&self) -> &[f32] {
            &self.state_f32
        }

        fn set_state(&mut self, states: &[f32]) -> Result<(), EnvError> {
            let s: Vec<f64> = states.iter().map(|v| f64::from(*v)).collect();
            self.set_state_f64(&s)
        }
    }
}
