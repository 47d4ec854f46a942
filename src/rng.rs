//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
//! counter-based generator every backend implements identically (`kernels/common.cuh`,
//! `shaders/common.wgsl` mirror this file).
//!
//! # Mapping of (seed, stream, element, step) to a 128-bit block
//!
//! ```text
//! key     = [seed as u32, (seed >> 32) as u32]
//! counter = [element, step, stream, word3]
//! block   = philox4x32_10(counter, key)      // four u32 words
//! ```
//!
//! `word3` is 0 except for the rejection attempts of [`truncated_normal`]. Every sample is a pure
//! function of its coordinates: no state is carried from one draw to the next, so a GPU thread
//! computes element `i` of step `t` without knowing what the others drew.
//!
//! Conversions (all exact in f32, hence bit-identical on every backend):
//! - [`u32_to_unit`]: `((x >> 9) + 0.5) · 2⁻²³`, strictly inside (0, 1); the 23 high bits keep
//!   `k + 0.5` exactly representable in a 24-bit mantissa.
//!
//! The normal transforms use `ln`, `sqrt`, `cos`: the CPU uses the polynomial versions of
//! `crate::fastmath` (≤ 3e-7 relative), device math libraries their own, so parity tests
//! compare normals with a tolerance while uniforms and integers agree bit for bit.

/// Philox4x32 multipliers and Weyl key increments (Random123, philox.h).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Streams used by the library, one per independent purpose, so that two consumers with the
/// same seed never read the same counters.
pub mod stream {
    pub const INIT_WEIGHTS: u32 = 1;
    pub const BOOTSTRAP: u32 = 2;
    pub const SHUFFLE: u32 = 3;
    pub const HOLDOUT: u32 = 4;
    pub const CEM_SAMPLE: u32 = 5;
    pub const TS_MEMBER: u32 = 6;
    pub const TS_NOISE: u32 = 7;
    pub const ENV_RESET: u32 = 8;
    pub const RANDOM_ACTION: u32 = 9;
    pub const DATA: u32 = 10;
    /// SAC's actor and critic initial weights.
    pub const INIT_POLICY: u32 = 11;
    /// The reparameterisation noise of a SAC gradient step (step = update index).
    pub const SAC_NOISE: u32 = 12;
    /// Exploration noise of actions sent to the environment (step = env step).
    pub const POLICY_ACT: u32 = 13;
    /// Replay minibatch indices (step = update index).
    pub const REPLAY: u32 = 14;
    /// MBPO: start states of the branched rollouts (step = rollout batch index).
    pub const MBPO_START: u32 = 15;
    /// MBPO: the policy's noise inside a branched rollout.
    pub const MBPO_ROLLOUT: u32 = 16;
    /// MBPO: whether an update reads real or model data.
    pub const MBPO_MIX: u32 = 17;
    /// MBPO: the elite member of each rollout row at each step (TS1).
    pub const MBPO_MEMBER: u32 = 18;
    /// MBPO: the Gaussian noise of each predicted output.
    pub const MBPO_NOISE: u32 = 19;
    /// MAAC: the policy and model noise of a path batch (step = update index).
    pub const MAAC_PATH: u32 = 20;
    /// MAAC: the member of each path row at each step (step = update index).
    pub const MAAC_MEMBER: u32 = 21;
    /// SVG(∞): the episodes of a policy step (step = update index).
    pub const SVG_EPISODES: u32 = 22;
    /// MPPI: the standard normals z of every candidate's noise (step = planner counter).
    pub const MPPI_SAMPLE: u32 = 23;
    /// iCEM: the Fourier coefficients of every candidate's coloured noise.
    pub const ICEM_NOISE: u32 = 24;
}

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = (a as u64) * (b as u64);
    ((p >> 32) as u32, p as u32)
}

