// ensemble.wgsl — the ensemble MLP on the device: forward, Gaussian NLL head and the pieces
// of the hand-written backward. Twin of src/backend/cpu/ensemble.rs.
//
// The module is assembled by src/backend/wgpu/kernels.rs as
//     [`enable f16;`] `alias WeightT = f32|f16;` + common.wgsl + this file,
// so that the GEMM's weight operand can be stored in half precision (f16 variant, only on
// adapters with SHADER_F16) while every accumulation stays in f32.
//
// Every linear layer, forward and backward, is one strided, batched GEMM (`gemm`) with a
// fused epilogue; the CPU's three products map onto it by strides alone:
//     forward      z = a·W + b          A = a [rows, in]   B = W [in, out]
//     weight grad  dW = aᵀ·dz (+ wd·W)  A = aᵀ (row stride 1)  B = dz
//     input grad   dz' = (dz·Wᵀ) ⊙ act'(z')   B = Wᵀ (column stride fan_out)
// batched over ensemble members (workgroup z), or "grouped" for trajectory sampling, where a
// table maps each 64-row tile to the member that propagates it (rollout.wgsl sorts rows by
// member so that every tile has a single member).
//
// Tiling, chosen for discrete GPUs (not for lavapipe): 256 threads = 8 warps (NVIDIA) or 4
// wave64s (AMD), each computing a 4×2 register block of a 64×32 output tile, with 16-deep
// K slices staged in workgroup memory (6.4 KiB, well under the 16 KiB WebGPU guarantees, so
// several workgroups stay resident per SM/CU). The tile is deliberately narrow in N: the
// layers are 200 wide in PETS (7 tiles of 32 waste 11 %, tiles of 64 would waste 22 %) and
// the heads 2·obs wide, while M (rows: batch × members, or particles × candidates) is in the
// thousands. Operand loads pick the thread→element map by which stride is 1, so global
// reads are coalesced for both plain and transposed views.

struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    grouped: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    a_bs: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    b_bs: u32,
    c_off: u32,
    c_rs: u32,
    c_bs: u32,
    p_off: u32,
    x_off: u32,
    x_rs: u32,
    x_bs: u32,
    epilogue: u32,
    activation: u32,
    scale: f32,
    // Grouped mode: first entry of the tile table (TS1 has one table per horizon step).
    tiles_off: u32,
    _pad1: u32,
}

// Epilogues of `gemm` (GemmParams::epilogue), applied to acc = (A·B)[m, n]:
const EPI_STORE: u32 = 0u;        // C = acc
const EPI_BIAS: u32 = 1u;         // C = acc + X            (X = bias: x_rs = 0)
const EPI_BIAS_ACT: u32 = 2u;     // C = act(acc + X)
const EPI_BIAS_ACT_PRE: u32 = 3u; // P = acc + X (pre-activation, kept for backward); C = act(P)
const EPI_DECAY: u32 = 4u;        // C = acc + scale·X      (X = weights: coupled L2)
const EPI_ACT_GRAD: u32 = 5u;     // C = acc · act'(X)      (X = pre-activations)
const EPI_DIV: u32 = 6u;          // C = acc / X            (X = σ_in: x_rs = 0; the input gradient)

struct NormParams {
    count: u32,
    in_dim: u32,
    _pad0: u32,
    _pad1: u32,
}

struct HeadParams {
    // Rows (members × rows).
    count: u32,
    out_dim: u32,
    head_dim: u32,
    probabilistic: u32,
    max_off: u32,
    min_off: u32,
    // 1 / (rows · out_dim), the NLL's normalisation.
    scale: f32,
    _pad0: u32,
}

struct ReduceParams {
    rows: u32,
    cols: u32,
    in_off: u32,
    in_rs: u32,
    in_bs: u32,
    out_off: u32,
    out_bs: u32,
    // Columns below `split` get add_lo, the others add_hi.
    split: u32,
    scale: f32,
    add_lo: f32,
    add_hi: f32,
    // Columns per workgroup (a power of two ≤ 32); the other 256 / cols_per threads are
    // lanes splitting the rows.
    cols_per: u32,
}

