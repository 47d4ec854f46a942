//! NumPy's `np.random.Generator(PCG64(SeedSequence(seed)))`, the generator Gymnasium's
//! `reset(seed=…)` builds (`gymnasium.utils.seeding.np_random`), reproduced bit for bit for
//! the draws the MuJoCo tasks' resets make: `uniform(low, high, size)` and
//! `standard_normal(size)`. With it a native MuJoCo task started from `reset(seed)` is in the
//! state Gymnasium's is for the same seed, so `--env halfcheetah` and
//! `--env gym:HalfCheetah-v5` begin every episode alike.
//!
//! Three parts, each as NumPy defines it (checked against NumPy 2.4 in `tests/np_random.rs`):
//! - `SeedSequence` (O'Neill's `seed_seq` variant): the seed's 32-bit words hashed into a pool
//!   of four words, then `generate_state(4, uint64)` — eight hashed words read as four
//!   little-endian u64.
//! - PCG64: a 128-bit LCG with PCG's default multiplier, seeded as `pcg_setseq_128_srandom_r`
//!   (state = (w0 << 64 | w1), increment from (w2 << 64 | w3)), advanced before each output,
//!   output XSL-RR (`rotr(hi ^ lo, hi >> 58)`); doubles are `(u >> 11) · 2⁻⁵³`.
//! - The 256-strip ziggurat of `random_standard_normal`, with NumPy's tables
//!   ([`super::ziggurat`]), its bit layout (8 bits strip, 1 bit sign, 52 bits magnitude) and
//!   its tail (Marsaglia's exponential rejection with `log1p(−U)`).

use super::ziggurat::{FI, KI, NOR_INV_R, NOR_R, WI};

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;
const POOL_SIZE: usize = 4;

/// PCG's default 128-bit multiplier (`PCG_DEFAULT_MULTIPLIER_128`).
const PCG_MULT: u128 = (2_549_297_995_355_413_924u128 << 64) | 4_865_540_595_714_422_341u128;

/// The entropy pool of `np.random.SeedSequence(seed)` for a non-negative integer seed with no
/// spawn key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedSequence {
    pool: [u32; POOL_SIZE],
}

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut v = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    v = v.wrapping_mul(*hash_const);
    v ^ (v >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let r = MIX_MULT_L
        .wrapping_mul(x)
        .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    r ^ (r >> XSHIFT)
}

impl SeedSequence {
    pub fn new(seed: u64) -> Self {
        // The integer's 32-bit words, lowest first; zero is one word (`_int_to_uint32_array`).
        let entropy: Vec<u32> = if seed >> 32 == 0 {
            vec![seed as u32]
        } else {
            vec![seed as u32, (seed >> 32) as u32]
        };
        let mut hash_const = INIT_A;
        let mut pool = [0u32; POOL_SIZE];
        for (i, p) in pool.iter_mut().enumerate() {
            *p = hashmix(entropy.get(i).copied().unwrap_or(0), &mut hash_const);
        }
        for src in 0..POOL_SIZE {
            for dst in 0..POOL_SIZE {
                if src != dst {
                    let h = hashmix(pool[src], &mut hash_const);
                    pool[dst] = mix(pool[dst], h);
                }
            }
        }
        // A u64 seed has at most two words, never more than the pool: no words remain to mix.
        SeedSequence { pool }
    }

    /// `generate_state(n, uint64)`: 2n hashed words of the cycled pool, pairs read
    /// little-endian.
    pub fn generate_state_u64(&self, n: usize) -> Vec<u64> {
        let mut hash_const = INIT_B;
        let words: Vec<u32> = (0..2 * n)
            .map(|i| {
                let mut v = self.pool[i % POOL_SIZE] ^ hash_const;
                hash_const = hash_const.wrapping_mul(MULT_B);
                v = v.wrapping_mul(hash_const);
                v ^ (v >> XSHIFT)
            })
            .collect();
        words
            .chunks_exact(2)
            .map(|w| w[0] as u64 | ((w[1] as u64) << 32))
            .collect()
    }
}

