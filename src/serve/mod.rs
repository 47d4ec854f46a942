//! `mbrl-gpu serve`: a planning service for controllers. A client connects over loopback TCP
//! or a Unix socket, says hello, and sends observations; each gets an action planned before
//! its deadline (protocol: `docs/serve_protocol.md`, frames: [`protocol`]).
//!
//! Threads: one accepts connections, one serves each connection (its own planner, so its own
//! warm start), and with a learned model one refits it in the background. The refit works on
//! a copy and publishes the new model with a version number; a connection picks it up at the
//! start of a request, never during one. Every answer is finite and inside the action bounds
//! (`plan::safe_action`, the planner's fallback), and every malformed frame gets an ERROR or
//! a clean close without disturbing the other connections.
pub mod protocol;

use crate::backend::Backend;
use crate::env::{EnvId, EnvSpec};
use crate::model::train::{train, TrainConfig};
use crate::model::{Ensemble, Transitions};
use crate::plan::{Mpc, PlannerConfig, TsConfig};
use crate::{invalid, Error, Result};
use protocol::{code, flag, kind, ActionReply, Dims, ReadError, Request};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often a waiting thread looks at the shutdown flag.
const POLL: Duration = Duration::from_millis(50);
/// Observations farther than this many training standard deviations from the training mean
/// are flagged out of range.
const RANGE_SIGMAS: f32 = 6.0;

/// Where to listen: `HOST:PORT` (loopback unless `allow_remote`) or `unix:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Address {
    pub fn parse(s: &str, allow_remote: bool) -> Result<Address> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(invalid!(
                    "--listen unix: needs a path, e.g. unix:/tmp/mpc.sock"
                ));
            }
            return Ok(Address::Unix(PathBuf::from(p)));
        }
        let addr: SocketAddr = s.parse().map_err(|_| {
            invalid!("--listen {s}: give HOST:PORT (e.g. 127.0.0.1:5555) or unix:PATH")
        })?;
        if !addr.ip().is_loopback() && !allow_remote {
            return Err(invalid!(
                "--listen {s} is not a loopback address; the protocol has no authentication \
                 and SHUTDOWN stops the server, so listening beyond this machine needs \
                 --allow-remote"
            ));
        }
        Ok(Address::Tcp(addr))
    }
}

/// What the planner scores candidates with.
// One value per server: boxing the model would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum ServeDynamics {
    /// A learned ensemble on the task's reward/termination code (`env::task`), with the data
    /// it refits on.
    Model {
        model: Ensemble,
        task: u32,
        ts: TsConfig,
        data: Transitions,
        /// A learned value closing each planned path (`serve --terminal-value`; on any backend).
        terminal: Option<crate::backend::TerminalValue>,
    },
    /// A native environment's own dynamics; observations are mapped back to its state.
    True(EnvId),
}

/// Everything `serve` is configured with.
pub struct ServeConfig {
    pub env_name: String,
    pub spec: EnvSpec,
    pub planner: PlannerConfig,
    pub dynamics: ServeDynamics,
    /// Default deadline of an ACT (ms).
    pub deadline_ms: f32,
    pub max_clients: usize,
    pub frame_timeout: Duration,
    pub idle_timeout: Duration,
    /// Refit after this many new transitions (0: never).
    pub refit_every: usize,
    /// Transitions held at most; an ADD beyond it is refused (memory stays bounded).
    pub max_transitions: usize,
    pub train: TrainConfig,
    /// Save the model every this many refits (and at shutdown) to `save`.
    pub save_every: usize,
    pub save: Option<PathBuf>,
    pub seed: u64,
}

/// What a finished server did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServeSummary {
    pub connections: usize,
    pub actions: usize,
    pub refits: usize,
    pub saves: usize,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// One client connection.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }
    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// State shared by the connection threads and the refit thread.
struct Shared {
    cfg: ServeConfig,
    /// The current model and its version (1 for the model the server started with).
    model: RwLock<Option<Arc<Ensemble>>>,
    version: AtomicU32,
    /// Transitions received, and how many arrived since the last refit.
    data: Mutex<(Transitions, usize)>,
    wake: Condvar,
    shutdown: AtomicBool,
    clients: AtomicUsize,
    connections: AtomicUsize,
    actions: AtomicUsize,
    refits: AtomicUsize,
    saves: AtomicUsize,
}

