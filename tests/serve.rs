//! `serve` over real sockets, in process: closed-loop control through the protocol, every
//! kind of hostile frame, busy and stalled peers, deadlines, a model that produces NaN, online
//! learning with the model swapped between requests and saved, Unix sockets, and a bounded
//! load test of concurrent clients mixing good and bad frames.
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::backend::Propagation;
use mbrl_gpu::env::{Env, EnvId, NativeEnv};
use mbrl_gpu::model::{Ensemble, ModelConfig, TrainConfig, Transitions};
use mbrl_gpu::plan::{Optimizer, PlannerConfig, TsConfig};
use mbrl_gpu::serve::protocol::{self, code, flag, kind, Frame, Transition};
use mbrl_gpu::serve::{Address, ServeConfig, ServeDynamics, ServeSummary, Server};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn planner(
    optimizer: Optimizer,
    population: usize,
    horizon: usize,
    iterations: usize,
) -> PlannerConfig {
    PlannerConfig {
        optimizer,
        horizon,
        population,
        num_elites: (population / 10).max(1),
        iterations,
        alpha: if optimizer == Optimizer::Mppi {
            0.0
        } else {
            0.1
        },
        noise_covariance: if optimizer == Optimizer::Mppi {
            vec![1.0]
        } else {
            vec![]
        },
        ..PlannerConfig::pets_cartpole()
    }
}

fn config(planner: PlannerConfig, dynamics: ServeDynamics) -> ServeConfig {
    ServeConfig {
        env_name: "pendulum".into(),
        spec: EnvId::Pendulum.spec(),
        planner,
        dynamics,
        deadline_ms: 1000.0,
        max_clients: 8,
        frame_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(30),
        refit_every: 0,
        max_transitions: 100,
        train: TrainConfig {
            epochs: 2,
            ..TrainConfig::default()
        },
        save_every: 1,
        save: None,
        seed: 0,
    }
}

struct Running {
    addr: SocketAddr,
    stop: Box<dyn Fn() + Send + Sync>,
    handle: JoinHandle<ServeSummary>,
}

fn start(cfg: ServeConfig) -> Running {
    let server = Server::bind(&Address::parse("127.0.0.1:0", false).unwrap(), cfg).unwrap();
    let addr = server.local_addr().unwrap();
    let stop = Box::new(server.stopper());
    let handle = std::thread::spawn(move || server.run(&CpuBackend::new()).unwrap());
    Running { addr, stop, handle }
}

impl Running {
    fn finish(self) -> ServeSummary {
        (self.stop)();
        self.handle.join().unwrap()
    }
}

struct Client {
    s: TcpStream,
    id: u32,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Client { s, id: 0 }
    }

    fn send(&mut self, kind: u8, body: &[u8]) -> u32 {
        self.id += 1;
        self.s
            .write_all(&protocol::encode(kind, self.id, body))
            .unwrap();
        self.id
    }

    fn recv(&mut self) -> Option<Frame> {
        protocol::read_frame_blocking(&mut self.s).ok()
    }

    fn call(&mut self, kind: u8, body: &[u8]) -> Frame {
        let id = self.send(kind, body);
        let f = self.recv().expect("a reply");
        assert_eq!(f.id, id, "reply id");
        f
    }

    fn hello(&mut self) -> serde_json::Value {
        let f = self.call(kind::HELLO, &1u32.to_le_bytes());
        assert_eq!(f.kind, kind::HELLO_OK);
        serde_json::from_slice(&f.body).unwrap()
    }

    fn act(&mut self, deadline_ms: f32, obs: &[f32]) -> protocol::ActionReply {
        let f = self.call(kind::ACT, &protocol::act_body(deadline_ms, obs));
        assert_eq!(f.kind, kind::ACTION, "{}", error_text(&f));
        protocol::decode_action(&f.body).unwrap()
    }

    /// The server closed the connection (EOF or reset) within `within`.
    fn closed_within(&mut self, within: Duration) -> bool {
        self.s.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 64];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        }
    }
}

