//! Thin algorithm loops that read as the papers' pseudo-code.
pub mod pets;
