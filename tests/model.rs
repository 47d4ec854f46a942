//! Training, prediction and checkpoints of the ensemble, as a user meets them.
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::bench::synthetic_transitions;
use mbrl_gpu::io::checkpoint;
use mbrl_gpu::model::{train::train, Ensemble, ModelConfig, TrainConfig};
use mbrl_gpu::Error;

fn small(obs: usize, act: usize) -> ModelConfig {
    let mut c = ModelConfig::pets(obs, act);
    c.ensemble_size = 3;
    c.num_elites = 2;
    c.hidden = 32;
    c.num_layers = 2;
    c
}

#[test]
fn training_should_reduce_holdout_error_and_pick_elites() {
    let data = synthetic_transitions(600, 3, 2, 1);
    let mut m = Ensemble::new(small(3, 2), 0).unwrap();
    let cfg = TrainConfig {
        epochs: 30,
        batch_size: 64,
        lr: 2e-3,
        holdout_ratio: 0.2,
        ..TrainConfig::default()
    };
    let rep = train(&CpuBackend::new(), &mut m, &data, &cfg, |_| {}).unwrap();
    let first = rep.history[0].eval_mse.iter().sum::<f64>();
    let best = rep.best_eval_mse.iter().sum::<f64>();
    // The targets are smooth functions of the inputs with variance ~0.01; an untrained
    // ensemble starts near that, a trained one well below it.
    assert!(best < 0.3 * first, "holdout mse {first} -> {best}");
    assert_eq!(rep.elites.len(), 2);
    let worst_elite = rep
        .elites
        .iter()
        .map(|&e| rep.best_eval_mse[e])
        .fold(0.0, f64::max);
    let non_elite = (0..3).find(|e| !rep.elites.contains(e)).unwrap();
    assert!(worst_elite <= rep.best_eval_mse[non_elite]);
    assert!(m.is_finite());
}

#[test]
fn training_should_be_reproducible_from_a_seed() {
    let data = synthetic_transitions(200, 2, 1, 2);
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 32,
        ..TrainConfig::default()
    };
    let run = || {
        let mut m = Ensemble::new(small(2, 1), 5).unwrap();
        train(&CpuBackend::new(), &mut m, &data, &cfg, |_| {}).unwrap();
        m.params
    };
    assert_eq!(run(), run());
}

#[test]
fn early_stopping_should_stop_before_the_epoch_limit_when_nothing_improves() {
    let data = synthetic_transitions(300, 2, 1, 3);
    let mut m = Ensemble::new(small(2, 1), 0).unwrap();
    let cfg = TrainConfig {
        epochs: 500,
        batch_size: 32,
        holdout_ratio: 0.2,
        patience: Some(3),
        improvement_threshold: 0.5,
        ..TrainConfig::default()
    };
    let rep = train(&CpuBackend::new(), &mut m, &data, &cfg, |_| {}).unwrap();
    assert!(rep.epochs_run < 500, "ran {}", rep.epochs_run);
}

#[test]
fn a_diverging_run_should_stop_with_an_error_and_keep_finite_weights() {
    let data = synthetic_transitions(200, 2, 1, 4);
    let mut m = Ensemble::new(small(2, 1), 0).unwrap();
    // A learning rate of 1e30 moves every weight by ~1e30 per step: the forward overflows.
    let cfg = TrainConfig {
        epochs: 5,
        batch_size: 32,
        lr: 1e30,
        ..TrainConfig::default()
    };
    let e = train(&CpuBackend::new(), &mut m, &data, &cfg, |_| {}).unwrap_err();
    assert!(matches!(e, Error::Diverged(_)), "{e}");
    // The first step's loss is finite (taken before it); the second minibatch's is not. The
    // losses are read at the epoch's end, and the first non-finite one is named.
    assert!(e.to_string().contains("epoch 1 (minibatch 2)"), "{e}");
    assert!(m.is_finite(), "NaN written into the model");
}