fn error_text(f: &Frame) -> String {
    if f.kind == kind::ERROR && f.body.len() >= 2 {
        format!(
            "ERROR {}: {}",
            u16::from_le_bytes([f.body[0], f.body[1]]),
            String::from_utf8_lossy(&f.body[2..])
        )
    } else {
        format!("kind 0x{:02x}", f.kind)
    }
}

fn error_code(f: &Frame) -> u16 {
    assert_eq!(
        f.kind,
        kind::ERROR,
        "expected an ERROR, got kind 0x{:02x}",
        f.kind
    );
    u16::from_le_bytes([f.body[0], f.body[1]])
}

fn in_bounds(a: &[f32]) -> bool {
    a.len() == 1 && a[0].is_finite() && (-2.0..=2.0).contains(&a[0])
}

#[test]
fn true_dynamics_service_should_swing_up_the_pendulum_in_closed_loop() {
    let srv = start(config(
        planner(Optimizer::Mppi, 500, 20, 1),
        ServeDynamics::True(EnvId::Pendulum),
    ));
    let mut c = Client::connect(srv.addr);
    let hello = c.hello();
    assert_eq!(hello["obs_dim"], 3);
    assert_eq!(hello["act_dim"], 1);
    assert_eq!(hello["dynamics"], "true");
    assert_eq!(hello["planner"]["optimizer"], "mppi");
    assert_eq!(c.call(kind::RESET, &[]).kind, kind::OK);
    let mut env = NativeEnv::new(EnvId::Pendulum, 1);
    let mut obs = env.reset(&[3]).unwrap();
    let mut ret = 0.0;
    for _ in 0..200 {
        let r = c.act(0.0, &obs);
        assert!(in_bounds(&r.action), "{:?}", r.action);
        assert_eq!(r.flags & flag::FALLBACK, 0);
        assert_eq!(r.iterations, 1);
        let tr = env.step(&r.action).unwrap().remove(0);
        ret += tr.reward;
        obs = tr.obs;
    }
    assert!(ret > -400.0, "return {ret}");
    assert!(obs[0] > 0.95, "not upright at the end: {obs:?}");
    // SHUTDOWN stops the whole server.
    assert_eq!(c.call(kind::SHUTDOWN, &[]).kind, kind::OK);
    let summary = srv.handle.join().unwrap();
    assert_eq!(summary.actions, 200);
}

