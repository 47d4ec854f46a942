//! Host side of `kernels/rollout.cu`: the model rollout (the slot tables that group rows by
//! member, then one launch for the whole horizon, or one per step under TS1, then the
//! particle reduction) and the true-dynamics rollout.
use super::host::{Arg, KernelHost, Launch};
use super::params::{rollout_words, MlpShape, RolloutSpan, TILE_ROWS, TILE_THREADS};
use super::source::{KernelFile, Program};
use super::{ensured, CudaBackend, DeviceBuf, COUNTER_WORDS};
use crate::backend::value::DeviceValue;
use crate::backend::{check, EnsembleShape, Propagation, RolloutParams};
use crate::{Error, Result};

impl<H: KernelHost> CudaBackend<H> {
    /// The model rollout; with `value` (the device copy of a terminal value and its γ), the
    /// rewards are discounted, the paths' final states stay in the value's buffers, and each
    /// live path is closed with γ^H·V(s_H) before the particle mean (`rollout_value`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn model_rollout(
        &self,
        p: &RolloutParams,
        shape: &EnsembleShape,
        params: &DeviceBuf<H::Mem>,
        norm: &DeviceBuf<H::Mem>,
        start: &DeviceBuf<H::Mem>,
        actions: &DeviceBuf<H::Mem>,
        mut value: Option<(&mut DeviceValue<DeviceBuf<H::Mem>>, f32)>,
        returns: &mut DeviceBuf<H::Mem>,
    ) -> Result<()> {
        let lens = [
            params.len(),
            norm.len(),
            start.len(),
            actions.len(),
            returns.len(),
        ];
        check::rollout(p, shape, lens)?;
        shape.validate()?;
        let (od, ad) = (p.obs_dim as usize, p.act_dim as usize);
        let (np, h) = (p.population as usize, p.horizon as usize);
        let rows = np * p.particles as usize;
        if rows == 0 {
            return Ok(());
        }
        // Row and noise indices are checked above; the action index (c·H + t)·A is u32 too.
        if np * h * ad >= u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "{np} candidates × {h} steps × {ad} actions exceed the kernels' 32-bit indexing"
            )));
        }
        let ms = MlpShape::new(shape, TILE_ROWS);
        let shared = self.check_shared("the rollout", 4 * rollout_words(&ms, od))?;
        // Slot tables: rows grouped by member across the population (rollout_group), each
        // member's run padded to whole tiles; TS1 draws anew each step, so one table per step.
        let ts1 = p.propagation == Propagation::Ts1 as u32;
        let grouped = p.propagation != Propagation::Expectation as u32;
        // Distinct elites: each member's run may end in a partial tile (no allocation: this
        // runs every planning iteration).
        let elites = &p.elites[..p.num_elites as usize];
        let distinct = (0..elites.len())
            .filter(|&i| !elites[..i].contains(&elites[i]))
            .count();
        let blocks = rows.div_ceil(TILE_ROWS) + if grouped { distinct } else { 0 };
        let draws = if ts1 { h } else { 1 };
        let slots = draws * blocks * TILE_ROWS;
        if slots >= i32::MAX as usize {
            return Err(Error::Invalid(format!(
                "{rows} rows over {draws} member draws need {slots} slots, beyond the \
                 kernels' 32-bit indexing: use fewer candidates, particles or steps"
            )));
        }
        let gamma = value.as_ref().map_or(1.0, |v| v.1);
        let paths = match value.as_mut() {
            Some((dv, _)) => Some(dv.paths(self, rows)?),
            None => None,
        };
        let mut guard = self.scratch();
        let sc = &mut *guard;
        self.pack_weights(
            &mut sc.bf16,
            &mut sc.bf16_source,
            params,
            shape.layout().total,
        )?;
        self.ensure(&mut sc.row_returns, rows)?;
        self.ensure(&mut sc.slot_rows, if grouped { slots } else { 1 })?;
        self.ensure(
            &mut sc.block_member,
            if grouped { draws * blocks } else { 1 },
        )?;
        self.ensure(&mut sc.row_state, if ts1 { rows * od } else { 1 })?;
        self.ensure(&mut sc.row_flags, if ts1 { rows } else { 1 })?;
        self.ensure(&mut sc.counters, COUNTER_WORDS)?;
        let (slot_rows, block_member) = (ensured(&sc.slot_rows), ensured(&sc.block_member));
        let counters = ensured(&sc.counters);
        // With a terminal value the rows' states, flags and returns outlive the launches.
        let (row_state, row_flags, row_returns) = match &paths {
            Some(ps) => (&ps.states.mem, &ps.flags.mem, &ps.returns.mem),
            None => (
                ensured(&sc.row_state),
                ensured(&sc.row_flags),
                ensured(&sc.row_returns),
            ),
        };
        let wt = match &sc.bf16 {
            Some((m, _)) if self.options.bf16_weights => m,
            _ => &params.mem,
        };
        let pb = bytemuck::bytes_of(p);
        let program = self.mlp_program(KernelFile::Rollout, shape.activation);
        if grouped {
            self.host.launch(&Launch {
                program,
                entry: "rollout_group",
                grid: [draws as u32, 1, 1],
                block: TILE_THREADS,
                dynamic_shared: None,
                args: &[
                    Arg::Pod(pb),
                    Arg::U32(blocks as u32),
                    Arg::Mem(slot_rows),
                    Arg::Mem(block_member),
                ],
            })?;
        }
        // TS1: one launch per step (the rows regroup between them); otherwise one for all
        // (check::rollout refuses a horizon of 0).
        let (launches, per) = if ts1 { (h as u32, 1) } else { (1, h as u32) };
        for i in 0..launches {
            let (t0, t1) = (i * per, (i + 1) * per);
            let span = RolloutSpan {
                t0,
                t1,
                blocks: blocks as u32,
                value: u32::from(paths.is_some()),
                gamma,
                _pad: [0; 3],
            };
            self.host.launch(&Launch {
                program,
                entry: "rollout",
                grid: [blocks as u32, 1, 1],
                block: TILE_THREADS,
                dynamic_shared: Some(shared),
                args: &[
                    Arg::Pod(pb),
                    Arg::Pod(bytemuck::bytes_of(&ms)),
                    Arg::Pod(bytemuck::bytes_of(&span)),
                    Arg::Mem(&params.mem),
                    Arg::Mem(wt),
                    Arg::Mem(&norm.mem),
                    Arg::Mem(&start.mem),
                    Arg::Mem(&actions.mem),
                    Arg::Mem(slot_rows),
                    Arg::Mem(block_member),
                    Arg::Mem(row_state),
                    Arg::Mem(row_flags),
                    Arg::Mem(row_returns),
                    Arg::Mem(counters),
                ],
            })?;
        }
        let reduce = |row_returns: &H::Mem| {
            self.host.launch(&Launch {
                program,
                entry: "rollout_reduce",
                grid: [np.div_ceil(256) as u32, 1, 1],
                block: 256,
                dynamic_shared: None,
                args: &[Arg::Pod(pb), Arg::Mem(row_returns), Arg::Mem(&returns.mem)],
            })
        };
        if paths.is_none() {
            return reduce(row_returns);
        }
        // The scratch is released before the value's own operations take it.
        drop(guard);
        let Some((dv, _)) = value else {
            return Err(Error::Invalid("a valued rollout lost its value".into()));
        };
        dv.q(self, rows)?;
        let (q, ps) = dv.closing()?;
        let span = RolloutSpan {
            t0: 0,
            t1: h as u32,
            blocks: 0,
            value: 1,
            gamma: crate::backend::value::discount(gamma, h),
            _pad: [0; 3],
        };
        self.host.launch(&Launch {
            program,
            entry: "rollout_value",
            grid: [rows.div_ceil(256) as u32, 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &[
                Arg::Pod(pb),
                Arg::Pod(bytemuck::bytes_of(&span)),
                Arg::Mem(&ps.flags.mem),
                Arg::Mem(&q.mem),
                Arg::Mem(&ps.returns.mem),
            ],
        })?;
        reduce(&ps.returns.mem)
    }

    pub(super) fn true_rollout(
        &self,
        p: &RolloutParams,
        start: &DeviceBuf<H::Mem>,
        actions: &DeviceBuf<H::Mem>,
        returns: &mut DeviceBuf<H::Mem>,
    ) -> Result<()> {
        check::rollout_true(p, [start.len(), actions.len(), returns.len()])?;
        let np = p.population as usize;
        if np == 0 {
            return Ok(());
        }
        self.host.launch(&Launch {
            program: Program::plain(KernelFile::Rollout),
            entry: "rollout_true",
            grid: [np.div_ceil(128) as u32, 1, 1],
            block: 128,
            dynamic_shared: None,
            args: &[
                Arg::Pod(bytemuck::bytes_of(p)),
                Arg::Mem(&start.mem),
                Arg::Mem(&actions.mem),
                Arg::Mem(&returns.mem),
            ],
        })
    }
}