/// NumPy's `PCG64` bit generator (XSL-RR output of a 128-bit LCG).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pcg64 {
    state: u128,
    inc: u128,
}

impl Pcg64 {
    /// `PCG64(SeedSequence(seed))`.
    pub fn new(seed: u64) -> Self {
        let w = SeedSequence::new(seed).generate_state_u64(4);
        let initstate = ((w[0] as u128) << 64) | w[1] as u128;
        let initseq = ((w[2] as u128) << 64) | w[3] as u128;
        let mut rng = Pcg64 {
            state: 0,
            inc: (initseq << 1) | 1,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(initstate);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    /// The next raw 64-bit output (`bit_generator.random_raw()`).
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let hi = (self.state >> 64) as u64;
        let lo = self.state as u64;
        (hi ^ lo).rotate_right((hi >> 58) as u32)
    }

    /// A double in [0, 1) from the top 53 bits (`next_double`, `random()`).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `uniform(low, high)` for one scalar draw: `low + (high − low) · U`, as NumPy rounds it.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        let range = high - low;
        low + range * self.next_f64()
    }

    /// One `standard_normal()` draw (NumPy's `random_standard_normal`).
    pub fn standard_normal(&mut self) -> f64 {
        loop {
            let r = self.next_u64();
            let idx = (r & 0xff) as usize;
            let r = r >> 8;
            let negative = r & 1 == 1;
            let rabs = (r >> 1) & 0x000f_ffff_ffff_ffff;
            let mut x = rabs as f64 * WI[idx];
            if negative {
                x = -x;
            }
            if rabs < KI[idx] {
                return x; // inside the strip's rectangle: about 99.3 % of draws
            }
            if idx == 0 {
                // The tail beyond r: x = −ln(U₁)/r accepted when −2 ln U₂ > x² (1 − U keeps
                // ln away from 0, as NumPy's log1p(−U) does).
                loop {
                    let xx = -NOR_INV_R * (-self.next_f64()).ln_1p();
                    let yy = -(-self.next_f64()).ln_1p();
                    if yy + yy > xx * xx {
                        return if (rabs >> 8) & 1 == 1 {
                            -(NOR_R + xx)
                        } else {
                            NOR_R + xx
                        };
                    }
                }
            } else if (FI[idx - 1] - FI[idx]) * self.next_f64() + FI[idx] < (-0.5 * x * x).exp() {
                return x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by NumPy 2.4.6: `SeedSequence(0).generate_state(4, np.uint64)`,
    /// `PCG64(0).random_raw(3)`, and for the two-word seed 2⁴⁰ + 7
    /// `Generator(PCG64(s)).standard_normal(3)` then `.uniform(-0.1, 0.1, 2)`.
    /// `tests/np_random.rs` compares long streams against the installed NumPy; these keep a
    /// check where it is absent.
    #[test]
    fn matches_numpy() {
        assert_eq!(
            SeedSequence::new(0).generate_state_u64(4),
            [
                0xdb2c_d7e7_b0f4_78be,
                0xabf4_641a_2c71_ba49,
                0x20c6_ed6d_9d7b_8d41,
                0x2c40_99de_223c_39d4
            ]
        );
        let mut g = Pcg64::new(0);
        let raw: Vec<u64> = (0..3).map(|_| g.next_u64()).collect();
        assert_eq!(
            raw,
            [
                0xa30f_ebcf_d9c2_825f,
                0x4510_bdf8_82d9_d721,
                0x0a7d_3da9_4ecd_e8b8
            ]
        );
        let mut g = Pcg64::new((1 << 40) + 7);
        let normals: Vec<f64> = (0..3).map(|_| g.standard_normal()).collect();
        assert_eq!(
            normals,
            [
                -1.1736649114648445,
                0.06201849635364083,
                -0.3598967237617475
            ]
        );
        let uniforms: Vec<f64> = (0..2).map(|_| g.uniform(-0.1, 0.1)).collect();
        assert_eq!(uniforms, [0.034900909173521705, 0.04776814383851308]);
    }
}