#[test]
fn hostile_frames_should_get_errors_and_leave_the_other_clients_alone() {
    let srv = start(config(
        planner(Optimizer::Cem, 50, 10, 2),
        ServeDynamics::True(EnvId::Pendulum),
    ));
    let obs = [1.0f32, 0.0, 0.0];
    // A well-behaved client, served between every hostile act below.
    let mut good = Client::connect(srv.addr);
    good.hello();
    let check_good = |good: &mut Client| assert!(in_bounds(&good.act(0.0, &obs).action));

    let mut c = Client::connect(srv.addr);
    // Out of order, then the right order on the same connection.
    assert_eq!(
        error_code(&c.call(kind::ACT, &protocol::act_body(0.0, &obs))),
        code::OUT_OF_ORDER
    );
    assert_eq!(
        error_code(&c.call(kind::HELLO, &2u32.to_le_bytes())),
        code::VERSION
    );
    c.hello();
    assert_eq!(
        error_code(&c.call(kind::HELLO, &1u32.to_le_bytes())),
        code::OUT_OF_ORDER
    );
    // Wrong sizes, non-finite values, unknown kinds, ADD without learning.
    assert_eq!(
        error_code(&c.call(kind::ACT, &protocol::act_body(0.0, &obs[..2]))),
        code::MALFORMED
    );
    assert_eq!(
        error_code(&c.call(kind::ACT, &protocol::act_body(0.0, &[f32::NAN, 0.0, 0.0]))),
        code::NOT_FINITE
    );
    assert_eq!(
        error_code(&c.call(kind::ACT, &protocol::act_body(f32::INFINITY, &obs))),
        code::NOT_FINITE
    );
    assert_eq!(error_code(&c.call(0x42, b"what")), code::UNKNOWN_KIND);
    assert_eq!(error_code(&c.call(kind::RESET, b"x")), code::MALFORMED);
    let add = protocol::add_body(&[Transition {
        obs: obs.to_vec(),
        act: vec![0.0],
        reward: -1.0,
        next_obs: obs.to_vec(),
        terminated: false,
    }]);
    assert_eq!(error_code(&c.call(kind::ADD, &add)), code::NOT_SUPPORTED);
    // Absurd observations still get a finite action inside the bounds.
    assert!(in_bounds(&c.act(0.0, &[3.0e38, -3.0e38, 1.0e30]).action));
    // After all that the connection still plans.
    assert!(in_bounds(&c.act(0.0, &obs).action));
    check_good(&mut good);

    // A length field beyond 1 MiB: ERROR 5, then the server closes.
    let mut big = Client::connect(srv.addr);
    big.s.write_all(&(64u32 << 20).to_le_bytes()).unwrap();
    big.s.write_all(&[kind::ACT, 0, 0, 0, 0]).unwrap();
    let f = big.recv().expect("an error frame");
    assert_eq!(error_code(&f), code::FRAME_SIZE);
    assert!(big.closed_within(Duration::from_secs(5)));
    // A length below the header.
    let mut tiny = Client::connect(srv.addr);
    tiny.s.write_all(&2u32.to_le_bytes()).unwrap();
    assert_eq!(error_code(&tiny.recv().unwrap()), code::FRAME_SIZE);
    assert!(tiny.closed_within(Duration::from_secs(5)));
    check_good(&mut good);

    // Half a frame, then a disconnect.
    let mut half = Client::connect(srv.addr);
    let frame = protocol::encode(kind::ACT, 1, &protocol::act_body(0.0, &obs));
    half.s.write_all(&frame[..7]).unwrap();
    drop(half);
    // Half a frame, then silence: closed after the frame timeout (300 ms here).
    let mut stall = Client::connect(srv.addr);
    stall.s.write_all(&frame[..7]).unwrap();
    let t0 = Instant::now();
    assert!(stall.closed_within(Duration::from_secs(5)));
    assert!(t0.elapsed() < Duration::from_secs(3));
    check_good(&mut good);
    let summary = srv.finish();
    assert!(summary.connections >= 6);
}