#[test]
fn bad_training_data_should_be_rejected_with_the_row() {
    let mut data = synthetic_transitions(50, 2, 1, 5);
    data.next_obs[2 * 17 + 1] = f32::INFINITY;
    let mut m = Ensemble::new(small(2, 1), 0).unwrap();
    let e = train(
        &CpuBackend::new(),
        &mut m,
        &data,
        &TrainConfig::default(),
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("transition 17") && e.contains("next_obs_1"),
        "{e}"
    );
    let wrong = synthetic_transitions(50, 3, 1, 5);
    let e = train(
        &CpuBackend::new(),
        &mut m,
        &wrong,
        &TrainConfig::default(),
        |_| {},
    );
    assert!(matches!(e, Err(Error::Shape(_))));
}

#[test]
fn checkpoint_should_round_trip_every_tensor_and_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let mut m = Ensemble::new(small(3, 2), 9).unwrap();
    m.input_mean = vec![0.1, 0.2, 0.3, 0.4, 0.5];
    m.input_std = vec![1.0, 2.0, 3.0, 4.0, 5.0];
    m.elites = vec![2, 0];
    checkpoint::save(&m, &path).unwrap();
    let back = checkpoint::load(&path).unwrap();
    assert_eq!(back.config, m.config);
    assert_eq!(back.params, m.params);
    assert_eq!(back.input_mean, m.input_mean);
    assert_eq!(back.input_std, m.input_std);
    assert_eq!(back.elites, m.elites);
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // PyTorch-style names and shapes, readable by any safetensors reader.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("layers.0.weight").unwrap().shape(), &[3, 5, 32]);
    assert_eq!(st.tensor("layers.2.bias").unwrap().shape(), &[3, 1, 6]);
    assert_eq!(st.tensor("max_logvar").unwrap().shape(), &[1, 3]);
    assert_eq!(st.tensor("input_std").unwrap().shape(), &[1, 5]);
}

#[test]
fn damaged_checkpoints_should_be_clear_errors() {
    let m = Ensemble::new(small(2, 1), 0).unwrap();
    let good = checkpoint::to_bytes(&m).unwrap();
    // Truncated anywhere: an error, never a panic.
    for cut in [0, 4, 8, 100, good.len() / 2, good.len() - 1] {
        assert!(
            checkpoint::from_bytes(&good[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    // Flipped bytes in the header and in the data.
    let mut bad = good.clone();
    bad[12] ^= 0xff;
    assert!(checkpoint::from_bytes(&bad).is_err());
    // A NaN inside a tensor.
    let mut nan = good.clone();
    let n = nan.len();
    nan[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    let e = checkpoint::from_bytes(&nan).unwrap_err();
    assert!(e.contains("NaN"), "{e}");
    // A file that is not a checkpoint at all.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    std::fs::write(&p, b"hello").unwrap();
    let e = checkpoint::load(&p).unwrap_err().to_string();
    assert!(e.contains("x.safetensors"), "{e}");
    // Refuses to write NaN weights.
    let mut poisoned = m.clone();
    poisoned.params[3] = f32::NAN;
    assert!(checkpoint::save(&poisoned, &dir.path().join("y.safetensors")).is_err());
    assert!(!dir.path().join("y.safetensors").exists());
}

#[test]
fn predict_should_return_next_observation_means_and_variances_per_member() {
    let m = Ensemble::new(small(2, 1), 0).unwrap();
    let (mean, var) = m.predict(&[0.5, -0.5, 1.0, 1.0], &[0.1, 0.2]).unwrap();
    assert_eq!(mean.len(), 3 * 2 * 2);
    assert!(var.iter().all(|v| *v > 0.0 && v.is_finite()));
    assert!(m.predict(&[0.5, -0.5, 1.0], &[0.1, 0.2]).is_err());
    assert!(m.predict(&[f32::NAN, -0.5], &[0.1]).is_err());
}

#[test]
fn min_steps_should_extend_short_epochs() {
    // 100 transitions in batches of 64 are 2 steps per epoch: 3 epochs would be 6 steps,
    // min_steps 40 asks for 20 epochs.
    let data = synthetic_transitions(100, 2, 1, 6);
    let mut m = Ensemble::new(small(2, 1), 0).unwrap();
    let cfg = TrainConfig {
        epochs: 3,
        min_steps: 40,
        batch_size: 64,
        ..TrainConfig::default()
    };
    let rep = train(&CpuBackend::new(), &mut m, &data, &cfg, |_| {}).unwrap();
    assert_eq!(rep.epochs_run, 20);
}
