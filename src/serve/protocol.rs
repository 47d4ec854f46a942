//! The frames of `mbrl-gpu serve`, protocol version 1 (`docs/serve_protocol.md` is the
//! specification): reading a frame from a stream, decoding a request body, encoding replies.
//! Everything here is a pure function of bytes, so the fuzz tests drive it directly.
use std::io::{self, Read};

pub const VERSION: u32 = 1;
/// Largest value of a frame's length field (kind + id + body).
pub const MAX_FRAME: usize = 1 << 20;
/// Bytes of kind + id.
const HEAD: usize = 5;

pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const RESET: u8 = 0x02;
    pub const ACT: u8 = 0x03;
    pub const ADD: u8 = 0x04;
    pub const SHUTDOWN: u8 = 0x05;
    pub const HELLO_OK: u8 = 0x81;
    pub const ACTION: u8 = 0x82;
    pub const OK: u8 = 0x83;
    pub const ERROR: u8 = 0xFF;
}

/// ERROR codes.
pub mod code {
    pub const MALFORMED: u16 = 1;
    pub const NOT_FINITE: u16 = 2;
    pub const OUT_OF_ORDER: u16 = 3;
    pub const VERSION: u16 = 4;
    pub const FRAME_SIZE: u16 = 5;
    pub const UNKNOWN_KIND: u16 = 6;
    pub const BUSY: u16 = 7;
    pub const NOT_SUPPORTED: u16 = 8;
    pub const INTERNAL: u16 = 9;
}

/// ACTION flag bits.
pub mod flag {
    pub const DEADLINE: u32 = 1;
    pub const FALLBACK: u32 = 2;
    pub const OUT_OF_RANGE: u32 = 4;
    pub const LATE: u32 = 8;
}

/// One frame as read from the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub id: u32,
    pub body: Vec<u8>,
}

/// Why no frame could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the stream between frames.
    Closed,
    /// The length field is outside 5 ..= MAX_FRAME; the stream cannot be resynchronised.
    Size(u64),
    /// The stream ended or failed inside a frame (after `got` of its bytes).
    Truncated { got: usize, err: io::Error },
}

/// Read one frame. `first_byte` reads the first byte of the length (so the caller can wait
/// for it with its own timeout and shutdown checks); the rest is read with `read_exact`.
pub fn read_frame(r: &mut impl Read, first_byte: u8) -> Result<Frame, ReadError> {
    let mut len4 = [first_byte, 0, 0, 0];
    r.read_exact(&mut len4[1..])
        .map_err(|err| ReadError::Truncated { got: 1, err })?;
    let len = u32::from_le_bytes(len4) as usize;
    if !(HEAD..=MAX_FRAME).contains(&len) {
        return Err(ReadError::Size(len as u64));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)
        .map_err(|err| ReadError::Truncated { got: 4, err })?;
    Ok(Frame {
        kind: buf[0],
        id: u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]),
        body: buf.split_off(HEAD),
    })
}

/// Read one frame, the first byte included (for clients and tests).
pub fn read_frame_blocking(r: &mut impl Read) -> Result<Frame, ReadError> {
    let mut b = [0u8; 1];
    match r.read(&mut b) {
        Ok(0) => Err(ReadError::Closed),
        Ok(_) => read_frame(r, b[0]),
        Err(err) => Err(ReadError::Truncated { got: 0, err }),
    }
}

/// Dimensions a request body is decoded against.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub obs: usize,
    pub act: usize,
}

/// One transition of an ADD frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub obs: Vec<f32>,
    pub act: Vec<f32>,
    pub reward: f32,
    pub next_obs: Vec<f32>,
    pub terminated: bool,
}

/// A decoded request.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Hello {
        version: u32,
    },
    Reset,
    /// `deadline_ms` ≤ 0 means the server's default.
    Act {
        deadline_ms: f32,
        obs: Vec<f32>,
    },
    Add(Vec<Transition>),
    Shutdown,
}

/// A request that cannot be decoded: the ERROR code and message to answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub message: String,
}

fn refuse(code: u16, message: String) -> Refusal {
    Refusal { code, message }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn expect_len(what: &str, body: &[u8], want: usize) -> Result<(), Refusal> {
    if body.len() != want {
        return Err(refuse(
            code::MALFORMED,
            format!("{what} body has {} bytes, expected {want}", body.len()),
        ));
    }
    Ok(())
}

fn finite(what: &str, v: &[f32]) -> Result<(), Refusal> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(refuse(
            code::NOT_FINITE,
            format!("{what}[{i}] is {}; every value must be finite", v[i]),
        ));
    }
    Ok(())
}