#[test]
fn a_busy_server_should_refuse_with_an_error_and_accept_again_later() {
    let mut cfg = config(
        planner(Optimizer::Cem, 20, 5, 1),
        ServeDynamics::True(EnvId::Pendulum),
    );
    cfg.max_clients = 2;
    let srv = start(cfg);
    let mut a = Client::connect(srv.addr);
    a.hello();
    let mut b = Client::connect(srv.addr);
    b.hello();
    let mut c = Client::connect(srv.addr);
    let f = c.recv().expect("a busy error");
    assert_eq!(error_code(&f), code::BUSY);
    assert!(c.closed_within(Duration::from_secs(5)));
    drop(a);
    // The slot frees when the server notices the close (within its poll interval).
    let t0 = Instant::now();
    loop {
        let mut d = Client::connect(srv.addr);
        let id = d.send(kind::HELLO, &1u32.to_le_bytes());
        let f = d.recv().unwrap();
        if f.kind == kind::HELLO_OK {
            assert_eq!(f.id, id);
            break;
        }
        assert_eq!(error_code(&f), code::BUSY);
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the slot never freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(in_bounds(&b.act(0.0, &[1.0, 0.0, 0.0]).action));
    srv.finish();
}

#[test]
fn a_deadline_should_cut_the_iterations_and_the_reply_should_say_so() {
    // 20 CEM iterations of 3000 candidates × 60 steps take far longer than 2 ms here.
    let srv = start(config(
        planner(Optimizer::Cem, 3000, 60, 20),
        ServeDynamics::True(EnvId::Pendulum),
    ));
    let mut c = Client::connect(srv.addr);
    c.hello();
    let r = c.act(2.0, &[1.0, 0.0, 0.0]);
    assert!(r.flags & flag::DEADLINE != 0, "{r:?}");
    assert!(r.iterations >= 1 && r.iterations < 20, "{r:?}");
    assert!(in_bounds(&r.action));
    srv.finish();
}

fn pendulum_model(seed: u64) -> Ensemble {
    let mut mc = ModelConfig::pets(3, 1);
    mc.ensemble_size = 3;
    mc.num_elites = 2;
    mc.hidden = 16;
    mc.num_layers = 2;
    Ensemble::new(mc, seed).unwrap()
}

fn model_dynamics(model: Ensemble) -> ServeDynamics {
    ServeDynamics::Model {
        model,
        task: EnvId::Pendulum.code(),
        ts: TsConfig {
            particles: 2,
            propagation: Propagation::Ts1,
        },
        data: Transitions::new(3, 1),
        terminal: None,
    }
}

#[test]
fn a_model_that_outputs_nan_should_answer_the_fallback_inside_the_bounds() {
    let mut m = pendulum_model(1);
    m.params.iter_mut().for_each(|p| *p = f32::NAN);
    let srv = start(config(planner(Optimizer::Cem, 30, 5, 2), model_dynamics(m)));
    let mut c = Client::connect(srv.addr);
    c.hello();
    for _ in 0..3 {
        let r = c.act(0.0, &[0.3, 0.9, -1.0]);
        assert!(r.flags & flag::FALLBACK != 0, "{r:?}");
        // After a reset the fallback is the middle of the bounds.
        assert_eq!(r.action, vec![0.0]);
    }
    srv.finish();
}

/// A terminal value that is a constant, or not a number.
struct ConstValue(f32);

impl mbrl_gpu::backend::StateValue for ConstValue {
    fn obs_dim(&self) -> usize {
        3
    }
    fn values(&self, _: &[f32], rows: usize, out: &mut [f32]) {
        out[..rows].fill(self.0);
    }
}

#[test]
fn a_terminal_value_should_close_the_served_plans() {
    // A finite value plans as usual; a value that is not a number leaves no finite
    // candidate, which the reply must show as the fallback — so the value is in the loop.
    for (v, fallback) in [(0.5f32, false), (f32::NAN, true)] {
        let ServeDynamics::Model {
            model,
            task,
            ts,
            data,
            ..
        } = model_dynamics(pendulum_model(4))
        else {
            unreachable!()
        };
        let dynamics = ServeDynamics::Model {
            model,
            task,
            ts,
            data,
            terminal: Some(mbrl_gpu::backend::TerminalValue {
                gamma: 0.99,
                value: std::sync::Arc::new(ConstValue(v)),
            }),
        };
        let srv = start(config(planner(Optimizer::Cem, 30, 5, 2), dynamics));
        let mut c = Client::connect(srv.addr);
        c.hello();
        let r = c.act(0.0, &[0.3, 0.9, -1.0]);
        assert_eq!(r.flags & flag::FALLBACK != 0, fallback, "value {v}: {r:?}");
        assert!(in_bounds(&r.action));
        srv.finish();
    }
}

#[test]
fn observations_far_outside_the_training_data_should_be_flagged() {
    let srv = start(config(
        planner(Optimizer::Cem, 30, 5, 2),
        model_dynamics(pendulum_model(2)),
    ));
    let mut c = Client::connect(srv.addr);
    c.hello();
    // The untrained model's normaliser is mean 0, std 1.
    let inside = c.act(0.0, &[0.3, 0.9, -1.0]);
    assert_eq!(inside.flags & flag::OUT_OF_RANGE, 0);
    let far = c.act(0.0, &[0.3, 0.9, 1.0e4]);
    assert!(far.flags & flag::OUT_OF_RANGE != 0, "{far:?}");
    assert!(in_bounds(&far.action));
    srv.finish();
}

#[test]
fn online_learning_should_swap_the_model_between_requests_and_save_it() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("refit.safetensors");
    let mut cfg = config(
        planner(Optimizer::Cem, 30, 5, 2),
        model_dynamics(pendulum_model(3)),
    );
    cfg.refit_every = 50;
    cfg.save = Some(save.clone());
    let srv = start(cfg);
    let mut c = Client::connect(srv.addr);
    assert_eq!(c.hello()["learning"], true);
    // Random-action transitions of the real pendulum.
    let mut env = NativeEnv::new(EnvId::Pendulum, 1);
    let mut obs = env.reset(&[5]).unwrap();
    let mut ts = vec![];
    for i in 0..60 {
        let a = vec![((i * 37 % 41) as f32 / 10.0) - 2.0];
        let tr = env.step(&a).unwrap().remove(0);
        ts.push(Transition {
            obs: obs.clone(),
            act: a,
            reward: tr.reward,
            next_obs: tr.obs.clone(),
            terminated: false,
        });
        obs = tr.obs;
    }
    let f = c.call(kind::ADD, &protocol::add_body(&ts));
    assert_eq!(f.kind, kind::OK, "{}", error_text(&f));
    assert_eq!(u32::from_le_bytes(f.body[..4].try_into().unwrap()), 60);
    // Plan until the refit lands; versions never go back.
    let t0 = Instant::now();
    let mut last = 0;
    loop {
        let r = c.act(0.0, &obs);
        assert!(in_bounds(&r.action));
        assert!(r.model_version >= last);
        last = r.model_version;
        if last >= 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no refit within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The dataset is bounded (100 here): 60 more are refused, and the count stays.
    let f = c.call(kind::ADD, &protocol::add_body(&ts));
    assert_eq!(error_code(&f), code::NOT_SUPPORTED);
    assert!(error_text(&f).contains("at most 100"), "{}", error_text(&f));
    let f = c.call(kind::ADD, &protocol::add_body(&[]));
    assert_eq!(u32::from_le_bytes(f.body[..4].try_into().unwrap()), 60);
    let summary = srv.finish();
    assert!(summary.refits >= 1 && summary.saves >= 1, "{summary:?}");
    let saved = mbrl_gpu::io::checkpoint::load(&save).unwrap();
    assert!(saved.is_finite());
    assert_ne!(saved.params, pendulum_model(3).params);
}

#[test]
fn unix_sockets_should_serve_and_replace_only_stale_sockets() {
    use std::os::unix::net::UnixStream;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mpc.sock");
    // A regular file in the way is never replaced.
    std::fs::write(&path, b"data").unwrap();
    let cfg = || {
        config(
            planner(Optimizer::Icem, 40, 8, 2),
            ServeDynamics::True(EnvId::Pendulum),
        )
    };
    let addr = Address::parse(&format!("unix:{}", path.display()), false).unwrap();
    let err = Server::bind(&addr, cfg())
        .err()
        .expect("a file was replaced");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
    std::fs::remove_file(&path).unwrap();
    // A stale socket (its server gone) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let server = Server::bind(&addr, cfg()).unwrap();
    let stop = server.stopper();
    let h = std::thread::spawn(move || server.run(&CpuBackend::new()).unwrap());
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(&protocol::encode(kind::HELLO, 1, &1u32.to_le_bytes()))
        .unwrap();
    assert_eq!(
        protocol::read_frame_blocking(&mut s).unwrap().kind,
        kind::HELLO_OK
    );
    s.write_all(&protocol::encode(
        kind::ACT,
        2,
        &protocol::act_body(0.0, &[1.0, 0.0, 0.0]),
    ))
    .unwrap();
    let f = protocol::read_frame_blocking(&mut s).unwrap();
    assert!(in_bounds(&protocol::decode_action(&f.body).unwrap().action));
    // A second server on a live socket is refused.
    let err = Server::bind(&addr, cfg())
        .err()
        .expect("a live socket was taken");
    assert!(err.to_string().contains("in use"), "{err}");
    stop();
    h.join().unwrap();
    assert!(!path.exists(), "the socket file is removed at shutdown");
}

#[test]
fn non_loopback_addresses_need_allow_remote() {
    let e = Address::parse("0.0.0.0:5555", false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--allow-remote"), "{e}");
    assert!(Address::parse("0.0.0.0:5555", true).is_ok());
    assert!(Address::parse("localhost", false).is_err());
    assert!(Address::parse("unix:", false).is_err());
}

/// Eight clients at once, 60 requests each, every tenth frame malformed: every request is
/// answered (an ACTION inside the bounds, or the ERROR its frame deserves), in order.
#[test]
fn concurrent_clients_under_load_should_all_be_answered() {
    let srv = start(config(
        planner(Optimizer::Mppi, 200, 15, 1),
        ServeDynamics::True(EnvId::Pendulum),
    ));
    let addr = srv.addr;
    let t0 = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.hello();
                let mut env = NativeEnv::new(EnvId::Pendulum, 1);
                let mut obs = env.reset(&[w]).unwrap();
                let (mut actions, mut errors) = (0, 0);
                for i in 0..60 {
                    if i % 10 == 9 {
                        let f = c.call(kind::ACT, &protocol::act_body(0.0, &obs[..1]));
                        assert_eq!(error_code(&f), code::MALFORMED);
                        errors += 1;
                        continue;
                    }
                    let r = c.act(0.0, &obs);
                    assert!(in_bounds(&r.action));
                    obs = env.step(&r.action).unwrap().remove(0).obs;
                    actions += 1;
                }
                (actions, errors)
            })
        })
        .collect();
    let mut total = (0, 0);
    for w in workers {
        let (a, e) = w.join().unwrap();
        total = (total.0 + a, total.1 + e);
    }
    assert_eq!(total, (8 * 54, 8 * 6));
    eprintln!(
        "load test: 480 requests from 8 clients in {:?}",
        t0.elapsed()
    );
    let summary = srv.finish();
    assert_eq!(summary.actions, 8 * 54);
}

