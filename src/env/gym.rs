//! The Gymnasium bridge: `--env gym:ID` runs any Gymnasium environment with Box spaces in a
//! Python worker process and steps it through [`Env`], like a native environment.
//!
//! The worker is `python/mbrl_gpu/gym_worker.py`, compiled into the binary and started as
//! `python3 -c <source>`; its docstring specifies the protocol (length-prefixed binary frames
//! over the worker's stdin and stdout, version [`PROTOCOL_VERSION`]). The interpreter is
//! `python3` from `PATH`, or `MBRL_GPU_PYTHON` (the CLI's `--python`); every request waits at
//! most `MBRL_GPU_GYM_TIMEOUT` seconds (the CLI's `--gym-timeout`, default 120), after which
//! the worker is killed and the request fails. A worker that failed, crashed or timed out is
//! not used again: every later call returns an error naming what happened first.
//!
//! Names: `gym:Pendulum-v1`, or `gym:my_pkg:MyEnv-v0` to import `my_pkg` first (Gymnasium's
//! own `module:ID` form; the CLI's `--gym-module my_pkg` writes it).
use super::{Env, EnvError, EnvId, EnvSpec, Transition};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::process::ChildStdout;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The worker's source (what `python3 -c` runs).
pub const WORKER_SOURCE: &str = include_str!("../../python/mbrl_gpu/gym_worker.py");
/// The protocol version this build speaks (the worker's `VERSION`).
pub const PROTOCOL_VERSION: u32 = 1;
/// Most copies one worker holds.
pub const MAX_COPIES: usize = 4096;
/// Largest flattened observation or action a space may have.
pub const MAX_DIM: usize = 1 << 16;
/// Frames longer than this are refused in both directions.
const MAX_FRAME: usize = 1 << 30;
/// Episode length when Gymnasium registers no time limit (MuJoCo's usual 1,000).
pub const DEFAULT_EPISODE_STEPS: usize = 1000;
/// Lines of the worker's stderr kept for error messages.
const TAIL_LINES: usize = 30;

/// Environment variable naming the Python interpreter.
pub const PYTHON_VAR: &str = "MBRL_GPU_PYTHON";
/// Environment variable with the per-request timeout in seconds.
pub const TIMEOUT_VAR: &str = "MBRL_GPU_GYM_TIMEOUT";

mod tag {
    pub const HELLO: u8 = 0x48;
    pub const ERROR: u8 = 0xEE;
    pub const MAKE: u8 = 0x01;
    pub const RESET: u8 = 0x02;
    pub const STEP: u8 = 0x03;
    pub const STATE: u8 = 0x04;
    pub const CLOSE: u8 = 0x05;
    /// Replies carry the request's tag with the high bit set.
    pub const REPLY: u8 = 0x80;
}

/// A Gymnasium environment ID, with the module to import before `gymnasium.make`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GymId {
    pub module: Option<String>,
    pub id: String,
}

