//! Fused trajectory sampling (PETS §4.2, "TS1" / "TS∞") — the specification of `rollout.cu`
//! and `rollout.wgsl`.
//!
//! Rows r = c·K + k (candidate c, particle k) all start at the same observation. The horizon
//! loop runs inside one call: rows are cut into tiles, one rayon task per tile, and each tile
//! runs every step of the horizon on its rows with scratch memory reused across calls (no
//! allocation per step). Within a tile and step, rows are grouped by the elite member that
//! propagates them, so each member runs one GEMM-shaped batch.
use super::ensemble::{
    head_out, layer_fm_of, max_width, member_forward, member_forward_bf16, member_forward_packed,
    member_layers_fm, normalise_fm, pack_member, pack_member_f32,
};
use super::Real;
use crate::backend::{EnsembleShape, ParamLayout, Propagation, RolloutParams, TerminalValue};
use crate::bf16::{ChainScratch, Packed};
use crate::dense::PackedF32;
use crate::env::{task, EnvId};
use crate::rng::{below, normal, normals, stream};
use rayon::prelude::*;

/// Rows per tile at most (~200 rows per member and step with 5 elites). Measured with
/// `bench plan` on the 2-core Zen 5: 1024 gave 372 / 974 ms per action (cart-pole /
/// half-cheetah sizes) against 387 / 1016 ms at 512.
const TILE_ROWS: usize = 1024;

/// Per-tile scratch, kept between calls.
#[derive(Default)]
pub struct Tile {
    state: Vec<f32>,
    next: Vec<f32>,
    reward: Vec<f32>,
    alive: Vec<bool>,
    bad: Vec<bool>,
    member: Vec<u32>,
    order: Vec<u32>,
    /// Per row of a member's batch, the row of the forward's output it reads (see
    /// `Model::share_first_step`).
    slot: Vec<u32>,
    x: Vec<f32>,
    xg: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    mean: Vec<f32>,
    logvar: Vec<f32>,
    acc: Vec<f32>,
    /// The fused f32 expectation's normalised input and its sum over members, feature-major.
    xfm: Vec<f32>,
    accfm: Vec<f32>,
    noise: Vec<f32>,
    bf16: ChainScratch,
}

#[derive(Default)]
pub struct RolloutWorkspace {
    tiles: Vec<Tile>,
    row_returns: Vec<f32>,
    packed: PackedModel,
}

/// The weights packed for bf16 products, kept until the parameters change: a planner calls
/// `rollout` several times per action with the same model, and a model changes only when it
/// is retrained, so the weights are packed once per model update.
#[derive(Default)]
struct PackedModel {
    /// The parameters the packing was made from (compared on every call: a memcmp of the
    /// weights is a small fraction of one rollout's arithmetic).
    source: Vec<f32>,
    shape: Option<EnsembleShape>,
    /// Whether `members` holds bf16 packings (else f32 panels).
    bf16: bool,
    /// [member][layer].
    members: Vec<Vec<Packed>>,
    f32_members: Vec<Vec<PackedF32>>,
    /// Packings made so far (for tests: once per model update).
    pub packs: usize,
}

impl PackedModel {
    /// Repack when the parameters, the shape or the arithmetic changed.
    fn refresh(&mut self, shape: &EnsembleShape, params: &[f32], bf16: bool) {
        if self.shape.as_ref() != Some(shape) || self.bf16 != bf16 || self.source != params {
            if bf16 {
                self.members = (0..shape.ensemble)
                    .into_par_iter()
                    .map(|e| pack_member(shape, params, e))
                    .collect();
                self.f32_members.clear();
            } else {
                self.f32_members = (0..shape.ensemble)
                    .into_par_iter()
                    .map(|e| pack_member_f32(shape, params, e))
                    .collect();
                self.members.clear();
            }
            self.source.clear();
            self.source.extend_from_slice(params);
            self.shape = Some(*shape);
            self.bf16 = bf16;
            self.packs += 1;
        }
    }
}

impl RolloutWorkspace {
    /// How many times the bf16 weights were packed.
    pub fn bf16_packs(&self) -> usize {
        self.packed.packs
    }
}

fn grow<T: Real>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::zero());
    }
}

fn tile_ranges(rows: usize) -> Vec<(usize, usize)> {
    let t = rayon::current_num_threads().max(1);
    let tiles = (t * rows.div_ceil(t * TILE_ROWS)).clamp(1, rows.max(1));
    let per = rows.div_ceil(tiles).max(1);
    (0..rows)
        .step_by(per)
        .map(|r0| (r0, per.min(rows - r0)))
        .collect()
}

/// Seed from the two halves in the parameter block.
fn seed(p: &RolloutParams) -> u64 {
    p.seed_lo as u64 | (p.seed_hi as u64) << 32
}