/// A bound server; [`Server::run`] serves until a SHUTDOWN frame or [`Server::stopper`].
pub struct Server {
    listener: Listener,
    shared: Arc<Shared>,
}

impl Server {
    pub fn bind(address: &Address, cfg: ServeConfig) -> Result<Server> {
        if cfg.max_clients == 0 {
            return Err(invalid!("--max-clients must be at least 1"));
        }
        if !(cfg.deadline_ms.is_finite() && cfg.deadline_ms > 0.0) {
            return Err(invalid!(
                "--deadline-ms must be a positive number of milliseconds, got {}",
                cfg.deadline_ms
            ));
        }
        cfg.planner.validate()?;
        let listener = match address {
            Address::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(|e| invalid!("cannot listen on {a}: {e}"))?;
                l.set_nonblocking(true)
                    .map_err(|e| invalid!("cannot listen on {a}: {e}"))?;
                Listener::Tcp(l)
            }
            Address::Unix(p) => {
                if p.exists() {
                    // A socket nobody answers on is left over from a killed server.
                    if UnixStream::connect(p).is_ok() {
                        return Err(invalid!("{} is in use by a running server", p.display()));
                    }
                    let is_socket = std::fs::symlink_metadata(p).is_ok_and(|m| {
                        use std::os::unix::fs::FileTypeExt;
                        m.file_type().is_socket()
                    });
                    if !is_socket {
                        return Err(invalid!(
                            "{} exists and is not a socket; refusing to replace it",
                            p.display()
                        ));
                    }
                    std::fs::remove_file(p).map_err(|e| Error::io(p, e))?;
                }
                let l = UnixListener::bind(p)
                    .map_err(|e| invalid!("cannot listen on {}: {e}", p.display()))?;
                l.set_nonblocking(true).map_err(|e| Error::io(p, e))?;
                Listener::Unix(l, p.clone())
            }
        };
        let (model, data) = match &cfg.dynamics {
            ServeDynamics::Model { model, data, .. } => {
                (Some(Arc::new(model.clone())), data.clone())
            }
            ServeDynamics::True(_) => (None, Transitions::new(cfg.spec.obs_dim, cfg.spec.act_dim)),
        };
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                cfg,
                model: RwLock::new(model),
                version: AtomicU32::new(1),
                data: Mutex::new((data, 0)),
                wake: Condvar::new(),
                shutdown: AtomicBool::new(false),
                clients: AtomicUsize::new(0),
                connections: AtomicUsize::new(0),
                actions: AtomicUsize::new(0),
                refits: AtomicUsize::new(0),
                saves: AtomicUsize::new(0),
            }),
        })
    }

    /// The TCP address bound (port 0 resolved), if TCP.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.listener {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    /// A handle that stops the server from another thread (as SHUTDOWN does).
    pub fn stopper(&self) -> impl Fn() + Send + Sync + 'static {
        let s = self.shared.clone();
        move || {
            s.shutdown.store(true, Ordering::SeqCst);
            s.wake.notify_all();
        }
    }

    /// Serve until shut down; connections and the refit thread are joined before returning,
    /// and a refitted model is saved.
    pub fn run<B: Backend>(self, backend: &B) -> Result<ServeSummary> {
        let sh = &*self.shared;
        let learning = sh.learning();
        std::thread::scope(|s| {
            if learning {
                s.spawn(|| refit_loop(backend, sh));
            }
            while !sh.shutdown.load(Ordering::SeqCst) {
                let stream = match &self.listener {
                    Listener::Tcp(l) => l.accept().map(|(t, _)| {
                        let _ = t.set_nodelay(true);
                        let _ = t.set_nonblocking(false);
                        Stream::Tcp(t)
                    }),
                    Listener::Unix(l, _) => l.accept().map(|(u, _)| {
                        let _ = u.set_nonblocking(false);
                        Stream::Unix(u)
                    }),
                };
                let mut stream = match stream {
                    Ok(st) => st,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(POLL / 10);
                        continue;
                    }
                    Err(e) => {
                        eprintln!("serve: accept failed: {e}");
                        std::thread::sleep(POLL);
                        continue;
                    }
                };
                let _ = stream.set_write_timeout(Some(sh.cfg.frame_timeout));
                if sh.clients.load(Ordering::SeqCst) >= sh.cfg.max_clients {
                    let msg = format!(
                        "busy: {} connections are open (--max-clients)",
                        sh.cfg.max_clients
                    );
                    refuse_and_close(&mut stream, code::BUSY, &msg);
                    continue;
                }
                sh.clients.fetch_add(1, Ordering::SeqCst);
                let n = sh.connections.fetch_add(1, Ordering::SeqCst);
                s.spawn(move || {
                    // A bug in one connection must not take the others down: its panic ends
                    // that connection only.
                    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        Connection::new(sh, n).serve(backend, &mut stream)
                    }));
                    match served {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => eprintln!("serve: connection {n}: {e}"),
                        Err(_) => eprintln!("serve: connection {n} failed (panic); closed it"),
                    }
                    sh.clients.fetch_sub(1, Ordering::SeqCst);
                });
            }
            sh.wake.notify_all();
        });
        if let Listener::Unix(_, p) = &self.listener {
            let _ = std::fs::remove_file(p);
        }
        if learning && sh.refits.load(Ordering::SeqCst) > 0 {
            sh.save_model()?;
        }
        Ok(ServeSummary {
            connections: sh.connections.load(Ordering::SeqCst),
            actions: sh.actions.load(Ordering::SeqCst),
            refits: sh.refits.load(Ordering::SeqCst),
            saves: sh.saves.load(Ordering::SeqCst),
        })
    }
}