impl GymId {
    /// `gym:ID` or `gym:MODULE:ID`; None when `s` does not start with `gym:`.
    pub fn parse(s: &str) -> Option<Result<GymId, EnvError>> {
        let rest = s.strip_prefix("gym:")?;
        let bad = |why: &str| EnvError::Gym {
            env: s.to_string(),
            message: format!(
                "not a Gymnasium name: {why} (write gym:ID or gym:MODULE:ID, e.g. \
                 gym:Pendulum-v1)"
            ),
        };
        let (module, id) = match rest.rsplit_once(':') {
            Some((m, id)) => (Some(m), id),
            None => (None, rest),
        };
        let id_ok = !id.is_empty()
            && id.len() <= 200
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !id_ok {
            return Some(Err(bad(
                "the ID must be 1–200 letters, digits and - _ . / characters",
            )));
        }
        if let Some(m) = module {
            let ok = !m.is_empty()
                && m.len() <= 200
                && m.split('.').all(|p| {
                    !p.is_empty()
                        && !p.starts_with(|c: char| c.is_ascii_digit())
                        && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if !ok {
                return Some(Err(bad(&format!("{m:?} is not a Python module name"))));
            }
        }
        Some(Ok(GymId {
            module: module.map(str::to_string),
            id: id.to_string(),
        }))
    }

    /// The name [`GymId::parse`] reads back.
    pub fn name(&self) -> String {
        match &self.module {
            Some(m) => format!("gym:{m}:{}", self.id),
            None => format!("gym:{}", self.id),
        }
    }

    /// The native environment this Gymnasium ID reproduces step for step (its reward and
    /// termination functions, presets and true dynamics then apply to it).
    pub fn native(&self) -> Option<EnvId> {
        if self.module.is_some() {
            return None;
        }
        match self.id.as_str() {
            "Pendulum-v1" => Some(EnvId::Pendulum),
            "MountainCarContinuous-v0" => Some(EnvId::MountainCar),
            _ => None,
        }
    }
}

/// How workers are started.
#[derive(Clone, Debug)]
pub struct GymOptions {
    /// The interpreter.
    pub python: OsString,
    /// Longest wait for any one reply.
    pub timeout: Duration,
    /// Extra environment variables of the worker process (e.g. `PYTHONPATH`).
    pub vars: Vec<(OsString, OsString)>,
}

impl GymOptions {
    /// From `MBRL_GPU_PYTHON` (default `python3`) and `MBRL_GPU_GYM_TIMEOUT` (seconds,
    /// default 120).
    pub fn from_env() -> Result<Self, EnvError> {
        let python = std::env::var_os(PYTHON_VAR)
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".into());
        let timeout = match std::env::var(TIMEOUT_VAR) {
            Ok(v) => parse_timeout(&v).ok_or_else(|| EnvError::Gym {
                env: "gym".into(),
                message: format!(
                    "{TIMEOUT_VAR}={v:?} is not a number of seconds between 0.01 and 86400"
                ),
            })?,
            Err(_) => Duration::from_secs(120),
        };
        Ok(Self {
            python,
            timeout,
            vars: vec![],
        })
    }
}

/// Seconds in 0.01..=86400.
pub fn parse_timeout(v: &str) -> Option<Duration> {
    let s: f64 = v.trim().parse().ok()?;
    (0.01..=86_400.0)
        .contains(&s)
        .then(|| Duration::from_secs_f64(s))
}

/// What the worker said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerVersions {
    pub python: String,
    pub gymnasium: String,
    pub numpy: String,
}

/// N copies of a Gymnasium environment in one worker process. Semantics per copy are those
/// of [`super::NativeEnv`]: Gymnasium's `truncated` (and, when no time limit is registered,
/// [`DEFAULT_EPISODE_STEPS`]), no auto-reset. There is no internal state to read or set.
pub struct GymEnv {
    name: String,
    spec: EnvSpec,
    copies: usize,
    versions: WorkerVersions,
    child: Child,
    stdin: Option<ChildStdin>,
    /// The worker's stdout, read on the calling thread (poll with the deadline, then read:
    /// no reader thread, so a reply wakes one thread, not two).
    stdout: ChildStdout,
    /// Bytes read past the last whole frame.
    inbuf: Vec<u8>,
    /// What one `read` takes in (kept: a step reads through it every time).
    chunk: Vec<u8>,
    tail: Arc<Mutex<VecDeque<String>>>,
    timeout: Duration,
    elapsed: Vec<usize>,
    ready: bool,
    /// Why the worker is no longer usable.
    broken: Option<String>,
}

impl GymEnv {
    /// Start a worker and make `copies` copies of `id` in it.
    pub fn open(id: &GymId, copies: usize, opts: &GymOptions) -> Result<Self, EnvError> {
        let name = id.name();
        let fail = |message: String| EnvError::Gym {
            env: name.clone(),
            message,
        };
        if copies == 0 || copies > MAX_COPIES {
            return Err(fail(format!(
                "{copies} copies asked for; one worker holds 1 to {MAX_COPIES}"
            )));
        }
        let mut child = Command::new(&opts.python)
            .arg("-u")
            .arg("-c")
            .arg(WORKER_SOURCE)
            .envs(opts.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                let python = opts.python.to_string_lossy();
                fail(if e.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        "cannot start the Gymnasium worker: Python interpreter {python:?} not \
                         found (install Python 3, or name one with --python PATH or \
                         {PYTHON_VAR})"
                    )
                } else {
                    format!("cannot start the Gymnasium worker with {python:?}: {e}")
                })
            })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let t2 = Arc::clone(&tail);
        std::thread::spawn(move || keep_tail(stderr, t2));
        let mut env = GymEnv {
            name: name.clone(),
            spec: EnvSpec {
                name: name.clone(),
                obs_dim: 0,
                act_dim: 0,
                state_dim: 0,
                act_low: vec![],
                act_high: vec![],
                max_episode_steps: DEFAULT_EPISODE_STEPS,
                description: String::new(),
            },
            copies,
            versions: WorkerVersions {
                python: String::new(),
                gymnasium: String::new(),
                numpy: String::new(),
            },
            child,
            stdin,
            stdout,
            inbuf: Vec::new(),
            chunk: vec![0u8; 1 << 16],
            tail,
            timeout: opts.timeout,
            elapsed: vec![0; copies],
            ready: false,
            broken: None,
        };
        let hello = env.receive("the worker's greeting", tag::HELLO)?;
        env.versions = env.parse_hello(&hello[1..])?;
        let mut make = vec![tag::MAKE];
        make.extend_from_slice(&(copies as u32).to_le_bytes());
        put_str(&mut make, id.module.as_deref().unwrap_or(""));
        put_str(&mut make, &id.id);
        let spaces = env.request(&make, "MAKE")?;
        env.spec = env.parse_spaces(&spaces[1..])?;
        Ok(env)
    }

    /// Python, Gymnasium and NumPy versions of the worker.
    pub fn versions(&self) -> &WorkerVersions {
        &self.versions
    }

    /// The worker's process id (tests kill it to check what a crash gives).
    pub fn worker_pid(&self) -> u32 {
        self.child.id()
    }

    /// `env.unwrapped.state` of every copy, flattened, `[N, dim]` in f64 (classic-control
    /// environments keep one; for the parity tests against the native environments).
    pub fn unwrapped_state(&mut self) -> Result<Vec<f64>, EnvError> {
        let body = self.request(&[tag::STATE], "STATE")?;
        let mut r = Cursor::new(&body[1..]);
        let dim = r.u32().map_err(|e| self.protocol(e))? as usize;
        let v = r
            .f64s(self.copies * dim)
            .and_then(|v| r.end().map(|_| v))
            .map_err(|e| self.protocol(e))?;
        Ok(v)
    }

    fn err(&self, message: String) -> EnvError {
        EnvError::Gym {
            env: self.name.clone(),
            message,
        }
    }

    fn protocol(&mut self, what: String) -> EnvError {
        let m = format!("protocol error from the worker: {what}");
        self.broken = Some(m.clone());
        self.stop();
        self.err(m)
    }

    fn parse_hello(&mut self, body: &[u8]) -> Result<WorkerVersions, EnvError> {
        let mut r = Cursor::new(body);
        let parsed = (|| {
            if r.take(4)? != b"MBGW" {
                return Err("the greeting does not start with MBGW".to_string());
            }
            let v = r.u32()?;
            if v != PROTOCOL_VERSION {
                return Err(format!(
                    "the worker speaks protocol version {v}, this mbrl-gpu {PROTOCOL_VERSION}"
                ));
            }
            let w = WorkerVersions {
                python: r.str()?,
                gymnasium: r.str()?,
                numpy: r.str()?,
            };
            r.end()?;
            Ok(w)
        })();
        parsed.map_err(|e| self.protocol(e))
    }

    fn parse_spaces(&mut self, body: &[u8]) -> Result<EnvSpec, EnvError> {
        let mut r = Cursor::new(body);
        let parsed = (|| {
            let od = r.u32()? as usize;
            let ad = r.u32()? as usize;
            if od == 0 || ad == 0 || od > MAX_DIM || ad > MAX_DIM {
                return Err(format!(
                    "spaces of {od} observation and {ad} action values (each must be 1..={MAX_DIM})"
                ));
            }
            let _obs_low = r.f64s(od)?;
            let _obs_high = r.f64s(od)?;
            let low = r.f64s(ad)?;
            let high = r.f64s(ad)?;
            let limit = r.u32()? as usize;
            r.end()?;
            Ok((od, ad, low, high, limit))
        })();
        let (od, ad, low, high, limit) = parsed.map_err(|e| self.protocol(e))?;
        for (i, (l, h)) in low.iter().zip(&high).enumerate() {
            let (lf, hf) = (*l as f32, *h as f32);
            if !(lf.is_finite() && hf.is_finite() && lf < hf) {
                let m = format!(
                    "action component {i} has bounds [{l}, {h}]; the policies and planners \
                     need finite bounds with low < high"
                );
                self.broken = Some(m.clone());
                self.stop();
                return Err(self.err(m));
            }
        }
        Ok(EnvSpec {
            name: self.name.clone(),
            obs_dim: od,
            act_dim: ad,
            state_dim: 0,
            act_low: low.iter().map(|v| *v as f32).collect(),
            act_high: high.iter().map(|v| *v as f32).collect(),
            max_episode_steps: if limit == 0 {
                DEFAULT_EPISODE_STEPS
            } else {
                limit
            },
            description: format!("Gymnasium {} through the Python bridge", self.name),
        })
    }

    /// Send one request and wait for its reply (tag | 0x80).
    fn request(&mut self, payload: &[u8], what: &str) -> Result<Vec<u8>, EnvError> {
        if let Some(b) = &self.broken {
            return Err(self.err(format!("the worker is no longer usable: {b}")));
        }
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(payload);
        let sent = match self.stdin.as_mut() {
            Some(w) => w.write_all(&frame).and_then(|_| w.flush()),
            None => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        };
        if sent.is_err() {
            // The reader thread sees the exit too; report it the same way.
            let m = self.death(what);
            return Err(self.err(m));
        }
        self.receive(what, payload[0] | tag::REPLY)
    }

    /// The next whole frame, waiting at most the timeout in all.
    fn next_frame(&mut self) -> Result<Vec<u8>, Incoming> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if self.inbuf.len() >= 4 {
                let n = u32::from_le_bytes(self.inbuf[..4].try_into().expect("4 bytes")) as usize;
                if n == 0 || n > MAX_FRAME {
                    return Err(Incoming::Invalid(format!(
                        "a frame of {n} bytes (allowed: 1..={MAX_FRAME})"
                    )));
                }
                if self.inbuf.len() >= 4 + n {
                    let body = self.inbuf[4..4 + n].to_vec();
                    self.inbuf.drain(..4 + n);
                    return Ok(body);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Incoming::Timeout);
            }
            let mut pfd = libc::pollfd {
                fd: self.stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Incoming::Eof);
            }
            if r == 0 {
                continue;
            }
            match self.stdout.read(&mut self.chunk) {
                Ok(0) => return Err(Incoming::Eof),
                Ok(k) => self.inbuf.extend_from_slice(&self.chunk[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Incoming::Eof),
            }
        }
    }

    fn receive(&mut self, what: &str, want: u8) -> Result<Vec<u8>, EnvError> {
        match self.next_frame() {
            Ok(body) if body.first() == Some(&want) => Ok(body),
            Ok(body) if body.first() == Some(&tag::ERROR) => {
                let mut r = Cursor::new(&body[1..]);
                let kind = r.take(1).map(|b| b[0]).unwrap_or(0);
                let text = r.str().unwrap_or_else(|_| "(unreadable message)".into());
                let m = match kind {
                    // Missing Gymnasium, failed import, unknown ID, unsupported space: the
                    // worker's message says it all.
                    1..=4 => text,
                    5 => format!("the environment failed: {text}"),
                    6 => format!("the worker refused a request as malformed: {text}"),
                    7 => format!("{what}: {text}"),
                    k => format!("error of unknown kind {k}: {text}"),
                };
                // The worker exits after a missing import or a protocol error; after the
                // others it is alive, but the caller's episode is gone all the same.
                if kind != 7 {
                    self.broken = Some(m.clone());
                    self.stop();
                }
                Err(self.err(m))
            }
            Ok(body) => {
                let got = body.first().copied().unwrap_or(0);
                Err(self.protocol(format!(
                    "a reply with tag {got:#04x} to {what} (expected {want:#04x})"
                )))
            }
            Err(Incoming::Invalid(e)) => Err(self.protocol(e)),
            Err(Incoming::Eof) => {
                let m = self.death(what);
                Err(self.err(m))
            }
            Err(Incoming::Timeout) => {
                let m = format!(
                    "the worker did not answer {what} within {:.3} s ({TIMEOUT_VAR} or \
                     --gym-timeout); it was stopped",
                    self.timeout.as_secs_f64()
                );
                self.broken = Some(m.clone());
                self.stop();
                Err(self.err(m))
            }
        }
    }

    /// The message for a worker that went away during `what`.
    fn death(&mut self, what: &str) -> String {
        // Give the process a moment to be reaped so its status is known.
        let t0 = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if t0.elapsed() < Duration::from_secs(2) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => break None,
            }
        };
        self.stop();
        // The stderr thread may still be draining the last lines.
        std::thread::sleep(Duration::from_millis(50));
        let how = match status {
            Some(s) => format!("exited ({s})"),
            None => "closed its output".into(),
        };
        let tail = self
            .tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>());
        let tail = tail.unwrap_or_default();
        let m = if tail.is_empty() {
            format!("the worker {how} during {what}")
        } else {
            format!(
                "the worker {how} during {what}; its last output:\n  {}",
                tail.join("\n  ")
            )
        };
        self.broken = Some(m.clone());
        m
    }

    /// Kill the worker (idempotent).
    fn stop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn check_obs(&self, obs: &[f64], step: bool) -> Result<Vec<f32>, EnvError> {
        let od = self.spec.obs_dim;
        let mut out = Vec::with_capacity(obs.len());
        for (i, v) in obs.iter().enumerate() {
            let f = *v as f32;
            if !f.is_finite() {
                return Err(self.err(format!(
                    "{} returned a non-finite observation value {v} (as f32: {f}) in copy {}, \
                     component {}",
                    if step { "step" } else { "reset" },
                    i / od,
                    i % od
                )));
            }
            out.push(f);
        }
        Ok(out)
    }
}