/// Decode a request body of kind `kind` for an environment of dimensions `dims`.
pub fn decode(kind: u8, body: &[u8], dims: Dims) -> Result<Request, Refusal> {
    match kind {
        kind::HELLO => {
            expect_len("HELLO", body, 4)?;
            Ok(Request::Hello {
                version: u32::from_le_bytes([body[0], body[1], body[2], body[3]]),
            })
        }
        kind::RESET => {
            expect_len("RESET", body, 0)?;
            Ok(Request::Reset)
        }
        kind::SHUTDOWN => {
            expect_len("SHUTDOWN", body, 0)?;
            Ok(Request::Shutdown)
        }
        kind::ACT => {
            expect_len("ACT", body, 4 * (1 + dims.obs))?;
            let v = f32s(body);
            finite("deadline", &v[..1])?;
            finite("observation", &v[1..])?;
            Ok(Request::Act {
                deadline_ms: v[0],
                obs: v[1..].to_vec(),
            })
        }
        kind::ADD => {
            if body.len() < 4 {
                return Err(refuse(
                    code::MALFORMED,
                    format!("ADD body has {} bytes, expected at least 4", body.len()),
                ));
            }
            let n = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
            let per = 2 * dims.obs + dims.act + 2;
            // The length field caps the body at 1 MiB, so n·per·4 cannot overflow for any n
            // that matches it; check against the body before multiplying by an untrusted n.
            if (body.len() - 4) / 4 / per.max(1) != n || (body.len() - 4) != n * per * 4 {
                return Err(refuse(
                    code::MALFORMED,
                    format!(
                        "ADD of {n} transitions needs {} body bytes ({per} values each), got {}",
                        n.saturating_mul(per).saturating_mul(4).saturating_add(4),
                        body.len()
                    ),
                ));
            }
            let v = f32s(&body[4..]);
            let mut out = Vec::with_capacity(n);
            for (i, t) in v.chunks_exact(per).enumerate() {
                finite(&format!("transition {i}"), t)?;
                let (o, rest) = t.split_at(dims.obs);
                let (a, rest) = rest.split_at(dims.act);
                let (r, rest) = rest.split_at(1);
                let (no, term) = rest.split_at(dims.obs);
                if term[0] != 0.0 && term[0] != 1.0 {
                    return Err(refuse(
                        code::MALFORMED,
                        format!("transition {i}: terminated is {}, not 0 or 1", term[0]),
                    ));
                }
                out.push(Transition {
                    obs: o.to_vec(),
                    act: a.to_vec(),
                    reward: r[0],
                    next_obs: no.to_vec(),
                    terminated: term[0] == 1.0,
                });
            }
            Ok(Request::Add(out))
        }
        k => Err(refuse(
            code::UNKNOWN_KIND,
            format!("unknown frame kind 0x{k:02x}"),
        )),
    }
}

/// A frame's bytes: length, kind, id, body.
pub fn encode(kind: u8, id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + HEAD + body.len());
    out.extend_from_slice(&((HEAD + body.len()) as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(body);
    out
}

pub fn error_frame(id: u32, code: u16, message: &str) -> Vec<u8> {
    // Messages are ours and short; cap them anyway so a frame never nears the limit.
    let msg = &message.as_bytes()[..message.len().min(4096)];
    let mut body = code.to_le_bytes().to_vec();
    body.extend_from_slice(msg);
    encode(kind::ERROR, id, &body)
}

pub fn ok_frame(id: u32, value: u32) -> Vec<u8> {
    encode(kind::OK, id, &value.to_le_bytes())
}

/// An ACTION reply.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionReply {
    pub flags: u32,
    pub iterations: u32,
    pub model_version: u32,
    pub plan_ms: f32,
    pub action: Vec<f32>,
}

pub fn action_frame(id: u32, a: &ActionReply) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + 4 * a.action.len());
    for w in [a.flags, a.iterations, a.model_version] {
        body.extend_from_slice(&w.to_le_bytes());
    }
    body.extend_from_slice(&a.plan_ms.to_le_bytes());
    for v in &a.action {
        body.extend_from_slice(&v.to_le_bytes());
    }
    encode(kind::ACTION, id, &body)
}

