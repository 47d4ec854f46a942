//! Thin algorithm loops that read as the papers' pseudo-code.
pub mod mbpo;
pub mod offpolicy;
pub mod pets;
pub mod sac;
