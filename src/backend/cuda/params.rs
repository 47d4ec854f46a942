//! Parameter blocks passed by value to the kernels, declared identically in `kernels/*.cu`,
//! and the launch geometry the kernels are written for.
use crate::backend::EnsembleShape;

/// Threads per block of every MLP tile kernel (`TILE_THREADS` in mlp.cuh).
pub const TILE_THREADS: u32 = 256;
/// Rows of one member per tile (`TILE_ROWS`).
pub const TILE_ROWS: usize = 32;
/// Weight stage: input rows × output columns (`TILE_KC`, `TILE_NT`).
pub const TILE_KC: usize = 16;
pub const TILE_NT: usize = 128;
/// Row stride of the weight stage (`WS_LD`): ≡ 8 (mod 32), so the tensor-core B fragments
/// are free of bank conflicts.
pub const WS_LD: usize = TILE_NT + 8;
/// The double-buffered weight stage, in floats (`WS_FLOATS`).
pub const WS_FLOATS: usize = 2 * TILE_KC * WS_LD;
/// Integer words at the end of the rollout's shared memory (`ROLL_INTS` in rollout.cu).
pub const ROLL_INTS: usize = 192;
/// Shared floats of the NLL tile's block reduction (`BLOCK_REDUCE_THREADS`).
pub const REDUCE_FLOATS: usize = 256;

/// `MlpShape` of mlp.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MlpShape {
    pub ensemble: u32,
    pub in_dim: u32,
    pub out_dim: u32,
    pub hidden: u32,
    pub num_layers: u32,
    pub activation: u32,
    pub probabilistic: u32,
    pub rows: u32,
    /// Row stride of the shared activation tiles: ≥ every layer's width, ≡ 4 (mod 8) so
    /// that the tensor-core fragment loads are free of bank conflicts.
    pub ld: u32,
    pub _pad: [u32; 3],
}

/// Smallest stride ≥ `width` that is ≡ 4 (mod 8), i.e. 4, 12, 20 or 28 (mod 32): the eight
/// rows g·ld of a tensor-core A-fragment load then start in eight disjoint groups of four
/// banks (g·ld mod 32 for g < 8 is a permutation of 0, 4, …, 28), so the 32 lanes (row g,
/// column t < 4) hit 32 distinct banks. A 200-wide layer gets 204 (it had 228 when only
/// 4 mod 32 was used), which keeps 3 rollout blocks per sm_90 SM with a double-buffered
/// weight stage.
pub fn tile_ld(width: usize) -> usize {
    if width <= 4 {
        4
    } else {
        4 + 8 * (width - 4).div_ceil(8)
    }
}

impl MlpShape {
    pub fn new(s: &EnsembleShape, rows: usize) -> Self {
        let width = s.in_dim.max(s.hidden).max(s.head_dim());
        MlpShape {
            ensemble: s.ensemble as u32,
            in_dim: s.in_dim as u32,
            out_dim: s.out_dim as u32,
            hidden: s.hidden as u32,
            num_layers: s.num_layers as u32,
            activation: s.activation.code(),
            probabilistic: s.probabilistic as u32,
            rows: rows as u32,
            ld: tile_ld(width) as u32,
            _pad: [0; 3],
        }
    }

    /// Dynamic shared floats of the forward tile (`mlp_tile_floats`).
    pub fn tile_floats(&self) -> usize {
        2 * TILE_ROWS * self.ld as usize + WS_FLOATS
    }
}

/// `NllParams` of ensemble.cu; offsets in floats into the scratch buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NllParams {
    pub ntiles: u32,
    pub xn_off: u32,
    pub z_off: u32,
    pub dz_off: u32,
    pub loss_off: u32,
    pub db_off: u32,
    pub scale: f32,
    pub logvar_penalty: f32,
    /// [`NllParams::VJP`], [`NllParams::DX`].
    pub flags: u32,
    pub _pad: u32,
}

impl NllParams {
    /// The head's gradients are read (∂/∂mean, ∂/∂logvar) rather than formed from a loss.
    pub const VJP: u32 = 1;
    /// The data path continues into the raw-input gradient.
    pub const DX: u32 = 2;