/// Ten rounds of Philox4x32 on `ctr` under `key`.
#[inline]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = ctr;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The block at coordinates (seed, stream, element, step), `word3` = 0.
#[inline]
pub fn block(seed: u64, stream: u32, element: u32, step: u32) -> [u32; 4] {
    philox4x32_10(
        [element, step, stream, 0],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// Exact map of a u32 to (0, 1): `((x >> 9) + 0.5) · 2⁻²³`.
#[inline(always)]
pub fn u32_to_unit(x: u32) -> f32 {
    ((x >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// Uniform in (0, 1) at (seed, stream, element, step): word 0 of the block.
#[inline]
pub fn uniform(seed: u64, stream: u32, element: u32, step: u32) -> f32 {
    u32_to_unit(block(seed, stream, element, step)[0])
}

/// Integer uniform in `0..n` (n ≥ 1) by a 64-bit multiply of word 0, bias < n / 2³².
#[inline]
pub fn below(seed: u64, stream: u32, element: u32, step: u32, n: u32) -> u32 {
    ((block(seed, stream, element, step)[0] as u64 * n as u64) >> 32) as u32
}

/// Box–Muller on two words of a block: √(−2 ln u₁)·cos(2π u₂), with the branch-free ln and
/// cos of [`crate::fastmath`] (relative error ~3e-7) so that sampling loops vectorise.
#[inline(always)]
fn box_muller(a: u32, b: u32) -> f32 {
    let u1 = u32_to_unit(a);
    let u2 = u32_to_unit(b);
    (-2.0 * crate::fastmath::ln_f32(u1)).sqrt() * crate::fastmath::cos_2pi_f32(u2)
}

/// Standard normal at (seed, stream, element, step). Element `i` uses block `i / 2`, words
/// (0, 1) for even `i` and (2, 3) for odd `i`, so one block feeds two consecutive elements.
#[inline]
pub fn normal(seed: u64, stream: u32, element: u32, step: u32) -> f32 {
    let w = block(seed, stream, element >> 1, step);
    if element & 1 == 0 {
        box_muller(w[0], w[1])
    } else {
        box_muller(w[2], w[3])
    }
}

/// `out[i] = normal(seed, stream, first + i, step)` for every i. One Philox block feeds two
/// consecutive elements (2k and 2k + 1), so the loop runs over blocks, computing each once,
/// written branch-free so the compiler vectorises Philox and Box–Muller across blocks; an odd
/// first element and an even last one are drawn alone.
#[inline]
pub fn normals(seed: u64, stream: u32, first: u32, step: u32, out: &mut [f32]) {
    let key = [seed as u32, (seed >> 32) as u32];
    let n = out.len();
    let mut i = 0;
    if n > 0 && first & 1 == 1 {
        out[0] = normal(seed, stream, first, step);
        i = 1;
    }
    let pairs = (n - i) / 2;
    let base = first.wrapping_add(i as u32) >> 1;
    // Blocks in groups: words into arrays first, the transforms after, so both loops are
    // plain element-wise loops.
    const G: usize = 64;
    let (mut a, mut b) = ([0u32; 2 * G], [0u32; 2 * G]);
    let mut done = 0;
    while done < pairs {
        let g = (pairs - done).min(G);
        for k in 0..g {
            let w = philox4x32_10([base.wrapping_add((done + k) as u32), step, stream, 0], key);
            a[2 * k] = w[0];
            b[2 * k] = w[1];
            a[2 * k + 1] = w[2];
            b[2 * k + 1] = w[3];
        }
        let dst = &mut out[i + 2 * done..i + 2 * (done + g)];
        for (o, (x, y)) in dst.iter_mut().zip(a.iter().zip(&b)) {
            *o = box_muller(*x, *y);
        }
        done += g;
    }
    if i + 2 * pairs < n {
        out[n - 1] = normal(seed, stream, first.wrapping_add((n - 1) as u32), step);
    }
}

/// Attempts of the rejection sampler before falling back to clamping; the chance that all of
/// them land outside ±2σ is 0.0455¹⁶ ≈ 3·10⁻²², i.e. never in practice.
pub const TRUNC_ATTEMPTS: u32 = 16;

/// Standard normal truncated to [-2, 2], as PETS/mbrl-lib's CEM samples (`truncated_normal_`
/// redraws values outside two standard deviations). Attempt `j` reads the block with
/// `word3 = j`, words (0, 1) via Box–Muller; after [`TRUNC_ATTEMPTS`] it clamps.
#[inline]
pub fn truncated_normal(seed: u64, stream: u32, element: u32, step: u32) -> f32 {
    let key = [seed as u32, (seed >> 32) as u32];
    let mut z = 0.0f32;
    for attempt in 0..TRUNC_ATTEMPTS {
        let w = philox4x32_10([element, step, stream, attempt], key);
        z = box_muller(w[0], w[1]);
        if (-2.0..=2.0).contains(&z) {
            return z;
        }
    }
    z.clamp(-2.0, 2.0)
}

/// `out[i] = truncated_normal(seed, stream, first + i, step)` for every i: every element's
/// first attempt in a branch-free loop over groups (so Philox and Box–Muller vectorise across
/// elements, as in [`normals`]), then the ≈ 4.6 % that land outside ±2 redrawn one by one by
/// [`truncated_normal`] itself, so each value is the scalar function's.
#[inline]
pub fn truncated_normals(seed: u64, stream: u32, first: u32, step: u32, out: &mut [f32]) {
    let key = [seed as u32, (seed >> 32) as u32];
    const G: usize = 64;
    let (mut a, mut b) = ([0u32; G], [0u32; G]);
    for (g, chunk) in out.chunks_mut(G).enumerate() {
        let base = first.wrapping_add((g * G) as u32);
        for (k, (x, y)) in a.iter_mut().zip(b.iter_mut()).enumerate().take(chunk.len()) {
            let w = philox4x32_10([base.wrapping_add(k as u32), step, stream, 0], key);
            *x = w[0];
            *y = w[1];
        }
        for (o, (x, y)) in chunk.iter_mut().zip(a.iter().zip(&b)) {
            *o = box_muller(*x, *y);
        }
        for (k, o) in chunk.iter_mut().enumerate() {
            if !(-2.0..=2.0).contains(o) {
                *o = truncated_normal(seed, stream, base.wrapping_add(k as u32), step);
            }
        }
    }
}

/// A small sequential convenience generator over the same blocks, for host-side code that
/// just needs "the next number" (bootstrap indices, weight init). Draw `n` of stream `s` is
/// element `n` of step `step`, so it is still a pure function of its coordinates.
#[derive(Clone, Debug)]
pub struct Philox {
    seed: u64,
    stream: u32,
    step: u32,
    next: u32,
}

impl Philox {
    pub fn new(seed: u64, stream: u32, step: u32) -> Self {
        Self {
            seed,
            stream,
            step,
            next: 0,
        }
    }
    fn advance(&mut self) -> u32 {
        let e = self.next;
        self.next = self.next.wrapping_add(1);
        if self.next == 0 {
            // 2³² draws exhausted on this step: move to the next step rather than repeat.
            self.step = self.step.wrapping_add(1);
        }
        e
    }
    pub fn uniform(&mut self) -> f32 {
        let e = self.advance();
        uniform(self.seed, self.stream, e, self.step)
    }
    pub fn normal(&mut self) -> f32 {
        let e = self.advance();
        normal(self.seed, self.stream, e, self.step)
    }
    pub fn truncated_normal(&mut self) -> f32 {
        let e = self.advance();
        truncated_normal(self.seed, self.stream, e, self.step)
    }
    /// Uniform integer in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        let e = self.advance();
        below(self.seed, self.stream, e, self.step, n as u32) as usize
    }
    /// Fisher–Yates shuffle driven by this generator.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batched truncated normals are the scalar ones, for odd starts and lengths across
    /// group edges, rejected elements included.
    #[test]
    fn truncated_normals_should_equal_the_scalar_draws() {
        for (first, n) in [
            (0u32, 1usize),
            (1, 63),
            (7, 64),
            (130, 201),
            (u32::MAX - 5, 9),
        ] {
            let mut v = vec![f32::NAN; n];
            truncated_normals(42, 3, first, 9, &mut v);
            for (i, x) in v.iter().enumerate() {
                let want = truncated_normal(42, 3, first.wrapping_add(i as u32), 9);
                assert_eq!(x.to_bits(), want.to_bits(), "first {first}, element {i}");
            }
        }
        // Rejections happened: some first attempts fell outside ±2 (about 4.6 %).
        let key = [42, 0];
        let rejected = (0..201u32)
            .filter(|e| {
                let w = philox4x32_10([130 + e, 9, 3, 0], key);
                !(-2.0..=2.0).contains(&box_muller(w[0], w[1]))
            })
            .count();
        assert!(rejected > 0);
    }

    /// Known-answer vectors from Random123's `kat_vectors` (philox4x32, 10 rounds).
    #[test]
    fn philox_should_match_random123_known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn unit_map_should_stay_strictly_inside_zero_one() {
        assert!(u32_to_unit(0) > 0.0);
        assert!(u32_to_unit(u32::MAX) < 1.0);
        assert_eq!(u32_to_unit(0), 0.5 / 8_388_608.0);
    }

    #[test]
    fn samples_should_have_the_right_moments() {
        let n = 200_000u32;
        let (mut s, mut s2, mut t, mut t2, mut u) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for i in 0..n {
            let z = normal(7, 1, i, 3) as f64;
            s += z;
            s2 += z * z;
            let y = truncated_normal(7, 2, i, 3) as f64;
            assert!((-2.0..=2.0).contains(&y));
            t += y;
            t2 += y * y;
            u += uniform(7, 4, i, 0) as f64;
        }
        let nf = n as f64;
        // Standard errors at n = 2e5: mean 0.0022, variance 0.0032; 5σ bounds below.
        assert!((s / nf).abs() < 0.012, "normal mean {}", s / nf);
        assert!((s2 / nf - 1.0).abs() < 0.016, "normal var {}", s2 / nf);
        assert!((t / nf).abs() < 0.012);
        // Variance of N(0,1) truncated to ±2: 1 − 2·2·φ(2)/(Φ(2)−Φ(−2)) = 0.7737.
        assert!(
            (t2 / nf - 0.7737).abs() < 0.012,
            "truncated var {}",
            t2 / nf
        );
        assert!((u / nf - 0.5).abs() < 0.004);
    }

    #[test]
    fn draws_should_be_pure_functions_of_their_coordinates() {
        let mut g = Philox::new(42, 9, 5);
        let a: Vec<f32> = (0..10).map(|_| g.normal()).collect();
        let b: Vec<f32> = (0..10u32).map(|i| normal(42, 9, i, 5)).collect();
        assert_eq!(a, b);
        assert_ne!(normal(42, 9, 0, 5), normal(43, 9, 0, 5));
        assert_ne!(normal(42, 9, 0, 5), normal(42, 10, 0, 5));
        assert_ne!(normal(42, 9, 0, 5), normal(42, 9, 0, 6));
    }

    #[test]
    fn batched_normals_should_equal_the_scalar_ones() {
        // Odd and even first elements and lengths, and more than one group of blocks.
        for (first, n) in [
            (11u32, 37usize),
            (10, 37),
            (10, 36),
            (11, 36),
            (3, 0),
            (5, 1),
            (0, 301),
        ] {
            let mut v = vec![f32::NAN; n];
            normals(9, 7, first, 4, &mut v);
            for (i, z) in v.iter().enumerate() {
                assert_eq!(
                    *z,
                    normal(9, 7, first + i as u32, 4),
                    "first {first}, i {i}"
                );
            }
        }
    }

    #[test]
    fn below_should_cover_the_range_uniformly() {
        let mut counts = [0usize; 7];
        let mut g = Philox::new(1, 1, 0);
        for _ in 0..70_000 {
            counts[g.below(7)] += 1;
        }
        // Each count ~ Binomial(70000, 1/7): mean 10000, sd 92; 6 sd bound.
        for c in counts {
            assert!((c as i64 - 10_000).abs() < 560, "{counts:?}");
        }
    }
}