/// Mean return per candidate; see `Backend::rollout`.
#[allow(clippy::too_many_arguments)]
pub fn rollout(
    p: &RolloutParams,
    shape: &EnsembleShape,
    params: &[f32],
    in_mean: &[f32],
    in_std: &[f32],
    start: &[f32],
    actions: &[f32],
    returns: &mut [f32],
    ws: &mut RolloutWorkspace,
    bf16: bool,
    terminal: Option<&TerminalValue>,
) {
    let (np, k) = (p.population as usize, p.particles as usize);
    let rows = np * k;
    let ranges = tile_ranges(rows);
    if ws.tiles.len() < ranges.len() {
        ws.tiles.resize_with(ranges.len(), Default::default);
    }
    grow(&mut ws.row_returns, rows);
    // Disjoint per-tile slices of the per-row returns.
    let mut rest = &mut ws.row_returns[..rows];
    let mut outs = Vec::with_capacity(ranges.len());
    for &(_, n) in &ranges {
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(n);
        outs.push(mine);
        rest = tail;
    }
    // Weights packed once per model: bf16 tiles, or f32 panels for the fused kernel.
    if bf16 || crate::dense::fused_available() {
        ws.packed.refresh(shape, params, bf16);
    }
    let model = Model {
        shape,
        lay: shape.layout(),
        params,
        in_mean,
        in_std,
        packed: bf16.then_some(&ws.packed.members[..]),
        packed_f32: (!bf16 && crate::dense::fused_available())
            .then_some(&ws.packed.f32_members[..]),
        share_first_step: true,
    };
    ranges
        .par_iter()
        .zip(ws.tiles.par_iter_mut())
        .zip(outs.into_par_iter())
        .for_each(|((&(r0, n), tile), out)| {
            run_tile(p, &model, start, actions, r0, n, tile, out, terminal)
        });
    reduce_particles(&ws.row_returns[..rows], k, &mut returns[..np]);
}

/// Mean over each candidate's K particles; −∞ if any is −∞ (left the finite numbers).
fn reduce_particles(row_returns: &[f32], k: usize, returns: &mut [f32]) {
    for (c, out) in returns.iter_mut().enumerate() {
        let rs = &row_returns[c * k..(c + 1) * k];
        *out = if rs.contains(&f32::NEG_INFINITY) {
            f32::NEG_INFINITY
        } else {
            rs.iter().sum::<f32>() / k as f32
        };
    }
}

/// The model a rollout runs: f32 weights (the specification) and, for bf16 products, their
/// packed copies.
struct Model<'a> {
    shape: &'a EnsembleShape,
    lay: ParamLayout,
    params: &'a [f32],
    in_mean: &'a [f32],
    in_std: &'a [f32],
    packed: Option<&'a [Vec<Packed>]>,
    packed_f32: Option<&'a [Vec<PackedF32>]>,
    /// At step 0 every particle of a candidate has the same input (the start state and the
    /// candidate's first action), so the particles of one candidate that one member
    /// propagates need one forward between them: with K = 20 particles over 5 elites about
    /// 5 distinct rows of 20, a twentieth of a 15-step rollout's products. Each row's
    /// forward does not depend on the other rows of its batch, so the returns are the same
    /// bits either way (tested); off only to test that.
    share_first_step: bool,
}