struct ConvertParams {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> gp: GemmParams;
@group(0) @binding(1) var<uniform> nrm: NormParams;
@group(0) @binding(2) var<uniform> hd: HeadParams;
@group(0) @binding(3) var<uniform> red: ReduceParams;
@group(0) @binding(4) var<uniform> cvt: ConvertParams;

@group(1) @binding(0) var<storage, read> gemm_a: array<f32>;
@group(1) @binding(1) var<storage, read> gemm_b: array<WeightT>;
@group(1) @binding(2) var<storage, read_write> gemm_c: array<f32>;
@group(1) @binding(3) var<storage, read> gemm_x: array<f32>;
@group(1) @binding(4) var<storage, read_write> gemm_pre: array<f32>;
@group(1) @binding(5) var<storage, read> gemm_tiles: array<u32>;

@group(1) @binding(6) var<storage, read> norm_x: array<f32>;
@group(1) @binding(7) var<storage, read> norm_stats: array<f32>;
@group(1) @binding(8) var<storage, read_write> norm_out: array<f32>;

@group(1) @binding(9) var<storage, read> head_raw: array<f32>;
@group(1) @binding(10) var<storage, read> head_params: array<f32>;
@group(1) @binding(11) var<storage, read_write> head_mean: array<f32>;
@group(1) @binding(12) var<storage, read_write> head_logvar: array<f32>;
@group(1) @binding(13) var<storage, read> nll_target: array<f32>;
@group(1) @binding(14) var<storage, read_write> nll_dhead: array<f32>;
@group(1) @binding(15) var<storage, read_write> nll_row_loss: array<f32>;
@group(1) @binding(16) var<storage, read_write> nll_row_db: array<f32>;

@group(1) @binding(17) var<storage, read> red_in: array<f32>;
@group(1) @binding(18) var<storage, read_write> red_out: array<f32>;

@group(1) @binding(19) var<storage, read> cvt_in: array<f32>;
@group(1) @binding(20) var<storage, read_write> cvt_out: array<WeightT>;

@group(1) @binding(21) var<storage, read> vjp_dmean: array<f32>;
@group(1) @binding(22) var<storage, read> vjp_dlogvar: array<f32>;

const BM: u32 = 64u;
const BN: u32 = 32u;
const BK: u32 = 16u;

// Operand tiles, read as vectors in the inner loop: tile_a [BK][BM/4 + 1] of vec4 (a
// thread's 4 rows in one load), tile_b [BK][BN/2 + 1] of vec2 (its 2 columns in one load): 2
// workgroup loads per 8 FMAs instead of 6. The extra vector per k row staggers the banks: the
// staging writes of a row-major A (16 consecutive threads, consecutive k) land 68 words
// apart, 2 per bank, instead of 64 apart, all 16 in one bank; those of a transposed B
// (consecutive k) 34 apart, conflict-free, instead of 32.
const TA_LD: u32 = 17u; // BM / 4 + 1
const TB_LD: u32 = 17u; // BN / 2 + 1
var<workgroup> tile_a: array<vec4<f32>, 272>; // [BK][TA_LD]
var<workgroup> tile_b: array<vec2<f32>, 272>; // [BK][TB_LD]
var<workgroup> tile_batch: u32;

fn gemm_store(batch: u32, gm: u32, gn: u32, acc: f32) {
    if (gm >= gp.m || gn >= gp.n) {
        return;
    }
    let ci = gp.c_off + batch * gp.c_bs + gm * gp.c_rs + gn;
    let xi = gp.x_off + batch * gp.x_bs + gm * gp.x_rs + gn;
    var v = acc;
    switch gp.epilogue {
        case 1u: {
            v = v + gemm_x[xi];
        }
        case 2u: {
            v = activate(gp.activation, v + gemm_x[xi]);
        }
        case 3u: {
            let z = v + gemm_x[xi];
            gemm_pre[gp.p_off + batch * gp.c_bs + gm * gp.c_rs + gn] = z;
            v = activate(gp.activation, z);
        }
        case 4u: {
            v = v + gp.scale * gemm_x[xi];
        }
        case 5u: {
            v = v * activate_grad(gp.activation, gemm_x[xi]);
        }
        case 6u: {
            v = v / gemm_x[xi];
        }
        default: {}
    }
    gemm_c[ci] = v;
}

// C[batch] = epilogue(A[batch] · B[batch]); grid (⌈n/32⌉, ⌈m/64⌉ or tiles, batches).
@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    if (li == 0u) {
        var b = wg.z;
        if (gp.grouped != 0u) {
            b = gemm_tiles[gp.tiles_off + wg.y];
        }
        tile_batch = b;
    }
    // The member is the same for the whole workgroup: a uniform value, so the early exit
    // of unused tiles keeps the barriers below in uniform control flow.
    let batch = workgroupUniformLoad(&tile_batch);
    if (batch == NONE) {
        return;
    }
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    let tx = li % 16u;
    let ty = li / 16u;
    let a_base = gp.a_off + batch * gp.a_bs;
    let b_base = gp.b_off + batch * gp.b_bs;
    var c00 = 0.0;
    var c01 = 0.0;
    var c10 = 0.0;
    var c11 = 0.0;
    var c20 = 0.0;
    var c21 = 0.0;
    var c30 = 0.0;
    var c31 = 0.0;
    for (var k0 = 0u; k0 < gp.k; k0 += BK) {
        for (var q = 0u; q < 4u; q++) {
            let e = li + q * 256u;
            var mm = e % BM;
            var kk = e / BM;
            if (gp.a_cs == 1u) {
                mm = e / BK;
                kk = e % BK;
            }
            let gm = row0 + mm;
            let gk = k0 + kk;
            var v = 0.0;
            if (gm < gp.m && gk < gp.k) {
                v = gemm_a[a_base + gm * gp.a_rs + gk * gp.a_cs];
            }
            tile_a[kk * TA_LD + mm / 4u][mm % 4u] = v;
        }
        for (var q = 0u; q < 2u; q++) {
            let e = li + q * 256u;
            var nn = e / BK;
            var kk = e % BK;
            if (gp.b_cs == 1u) {
                nn = e % BN;
                kk = e / BN;
            }
            let gn = col0 + nn;
            let gk = k0 + kk;
            var v = 0.0;
            if (gn < gp.n && gk < gp.k) {
                v = f32(gemm_b[b_base + gk * gp.b_rs + gn * gp.b_cs]);
            }
            tile_b[kk * TB_LD + nn / 2u][nn % 2u] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a = tile_a[kk * TA_LD + ty];
            let b = tile_b[kk * TB_LD + tx];
            c00 = c00 + a.x * b.x;
            c01 = c01 + a.x * b.y;
            c10 = c10 + a.y * b.x;
            c11 = c11 + a.y * b.y;
            c20 = c20 + a.z * b.x;
            c21 = c21 + a.z * b.y;
            c30 = c30 + a.w * b.x;
            c31 = c31 + a.w * b.y;
        }
        workgroupBarrier();
    }
    let r = row0 + ty * 4u;
    let c = col0 + tx * 2u;
    gemm_store(batch, r, c, c00);
    gemm_store(batch, r, c + 1u, c01);
    gemm_store(batch, r + 1u, c, c10);
    gemm_store(batch, r + 1u, c + 1u, c11);
    gemm_store(batch, r + 2u, c, c20);
    gemm_store(batch, r + 2u, c + 1u, c21);
    gemm_store(batch, r + 3u, c, c30);
    gemm_store(batch, r + 3u, c + 1u, c31);
}