/// Decode an ACTION body (clients and tests).
pub fn decode_action(body: &[u8]) -> Option<ActionReply> {
    if body.len() < 16 || !body.len().is_multiple_of(4) {
        return None;
    }
    let w = |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
    Some(ActionReply {
        flags: w(0),
        iterations: w(4),
        model_version: w(8),
        plan_ms: f32::from_bits(w(12)),
        action: f32s(&body[16..]),
    })
}

/// Request bodies (clients and tests).
pub fn act_body(deadline_ms: f32, obs: &[f32]) -> Vec<u8> {
    let mut b = deadline_ms.to_le_bytes().to_vec();
    for v in obs {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

pub fn add_body(ts: &[Transition]) -> Vec<u8> {
    let mut b = (ts.len() as u32).to_le_bytes().to_vec();
    for t in ts {
        for v in t.obs.iter().chain(&t.act) {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&t.reward.to_le_bytes());
        for v in &t.next_obs {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(t.terminated as u8 as f32).to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIMS: Dims = Dims { obs: 3, act: 1 };

    #[test]
    fn frames_should_round_trip() {
        let f = encode(kind::ACT, 7, &act_body(2.5, &[1.0, -2.0, 0.5]));
        let mut r = &f[..];
        let got = read_frame_blocking(&mut r).unwrap();
        assert_eq!((got.kind, got.id), (kind::ACT, 7));
        assert_eq!(
            decode(got.kind, &got.body, DIMS).unwrap(),
            Request::Act {
                deadline_ms: 2.5,
                obs: vec![1.0, -2.0, 0.5]
            }
        );
        let t = Transition {
            obs: vec![1.0, 2.0, 3.0],
            act: vec![0.5],
            reward: -1.0,
            next_obs: vec![1.5, 2.5, 3.5],
            terminated: true,
        };
        let body = add_body(std::slice::from_ref(&t));
        assert_eq!(
            decode(kind::ADD, &body, DIMS).unwrap(),
            Request::Add(vec![t])
        );
        let a = ActionReply {
            flags: 5,
            iterations: 3,
            model_version: 2,
            plan_ms: 0.25,
            action: vec![0.1, -0.2],
        };
        let f = action_frame(9, &a);
        assert_eq!(decode_action(&f[9..]).unwrap(), a);
    }

    #[test]
    fn bad_bodies_should_be_refused_with_their_code() {
        let c = |k: u8, b: &[u8]| decode(k, b, DIMS).unwrap_err().code;
        assert_eq!(c(kind::ACT, &act_body(0.0, &[1.0, 2.0])), code::MALFORMED);
        assert_eq!(
            c(kind::ACT, &act_body(0.0, &[1.0, f32::NAN, 0.0])),
            code::NOT_FINITE
        );
        assert_eq!(
            c(kind::ACT, &act_body(f32::INFINITY, &[1.0, 2.0, 3.0])),
            code::NOT_FINITE
        );
        assert_eq!(c(kind::HELLO, &[1, 0, 0]), code::MALFORMED);
        assert_eq!(c(kind::RESET, &[0]), code::MALFORMED);
        assert_eq!(c(0x42, &[]), code::UNKNOWN_KIND);
        // n says 1000 transitions but the body holds none.
        assert_eq!(c(kind::ADD, &1000u32.to_le_bytes()), code::MALFORMED);
        assert_eq!(c(kind::ADD, &u32::MAX.to_le_bytes()), code::MALFORMED);
        let mut t = add_body(&[Transition {
            obs: vec![0.0; 3],
            act: vec![0.0],
            reward: 0.0,
            next_obs: vec![0.0; 3],
            terminated: false,
        }]);
        let n = t.len();
        t[n - 4..].copy_from_slice(&0.5f32.to_le_bytes());
        assert_eq!(c(kind::ADD, &t), code::MALFORMED);
    }

    #[test]
    fn bad_lengths_and_truncation_should_be_told_apart() {
        let mut r = &[0u8, 0, 0, 0][..];
        assert!(matches!(
            read_frame_blocking(&mut r),
            Err(ReadError::Size(0))
        ));
        let mut r = &((MAX_FRAME + 1) as u32).to_le_bytes()[..];
        assert!(matches!(
            read_frame_blocking(&mut r),
            Err(ReadError::Size(_))
        ));
        let f = encode(kind::RESET, 1, &[]);
        let mut r = &f[..f.len() - 1];
        assert!(matches!(
            read_frame_blocking(&mut r),
            Err(ReadError::Truncated { .. })
        ));
        let mut r = &[][..];
        assert!(matches!(
            read_frame_blocking(&mut r),
            Err(ReadError::Closed)
        ));
    }
}