impl Model<'_> {
    /// Member `e`'s raw head output for `nr` rows of `x`, in one of the scratch buffers.
    #[allow(clippy::too_many_arguments)]
    fn forward<'s>(
        &self,
        e: usize,
        x: &[f32],
        nr: usize,
        a: &'s mut [f32],
        b: &'s mut [f32],
        scratch: &mut ChainScratch,
    ) -> &'s [f32] {
        let (shape, lay) = (self.shape, &self.lay);
        let (mean, std) = (self.in_mean, self.in_std);
        let p = self.params;
        match (self.packed, self.packed_f32) {
            (Some(pk), _) => {
                member_forward_bf16(shape, lay, p, &pk[e], mean, std, e, x, nr, a, b, scratch)
            }
            (None, Some(pk)) => {
                member_forward_packed(shape, lay, p, &pk[e], mean, std, e, x, nr, a, b)
            }
            (None, None) => member_forward(shape, lay, p, mean, std, e, x, nr, a, b, false),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_tile(
    p: &RolloutParams,
    model: &Model,
    start: &[f32],
    actions: &[f32],
    r0: usize,
    n: usize,
    t: &mut Tile,
    out: &mut [f32],
    terminal: Option<&TerminalValue>,
) {
    let seed = seed(p);
    // Σ γ^t r_t with a terminal value (its critic's discount), the plain sum without.
    let gamma = terminal.map_or(1.0, |v| v.gamma);
    let mut discount = 1.0f32;
    let (shape, params, lay) = (model.shape, model.params, &model.lay);
    let (od, ad) = (p.obs_dim as usize, p.act_dim as usize);
    let (di, dout) = (shape.in_dim, shape.out_dim);
    let (h, k) = (p.horizon as usize, p.particles as usize);
    let elites = &p.elites[..p.num_elites as usize];
    let prop = match p.propagation {
        0 => Propagation::Ts1,
        1 => Propagation::TsInf,
        _ => Propagation::Expectation,
    };
    let w = max_width(shape);
    grow(&mut t.state, n * od);
    grow(&mut t.next, n * od);
    grow(&mut t.reward, n);
    t.alive.resize(n, true);
    t.bad.resize(n, false);
    t.member.resize(n, 0);
    t.order.resize(n, 0);
    t.slot.resize(n, 0);
    grow(&mut t.x, n * di);
    grow(&mut t.xg, n * di);
    grow(&mut t.a, crate::dense::fm_len(n, w));
    grow(&mut t.b, crate::dense::fm_len(n, w));
    grow(&mut t.mean, n * dout);
    grow(&mut t.logvar, n * dout);
    grow(&mut t.acc, n * dout);
    grow(&mut t.noise, n * dout);
    for i in 0..n {
        t.state[i * od..(i + 1) * od].copy_from_slice(&start[..od]);
    }
    t.alive[..n].fill(true);
    t.bad[..n].fill(false);
    out.fill(0.0);
    let action = |row: usize, step: usize| {
        let c = row / k;
        &actions[(c * h + step) * ad..(c * h + step + 1) * ad]
    };
    let pick = |row: usize, coord: u32| {
        elites[below(
            seed,
            stream::TS_MEMBER,
            row as u32,
            coord,
            elites.len() as u32,
        ) as usize]
    };
    // Distinct elite members in ascending order: the grouping order of the batches.
    let mut members: Vec<u32> = elites.to_vec();
    members.sort_unstable();
    members.dedup();
    if prop == Propagation::TsInf {
        for i in 0..n {
            t.member[i] = pick(r0 + i, p.step.wrapping_mul(p.horizon));
        }
    }
    for step in 0..h {
        let coord = p.step.wrapping_mul(p.horizon).wrapping_add(step as u32);
        // Model inputs: [state, action] per row.
        for i in 0..n {
            let x = &mut t.x[i * di..(i + 1) * di];
            x[..od].copy_from_slice(&t.state[i * od..(i + 1) * od]);
            x[od..].copy_from_slice(action(r0 + i, step));
        }
        if prop == Propagation::Expectation {
            // Mean over elites of each member's mean prediction; no sampling. The mean is the
            // first `dout` columns of the head's output: the bounded log-variance that
            // `head_out` would also compute is not needed here.
            let hd = shape.head_dim();
            if let Some(pk) = model.packed_f32 {
                // The fused f32 chain: the input normalised and made feature-major once for
                // every member, the means summed feature-major (the same additions in the
                // same order as the row-major sum below, so the same bits).
                grow(&mut t.xfm, crate::dense::fm_len(n, di));
                grow(&mut t.accfm, crate::dense::fm_len(n, dout));
                normalise_fm(
                    &mut t.xfm,
                    &mut t.xg,
                    &t.x[..n * di],
                    model.in_mean,
                    model.in_std,
                    n,
                );
                let fm = crate::dense::FM_ROWS;
                t.accfm[..crate::dense::fm_len(n, dout)].fill(0.0);
                for &m in elites {
                    let m = m as usize;
                    layer_fm_of(shape, lay, params, &pk[m], m, 0, n, &mut t.a, &t.xfm);
                    let (head, _) =
                        member_layers_fm(shape, lay, params, &pk[m], m, n, 1, &mut t.a, &mut t.b);
                    for (acc, panel) in t.accfm[..crate::dense::fm_len(n, dout)]
                        .chunks_exact_mut(fm * dout)
                        .zip(head.chunks_exact(fm * hd))
                    {
                        for (a, v) in acc.iter_mut().zip(&panel[..fm * dout]) {
                            *a += *v;
                        }
                    }
                }
                crate::dense::from_fm(&mut t.acc, &t.accfm, n, dout, 0, dout);
            } else {
                t.acc[..n * dout].fill(0.0);
                for &m in elites {
                    let raw = model.forward(
                        m as usize,
                        &t.x[..n * di],
                        n,
                        &mut t.a,
                        &mut t.b,
                        &mut t.bf16,
                    );
                    for (acc, row) in t.acc[..n * dout]
                        .chunks_exact_mut(dout)
                        .zip(raw.chunks_exact(hd))
                    {
                        for (a, v) in acc.iter_mut().zip(&row[..dout]) {
                            *a += *v;
                        }
                    }
                }
            }
            let inv = 1.0 / elites.len() as f32;
            for i in 0..n {
                for j in 0..od {
                    t.next[i * od + j] = t.state[i * od + j] + t.acc[i * dout + j] * inv;
                }
                if p.learn_reward == 1 {
                    t.reward[i] = t.acc[i * dout + od] * inv;
                }
            }
        } else {
            if prop == Propagation::Ts1 {
                for i in 0..n {
                    t.member[i] = pick(r0 + i, coord);
                }
            }
            // The tile's rows are consecutive, so their noise (element row·dout + j) is one
            // range: drawn in one call, vectorised over the whole tile, where one call per
            // row of dout values spent most of its time starting and ending (the same
            // numbers either way).
            if shape.probabilistic {
                normals(
                    seed,
                    stream::TS_NOISE,
                    (r0 * dout) as u32,
                    coord,
                    &mut t.noise[..n * dout],
                );
            }
            // Counting sort of the tile's rows by member, then one batch per member.
            let mut begin = 0;
            for &m in &members {
                let mut cnt = 0;
                for i in 0..n {
                    if t.member[i] == m {
                        t.order[begin + cnt] = i as u32;
                        cnt += 1;
                    }
                }
                if cnt == 0 {
                    continue;
                }
                let group = &t.order[begin..begin + cnt];
                // The batch: the group's rows, or at step 0 one row per candidate (a group's
                // rows ascend, so a candidate's particles are adjacent in it).
                let share = model.share_first_step && step == 0;
                let mut rows_in = 0;
                for (q, &i) in group.iter().enumerate() {
                    let i = i as usize;
                    let same = share && q > 0 && (r0 + i) / k == (r0 + group[q - 1] as usize) / k;
                    if !same {
                        t.xg[rows_in * di..(rows_in + 1) * di]
                            .copy_from_slice(&t.x[i * di..(i + 1) * di]);
                        rows_in += 1;
                    }
                    t.slot[q] = (rows_in - 1) as u32;
                }
                let raw = model.forward(
                    m as usize,
                    &t.xg[..rows_in * di],
                    rows_in,
                    &mut t.a,
                    &mut t.b,
                    &mut t.bf16,
                );
                head_out(shape, params, lay, raw, rows_in, &mut t.mean, &mut t.logvar);
                // next = state + μ + σ·ε (PETS eq. 2: sample from the predicted Gaussian).
                for (q, &i) in group.iter().enumerate() {
                    let i = i as usize;
                    let s = t.slot[q] as usize;
                    let z = &mut t.noise[i * dout..(i + 1) * dout];
                    let mu = &t.mean[s * dout..(s + 1) * dout];
                    let lv = &t.logvar[s * dout..(s + 1) * dout];
                    if shape.probabilistic {
                        for ((zz, m), l) in z.iter_mut().zip(mu).zip(lv) {
                            *zz = m + (0.5 * l).exp_fast() * *zz;
                        }
                    } else {
                        z.copy_from_slice(mu);
                    }
                    for ((nx, s), d) in t.next[i * od..(i + 1) * od]
                        .iter_mut()
                        .zip(&t.state[i * od..(i + 1) * od])
                        .zip(z.iter())
                    {
                        *nx = s + d;
                    }
                    if dout > od {
                        t.reward[i] = z[od];
                    }
                }
                begin += cnt;
            }
        }
        // Rewards, termination masks, finiteness.
        for (i, ret) in out.iter_mut().enumerate().take(n) {
            let s = &t.state[i * od..(i + 1) * od];
            let nx = &t.next[i * od..(i + 1) * od];
            let a = action(r0 + i, step);
            let r = if p.learn_reward == 1 {
                t.reward[i]
            } else {
                task::reward(p.env, s, a, nx)
            };
            if !r.is_finite() || nx.iter().any(|v| !v.is_finite()) {
                t.bad[i] = true;
            }
            if t.alive[i] {
                *ret += discount * r;
                t.alive[i] = !task::terminated(p.env, nx);
            }
        }
        discount *= gamma;
        std::mem::swap(&mut t.state, &mut t.next);
    }
    if let Some(tv) = terminal {
        // + γ^H V(s_H) on the paths still alive; `discount` is γ^H here. A terminated path's
        // last state is never valued (the model keeps stepping it, so it may be anywhere):
        // only the live rows' states are gathered and passed to the value.
        let mut live = 0;
        for i in 0..n {
            if t.alive[i] && !t.bad[i] {
                t.order[live] = i as u32;
                t.next[live * od..(live + 1) * od].copy_from_slice(&t.state[i * od..(i + 1) * od]);
                live += 1;
            }
        }
        if live > 0 {
            let v = &mut t.reward[..live];
            tv.value.values(&t.next[..live * od], live, v);
            for (&i, &vi) in t.order[..live].iter().zip(v.iter()) {
                let i = i as usize;
                if vi.is_finite() {
                    out[i] += discount * vi;
                } else {
                    t.bad[i] = true;
                }
            }
        }
    }
    for (ret, bad) in out.iter_mut().zip(&t.bad[..n]) {
        if *bad {
            *ret = f32::NEG_INFINITY;
        }
    }
}

/// Planning with the true simulator: one deterministic rollout per candidate from the
/// environment's internal state. Pendulum-v1 takes [`pendulum_true`], a batched f32 version
/// of [`rollout_true_reference`] (MPPI's and iCEM's real-time case: planner overhead, no
/// matrix arithmetic); the other environments take the reference itself.
pub fn rollout_true(p: &RolloutParams, start: &[f32], actions: &[f32], returns: &mut [f32]) {
    if EnvId::from_code(p.env) == Some(EnvId::Pendulum) {
        pendulum_true(p, start, actions, returns);
    } else {
        rollout_true_reference(p, start, actions, returns);
    }
}

/// Candidates per batch of [`pendulum_true`]: one rayon task, its states in registers-worth
/// arrays so that the step loop vectorises across candidates.
const PENDULUM_BATCH: usize = 64;

/// Pendulum-v1 rollouts in f32, `PENDULUM_BATCH` candidates at a time (structure of arrays,
/// branch-free: the loop over candidates vectorises). The same equations as
/// `env::pendulum::step` — reward −(angle_normalize(θ)² + 0.1θ̇² + 0.001u²) of the state
/// before the step, θ̇ ← clip(θ̇ + (15 sin θ + 3u)·0.05, ±8), θ ← θ + θ̇·0.05 — with sin θ from
/// the polynomial `cos_2pi_f32(θ/2π − ¼)` (absolute error ≤ 3e-7) and the angle normalised
/// by rounding instead of the floored modulo. The reference steps in f64 and scores from the
/// f32 observation; the returns agree to ~1e-5 relative (tested below).
pub fn pendulum_true(p: &RolloutParams, start: &[f32], actions: &[f32], returns: &mut [f32]) {
    use crate::fastmath::cos_2pi_f32;
    use std::f32::consts::{PI, TAU};
    let h = p.horizon as usize;
    let n = p.population as usize;
    let (th0, thdot0) = (start[0], start[1]);
    returns[..n]
        .par_chunks_mut(PENDULUM_BATCH)
        .enumerate()
        .for_each(|(b, out)| {
            let base = b * PENDULUM_BATCH;
            let m = out.len();
            let mut th = [th0; PENDULUM_BATCH];
            let mut thdot = [thdot0; PENDULUM_BATCH];
            let mut total = [0.0f32; PENDULUM_BATCH];
            let mut u = [0.0f32; PENDULUM_BATCH];
            for t in 0..h {
                for (i, ui) in u[..m].iter_mut().enumerate() {
                    *ui = actions[(base + i) * h + t].clamp(-2.0, 2.0);
                }
                for i in 0..m {
                    let x = th[i] + PI;
                    let a = x - TAU * (x * (1.0 / TAU)).floor() - PI;
                    total[i] -= a * a + 0.1 * (thdot[i] * thdot[i]) + 0.001 * (u[i] * u[i]);
                    let sin = cos_2pi_f32(th[i] * (1.0 / TAU) - 0.25);
                    let nd = (thdot[i] + (15.0 * sin + 3.0 * u[i]) * 0.05).clamp(-8.0, 8.0);
                    th[i] += nd * 0.05;
                    thdot[i] = nd;
                }
            }
            for (o, t) in out.iter_mut().zip(&total) {
                *o = if t.is_finite() { *t } else { f32::NEG_INFINITY };
            }
        });
}

/// The specification of [`rollout_true`] for every native environment: each candidate
/// stepped with the environment's own functions (`EnvId::step_state`, `observe`, `reward`,
/// `terminated`).
pub fn rollout_true_reference(
    p: &RolloutParams,
    start: &[f32],
    actions: &[f32],
    returns: &mut [f32],
) {
    let env = EnvId::from_code(p.env).expect("env code validated by the caller");
    let spec = env.spec();
    let (sd, od, ad, h) = (
        spec.state_dim,
        spec.obs_dim,
        spec.act_dim,
        p.horizon as usize,
    );
    returns[..p.population as usize]
        .par_iter_mut()
        .enumerate()
        .for_each(|(c, ret)| {
            let mut s = start[..sd].to_vec();
            let mut ns = vec![0.0f32; sd];
            let mut o = vec![0.0f32; od];
            let mut no = vec![0.0f32; od];
            env.observe(&s, &mut o);
            let mut total = 0.0f32;
            let mut bad = false;
            for step in 0..h {
                let a = &actions[(c * h + step) * ad..(c * h + step + 1) * ad];
                env.step_state(&s, a, &mut ns);
                env.observe(&ns, &mut no);
                let r = env.reward(&o, a, &no);
                bad |= !r.is_finite() || no.iter().any(|v| !v.is_finite());
                total += r;
                if env.terminated(&no) {
                    break;
                }
                std::mem::swap(&mut s, &mut ns);
                std::mem::swap(&mut o, &mut no);
            }
            *ret = if bad { f32::NEG_INFINITY } else { total };
        });
}

// ---- MBPO's branched rollout (algo/mbpo.rs), one step at a time ------------------------

/// Rows per member slot a branched-rollout step needs: the most rows any of the `members`
/// draws at `step` (the route's draws, counted on the host so the grouped model input can
/// be sized before the device routes the rows).
pub fn branch_per(seed: u64, member_stream: u32, step: u32, rows: usize, members: usize) -> usize {
    let mut count = vec![0usize; members];
    for r in 0..rows {
        count[below(seed, member_stream, r as u32, step, members as u32) as usize] += 1;
    }
    count.into_iter().max().unwrap_or(0).max(1)
}

/// `Backend::branch_route`: rows grouped by their TS1 member, in row order within a member.
pub fn branch_route(
    p: &crate::backend::BranchParams,
    x: &[f32],
    route: &mut [f32],
    xg: &mut [f32],
) {
    let din = (p.obs_dim + p.act_dim) as usize;
    let seed = p.seed_lo as u64 | (p.seed_hi as u64) << 32;
    let mut count = vec![0u32; p.members as usize];
    for r in 0..p.rows as usize {
        let m = below(seed, p.member_stream, r as u32, p.step, p.members);
        let q = count[m as usize];
        count[m as usize] += 1;
        if q >= p.per {
            route[r] = f32::from_bits(u32::MAX);
            continue;
        }
        let slot = (m * p.per + q) as usize;
        route[r] = f32::from_bits(slot as u32);
        xg[slot * din..][..din].copy_from_slice(&x[r * din..][..din]);
    }
}

/// `Backend::branch_step`: the model's Gaussian step, reward and termination of every row,
/// live rows' finite transitions appended to the ring in row order.
#[allow(clippy::too_many_arguments)]
pub fn branch_step(
    p: &crate::backend::BranchParams,
    route: &[f32],
    mean: &[f32],
    logvar: &[f32],
    x: &[f32],
    obs: &mut [f32],
    stopped: &mut [f32],
    count: &mut [f32],
    ring: &mut [f32],
) {
    let (o, a, d) = (p.obs_dim as usize, p.act_dim as usize, p.out_dim as usize);
    let (din, w) = (o + a, p.replay_width());
    let seed = p.seed_lo as u64 | (p.seed_hi as u64) << 32;
    let slots = p.members * p.per;
    let mut added = if p.fresh != 0 { 0 } else { count[0].to_bits() };
    let mut next = vec![0.0f32; o];
    for r in 0..p.rows as usize {
        let slot = route[r].to_bits();
        // A fresh rollout's rows all start live (`stopped` holds an earlier rollout's flags).
        let mut live = (p.fresh != 0 || stopped[r] == 0.0) && slot < slots;
        if live {
            let i = slot as usize * d;
            // PETS eq. 2: a sample of the predicted Gaussian over the state change (and
            // the reward, when it is learned).
            let sample = |j: usize| {
                let z = normal(seed, p.noise_stream, (r * d + j) as u32, p.step);
                mean[i + j] + (0.5 * logvar[i + j]).exp() * z
            };
            let s = &obs[r * o..][..o];
            let act = &x[r * din + o..][..a];
            for (j, n) in next.iter_mut().enumerate() {
                *n = s[j] + sample(j);
            }
            let reward = if p.learn_reward != 0 {
                sample(o)
            } else {
                task::reward(p.task, s, act, &next)
            };
            // A row whose prediction left the finite numbers stops, unrecorded: the SAC
            // buffers never hold a NaN.
            live = reward.is_finite() && next.iter().all(|v| v.is_finite());
            if live {
                let term = task::terminated(p.task, &next);
                let k = ((p.base as u64 + added as u64) % p.capacity as u64) as usize;
                let row = &mut ring[k * w..][..w];
                row[..o].copy_from_slice(s);
                row[o..din].copy_from_slice(act);
                row[din] = reward;
                row[din + 1..din + 1 + o].copy_from_slice(&next);
                row[w - 1] = if term { 1.0 } else { 0.0 };
                added += 1;
                live = !term;
            }
        }
        stopped[r] = if live { 0.0 } else { 1.0 };
        let s = &mut obs[r * o..][..o];
        if live {
            s.copy_from_slice(&next);
        } else {
            // Keeps dead rows' values finite; they are never recorded again.
            s.iter_mut().for_each(|v| *v = 0.0);
        }
    }
    count[0] = f32::from_bits(added);
}

// ---- The path gradient's model stages (`policy::path`'s `ModelPath` and the reward terms
// of `path_loss`; see `PathParams` for the buffers) ----------------------------------------

/// σ·ξ of output `j` of a path row, from its log σ² (0 for a deterministic model).
fn path_sigma_xi(p: &crate::backend::PathParams, logvar: f32, xi: f32) -> f32 {
    if p.probabilistic != 0 {
        (0.5 * logvar).exp() * xi
    } else {
        0.0
    }
}

/// See [`crate::backend::Backend::path_step`].
pub fn path_step(
    p: &crate::backend::PathParams,
    mean: &[f32],
    logvar: &[f32],
    noise: &[f32],
    tape: &mut [f32],
    state: &mut [f32],
) {
    let (b, o, a, d, t) = (
        p.rows as usize,
        p.obs_dim as usize,
        p.act_dim as usize,
        p.out_dim as usize,
        p.t as usize,
    );
    let mut next = vec![0.0f32; o];
    for r in 0..b {
        let tr = t * b + r;
        let i = noise[p.n_slot as usize + tr].to_bits() as usize * d;
        let xi = &noise[p.n_xi as usize + tr * d..][..d];
        if p.probabilistic != 0 {
            tape[p.t_logvar as usize + tr * d..][..d].copy_from_slice(&logvar[i..i + d]);
        }
        let s = &tape[p.t_states as usize + tr * o..][..o];
        let act = &tape[p.t_act as usize + tr * a..][..a];
        for j in 0..o {
            next[j] = s[j] + mean[i + j] + path_sigma_xi(p, logvar_at(p, logvar, i + j), xi[j]);
        }
        let mut reward = 0.0f32;
        let mut counted = tape[p.t_alive as usize + tr] != 0.0;
        if counted {
            reward = if p.learn_reward != 0 {
                mean[i + o] + path_sigma_xi(p, logvar_at(p, logvar, i + o), xi[o])
            } else {
                task::reward_vjp(p.task, s, act, &next, None)
            };
            // Stops here, unrewarded; zeros keep the later passes finite.
            counted = reward.is_finite() && next.iter().all(|v| v.is_finite());
        }
        let alive = counted && !task::terminated(p.task, &next);
        if !counted {
            next.fill(0.0);
            reward = 0.0;
        }
        let flag = |v: bool| if v { 1.0 } else { 0.0 };
        tape[p.t_counted as usize + tr] = flag(counted);
        tape[p.t_reward as usize + tr] = reward;
        tape[p.t_alive as usize + tr + b] = flag(alive);
        tape[p.t_states as usize + (tr + b) * o..][..o].copy_from_slice(&next);
        state[r * o..(r + 1) * o].copy_from_slice(&next);
    }
}

/// A deterministic model's `logvar` buffer is not read.
fn logvar_at(p: &crate::backend::PathParams, logvar: &[f32], i: usize) -> f32 {
    if p.probabilistic != 0 {
        logvar[i]
    } else {
        0.0
    }
}

/// See [`crate::backend::Backend::path_model_back`]; `ModelPath::backward` before the
/// elites' VJP, with `path_loss`'s reward terms.
#[allow(clippy::too_many_arguments)]
pub fn path_model_back(
    p: &crate::backend::PathParams,
    noise: &[f32],
    tape: &[f32],
    back: &mut [f32],
    xg: &mut [f32],
    d_mean: &mut [f32],
    d_logvar: &mut [f32],
) {
    let (b, o, a, d, t) = (
        p.rows as usize,
        p.obs_dim as usize,
        p.act_dim as usize,
        p.out_dim as usize,
        p.t as usize,
    );
    let din = o + a;
    let c = p.w * p.disc;
    let learned = p.learn_reward != 0;
    let prob = p.probabilistic != 0;
    let table = &noise[p.n_rowof as usize + t * p.grouped as usize..];
    let (g_s, rest) = back.split_at_mut(b * o);
    let (g_sr, g_ar) = rest.split_at_mut(b * o);
    for i in 0..(p.members * p.per) as usize {
        let dm = &mut d_mean[i * d..(i + 1) * d];
        dm.fill(0.0);
        if prob {
            d_logvar[i * d..(i + 1) * d].fill(0.0);
        }
        let x = &mut xg[i * din..(i + 1) * din];
        let r = table[i].to_bits();
        if r == super::sac::EMPTY_SLOT {
            x.fill(0.0);
            continue;
        }
        let r = r as usize;
        let tr = t * b + r;
        let s = &tape[p.t_states as usize + tr * o..][..o];
        let act = &tape[p.t_act as usize + tr * a..][..a];
        x[..o].copy_from_slice(s);
        x[o..].copy_from_slice(act);
        let counted = tape[p.t_counted as usize + tr] != 0.0;
        let g_next = &mut g_s[r * o..(r + 1) * o];
        let (gsr, gar) = (&mut g_sr[r * o..(r + 1) * o], &mut g_ar[r * a..(r + 1) * a]);
        gsr.fill(0.0);
        gar.fill(0.0);
        let g_r = if counted && learned { c } else { 0.0 };
        if !counted {
            g_next.fill(0.0);
        } else if !learned {
            let next = &tape[p.t_states as usize + (tr + b) * o..][..o];
            task::reward_vjp(
                p.task,
                s,
                act,
                next,
                Some(task::RewardGrad {
                    w: c,
                    obs: gsr,
                    act: gar,
                    next: g_next,
                }),
            );
        }
        let xi = &noise[p.n_xi as usize + tr * d..][..d];
        let lv = &tape[p.t_logvar as usize + tr * d..][..d];
        let mut put = |j: usize, g: f32| {
            // A zero upstream gradient stays exactly zero, also where a dead row's
            // prediction overflowed (0·∞ would be NaN).
            if g == 0.0 {
                return;
            }
            dm[j] = g;
            if prob {
                // ∂(σ·ξ)/∂ log σ² = ½·σ·ξ.
                d_logvar[i * d + j] = g * 0.5 * (0.5 * lv[j]).exp() * xi[j];
            }
        };
        for (j, g) in g_next.iter().enumerate() {
            put(j, *g);
        }
        if learned {
            put(o, g_r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MAX_ELITES;

    /// A 3-layer SiLU ensemble for Pendulum-v1 (obs 3, act 1), with the model's reward
    /// (`learn` = 1) or without.
    fn pendulum_shape(ensemble: usize, hidden: usize, learn: u32) -> EnsembleShape {
        EnsembleShape {
            ensemble,
            in_dim: 4,
            out_dim: 3 + learn as usize,
            hidden,
            num_layers: 3,
            activation: crate::backend::Activation::Silu,
            probabilistic: true,
        }
    }

    /// A rollout call on Pendulum-v1 through three elites of `shape`, and its random actions
    /// (`np` candidates × `h` steps).
    #[allow(clippy::too_many_arguments)]
    fn pendulum_call(
        shape: &EnsembleShape,
        elites: [u32; 3],
        seed_lo: u32,
        step: u32,
        np: usize,
        k: usize,
        h: usize,
        prop: Propagation,
    ) -> (RolloutParams, Vec<f32>) {
        let mut all = [0u32; MAX_ELITES];
        all[..3].copy_from_slice(&elites);
        let p = RolloutParams {
            seed_lo,
            seed_hi: 0,
            step,
            population: np as u32,
            particles: k as u32,
            horizon: h as u32,
            obs_dim: 3,
            act_dim: 1,
            propagation: prop as u32,
            env: EnvId::Pendulum.code(),
            learn_reward: (shape.out_dim - 3) as u32,
            num_elites: 3,
            elites: all,
        };
        let actions = (0..np * h)
            .map(|i| 2.0 * normal(5, stream::DATA, i as u32, 0))
            .collect();
        (p, actions)
    }

    /// The fused f32 expectation (the input normalised once for every member, the means
    /// summed feature-major) gives the bits of the per-member forward it stands in for, with
    /// the model's reward and without, at widths and row counts that are not whole panels,
    /// in a tile reused from a larger call.
    #[test]
    fn the_fused_expectation_should_give_the_per_member_forward_bits() {
        if !crate::dense::fused_available() {
            eprintln!("skipped: the fused f32 kernel needs AVX-512F or AVX2 + FMA, absent here");
            return;
        }
        let mut reused = Tile::default();
        for (learn, hidden, n) in [
            (0u32, 37usize, 203usize),
            (1, 64, 70),
            (0, 1, 1),
            (1, 13, 33),
        ] {
            let h = 7usize;
            let shape = pendulum_shape(4, hidden, learn);
            let lay = shape.layout();
            let mut params = super::super::ensemble::init_params(&shape, 7);
            for lo in &lay.layers {
                let biases = &mut params[lo.bias..lo.bias + shape.ensemble * lo.fan_out];
                for (i, b) in biases.iter_mut().enumerate() {
                    *b = 0.2 * normal(3, stream::DATA, i as u32, lo.bias as u32);
                }
            }
            let (in_mean, in_std) = ([0.2f32, -0.1, 0.5, 0.0], [1.3f32, 0.7, 2.0, 1.0]);
            let (p, actions) =
                pendulum_call(&shape, [3, 0, 2], 1, 0, n, 1, h, Propagation::Expectation);
            let packed: Vec<_> = (0..shape.ensemble)
                .map(|e| pack_member_f32(&shape, &params, e))
                .collect();
            let model = |packed_f32| Model {
                shape: &shape,
                lay: shape.layout(),
                params: &params,
                in_mean: &in_mean,
                in_std: &in_std,
                packed: None,
                packed_f32,
                share_first_step: true,
            };
            let start = [0.6f32, -0.8, 1.5];
            let run = |m: &Model, tile: &mut Tile| {
                let mut out = vec![f32::NAN; n];
                run_tile(&p, m, &start, &actions, 0, n, tile, &mut out, None);
                assert!(out.iter().all(|r| r.is_finite()), "returns finite");
                out.iter().map(|r| r.to_bits()).collect::<Vec<u32>>()
            };
            let plain = run(&model(None), &mut Tile::default());
            let fused = run(&model(Some(&packed[..])), &mut reused);
            assert_eq!(
                fused, plain,
                "learned reward {learn}, width {hidden}, {n} rows"
            );
        }
    }

    /// One forward per (candidate, member) at step 0 gives the returns of one per row, bit
    /// for bit: TS1 and TS∞, with the model's reward and without, on every forward this CPU
    /// runs (the plain GEMM, the fused f32 kernel, bf16 products), in tiles that start and
    /// end inside a candidate's particles.
    #[test]
    fn sharing_the_first_step_should_not_change_a_return() {
        let (h, k, np) = (4usize, 6usize, 37usize);
        for (learn, prop) in [
            (0u32, Propagation::Ts1),
            (1, Propagation::Ts1),
            (1, Propagation::TsInf),
        ] {
            let shape = pendulum_shape(5, 19, learn);
            let params = super::super::ensemble::init_params(&shape, 3);
            let (in_mean, in_std) = ([0.2f32, -0.1, 0.5, 0.0], [1.3f32, 0.7, 2.0, 1.0]);
            let (p, actions) = pendulum_call(&shape, [4, 1, 2], 9, 2, np, k, h, prop);
            let f32_packs: Vec<_> = (0..shape.ensemble)
                .map(|e| pack_member_f32(&shape, &params, e))
                .collect();
            let bf16_packs: Vec<_> = (0..shape.ensemble)
                .map(|e| pack_member(&shape, &params, e))
                .collect();
            let mut forwards = vec![("plain", None, None), ("bf16", Some(&bf16_packs[..]), None)];
            if crate::dense::fused_available() {
                forwards.push(("fused f32", None, Some(&f32_packs[..])));
            }
            let start = [0.6f32, -0.8, 1.5];
            for (name, packed, packed_f32) in forwards {
                let run = |share: bool| {
                    let m = Model {
                        shape: &shape,
                        lay: shape.layout(),
                        params: &params,
                        in_mean: &in_mean,
                        in_std: &in_std,
                        packed,
                        packed_f32,
                        share_first_step: share,
                    };
                    let mut out = vec![f32::NAN; np * k];
                    // Tiles of 7 rows and 200: boundaries inside candidates (K = 6).
                    let (head, tail) = out.split_at_mut(7);
                    run_tile(
                        &p,
                        &m,
                        &start,
                        &actions,
                        0,
                        7,
                        &mut Tile::default(),
                        head,
                        None,
                    );
                    let mut tile = Tile::default();
                    run_tile(
                        &p,
                        &m,
                        &start,
                        &actions,
                        7,
                        np * k - 7,
                        &mut tile,
                        tail,
                        None,
                    );
                    assert!(out.iter().all(|r| r.is_finite()), "{name}: returns finite");
                    out.iter().map(|r| r.to_bits()).collect::<Vec<u32>>()
                };
                let (shared, per_row) = (run(true), run(false));
                assert_eq!(shared, per_row, "{name}, {prop:?}, learned reward {learn}");
                // The particles of a candidate differ (the noise), so sharing the forward did
                // not share the samples.
                assert_ne!(shared[0], shared[1], "{name}: particles should differ");
            }
        }
    }

    #[test]
    fn batched_pendulum_rollouts_should_match_the_reference() {
        let (n, h) = (203usize, 30usize);
        let p = RolloutParams {
            seed_lo: 0,
            seed_hi: 0,
            step: 0,
            population: n as u32,
            particles: 1,
            horizon: h as u32,
            obs_dim: 3,
            act_dim: 1,
            propagation: Propagation::Expectation as u32,
            env: EnvId::Pendulum.code(),
            learn_reward: 0,
            num_elites: 0,
            elites: [0; MAX_ELITES],
        };
        // Actions beyond the torque limit too (both clip them), from several start states,
        // one past the angle wrap and one at the speed limit.
        let actions: Vec<f32> = (0..n * h)
            .map(|i| 3.0 * crate::rng::normal(5, crate::rng::stream::DATA, i as u32, 0))
            .collect();
        for start in [[2.5f32, 0.3], [-3.1, -7.9], [9.0, 8.0], [0.0, 0.0]] {
            let (mut fast, mut reference) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            pendulum_true(&p, &start, &actions, &mut fast);
            rollout_true_reference(&p, &start, &actions, &mut reference);
            for (c, (f, r)) in fast.iter().zip(&reference).enumerate() {
                // Returns are sums of 30 costs of O(1–10); f32 state against f64 steps and
                // polynomial against libm sin: agreement to 1e-4 relative.
                assert!(
                    (f - r).abs() <= 1e-4 * r.abs().max(1.0),
                    "start {start:?}, candidate {c}: {f} vs {r}"
                );
            }
        }
    }
}
