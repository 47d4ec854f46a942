//! Thin algorithm loops that read as the papers' pseudo-code.
pub mod maac;
pub mod mbpo;
pub mod offpolicy;
pub mod pets;
pub mod sac;
pub mod svg;