impl Env for GymEnv {
    fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    fn num_envs(&self) -> usize {
        self.copies
    }

    fn reset(&mut self, seeds: &[u64]) -> Result<Vec<f32>, EnvError> {
        super::check_seeds(seeds, self.copies)?;
        let mut req = vec![tag::RESET];
        for s in seeds {
            req.extend_from_slice(&s.to_le_bytes());
        }
        let body = self.request(&req, "RESET")?;
        let mut r = Cursor::new(&body[1..]);
        let n = self.copies * self.spec.obs_dim;
        let obs = r
            .f64s(n)
            .and_then(|v| r.end().map(|_| v))
            .map_err(|e| self.protocol(e))?;
        let obs = self.check_obs(&obs, false)?;
        self.elapsed.fill(0);
        self.ready = true;
        Ok(obs)
    }

    fn step(&mut self, actions: &[f32]) -> Result<Vec<Transition>, EnvError> {
        let (n, od, ad) = (self.copies, self.spec.obs_dim, self.spec.act_dim);
        super::check_step(actions, n, ad, &self.name, self.ready)?;
        let mut req = Vec::with_capacity(1 + 4 * actions.len());
        req.push(tag::STEP);
        for a in actions {
            req.extend_from_slice(&a.to_le_bytes());
        }
        let body = self.request(&req, "STEP")?;
        let mut r = Cursor::new(&body[1..]);
        let parsed = (|| {
            let obs = r.f64s(n * od)?;
            let rew = r.f64s(n)?;
            let term = r.take(n)?.to_vec();
            let trunc = r.take(n)?.to_vec();
            r.end()?;
            Ok((obs, rew, term, trunc))
        })();
        let (obs, rew, term, trunc) = parsed.map_err(|e| self.protocol(e))?;
        let obs = self.check_obs(&obs, true)?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let reward = rew[i] as f32;
            if !reward.is_finite() {
                return Err(self.err(format!(
                    "step returned a non-finite reward {} in copy {i}",
                    rew[i]
                )));
            }
            self.elapsed[i] += 1;
            out.push(Transition {
                obs: obs[i * od..(i + 1) * od].to_vec(),
                reward,
                terminated: term[i] != 0,
                truncated: trunc[i] != 0 || self.elapsed[i] >= self.spec.max_episode_steps,
            });
        }
        Ok(out)
    }

    /// A Gymnasium environment exposes no internal state: always empty.
    fn state(&self) -> &[f32] {
        &[]
    }

    fn set_state(&mut self, _states: &[f32]) -> Result<(), EnvError> {
        Err(self.err(
            "a Gymnasium environment's state cannot be set through the bridge (true-dynamics \
             planning needs a native environment)"
                .into(),
        ))
    }
}