    /// Scratch layout for `rows` rows per member; returns the block and the floats needed.
    pub fn layout(s: &EnsembleShape, rows: usize, logvar_penalty: f32) -> (Self, usize) {
        let e = s.ensemble;
        let ntiles = rows.div_ceil(TILE_ROWS);
        let xn = e * rows * s.in_dim;
        let z = s.num_layers * e * rows * s.hidden;
        let dz: usize = s.layer_dims().iter().map(|(_, fo)| e * rows * fo).sum();
        let loss = e * ntiles;
        let db = e * ntiles * 2 * s.out_dim;
        let p = NllParams {
            ntiles: ntiles as u32,
            xn_off: 0,
            z_off: xn as u32,
            dz_off: (xn + z) as u32,
            loss_off: (xn + z + dz) as u32,
            db_off: (xn + z + dz + loss) as u32,
            scale: 1.0 / (rows * s.out_dim) as f32,
            logvar_penalty,
            flags: 0,
            _pad: 0,
        };
        (p, xn + z + dz + loss + db)
    }
}

/// `RolloutSpan` of rollout.cu: the steps `[t0, t1)` one launch of `rollout` runs and the
/// blocks of its grid (the slot table's blocks per member draw).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RolloutSpan {
    pub t0: u32,
    pub t1: u32,
    pub blocks: u32,
    /// 1: a terminal value follows (the final states and flags are kept; see rollout.cu).
    pub value: u32,
    /// The rewards' discount (1 without a terminal value); `rollout_value`: γ^H.
    pub gamma: f32,
    pub _pad: [u32; 3],
}

/// Dynamic shared words of `rollout` (`rollout_words` in rollout.cu).
pub fn rollout_words(shape: &MlpShape, obs_dim: usize) -> usize {
    shape.tile_floats()
        + 2 * TILE_ROWS * obs_dim
        + TILE_ROWS * shape.out_dim as usize
        + 2 * TILE_ROWS
        + ROLL_INTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Activation;

    #[test]
    fn tile_stride_should_cover_the_width_and_spread_fragment_rows_over_all_banks() {
        for w in 1..600 {
            let ld = tile_ld(w);
            assert!(ld >= w && ld % 8 == 4 && ld < w + 12, "{w} -> {ld}");
            // Lane (g, t) of an A-fragment load reads word g·ld + t: 32 distinct banks.
            let mut banks: Vec<usize> = (0..32).map(|l| ((l >> 2) * ld + (l & 3)) % 32).collect();
            banks.sort_unstable();
            banks.dedup();
            assert_eq!(banks.len(), 32, "{w} -> {ld}");
        }
        assert_eq!(tile_ld(200), 204);
    }

    #[test]
    fn nll_scratch_regions_should_be_disjoint_and_in_order() {
        let s = EnsembleShape {
            ensemble: 3,
            in_dim: 5,
            out_dim: 4,
            hidden: 13,
            num_layers: 2,
            activation: Activation::Silu,
            probabilistic: true,
        };
        let (q, total) = NllParams::layout(&s, 37, 0.01);
        assert_eq!(q.ntiles, 2);
        assert_eq!(q.z_off, 3 * 37 * 5);
        assert_eq!(q.dz_off - q.z_off, 2 * 3 * 37 * 13);
        assert_eq!(q.loss_off - q.dz_off, 3 * 37 * (13 + 13 + 8));
        assert_eq!(q.db_off - q.loss_off, 3 * 2);
        assert_eq!(total as u32 - q.db_off, 3 * 2 * 8);
        assert_eq!(q.scale, 1.0 / 148.0);
    }

    #[test]
    fn parameter_blocks_should_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<MlpShape>(), 48);
        // ensemble.cu's NllParams; sac.cu's SacParams (12 words).
        assert_eq!(std::mem::size_of::<NllParams>(), 40);
        assert_eq!(std::mem::size_of::<crate::backend::SacParams>(), 48);
        // rollout.cu's BranchParams (16 words).
        assert_eq!(std::mem::size_of::<crate::backend::BranchParams>(), 64);
        // common.cuh's PathParams (36 words), the largest block a kernel takes by value.
        assert_eq!(std::mem::size_of::<crate::backend::PathParams>(), 144);
        assert!(
            std::mem::size_of::<crate::backend::PathParams>() <= super::super::host::MAX_POD_BYTES
        );
        assert_eq!(std::mem::size_of::<crate::backend::RolloutParams>(), 112);
        assert!(
            std::mem::size_of::<crate::backend::RolloutParams>()
                <= super::super::host::MAX_POD_BYTES
        );
    }
}
