//! Any bytes a client can send: frames are read until the stream ends or breaks, and each
//! is decoded; nothing may panic, and accepted ACT/ADD requests must survive a re-encoding.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mbrl_gpu::serve::protocol::{self, Dims, Request};

fuzz_target!(|data: &[u8]| {
    let dims = Dims { obs: 3, act: 1 };
    let mut r = data;
    while let Ok(f) = protocol::read_frame_blocking(&mut r) {
        match protocol::decode(f.kind, &f.body, dims) {
            Ok(Request::Act { deadline_ms, obs }) => {
                assert_eq!(protocol::act_body(deadline_ms, &obs), f.body)
            }
            Ok(Request::Add(ts)) => {
                let again = protocol::decode(protocol::kind::ADD, &protocol::add_body(&ts), dims);
                assert_eq!(again.unwrap(), Request::Add(ts));
            }
            _ => {}
        }
    }
});