// xn = (x − μ_in) / σ_in over [count, in_dim]; norm_stats = [μ (in), σ (in)].
@compute @workgroup_size(256)
fn normalize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= nrm.count * nrm.in_dim) {
        return;
    }
    let j = i % nrm.in_dim;
    norm_out[i] = (norm_x[i] - norm_stats[j]) / norm_stats[nrm.in_dim + j];
}

// Split the raw head [count, head_dim] into the mean and the soft-bounded log-variance.
@compute @workgroup_size(256)
fn head_split(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let idx = flat_index(wg, nwg, li);
    if (idx >= hd.count * hd.out_dim) {
        return;
    }
    let i = idx / hd.out_dim;
    let j = idx % hd.out_dim;
    let d = hd.out_dim;
    head_mean[idx] = head_raw[i * hd.head_dim + j];
    if (hd.probabilistic != 0u) {
        head_logvar[idx] = soft_logvar(head_raw[i * hd.head_dim + d + j],
                                       head_params[hd.max_off + j], head_params[hd.min_off + j]);
    }
}

// One row of the Gaussian NLL (or MSE) and its gradient with respect to the raw head,
// through the soft log-variance bounds (cpu::ensemble::head_backward_row): writes d head,
// the row's unnormalised loss, and its contribution to d max_logvar / d min_logvar.
@compute @workgroup_size(256)
fn nll_head(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= hd.count) {
        return;
    }
    let d = hd.out_dim;
    let h = hd.head_dim;
    let scale = hd.scale;
    var sum = 0.0;
    for (var j = 0u; j < d; j++) {
        let mu = head_raw[i * h + j];
        let diff = mu - nll_target[i * d + j];
        if (hd.probabilistic != 0u) {
            let hi = head_params[hd.max_off + j];
            let lo = head_params[hd.min_off + j];
            let u = hi - head_raw[i * h + d + j];
            let lv1 = hi - softplus_f(u);
            let w = lv1 - lo;
            let lv = lo + softplus_f(w);
            let inv = exp_f(-lv);
            sum = sum + diff * diff * inv + lv;
            let dlv = (1.0 - diff * diff * inv) * scale;
            let sw = sigmoid_f(w);
            let dlv1 = dlv * sw;
            let su = sigmoid_f(u);
            nll_dhead[i * h + j] = 2.0 * diff * inv * scale;
            nll_dhead[i * h + d + j] = dlv1 * su;
            nll_row_db[i * 2u * d + j] = dlv1 * (1.0 - su);
            nll_row_db[i * 2u * d + d + j] = dlv * (1.0 - sw);
        } else {
            sum = sum + diff * diff;
            nll_dhead[i * h + j] = 2.0 * diff * scale;
        }
    }
    nll_row_loss[i] = sum;
}