impl Drop for GymEnv {
    fn drop(&mut self) {
        if self.broken.is_none() {
            if let Some(w) = self.stdin.as_mut() {
                let _ = w.write_all(&1u32.to_le_bytes());
                let _ = w.write_all(&[tag::CLOSE]);
                let _ = w.flush();
            }
            self.stdin = None;
            // A healthy worker answers BYE and exits at once; don't wait on a stuck one.
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_millis(500) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.stop();
    }
}

/// Stderr thread: keeps the last lines for error messages.
fn keep_tail(stderr: std::process::ChildStderr, tail: Arc<Mutex<VecDeque<String>>>) {
    use std::io::BufRead;
    let mut r = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                let Ok(mut t) = tail.lock() else { return };
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(text.chars().take(500).collect());
            }
        }
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    buf.extend_from_slice(&(b.len() as u16).to_le_bytes());
    buf.extend_from_slice(b);
}

/// Why no frame came.
enum Incoming {
    Timeout,
    Eof,
    Invalid(String),
}

/// Little-endian reads that name what was missing.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, i: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        match self.i.checked_add(n) {
            Some(end) if end <= self.b.len() => {
                let s = &self.b[self.i..end];
                self.i = end;
                Ok(s)
            }
            _ => Err(format!(
                "a reply ended early ({} bytes, {} more wanted at offset {})",
                self.b.len(),
                n,
                self.i
            )),
        }
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn str(&mut self) -> Result<String, String> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    fn f64s(&mut self, n: usize) -> Result<Vec<f64>, String> {
        let b = self.take(n.checked_mul(8).ok_or("an absurd length")?)?;
        Ok(b.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    fn end(&self) -> Result<(), String> {
        if self.i == self.b.len() {
            Ok(())
        } else {
            Err(format!(
                "{} unexpected bytes after a reply",
                self.b.len() - self.i
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        let g = GymId::parse("gym:Pendulum-v1").unwrap().unwrap();
        assert_eq!(g.module, None);
        assert_eq!(g.id, "Pendulum-v1");
        assert_eq!(g.native(), Some(EnvId::Pendulum));
        let g = GymId::parse("gym:my_pkg.envs:ALE/Thing-v5")
            .unwrap()
            .unwrap();
        assert_eq!(g.module.as_deref(), Some("my_pkg.envs"));
        assert_eq!(g.id, "ALE/Thing-v5");
        assert_eq!(g.name(), "gym:my_pkg.envs:ALE/Thing-v5");
        assert_eq!(g.native(), None);
        assert!(GymId::parse("pendulum").is_none());
        for bad in [
            "gym:",
            "gym:a b",
            "gym:1pkg:X-v0",
            "gym::X-v0",
            "gym:x;rm:X",
            "gym:X\n",
        ] {
            let e = GymId::parse(bad).unwrap().unwrap_err().to_string();
            assert!(e.contains("gym:ID"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn timeouts_parse_in_range() {
        assert_eq!(parse_timeout("2.5"), Some(Duration::from_millis(2500)));
        for bad in ["0", "-1", "nan", "1e9", "x", ""] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn cursor_names_short_replies() {
        let b = [1u8, 0, 0];
        let mut c = Cursor::new(&b);
        assert!(c.u32().unwrap_err().contains("ended early"));
        let b = 7u32.to_le_bytes();
        let mut c = Cursor::new(&b);
        assert_eq!(c.u32().unwrap(), 7);
        assert!(c.end().is_ok());
        assert!(c.f64s(usize::MAX).is_err());
    }
}