/// Send an ERROR, stop writing, and wait briefly for the peer to close, so that the error is
/// not lost to a reset (a close with unread input makes the kernel send RST).
fn refuse_and_close(stream: &mut Stream, code: u16, message: &str) {
    let _ = stream.write_all(&protocol::error_frame(0, code, message));
    stream.shutdown_write();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 4096];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(200) {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

impl Shared {
    fn learning(&self) -> bool {
        matches!(self.cfg.dynamics, ServeDynamics::Model { .. }) && self.cfg.refit_every > 0
    }

    fn current_model(&self) -> Option<(Arc<Ensemble>, u32)> {
        let m = self.model.read().unwrap_or_else(|p| p.into_inner());
        m.clone().map(|m| (m, self.version.load(Ordering::SeqCst)))
    }

    fn save_model(&self) -> Result<()> {
        let (Some(path), Some((m, _))) = (&self.cfg.save, self.current_model()) else {
            return Ok(());
        };
        crate::io::checkpoint::save(&m, path)?;
        self.saves.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn hello_json(&self) -> String {
        let (dynamics, version) = match self.current_model() {
            Some((_, v)) => ("model", v),
            None => ("true", 0),
        };
        let sp = &self.cfg.spec;
        serde_json::json!({
            "protocol": protocol::VERSION,
            "server": concat!("mbrl-gpu ", env!("CARGO_PKG_VERSION")),
            "env": self.cfg.env_name,
            "dynamics": dynamics,
            "obs_dim": sp.obs_dim,
            "act_dim": sp.act_dim,
            "act_low": sp.act_low,
            "act_high": sp.act_high,
            "deadline_ms": self.cfg.deadline_ms,
            "learning": self.learning(),
            "model_version": version,
            "planner": self.cfg.planner,
        })
        .to_string()
    }
}

/// Refit the model on everything received whenever `refit_every` new transitions arrived;
/// publish the result only if it trained and every parameter is finite.
fn refit_loop<B: Backend>(backend: &B, sh: &Shared) {
    loop {
        let data = {
            let mut g = sh.data.lock().unwrap_or_else(|p| p.into_inner());
            while g.1 < sh.cfg.refit_every && !sh.shutdown.load(Ordering::SeqCst) {
                g = sh
                    .wake
                    .wait_timeout(g, POLL * 4)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if sh.shutdown.load(Ordering::SeqCst) {
                return;
            }
            g.1 = 0;
            g.0.clone()
        };
        let Some((current, _)) = sh.current_model() else {
            return;
        };
        let mut m = (*current).clone();
        match train(backend, &mut m, &data, &sh.cfg.train, |_| {}) {
            Ok(_) if m.is_finite() => {
                *sh.model.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(m));
                sh.version.fetch_add(1, Ordering::SeqCst);
                let n = sh.refits.fetch_add(1, Ordering::SeqCst) + 1;
                if sh.cfg.save_every > 0 && n.is_multiple_of(sh.cfg.save_every) {
                    if let Err(e) = sh.save_model() {
                        eprintln!("serve: saving the refitted model failed: {e}");
                    }
                }
            }
            Ok(_) => {
                eprintln!("serve: the refit produced non-finite parameters; kept the old model")
            }
            Err(e) => eprintln!("serve: refit failed ({e}); kept the old model"),
        }
    }
}

/// One client's session.
struct Connection<'a, B: Backend> {
    sh: &'a Shared,
    index: usize,
    hello: bool,
    mpc: Option<Mpc<B>>,
    version: u32,
}

impl<'a, B: Backend> Connection<'a, B> {
    fn new(sh: &'a Shared, index: usize) -> Self {
        Connection {
            sh,
            index,
            hello: false,
            mpc: None,
            version: 0,
        }
    }

    /// Wait for the first byte of the next frame: `None` when the peer closed, the server is
    /// shutting down, or the connection stayed idle too long.
    fn first_byte(&self, stream: &mut Stream) -> Result<Option<u8>> {
        stream
            .set_read_timeout(Some(POLL))
            .map_err(|e| invalid!("socket: {e}"))?;
        let t0 = Instant::now();
        let mut b = [0u8; 1];
        loop {
            if self.sh.shutdown.load(Ordering::SeqCst) {
                return Ok(None);
            }
            match stream.read(&mut b) {
                Ok(0) => return Ok(None),
                Ok(_) => return Ok(Some(b[0])),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if t0.elapsed() >= self.sh.cfg.idle_timeout {
                        return Ok(None);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Ok(None),
            }
        }
    }

    fn serve(&mut self, backend: &B, stream: &mut Stream) -> Result<()> {
        let dims = Dims {
            obs: self.sh.cfg.spec.obs_dim,
            act: self.sh.cfg.spec.act_dim,
        };
        loop {
            let Some(b) = self.first_byte(stream)? else {
                return Ok(());
            };
            stream
                .set_read_timeout(Some(self.sh.cfg.frame_timeout))
                .map_err(|e| invalid!("socket: {e}"))?;
            let frame = match protocol::read_frame(stream, b) {
                Ok(f) => f,
                Err(ReadError::Size(n)) => {
                    let msg = format!(
                        "frame length {n} is outside 5 ..= {}; closing",
                        protocol::MAX_FRAME
                    );
                    refuse_and_close(stream, code::FRAME_SIZE, &msg);
                    return Ok(());
                }
                // A peer gone or stalled mid-frame: nothing to answer.
                Err(_) => return Ok(()),
            };
            let reply = match protocol::decode(frame.kind, &frame.body, dims) {
                Err(r) => protocol::error_frame(frame.id, r.code, &r.message),
                Ok(req) => self.handle(backend, frame.id, req),
            };
            if stream.write_all(&reply).is_err() {
                return Ok(());
            }
        }
    }

    fn handle(&mut self, backend: &B, id: u32, req: Request) -> Vec<u8> {
        let e = |c: u16, m: &str| protocol::error_frame(id, c, m);
        match req {
            Request::Hello { version } => {
                if self.hello {
                    return e(
                        code::OUT_OF_ORDER,
                        "HELLO was already received on this connection",
                    );
                }
                if version != protocol::VERSION {
                    return e(
                        code::VERSION,
                        &format!(
                            "protocol version {version} is not supported; this server speaks {}",
                            protocol::VERSION
                        ),
                    );
                }
                self.hello = true;
                protocol::encode(kind::HELLO_OK, id, self.sh.hello_json().as_bytes())
            }
            _ if !self.hello => e(code::OUT_OF_ORDER, "send HELLO first"),
            Request::Reset => match self.mpc.as_mut().map(|m| m.reset(backend)) {
                Some(Err(err)) => e(code::INTERNAL, &err.to_string()),
                _ => protocol::ok_frame(id, 0),
            },
            Request::Shutdown => {
                self.sh.shutdown.store(true, Ordering::SeqCst);
                self.sh.wake.notify_all();
                protocol::ok_frame(id, 0)
            }
            Request::Add(ts) => {
                if !self.sh.learning() {
                    return e(
                        code::NOT_SUPPORTED,
                        "this server does not learn (it plans with the true dynamics, or \
                         --refit-every is 0)",
                    );
                }
                let learn_reward = matches!(
                    &self.sh.cfg.dynamics,
                    ServeDynamics::Model { model, .. } if model.config.learn_reward
                );
                let mut g = self.sh.data.lock().unwrap_or_else(|p| p.into_inner());
                if g.0.len() + ts.len() > self.sh.cfg.max_transitions {
                    return e(
                        code::NOT_SUPPORTED,
                        &format!(
                            "the dataset holds {} transitions and takes at most {} \
                             (--max-transitions)",
                            g.0.len(),
                            self.sh.cfg.max_transitions
                        ),
                    );
                }
                for t in &ts {
                    g.0.push(
                        &t.obs,
                        &t.act,
                        &t.next_obs,
                        learn_reward.then_some(t.reward),
                    );
                }
                g.1 += ts.len();
                let held = g.0.len();
                drop(g);
                self.sh.wake.notify_all();
                protocol::ok_frame(id, held.min(u32::MAX as usize) as u32)
            }
            Request::Act { deadline_ms, obs } => match self.act(backend, deadline_ms, &obs) {
                Ok(r) => protocol::action_frame(id, &r),
                Err(err) => e(code::INTERNAL, &err.to_string()),
            },
        }
    }

    fn act(&mut self, backend: &B, deadline_ms: f32, obs: &[f32]) -> Result<ActionReply> {
        let t0 = Instant::now();
        let ms = if deadline_ms > 0.0 {
            deadline_ms
        } else {
            self.sh.cfg.deadline_ms
        };
        // Capped at an hour so that the instant cannot overflow.
        let deadline = t0 + Duration::from_secs_f64(f64::from(ms.min(3.6e6)) / 1e3);
        let cfg = &self.sh.cfg;
        let mut flags = 0;
        let state = match &cfg.dynamics {
            ServeDynamics::True(env) => env.state_from_obs(obs),
            ServeDynamics::Model { .. } => vec![],
        };
        let model = self.sh.current_model();
        if self.mpc.is_none() {
            let seed = cfg.seed.wrapping_add(self.index as u64);
            let mpc = match (&cfg.dynamics, &model) {
                (
                    ServeDynamics::Model {
                        task, ts, terminal, ..
                    },
                    Some((m, _)),
                ) => {
                    let mut mpc = Mpc::with_model_task(
                        backend,
                        m,
                        *task,
                        &cfg.spec.act_low,
                        &cfg.spec.act_high,
                        cfg.planner.clone(),
                        *ts,
                        seed,
                    )?;
                    mpc.set_terminal_value(terminal.clone())?;
                    mpc
                }
                (ServeDynamics::True(env), _) => {
                    Mpc::with_true_dynamics(backend, *env, cfg.planner.clone(), seed)?
                }
                _ => return Err(invalid!("no model to plan with")),
            };
            self.mpc = Some(mpc);
            self.version = model.as_ref().map_or(0, |(_, v)| *v);
        }
        let mpc = self.mpc.as_mut().expect("created above");
        mpc.planner.check_returns = true;
        if let Some((m, v)) = &model {
            // The swap between two requests: a refit published since the last one.
            if *v != self.version {
                mpc.update_model(backend, m)?;
                self.version = *v;
            }
            let out = obs
                .iter()
                .enumerate()
                .any(|(i, x)| (x - m.input_mean[i]).abs() > RANGE_SIGMAS * m.input_std[i]);
            if out {
                flags |= flag::OUT_OF_RANGE;
            }
        }
        let (action, outcome) = mpc.act_until(backend, obs, &state, Some(deadline))?;
        if outcome.deadline_hit {
            flags |= flag::DEADLINE;
        }
        if outcome.late {
            flags |= flag::LATE;
        }
        if outcome.fallback {
            flags |= flag::FALLBACK;
        }
        self.sh.actions.fetch_add(1, Ordering::Relaxed);
        Ok(ActionReply {
            flags,
            iterations: outcome.iterations as u32,
            model_version: self.version,
            plan_ms: (t0.elapsed().as_secs_f64() * 1e3) as f32,
            action,
        })
    }
}