// The vector–Jacobian product's head for probabilistic ensembles: from upstream gradients on
// the mean and the soft-bounded log-variance (vjp_dmean, vjp_dlogvar [count, out]) to the raw
// head (nll_dhead) and each row's contribution to d max_logvar / d min_logvar (nll_row_db);
// the same chain rule as nll_head, without a loss (cpu::ensemble::backward).
@compute @workgroup_size(256)
fn vjp_head(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= hd.count) {
        return;
    }
    let d = hd.out_dim;
    let h = hd.head_dim;
    for (var j = 0u; j < d; j++) {
        let hi = head_params[hd.max_off + j];
        let lo = head_params[hd.min_off + j];
        let u = hi - head_raw[i * h + d + j];
        let w = hi - softplus_f(u) - lo;
        let dlv = vjp_dlogvar[i * d + j];
        let sw = sigmoid_f(w);
        let dlv1 = dlv * sw;
        let su = sigmoid_f(u);
        nll_dhead[i * h + j] = vjp_dmean[i * d + j];
        nll_dhead[i * h + d + j] = dlv1 * su;
        nll_row_db[i * 2u * d + j] = dlv1 * (1.0 - su);
        nll_row_db[i * 2u * d + d + j] = dlv * (1.0 - sw);
    }
}

var<workgroup> red_scratch: array<f32, 256>;

// out[b, c] = scale · Σ_r in[b, r, c] + (c < split ? add_lo : add_hi); grid
// (⌈cols / cols_per⌉, batches). Used for bias gradients (Σ_rows dz), the per-member loss and
// the log-variance bound gradients. Lanes stride the rows so that neighbouring threads read
// neighbouring columns (coalesced), then a tree in workgroup memory sums the lanes.
@compute @workgroup_size(256)
fn reduce_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let cp = red.cols_per;
    let lanes = 256u / cp;
    let col = wg.x * cp + li % cp;
    let lane = li / cp;
    let b = wg.y;
    var s = 0.0;
    if (col < red.cols) {
        for (var r = lane; r < red.rows; r += lanes) {
            s = s + red_in[red.in_off + b * red.in_bs + r * red.in_rs + col];
        }
    }
    red_scratch[li] = s;
    workgroupBarrier();
    for (var w = lanes / 2u; w > 0u; w = w / 2u) {
        if (lane < w) {
            red_scratch[li] = red_scratch[li] + red_scratch[li + w * cp];
        }
        workgroupBarrier();
    }
    if (lane == 0u && col < red.cols) {
        red_out[red.out_off + b * red.out_bs + col] =
            red.scale * red_scratch[li] + select(red.add_hi, red.add_lo, col < red.split);
    }
}

// The weight copy the GEMM reads in the half-precision variant (an f32 copy in the other).
@compute @workgroup_size(256)
fn weights_convert(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= cvt.len) {
        return;
    }
    cvt_out[i] = WeightT(cvt_in[i]);
}
