//! An independent oracle for SAC: pranz24's PyTorch networks and losses (the SAC mbrl-lib's
//! MBPO runs), differentiated by autograd in float64 with the reparameterisation noise fixed
//! (`scripts/record_torch_sac.py`; fixtures in `tests/fixtures/torch/sac_*`). The
//! finite-difference checks in `src/policy/sac.rs` show the hand-written backward matches
//! our own losses; this shows the losses, the file layout (pranz24's state-dict names,
//! PyTorch's [out, in] weights) and the action squashing are pranz24's.
//!
//! Tolerance: the losses and gradients are computed here in f64 from the same f32-valued
//! parameters and inputs, so they agree with PyTorch's float64 to rounding (≤ 1e-12
//! relative); the gradient fixtures are stored rounded to f32 (a relative error ≤ 2⁻²⁴ ≈
//! 6e-8), so gradients are compared at 1e-6 relative plus 1e-9 absolute. A transposed
//! weight, a missing tanh correction or a wrong clipped-double-Q target changes them by
//! 1e-3 or more.
use mbrl_gpu::policy::checkpoint::{critic_from_bytes, policy_from_bytes};
use mbrl_gpu::policy::sac::{actor_loss, critic_loss, Batch, SacWorkspace};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::path::PathBuf;

fn read(file: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f64s(st: &SafeTensors, name: &str) -> Vec<f64> {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::F64, "{name}");
    t.data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn close(what: &str, ours: &[f64], torch: &[f32]) {
    assert_eq!(ours.len(), torch.len(), "{what}: lengths");
    let mut worst = 0.0f64;
    for (i, (a, b)) in ours.iter().zip(torch).enumerate() {
        let b = *b as f64;
        let err = (a - b).abs();
        assert!(
            err <= 1e-6 * b.abs() + 1e-9,
            "{what}[{i}]: ours {a}, PyTorch {b}"
        );
        worst = worst.max(err / (b.abs() + 1e-9));
    }
    eprintln!("{what}: worst relative difference {worst:.2e}");
}

#[test]
fn sac_losses_and_gradients_should_match_pranz24_in_pytorch() {
    let mut agent = policy_from_bytes(&read("sac_policy.safetensors")).unwrap();
    let critic = critic_from_bytes(&read("sac_critic.safetensors"))
        .unwrap()
        .critic;
    let target = critic_from_bytes(&read("sac_target.safetensors"))
        .unwrap()
        .critic;
    let policy_grad = policy_from_bytes(&read("sac_policy_grad.safetensors"))
        .unwrap()
        .actor;
    let critic_grad = critic_from_bytes(&read("sac_critic_grad.safetensors"))
        .unwrap()
        .critic;
    let bytes = read("sac_batch.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let rows = f64s(&st, "reward").len();
    let batch = Batch {
        rows,
        obs: f64s(&st, "obs"),
        act: f64s(&st, "act"),
        reward: f64s(&st, "reward"),
        next_obs: f64s(&st, "next_obs"),
        mask: f64s(&st, "mask"),
    };
    let (alpha, gamma) = (f64s(&st, "alpha")[0], f64s(&st, "gamma")[0]);
    let nets = agent.nets;
    let sq = agent.squash.cast::<f64>();
    let c64 = |v: &[f32]| v.iter().map(|x| *x as f64).collect::<Vec<f64>>();
    let (actor, critic, target) = (c64(&agent.actor), c64(&critic), c64(&target));
    let mut ws = SacWorkspace::default();

    let mut g = vec![0.0; critic.len()];
    let c = critic_loss(
        &nets,
        gamma,
        alpha,
        &actor,
        &critic,
        &target,
        &sq,
        &batch,
        &f64s(&st, "eps_next"),
        Some(&mut g),
        &mut ws,
    );
    let want = f64s(&st, "critic_loss")[0];
    assert!(
        (c.loss - want).abs() < 1e-10 * want.abs(),
        "critic loss {} vs {want}",
        c.loss
    );
    close("critic gradient", &g, &critic_grad);

    let mut g = vec![0.0; actor.len()];
    let a = actor_loss(
        &nets,
        alpha,
        &actor,
        &critic,
        &sq,
        &batch.obs,
        rows,
        &f64s(&st, "eps_pi"),
        Some(&mut g),
        &mut ws,
    );
    let want = f64s(&st, "actor_loss")[0];
    assert!(
        (a.loss - want).abs() < 1e-10 * want.abs().max(1.0),
        "actor loss {} vs {want}",
        a.loss
    );
    close("actor gradient", &g, &policy_grad);

    // The deterministic action through the f32 path a user's evaluation takes.
    let obs32: Vec<f32> = batch.obs.iter().map(|v| *v as f32).collect();
    let act = agent.act(&obs32, rows, None);
    for (i, (ours, torch)) in act.iter().zip(f64s(&st, "det_action")).enumerate() {
        assert!(
            (*ours as f64 - torch).abs() < 1e-5,
            "action {i}: {ours} vs {torch}"
        );
    }
}
