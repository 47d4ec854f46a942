//! The SAC stages on the device (`shaders/sac.wgsl`); the specification is
//! `backend/cpu/sac.rs`. Each stage is one dispatch.
use super::kernels::{self, Spec};
use super::{word, WgpuBackend, WgpuBuf};
use crate::backend::{check, PathParams, SacParams};
use crate::Result;

/// Record and run one dispatch of `spec` over `bufs` with grid `grid` (None: ⌈rows/64⌉).
fn run(
    be: &WgpuBackend,
    spec: &Spec,
    p: &SacParams,
    bufs: &[&wgpu::Buffer],
    grid: Option<[u32; 3]>,
) -> Result<()> {
    word(
        "SAC minibatch values",
        2 * p.rows as usize * (p.obs_dim + p.act_dim) as usize,
    )?;
    let grid = grid.unwrap_or([(p.rows as usize).div_ceil(64) as u32, 1, 1]);
    be.dispatch_one(spec, p, bufs, grid)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn squash(
    be: &WgpuBackend,
    p: &SacParams,
    head: &WgpuBuf,
    eps: &WgpuBuf,
    obs: &WgpuBuf,
    sb: &WgpuBuf,
    act_in: &WgpuBuf,
    logp: &mut WgpuBuf,
    x: &mut WgpuBuf,
) -> Result<()> {
    let lens = [
        head.len, eps.len, obs.len, sb.len, act_in.len, logp.len, x.len,
    ];
    check::sac_squash(p, lens)?;
    let bufs = [
        &head.buf,
        &eps.buf,
        &obs.buf,
        &sb.buf,
        &act_in.buf,
        &logp.buf,
        &x.buf,
    ];
    run(be, &kernels::SAC_SQUASH, p, &bufs, None)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn critic_grad(
    be: &WgpuBackend,
    p: &SacParams,
    q_next: &WgpuBuf,
    logp_next: &WgpuBuf,
    reward: &WgpuBuf,
    mask: &WgpuBuf,
    log_alpha: &WgpuBuf,
    q: &WgpuBuf,
    dq: &mut WgpuBuf,
    stats: &mut WgpuBuf,
) -> Result<()> {
    let all = [q_next, logp_next, reward, mask, log_alpha, q, &*dq, &*stats];
    check::sac_critic_grad(p, all.map(|b| b.len))?;
    let bufs = all.map(|b| &b.buf);
    run(be, &kernels::SAC_CRITIC_GRAD, p, &bufs, Some([1, 1, 1]))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn actor_grad(
    be: &WgpuBackend,
    p: &SacParams,
    q: &WgpuBuf,
    logp: &WgpuBuf,
    log_alpha: &WgpuBuf,
    dq: &mut WgpuBuf,
    alpha_grad: &mut WgpuBuf,
    stats: &mut WgpuBuf,
) -> Result<()> {
    let all = [q, logp, log_alpha, &*dq, &*alpha_grad, &*stats];
    check::sac_actor_grad(p, all.map(|b| b.len))?;
    let bufs = all.map(|b| &b.buf);
    run(be, &kernels::SAC_ACTOR_GRAD, p, &bufs, Some([1, 1, 1]))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn squash_backward(
    be: &WgpuBackend,
    p: &SacParams,
    head: &WgpuBuf,
    eps: &WgpuBuf,
    sb: &WgpuBuf,
    dx: &WgpuBuf,
    log_alpha: &WgpuBuf,
    d_head: &mut WgpuBuf,
) -> Result<()> {
    let all = [head, eps, sb, dx, log_alpha, &*d_head];
    check::sac_squash_backward(p, all.map(|b| b.len))?;
    let bufs = all.map(|b| &b.buf);
    run(be, &kernels::SAC_SQUASH_BACKWARD, p, &bufs, None)
}

pub(super) fn noise(
    be: &WgpuBackend,
    p: &SacParams,
    eps_next: &mut WgpuBuf,
    eps_pi: &mut WgpuBuf,
) -> Result<()> {
    check::sac_noise(p, [eps_next.len, eps_pi.len])?;
    let grid = be.gpu.grid_1d(p.rows as usize * p.act_dim as usize)?;
    run(
        be,
        &kernels::SAC_NOISE,
        p,
        &[&eps_next.buf, &eps_pi.buf],
        Some(grid),
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn minibatch(
    be: &WgpuBackend,
    p: &SacParams,
    ring: &WgpuBuf,
    obs: &mut WgpuBuf,
    act: &mut WgpuBuf,
    reward: &mut WgpuBuf,
    next_obs: &mut WgpuBuf,
    mask: &mut WgpuBuf,
) -> Result<()> {
    let all = [ring, &*obs, &*act, &*reward, &*next_obs, &*mask];
    check::sac_minibatch(p, all.map(|b| b.len))?;
    let bufs = all.map(|b| &b.buf);
    run(be, &kernels::SAC_MINIBATCH, p, &bufs, None)
}

pub(super) fn polyak(
    be: &WgpuBackend,
    p: &SacParams,
    target: &mut WgpuBuf,
    online: &WgpuBuf,
) -> Result<()> {
    check::polyak(p, [target.len, online.len])?;
    let n = p.len as usize;
    word("parameter count", n)?;
    if n == 0 {
        return Ok(());
    }
    let grid = be.gpu.grid_1d(n)?;
    run(
        be,
        &kernels::POLYAK,
        p,
        &[&target.buf, &online.buf],
        Some(grid),
    )
}

// ---- The path gradient's policy stages (`cpu/sac.rs`'s `path_*`); the member tables are
// not checked here (they live on the device): the shaders treat an out-of-range slot or row
// as empty.

/// One dispatch of a path stage over `n` invocations (256-wide workgroups).
fn run_path(
    be: &WgpuBackend,
    spec: &Spec,
    p: &PathParams,
    bufs: &[&wgpu::Buffer],
    n: usize,
) -> Result<()> {
    word("path stage invocations", n)?;
    let grid = be.gpu.grid_1d(n)?;
    be.dispatch_one(spec, p, bufs, grid)
}

pub(super) fn path_squash(be: &WgpuBackend, p: &PathParams, all: [&WgpuBuf; 5]) -> Result<()> {
    check::path_squash(p, all.map(|b| b.len))?;
    let slots = if p.t < p.horizon {
        (p.members * p.per) as usize
    } else {
        0
    };
    let n = (p.rows as usize).max(slots);
    run_path(be, &kernels::PATH_SQUASH, p, &all.map(|b| &b.buf), n)
}

pub(super) fn path_terminal(be: &WgpuBackend, p: &PathParams, all: [&WgpuBuf; 7]) -> Result<()> {
    check::path_terminal(p, all.map(|b| b.len))?;
    // One workgroup: the sums over rows and steps meet in a fixed tree (sac.wgsl).
    be.dispatch_one(&kernels::PATH_TERMINAL, p, &all.map(|b| &b.buf), [1, 1, 1])
}

pub(super) fn path_actor_back(be: &WgpuBackend, p: &PathParams, all: [&WgpuBuf; 6]) -> Result<()> {
    check::path_actor_back(p, all.map(|b| b.len))?;
    let rows = p.rows as usize;
    run_path(be, &kernels::PATH_ACTOR_BACK, p, &all.map(|b| &b.buf), rows)
}

pub(super) fn path_accumulate(be: &WgpuBackend, p: &PathParams, all: [&WgpuBuf; 4]) -> Result<()> {
    check::path_accumulate(p, all.map(|b| b.len))?;
    if p.step_grad_norm > 0.0 {
        // One workgroup: the step's norm is a sum over all of g_step (sac.wgsl).
        return be.dispatch_one(
            &kernels::PATH_ACCUMULATE,
            p,
            &all.map(|b| &b.buf),
            [1, 1, 1],
        );
    }
    let n = (p.len as usize).max(p.rows as usize * p.obs_dim as usize);
    run_path(be, &kernels::PATH_ACCUMULATE, p, &all.map(|b| &b.buf), n)
}