/// MBPO's branched-rollout steps (`branch_route`, `branch_step`): one block each, see
/// `kernels/rollout.cu`.
impl<H: KernelHost> CudaBackend<H> {
    fn branch_launch(
        &self,
        entry: &'static str,
        p: &crate::backend::BranchParams,
        bufs: &[&DeviceBuf<H::Mem>],
    ) -> Result<()> {
        let mut args = vec![Arg::Pod(bytemuck::bytes_of(p))];
        args.extend(bufs.iter().map(|b| Arg::Mem(&b.mem)));
        self.host.launch(&Launch {
            program: Program::plain(KernelFile::Rollout),
            entry,
            grid: [1, 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &args,
        })
    }

    pub(super) fn route(
        &self,
        p: &crate::backend::BranchParams,
        all: [&DeviceBuf<H::Mem>; 3],
    ) -> Result<()> {
        check::branch_route(p, all.map(|b| b.len()))?;
        self.branch_launch("branch_route", p, &all)
    }

    pub(super) fn branch(
        &self,
        p: &crate::backend::BranchParams,
        all: [&DeviceBuf<H::Mem>; 8],
    ) -> Result<()> {
        check::branch_step(p, all.map(|b| b.len()))?;
        self.branch_launch("branch_step", p, &all)
    }
}

/// The path gradient's model stages (`path_step`, `path_model_back`), see
/// `kernels/rollout.cu`; launched like the policy stages (`sac.rs`).
impl<H: KernelHost> CudaBackend<H> {
    pub(super) fn path_step_on(
        &self,
        p: &crate::backend::PathParams,
        all: [&DeviceBuf<H::Mem>; 5],
    ) -> Result<()> {
        check::path_step(p, all.map(|b| b.len()))?;
        let grid = Self::path_row_blocks(p);
        self.path_launch(KernelFile::Rollout, "path_step", p, grid, &all)
    }

    pub(super) fn path_model_back_on(
        &self,
        p: &crate::backend::PathParams,
        all: [&DeviceBuf<H::Mem>; 6],
    ) -> Result<()> {
        check::path_model_back(p, all.map(|b| b.len()))?;
        let grid = Self::path_slot_blocks(p);
        self.path_launch(KernelFile::Rollout, "path_model_back", p, grid, &all)
    }
}
