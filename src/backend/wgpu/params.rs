//! Parameter blocks of the kernels that the shared structs of `backend` (AdamParams,
//! SampleParams, UpdateParams, RolloutParams) do not cover. Each is declared field for field
//! in the WGSL file named on it; all are 16-byte multiples, as uniform blocks must be.
use crate::backend::RolloutParams;

/// `GemmParams` of ensemble.wgsl: C = epilogue(A·B), every operand addressed by
/// offset + batch·batch_stride + row·row_stride + col·col_stride (in words).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GemmParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    /// 1: the batch (member) of each 64-row tile comes from the tile table.
    pub grouped: u32,
    pub a_off: u32,
    pub a_rs: u32,
    pub a_cs: u32,
    pub a_bs: u32,
    pub b_off: u32,
    pub b_rs: u32,
    pub b_cs: u32,
    pub b_bs: u32,
    pub c_off: u32,
    pub c_rs: u32,
    pub c_bs: u32,
    /// Offset of the pre-activation store (EPI_BIAS_ACT_PRE); it shares C's strides.
    pub p_off: u32,
    pub x_off: u32,
    pub x_rs: u32,
    pub x_bs: u32,
    pub epilogue: u32,
    pub activation: u32,
    pub scale: f32,
    /// Grouped mode: the first entry of the tile table this GEMM reads (TS1 keeps one table
    /// per horizon step).
    pub tiles_off: u32,
    pub _pad: u32,
}

/// Epilogue codes of `gemm` (ensemble.wgsl's EPI_* constants).
pub mod epi {
    pub const STORE: u32 = 0;
    pub const BIAS: u32 = 1;
    pub const BIAS_ACT: u32 = 2;
    pub const BIAS_ACT_PRE: u32 = 3;
    pub const DECAY: u32 = 4;
    pub const ACT_GRAD: u32 = 5;
    pub const DIV: u32 = 6;
}

/// `NormParams` of ensemble.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NormParams {
    pub count: u32,
    pub in_dim: u32,
    pub _pad: [u32; 2],
}

/// `HeadParams` of ensemble.wgsl (head_split and nll_head).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct HeadParams {
    pub count: u32,
    pub out_dim: u32,
    pub head_dim: u32,
    pub probabilistic: u32,
    pub max_off: u32,
    pub min_off: u32,
    pub scale: f32,
    pub _pad: u32,
}

/// `ReduceParams` of ensemble.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ReduceParams {
    pub rows: u32,
    pub cols: u32,
    pub in_off: u32,
    pub in_rs: u32,
    pub in_bs: u32,
    pub out_off: u32,
    pub out_bs: u32,
    pub split: u32,
    pub scale: f32,
    pub add_lo: f32,
    pub add_hi: f32,
    pub cols_per: u32,
}

/// `ConvertParams` of ensemble.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ConvertParams {
    pub len: u32,
    pub _pad: [u32; 3],
}

/// `RolloutStep` of rollout.wgsl: the caller's [`RolloutParams`] and what one dispatch of
/// the horizon loop needs besides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RolloutStep {
    pub p: RolloutParams,
    pub t: u32,
    pub rows: u32,
    pub positions: u32,
    pub tiles: u32,
    pub slot_stride: u32,
    pub in_dim: u32,
    pub out_dim: u32,
    pub head_dim: u32,
    pub probabilistic: u32,
    pub max_off: u32,
    pub min_off: u32,
    pub state_dim: u32,
    /// The slot table of this step (TS1: one per step, all grouped by one dispatch; else 0).
    pub table: u32,
    /// The rewards' discount (1 without a terminal value); `rollout_value`: γ^H.
    pub gamma: f32,
    /// To the WGSL struct's size, a multiple of its 16-byte alignment.
    pub _pad: [u32; 2],
}

/// `RngParams` of rng.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RngParams {
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub stream: u32,
    pub step: u32,
    pub count: u32,
    pub below_n: u32,
    pub word3: u32,
    pub _pad: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_blocks_should_have_their_wgsl_sizes() {
        use std::mem::size_of;
        assert_eq!(size_of::<GemmParams>(), 96);
        assert_eq!(size_of::<NormParams>(), 16);
        assert_eq!(size_of::<HeadParams>(), 32);
        assert_eq!(size_of::<ReduceParams>(), 48);
        assert_eq!(size_of::<ConvertParams>(), 16);
        assert_eq!(size_of::<RolloutParams>(), 112);
        assert_eq!(size_of::<RolloutStep>(), 176);
        assert_eq!(size_of::<RngParams>(), 32);
        // sac.wgsl's SacParams: 12 scalars, a multiple of the uniform alignment.
        assert_eq!(size_of::<crate::backend::SacParams>(), 48);
        // rollout.wgsl's BranchParams: 16 scalars.
        assert_eq!(size_of::<crate::backend::BranchParams>(), 64);
        // common.wgsl's PathParams: 36 scalars.
        assert_eq!(size_of::<crate::backend::PathParams>(), 144);
    }
}
