//! A Rust client of `mbrl-gpu serve` (protocol: docs/serve_protocol.md): one Pendulum-v1
//! episode in closed loop, the native environment stepped here, every action planned by the
//! server.
//!
//! ```sh
//! cargo run --release -- serve --env pendulum --true-dynamics --optimizer mppi \
//!     --population 1000 --iterations 1 --listen 127.0.0.1:5555 &
//! cargo run --release --example serve_client -- 127.0.0.1:5555
//! ```
use mbrl_gpu::env::{Env, EnvId, NativeEnv};
use mbrl_gpu::serve::protocol::{self, kind, Frame};
use std::io::Write;
use std::net::TcpStream;
use std::time::Instant;

/// One request, one reply (ids checked); an ERROR frame becomes an error string.
fn call(s: &mut TcpStream, id: u32, kind: u8, body: &[u8]) -> Result<Frame, String> {
    s.write_all(&protocol::encode(kind, id, body))
        .map_err(|e| format!("send: {e}"))?;
    let f = protocol::read_frame_blocking(s).map_err(|e| format!("receive: {e:?}"))?;
    if f.kind == kind::ERROR {
        let code = u16::from_le_bytes([f.body[0], f.body[1]]);
        return Err(format!(
            "server error {code}: {}",
            String::from_utf8_lossy(&f.body[2..])
        ));
    }
    if f.id != id {
        return Err(format!("reply id {} to request {id}", f.id));
    }
    Ok(f)
}

fn main() -> Result<(), String> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5555".into());
    let mut s = TcpStream::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let hello = call(&mut s, 1, kind::HELLO, &protocol::VERSION.to_le_bytes())?;
    println!("{}", String::from_utf8_lossy(&hello.body));
    call(&mut s, 2, kind::RESET, &[])?;
    let mut env = NativeEnv::new(EnvId::Pendulum, 1);
    let mut obs = env.reset(&[0]).map_err(|e| e.to_string())?;
    let (mut ret, mut rtt) = (0.0, vec![]);
    for t in 0..200u32 {
        let t0 = Instant::now();
        let f = call(&mut s, 3 + t, kind::ACT, &protocol::act_body(0.0, &obs))?;
        rtt.push(t0.elapsed().as_secs_f64() * 1e3);
        let reply = protocol::decode_action(&f.body).ok_or("a malformed ACTION")?;
        let tr = env
            .step(&reply.action)
            .map_err(|e| e.to_string())?
            .remove(0);
        ret += tr.reward;
        obs = tr.obs;
    }
    rtt.sort_by(f64::total_cmp);
    println!(
        "return {ret:.1}; round trip p50 {:.3} ms, p99 {:.3} ms",
        rtt[rtt.len() / 2],
        rtt[rtt.len() * 99 / 100]
    );
    Ok(())
}