/// The Python client (standard library only) and the command-line server, as a user runs
/// them: `mbrl-gpu serve` on a free port, `python/examples/closed_loop.py` for two seconds at
/// 50 Hz, then SHUTDOWN over the protocol.
#[test]
fn the_python_client_should_drive_the_command_line_server() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let python = std::env::var("MBRL_GPU_PYTHON").unwrap_or_else(|_| "python3".into());
    if Command::new(&python).arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "CI needs a Python interpreter ({python})"
        );
        eprintln!("skipped: no Python interpreter {python}");
        return;
    }
    let mut server = Command::new(env!("CARGO_BIN_EXE_mbrl-gpu"))
        .args([
            "serve",
            "--env",
            "pendulum",
            "--true-dynamics",
            "--listen",
            "127.0.0.1:0",
            "--optimizer",
            "mppi",
            "--population",
            "300",
            "--horizon",
            "20",
            "--iterations",
            "1",
            "--backend",
            "cpu",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(server.stderr.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines
            .next()
            .expect("serve printed where it listens")
            .unwrap();
        if let Some(rest) = line.strip_prefix("serve: listening on ") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // This checkout's client, before any installed copy.
    let out = Command::new(&python)
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/python"))
        .args([
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/python/examples/closed_loop.py"
            ),
            "--address",
            &addr.to_string(),
            "--seconds",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    let mut c = Client::connect(addr);
    c.hello();
    assert_eq!(c.call(kind::SHUTDOWN, &[]).kind, kind::OK);
    let status = server.wait().unwrap();
    assert!(
        out.status.success(),
        "closed_loop.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    // 2 s at 50 Hz: about 100 round trips (fewer if the machine is busy), none a fallback.
    let n = report["n"].as_u64().unwrap();
    assert!(n >= 40, "{report}");
    assert_eq!(report["fallbacks"], 0, "{report}");
    eprintln!("python closed loop: {report}");
}
