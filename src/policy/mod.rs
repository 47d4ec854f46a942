//! Policies learned from data: SAC's actor and twin critics with hand-written backprop
//! ([`sac`]) and the replay buffers they learn from ([`replay`]).
pub mod checkpoint;
pub mod device;
pub mod device_path;
pub mod path;
pub mod replay;
pub mod sac;

pub use replay::Replay;
pub use sac::{Sac, SacConfig};
