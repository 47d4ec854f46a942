//! A ring buffer of transitions with Philox-drawn minibatches: index b of update `step` is
//! `below(len)` of stream REPLAY at (element b, step), so a run's minibatches are a function
//! of its seed and the buffer's contents.
use super::sac::Batch;
use crate::rng::below;

/// Transitions in insertion order, overwriting the oldest once `capacity` is reached.
#[derive(Clone, Debug, PartialEq)]
pub struct Replay {
    pub obs_dim: usize,
    pub act_dim: usize,
    capacity: usize,
    /// Rows written so far (the ring position is `written % capacity`).
    written: usize,
    obs: Vec<f32>,
    act: Vec<f32>,
    reward: Vec<f32>,
    next_obs: Vec<f32>,
    terminated: Vec<f32>,
}

impl Replay {
    pub fn new(obs_dim: usize, act_dim: usize, capacity: usize) -> Self {
        Self {
            obs_dim,
            act_dim,
            capacity: capacity.max(1),
            written: 0,
            obs: vec![],
            act: vec![],
            reward: vec![],
            next_obs: vec![],
            terminated: vec![],
        }
    }

    pub fn len(&self) -> usize {
        self.written.min(self.capacity)
    }

    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Append one transition.
    pub fn push(&mut self, obs: &[f32], act: &[f32], reward: f32, next_obs: &[f32], term: bool) {
        let (o, a) = (self.obs_dim, self.act_dim);
        debug_assert!(obs.len() == o && next_obs.len() == o && act.len() == a);
        let i = self.written % self.capacity;
        if self.reward.len() < self.capacity {
            // Still growing: rows are appended (memory follows use, not capacity).
            self.obs.extend_from_slice(obs);
            self.act.extend_from_slice(act);
            self.reward.push(reward);
            self.next_obs.extend_from_slice(next_obs);
            self.terminated.push(f32::from(u8::from(term)));
        } else {
            self.obs[i * o..(i + 1) * o].copy_from_slice(obs);
            self.act[i * a..(i + 1) * a].copy_from_slice(act);
            self.reward[i] = reward;
            self.next_obs[i * o..(i + 1) * o].copy_from_slice(next_obs);
            self.terminated[i] = f32::from(u8::from(term));
        }
        self.written += 1;
    }

    /// Row i in insertion order among the rows held (0 = oldest).
    fn slot(&self, i: usize) -> usize {
        if self.written <= self.capacity {
            i
        } else {
            (self.written + i) % self.capacity
        }
    }

    /// The same rows (oldest dropped first when shrinking) in a buffer of `capacity`, as
    /// mbrl-lib's `maybe_replace_sac_buffer` does when the rollout length changes.
    pub fn with_capacity(&self, capacity: usize) -> Self {
        let mut out = Replay::new(self.obs_dim, self.act_dim, capacity);
        let n = self.len();
        for i in n.saturating_sub(out.capacity)..n {
            let t = self.row(i);
            out.push(&t.0, &t.1, t.2, &t.3, t.4);
        }
        out
    }

    /// Values per packed row: [obs, act, reward, next_obs, terminated].
    pub fn packed_width(&self) -> usize {
        2 * self.obs_dim + self.act_dim + 2
    }

    /// Storage slots `slots` (not insertion order: the order the draws index) as packed rows.
    pub fn packed(&self, slots: std::ops::Range<usize>) -> Vec<f32> {
        let (o, a) = (self.obs_dim, self.act_dim);
        let mut out = Vec::with_capacity(slots.len() * self.packed_width());
        for s in slots {
            out.extend_from_slice(&self.obs[s * o..(s + 1) * o]);
            out.extend_from_slice(&self.act[s * a..(s + 1) * a]);
            out.push(self.reward[s]);
            out.extend_from_slice(&self.next_obs[s * o..(s + 1) * o]);
            out.push(self.terminated[s]);
        }
        out
    }

    /// Row i in insertion order: (obs, act, reward, next_obs, terminated).
    pub fn row(&self, i: usize) -> (Vec<f32>, Vec<f32>, f32, Vec<f32>, bool) {
        let (o, a) = (self.obs_dim, self.act_dim);
        let s = self.slot(i);
        (
            self.obs[s * o..(s + 1) * o].to_vec(),
            self.act[s * a..(s + 1) * a].to_vec(),
            self.reward[s],
            self.next_obs[s * o..(s + 1) * o].to_vec(),
            self.terminated[s] != 0.0,
        )
    }

    /// A minibatch of `rows` transitions drawn uniformly with replacement. Empty buffer:
    /// an empty batch.
    pub fn sample(&self, seed: u64, stream: u32, step: u32, rows: usize) -> Batch<f32> {
        let (o, a) = (self.obs_dim, self.act_dim);
        let n = self.len();
        let rows = if n == 0 { 0 } else { rows };
        let mut b = Batch {
            rows,
            obs: Vec::with_capacity(rows * o),
            act: Vec::with_capacity(rows * a),
            reward: Vec::with_capacity(rows),
            next_obs: Vec::with_capacity(rows * o),
            mask: Vec::with_capacity(rows),
        };
        for r in 0..rows {
            // Slots are a permutation of 0..n, so drawing the slot directly is uniform.
            let s = below(seed, stream, r as u32, step, n as u32) as usize;
            b.obs.extend_from_slice(&self.obs[s * o..(s + 1) * o]);
            b.act.extend_from_slice(&self.act[s * a..(s + 1) * a]);
            b.reward.push(self.reward[s]);
            b.next_obs
                .extend_from_slice(&self.next_obs[s * o..(s + 1) * o]);
            b.mask.push(1.0 - self.terminated[s]);
        }
        b
    }

    /// Observations of `rows` transitions drawn uniformly (start states of model rollouts).
    pub fn sample_obs(&self, seed: u64, stream: u32, step: u32, rows: usize) -> Vec<f32> {
        let o = self.obs_dim;
        let n = self.len();
        let mut out = Vec::with_capacity(rows * o);
        if n == 0 {
            return out;
        }
        for r in 0..rows {
            let s = below(seed, stream, r as u32, step, n as u32) as usize;
            out.extend_from_slice(&self.obs[s * o..(s + 1) * o]);
        }
        out
    }

    /// Every held row as flat arrays in insertion order: (obs, act, reward, next_obs,
    /// terminated as 0/1), for checkpoints.
    pub fn to_arrays(&self) -> [Vec<f32>; 5] {
        let (o, a) = (self.obs_dim, self.act_dim);
        let n = self.len();
        let mut out: [Vec<f32>; 5] = Default::default();
        for i in 0..n {
            let s = self.slot(i);
            out[0].extend_from_slice(&self.obs[s * o..(s + 1) * o]);
            out[1].extend_from_slice(&self.act[s * a..(s + 1) * a]);
            out[2].push(self.reward[s]);
            out[3].extend_from_slice(&self.next_obs[s * o..(s + 1) * o]);
            out[4].push(self.terminated[s]);
        }
        out
    }

    /// Rows written since creation (counts overwritten ones too).
    pub fn written(&self) -> usize {
        self.written
    }

    /// A buffer holding `arrays` (as [`Replay::to_arrays`] gives them) with `written` rows
    /// counted, or None when the arrays disagree in length.
    pub fn from_arrays(
        obs_dim: usize,
        act_dim: usize,
        capacity: usize,
        written: usize,
        arrays: [Vec<f32>; 5],
    ) -> Option<Self> {
        let n = arrays[2].len();
        let ok = arrays[0].len() == n * obs_dim
            && arrays[1].len() == n * act_dim
            && arrays[3].len() == n * obs_dim
            && arrays[4].len() == n
            && n <= capacity.max(1)
            && n == written.min(capacity.max(1));
        if !ok {
            return None;
        }
        let mut r = Replay::new(obs_dim, act_dim, capacity);
        for i in 0..n {
            r.push(
                &arrays[0][i * obs_dim..(i + 1) * obs_dim],
                &arrays[1][i * act_dim..(i + 1) * act_dim],
                arrays[2][i],
                &arrays[3][i * obs_dim..(i + 1) * obs_dim],
                arrays[4][i] != 0.0,
            );
        }
        // Same ring position as the original: rows sit at insertion order from slot 0, so
        // align by rotating to where `written` puts the oldest.
        if written > r.capacity {
            let shift = written % r.capacity;
            let rot = |v: &mut Vec<f32>, w: usize| v.rotate_right(shift * w);
            rot(&mut r.obs, obs_dim);
            rot(&mut r.act, act_dim);
            rot(&mut r.reward, 1);
            rot(&mut r.next_obs, obs_dim);
            rot(&mut r.terminated, 1);
        }
        r.written = written;
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(cap: usize, n: usize) -> Replay {
        let mut r = Replay::new(1, 1, cap);
        for i in 0..n {
            let v = i as f32;
            r.push(&[v], &[v], v, &[v + 1.0], i % 3 == 0);
        }
        r
    }

    #[test]
    fn ring_should_keep_the_newest_rows_in_order() {
        let r = filled(4, 10);
        assert_eq!(r.len(), 4);
        let rewards: Vec<f32> = (0..4).map(|i| r.row(i).2).collect();
        assert_eq!(rewards, vec![6.0, 7.0, 8.0, 9.0]);
        let small = r.with_capacity(2);
        assert_eq!(
            (0..2).map(|i| small.row(i).2).collect::<Vec<_>>(),
            vec![8.0, 9.0]
        );
        let big = r.with_capacity(8);
        assert_eq!(big.len(), 4);
        assert_eq!(big.row(0).2, 6.0);
    }

    #[test]
    fn arrays_should_round_trip_with_the_ring_position() {
        for (cap, n) in [(4, 10), (4, 3), (5, 5), (3, 7)] {
            let r = filled(cap, n);
            let back = Replay::from_arrays(1, 1, cap, r.written(), r.to_arrays()).unwrap();
            assert_eq!(back, r, "cap {cap} n {n}");
            // And it continues identically.
            let (mut a, mut b) = (r.clone(), back);
            a.push(&[99.0], &[1.0], 5.0, &[1.0], false);
            b.push(&[99.0], &[1.0], 5.0, &[1.0], false);
            assert_eq!(a, b);
        }
        let r = filled(4, 3);
        let mut bad = r.to_arrays();
        bad[2].pop();
        assert!(Replay::from_arrays(1, 1, 4, 3, bad).is_none());
    }

    #[test]
    fn samples_should_be_reproducible_and_cover_the_buffer() {
        let r = filled(8, 8);
        let a = r.sample(7, 14, 3, 256);
        assert_eq!(a, r.sample(7, 14, 3, 256));
        assert_ne!(a.reward, r.sample(7, 14, 4, 256).reward);
        let mut seen = [false; 8];
        for v in &a.reward {
            seen[*v as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "{seen:?}");
        // mask = 1 − terminated, rows consistent.
        for b in 0..a.rows {
            assert_eq!(
                a.mask[b],
                if (a.reward[b] as usize).is_multiple_of(3) {
                    0.0
                } else {
                    1.0
                }
            );
            assert_eq!(a.next_obs[b], a.obs[b] + 1.0);
        }
        assert_eq!(Replay::new(1, 1, 4).sample(0, 14, 0, 8).rows, 0);
    }
}
