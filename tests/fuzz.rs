//! Hostile input: every file reader the command line exposes gets an answer, `Ok` or a clear
//! `Err`, for any bytes, and never panics.
//!
//! The corpus in `tests/fuzz_corpus/{checkpoint,csv,json}/` holds small valid files and crafted
//! hostile ones (`regenerate_corpus` below writes it; run it with `--ignored` after a format
//! change). `tests/fuzz_corpus/serve/` holds byte streams of `serve` frames (sessions, ADD
//! batches, a lying transition count, lengths of 0 and 2³²−1, a truncated frame), also the
//! seed corpus of the cargo-fuzz target in `fuzz/`. `hostile_corpus_should_give_these_errors` pins the message of each hostile file;
//! `mutated_inputs_should_never_panic` feeds the corpus and thousands of deterministic
//! mutations of it (bit flips, insertions, deletions, truncations, splices, number
//! replacements, safetensors length-field edits) to the readers under `catch_unwind`.
//! `FUZZ_CASES=N` (per reader, default 50 000) and `FUZZ_SEED=S` run it longer or differently.
use mbrl_gpu::backend::Activation;
use mbrl_gpu::io::{checkpoint, csv, json};
use mbrl_gpu::model::{Ensemble, ModelConfig};
use mbrl_gpu::policy::checkpoint as policy_files;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(kind)
}

/// Every corpus file of a kind, sorted by name so that a seed reproduces a run.
fn corpus(kind: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir(kind))
        .unwrap_or_else(|e| panic!("corpus folder {kind}: {e}"))
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus folder {kind}");
    files
}

// ---------------------------------------------------------------------------------------------
// The readers under test, and what an accepted input must satisfy.

/// A byte stream as `serve` reads it: frames until the stream ends or a frame cannot be read,
/// each decoded for Pendulum-v1's dimensions. An accepted request survives a re-encoding.
fn check_frames(bytes: &[u8]) -> Outcome {
    use mbrl_gpu::serve::protocol::{self, kind, Dims, ReadError, Request};
    let dims = Dims { obs: 3, act: 1 };
    let mut r = bytes;
    let mut decoded = 0;
    let mut refusal = String::from("empty stream");
    loop {
        match protocol::read_frame_blocking(&mut r) {
            Ok(f) => match protocol::decode(f.kind, &f.body, dims) {
                Ok(req) => {
                    decoded += 1;
                    match req {
                        Request::Act { deadline_ms, obs } => {
                            assert!(deadline_ms.is_finite() && obs.iter().all(|v| v.is_finite()));
                            assert_eq!(protocol::act_body(deadline_ms, &obs), f.body);
                        }
                        Request::Add(ts) => {
                            // Values survive a re-encoding (bytes may not: a terminated
                            // flag of −0 reads as 0).
                            let again = protocol::decode(kind::ADD, &protocol::add_body(&ts), dims);
                            assert_eq!(again.unwrap(), Request::Add(ts));
                        }
                        _ => assert!(f.kind != kind::ACT && f.kind != kind::ADD),
                    }
                }
                Err(e) => refusal = e.message,
            },
            Err(ReadError::Closed) => break,
            Err(ReadError::Size(n)) => {
                refusal = format!("frame length {n}");
                break;
            }
            Err(ReadError::Truncated { .. }) => {
                refusal = "truncated frame".into();
                break;
            }
        }
    }
    if decoded > 0 {
        Outcome::Accepted
    } else {
        Outcome::Refused(refusal)
    }
}

/// SAC files (policy, critic, whole agent) and replay buffers: whatever loads re-serialises
/// and reloads to the same values, and acts without panicking.
fn check_policy(bytes: &[u8]) -> Outcome {
    let mut refusals = vec![];
    for (kind, parse) in [
        (
            "policy",
            policy_files::policy_from_bytes as fn(&[u8]) -> Result<_, String>,
        ),
        ("critic", policy_files::critic_from_bytes),
        ("agent", policy_files::agent_from_bytes),
    ] {
        match parse(bytes) {
            Ok(mut sac) => {
                assert!(
                    sac.is_finite(),
                    "accepted a {kind} file with non-finite values"
                );
                let again = match kind {
                    "policy" => policy_files::policy_bytes(&sac),
                    "critic" => policy_files::critic_bytes(&sac),
                    _ => policy_files::agent_bytes(&sac),
                }
                .expect("an accepted file re-serialises");
                let back = parse(&again).expect("a re-serialised file loads");
                assert_eq!((&back.actor, &back.critic), (&sac.actor, &sac.critic));
                let obs = vec![0.5f32; sac.nets.obs_dim];
                let a = sac.act(&obs, 1, None);
                assert!(a.iter().all(|v| v.is_finite()));
                return Outcome::Accepted;
            }
            Err(e) => refusals.push(e),
        }
    }
    match policy_files::replay_from_bytes(bytes, 3, 1) {
        Ok(r) => {
            let again = policy_files::replay_bytes(&r).expect("an accepted buffer re-serialises");
            assert_eq!(policy_files::replay_from_bytes(&again, 3, 1).unwrap(), r);
            Outcome::Accepted
        }
        Err(e) => Outcome::Refused(format!("{} / {e}", refusals.join(" / "))),
    }
}

/// A checkpoint that loads must hold finite values, serialise again, reload to the same
/// model, and predict without panicking.
fn check_checkpoint(bytes: &[u8]) -> Outcome {
    let m = match checkpoint::from_bytes(bytes) {
        Ok(m) => m,
        Err(e) => return Outcome::Refused(e),
    };
    assert!(
        m.is_finite(),
        "accepted a checkpoint with non-finite values"
    );
    let again = checkpoint::to_bytes(&m).expect("an accepted checkpoint re-serialises");
    let back = checkpoint::from_bytes(&again).expect("a re-serialised checkpoint loads");
    assert_eq!(back.config, m.config);
    assert_eq!(back.params, m.params);
    assert_eq!(back.elites, m.elites);
    assert_eq!(
        (back.input_mean, back.input_std),
        (m.input_mean.clone(), m.input_std.clone())
    );
    let obs = vec![0.5; m.config.obs_dim];
    let act = vec![-0.5; m.config.act_dim];
    let _ = m.predict(&obs, &act);
    Outcome::Accepted
}

/// A CSV that parses holds whole finite rows and survives a render/parse round trip.
fn check_csv(bytes: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Outcome::Refused("not UTF-8".into());
    };
    let t = match csv::parse(text) {
        Ok(t) => t,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    assert!(!t.is_empty());
    assert_eq!(t.obs.len(), t.len() * t.obs_dim);
    assert_eq!(t.act.len(), t.len() * t.act_dim);
    assert_eq!(t.next_obs.len(), t.obs.len());
    let all = t
        .obs
        .iter()
        .chain(&t.act)
        .chain(&t.next_obs)
        .chain(&t.reward);
    assert!(
        all.clone().all(|v| v.is_finite()),
        "accepted a non-finite value"
    );
    let back = csv::parse(&csv::render(&t)).expect("a rendered CSV parses");
    assert_eq!(
        (back.obs, back.act, back.next_obs, back.reward),
        (t.obs, t.act, t.next_obs, t.reward)
    );
    Outcome::Accepted
}

/// Both JSON readers: accepted inputs are non-empty, rectangular and finite.
fn check_json(bytes: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Outcome::Refused("not UTF-8".into());
    };
    let mut outcome = Outcome::Refused(String::new());
    let finite_rect = |rows: &[Vec<f32>]| {
        assert!(!rows.is_empty() && rows.iter().all(|r| r.len() == rows[0].len()));
        assert!(rows.iter().flatten().all(|v| v.is_finite()));
    };
    if let Ok(p) = json::parse_predict_input(text) {
        assert_eq!(p.obs.len(), p.act.len());
        finite_rect(&p.obs);
        finite_rect(&p.act);
        outcome = Outcome::Accepted;
    }
    if let Ok(r) = json::parse_replay_input(text) {
        assert!(!r.state.is_empty() && r.state.iter().all(|v| v.is_finite()));
        finite_rect(&r.actions);
        outcome = Outcome::Accepted;
    }
    if let (Outcome::Refused(m), Err(e)) = (&mut outcome, json::parse_predict_input(text)) {
        *m = e.to_string();
    }
    outcome
}

/// What a reader did with one input; refusals keep the message, for the statistics.
enum Outcome {
    Accepted,
    Refused(String),
}

// ---------------------------------------------------------------------------------------------
// Deterministic mutations.

/// xorshift64* (Vigna 2016): enough for choosing mutations, and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Numbers that have broken parsers: overflow of usize, u64, f32 and f64, negatives, NaN,
/// exponents, and the edges of the f32 range.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "-0",
    "1e9",
    "1000000000",
    "4611686018427387904",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "1e39",
    "3.4028236e38",
    "3.4028235e38",
    "1e400",
    "-1e400",
    "1e-400",
    "NaN",
    "nan",
    "inf",
    "-Infinity",
    "1.5",
    "65536",
    "65537",
    "1024",
    "7",
    "",
];

/// Replace one ASCII number token (digits with sign, dot and exponent) by one of `NUMBERS`.
fn replace_number(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let is_num = |b: u8| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E');
    let starts: Vec<usize> = (0..bytes.len())
        .filter(|&i| bytes[i].is_ascii_digit() && (i == 0 || !is_num(bytes[i - 1])))
        .collect();
    if starts.is_empty() {
        return bytes.to_vec();
    }
    let s = starts[rng.below(starts.len())];
    let mut e = s;
    while e < bytes.len() && is_num(bytes[e]) {
        e += 1;
    }
    let mut out = bytes[..s].to_vec();
    out.extend_from_slice(NUMBERS[rng.below(NUMBERS.len())].as_bytes());
    out.extend_from_slice(&bytes[e..]);
    out
}

/// A safetensors file's JSON header, if the length field is plausible.
fn header_range(bytes: &[u8]) -> Option<std::ops::Range<usize>> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let end = 8usize.checked_add(n)?;
    (end <= bytes.len()).then_some(8..end)
}

/// Apply `f` to the header of a safetensors file and fix the length field, so the mutation
/// reaches past the length check into the JSON, the config and the tensor table.
fn mutate_header(bytes: &[u8], f: impl FnOnce(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let Some(r) = header_range(bytes) else {
        return bytes.to_vec();
    };
    let header = f(&bytes[r.clone()]);
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[r.end..]);
    out
}

/// A mutation that keeps a safetensors file well-formed (header length and JSON right), so
/// that it reaches the checkpoint checks rather than the container's: the config and
/// elites texts, a tensor's dtype, shape or name, a value, the format tag.
fn mutate_structured(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let Some(r) = header_range(bytes) else {
        return bytes.to_vec();
    };
    let Ok(serde_json::Value::Object(mut h)) = serde_json::from_slice(&bytes[r.clone()]) else {
        return bytes.to_vec();
    };
    let mut data = bytes[r.end..].to_vec();
    let names: Vec<String> = h.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let pick = |rng: &mut Rng| names.get(rng.below(names.len())).cloned();
    let meta_text = |h: &mut serde_json::Map<String, serde_json::Value>, key: &str| {
        h.get_mut("__metadata__")
            .and_then(|m| m.as_object_mut())
            .and_then(|m| m.get_mut(key))
            .filter(|v| v.is_string())
            .cloned()
            .map(|v| v.as_str().unwrap_or_default().to_string())
    };
    let set_meta = |h: &mut serde_json::Map<String, serde_json::Value>, key: &str, v: String| {
        if let Some(m) = h.get_mut("__metadata__").and_then(|m| m.as_object_mut()) {
            m.insert(key.to_string(), v.into());
        }
    };
    match rng.below(8) {
        0 | 1 => {
            if let Some(c) = meta_text(&mut h, "config") {
                let c = replace_number(rng, c.as_bytes());
                set_meta(&mut h, "config", String::from_utf8_lossy(&c).into_owned());
            }
        }
        2 => {
            const ELITES: &[&str] = &[
                "[]",
                "[0]",
                "[1,1]",
                "[0,1]",
                "[1,0]",
                "[0,1,2]",
                "[2,0]",
                "[3,0]",
                "[18446744073709551615,0]",
                "[-1,0]",
                "[0.5,1]",
                "\"0\"",
                "[0,1,2,3]",
            ];
            set_meta(
                &mut h,
                "elites",
                ELITES[rng.below(ELITES.len())].to_string(),
            );
        }
        3 => {
            const DTYPES: &[&str] = &["F16", "BF16", "F64", "I32", "U8", "BOOL", "F8_E4M3", "I64"];
            if let Some(t) = pick(rng).and_then(|n| h.get_mut(&n)) {
                let dtype = DTYPES[rng.below(DTYPES.len())];
                t["dtype"] = dtype.into();
            }
        }
        4 => {
            // A shape with the same element count (so the file stays consistent), or not.
            if let Some(t) = pick(rng).and_then(|n| h.get_mut(&n)) {
                let mut shape: Vec<u64> = t["shape"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
                    .unwrap_or_default();
                match rng.below(4) {
                    0 => shape.reverse(),
                    1 => shape.insert(rng.below(shape.len() + 1), 1),
                    2 if !shape.is_empty() => {
                        shape.remove(rng.below(shape.len()));
                    }
                    _ => {
                        if let Some(d) = shape.first_mut() {
                            *d = d.wrapping_mul(1 << rng.below(63));
                        }
                    }
                }
                t["shape"] = serde_json::json!(shape);
            }
        }
        5 => {
            // A special value at a random aligned position of the data.
            const VALUES: &[f32] = &[
                f32::NAN,
                f32::INFINITY,
                -f32::INFINITY,
                0.0,
                -0.0,
                -1.0,
                1e38,
                f32::MIN_POSITIVE / 2.0,
            ];
            if data.len() >= 4 {
                let i = 4 * rng.below(data.len() / 4);
                let v = VALUES[rng.below(VALUES.len())];
                data[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        6 => {
            // Rename a tensor: to an unknown name, or onto another one (dropping it).
            if let (Some(from), Some(to)) = (pick(rng), pick(rng)) {
                if let Some(v) = h.remove(&from) {
                    let to = if rng.below(2) == 0 {
                        format!("{from}.x")
                    } else {
                        to
                    };
                    h.insert(to, v);
                }
            }
        }
        _ => {
            const FORMATS: &[&str] = &["mbrl-gpu/ensemble/1", "mbrl-gpu/ensemble/2", "", "pt"];
            match rng.below(3) {
                0 => set_meta(
                    &mut h,
                    "format",
                    FORMATS[rng.below(FORMATS.len())].to_string(),
                ),
                1 => set_meta(&mut h, "extra", "1".to_string()),
                _ => {
                    if let Some(m) = h.get_mut("__metadata__").and_then(|m| m.as_object_mut()) {
                        let keys: Vec<String> = m.keys().cloned().collect();
                        if !keys.is_empty() {
                            m.remove(&keys[rng.below(keys.len())]);
                        }
                    }
                }
            }
        }
    }
    join(&h, &data)
}

fn mutate(rng: &mut Rng, input: &[u8], others: &[(String, Vec<u8>)], safetensors: bool) -> Vec<u8> {
    let mut b = input.to_vec();
    // Mostly one mutation, sometimes two or three stacked: each one more makes it likelier
    // that the first check already refuses the input.
    for _ in 0..[1, 1, 1, 2, 3][rng.below(5)] {
        let len = b.len();
        match rng.below(if safetensors { 16 } else { 8 }) {
            0 => {
                for _ in 0..1 + rng.below(4) {
                    if !b.is_empty() {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    }
                }
            }
            1 => {
                let i = rng.below(len + 1);
                let byte = match rng.below(4) {
                    0 => b"0123456789,[]{}\":-.e\n"[rng.below(21)],
                    _ => rng.next() as u8,
                };
                b.insert(i, byte);
            }
            2 => {
                let i = rng.below(len + 1);
                let j = (i + 1 + rng.below(16)).min(len);
                b.drain(i..j);
            }
            3 => b.truncate(rng.below(len + 1)),
            4 => {
                let (_, other) = &others[rng.below(others.len())];
                let (i, j) = (rng.below(len + 1), rng.below(other.len() + 1));
                b.truncate(i);
                b.extend_from_slice(&other[j..]);
            }
            5 | 6 => b = replace_number(rng, &b),
            7 => {
                // Repeat a slice: long rows, repeated keys, repeated columns.
                let i = rng.below(len + 1);
                let j = (i + rng.below(64)).min(len);
                let piece = b[i..j].to_vec();
                for _ in 0..1 + rng.below(4) {
                    b.splice(i..i, piece.iter().copied());
                }
            }
            8 | 9 => b = mutate_header(&b, |h| replace_number(rng, h)),
            10..=14 => b = mutate_structured(rng, &b),
            _ => {
                // The length field itself.
                if b.len() >= 8 {
                    let n = u64::from_le_bytes(b[..8].try_into().unwrap());
                    let v = match rng.below(6) {
                        0 => n.wrapping_add(1),
                        1 => n.wrapping_sub(1),
                        2 => len as u64,
                        3 => len as u64 + 8,
                        4 => u64::MAX,
                        _ => rng.next() % (2 * len as u64 + 16),
                    };
                    b[..8].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    b
}

/// Run `check` on every corpus file and `cases` mutations of them. Returns the inputs that
/// panicked (each written to the temporary directory for reproduction) and prints how many
/// were accepted and the most common refusals, to show how deep the mutations reach.
fn fuzz(kind: &str, cases: usize, seed: u64, check: fn(&[u8]) -> Outcome) -> Vec<String> {
    let files = corpus(kind);
    let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut failures = Vec::new();
    let mut accepted = 0usize;
    let mut refusals = std::collections::BTreeMap::<String, usize>::new();
    let mut run = |label: &dyn Fn() -> String, input: &[u8]| {
        match catch_unwind(AssertUnwindSafe(|| check(input))) {
            Ok(Outcome::Accepted) => accepted += 1,
            Ok(Outcome::Refused(msg)) => {
                // The message up to its first detail (number, quote or colon) names its check.
                let class: String = msg
                    .split(|c: char| c.is_ascii_digit() || c == '"' || c == ':' || c == '`')
                    .next()
                    .unwrap_or("")
                    .to_string();
                *refusals.entry(class).or_default() += 1;
            }
            Err(_) => {
                let path = std::env::temp_dir()
                    .join(format!("mbrl-gpu-fuzz-{kind}-{}.bin", failures.len()));
                let _ = std::fs::write(&path, input);
                failures.push(format!("{}: input saved to {}", label(), path.display()));
            }
        }
    };
    for (name, bytes) in &files {
        run(&|| format!("{kind}/{name}"), bytes);
    }
    for case in 0..cases {
        let (name, bytes) = &files[rng.below(files.len())];
        let input = mutate(
            &mut rng,
            bytes,
            &files,
            kind == "checkpoint" || kind == "policy",
        );
        run(
            &|| format!("{kind}/{name}, case {case} of seed {seed}"),
            &input,
        );
    }
    let mut top: Vec<(usize, String)> = refusals.into_iter().map(|(k, v)| (v, k)).collect();
    top.sort_by(|a, b| b.cmp(a));
    println!(
        "{kind}: {} inputs, {accepted} accepted, {} distinct refusals; most common:",
        files.len() + cases,
        top.len()
    );
    for (n, class) in top.iter().take(25) {
        println!("  {n:>6}  {class}");
    }
    failures
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 50 000 mutations per reader (150 000 in all) take about a second in the test profile on
/// one core. `--nocapture` shows how many inputs each check refused: most mutations of a
/// checkpoint die in the container's own checks, but thousands per run reach the config,
/// elites, dtype, shape and value checks (see `mutate_structured`).
#[test]
fn mutated_inputs_should_never_panic() {
    let cases = env_usize("FUZZ_CASES", 50_000);
    let seed = env_usize("FUZZ_SEED", 1) as u64;
    let mut failures = Vec::new();
    failures.extend(fuzz("checkpoint", cases, seed, check_checkpoint));
    failures.extend(fuzz("csv", cases, seed, check_csv));
    failures.extend(fuzz("json", cases, seed, check_json));
    failures.extend(fuzz("policy", cases / 5, seed, check_policy));
    failures.extend(fuzz("serve", cases, seed, check_frames));
    assert!(
        failures.is_empty(),
        "{} inputs panicked:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The corpus and the messages of its hostile files.

/// SAC files whose metadata asks for what no policy file can hold.
const HOSTILE_POLICIES: &[(&str, &str)] = &[
    (
        "hidden_huge_policy.safetensors",
        "hidden 16384 with 2 layers gives actor and critics 805650436 parameters for 3 \
         observations and 1 actions; at most 67108864 are supported",
    ),
    (
        "obs_dim_huge_policy.safetensors",
        "tensor \"linear1.weight\" is F32 [8, 3], expected F32 (or F64) [8, 65536]",
    ),
];

/// What each hostile corpus file must be refused with (a substring of the message); every
/// file not listed must be accepted.
const HOSTILE_CHECKPOINTS: &[(&str, &str)] = &[
    (
        "num_layers_1e9.safetensors",
        "config metadata is not a valid model config: invalid type: floating point \
         `1000000000.0`, expected usize",
    ),
    (
        "num_layers_huge.safetensors",
        "config metadata: num_layers 1000000000 is too large: the ensemble would hold \
         126000000096 parameters (469.4 GiB of f32); at most 2147483648 (8 GiB) are supported",
    ),
    (
        "hidden_2p62.safetensors",
        "config metadata: hidden 4611686018427387904 is too large: the ensemble would hold \
         63802943797675962065403435556842504216 parameters (more than 1024 EiB of f32); at \
         most 2147483648 (8 GiB) are supported",
    ),
    (
        "hidden_1e400.safetensors",
        "config metadata is not a valid model config: number out of range",
    ),
    (
        "too_many_params.safetensors",
        "config metadata: hidden 65536 is too large: the ensemble would hold 811763367960 \
         parameters (3.0 TiB of f32); at most 2147483648 (8 GiB) are supported",
    ),
    (
        "negative_obs_dim.safetensors",
        "config metadata is not a valid model config: invalid value: integer `-3`, expected \
         usize",
    ),
    (
        "unknown_config_field.safetensors",
        "config metadata is not a valid model config: unknown field `dropout`",
    ),
    (
        "shape_mismatch.safetensors",
        "tensor \"layers.0.weight\" has shape [3, 4, 6], the config implies [3, 4, 8]",
    ),
    (
        "dtype_f16.safetensors",
        "tensor \"layers.0.bias\" has dtype F16, expected F32",
    ),
    (
        "dtype_f64.safetensors",
        "tensor \"input_mean\" has dtype F64, expected F32",
    ),
    (
        "duplicate_tensor.safetensors",
        "safetensors header: tensor \"input_std\" appears twice",
    ),
    (
        "header_len_past_end.safetensors",
        "not a readable safetensors file",
    ),
    (
        "unexpected_tensor.safetensors",
        "unexpected tensor \"layers.9.weight\"",
    ),
    ("nan_weight.safetensors", "holds NaN at flat index"),
    (
        "zero_std.safetensors",
        "input_std must be positive, column 1 is 0",
    ),
    (
        "elites_duplicate.safetensors",
        "elites metadata lists member 1 twice",
    ),
    (
        "elites_count.safetensors",
        "elites metadata lists 1 members, the config's num_elites is 2",
    ),
    (
        "elites_out_of_range.safetensors",
        "elite 3 is not a member index of a 3-member ensemble",
    ),
    (
        "wrong_format.safetensors",
        "format is \"mbrl-gpu/policy/1\", expected \"mbrl-gpu/ensemble/1\"",
    ),
];

const HOSTILE_CSVS: &[(&str, &str)] = &[
    ("empty.csv", "the CSV is empty"),
    ("header_only.csv", "the CSV has a header but no transitions"),
    ("ragged.csv", "CSV line 3: 4 fields, the header has 5"),
    (
        "nan.csv",
        "CSV line 2 (transition 0): column act_0 is NaN; only finite values can be trained on",
    ),
    (
        "duplicate_column.csv",
        "CSV header: duplicated column obs_0",
    ),
    (
        "duplicate_reward.csv",
        "CSV header: duplicated column reward",
    ),
    (
        "overflow_f32.csv",
        "CSV line 3: column obs_1 is 1e39, out of f32 range (largest magnitude 3.4028235e38)",
    ),
    (
        "unknown_column.csv",
        "CSV header has unknown columns [\"speed\"]",
    ),
];

/// (file, predict's message, replay's message); None: accepted.
const HOSTILE_JSON: &[(&str, Option<&str>, Option<&str>)] = &[
    (
        "empty.json",
        Some("the input is empty"),
        Some("the input is empty"),
    ),
    (
        "predict_ragged.json",
        Some("obs[1] has 1 values but obs[0] has 2"),
        Some("unknown field `obs`"),
    ),
    (
        "predict_overflow_f32.json",
        Some("obs[1][0] is 1e39, outside the f32 range (largest magnitude 3.4028235e38)"),
        Some("unknown field `obs`"),
    ),
    (
        "predict_unknown_field.json",
        Some("unknown field `ob`, expected `obs` or `act`"),
        Some("unknown field `ob`"),
    ),
    (
        "predict_no_rows.json",
        Some("obs and act are empty: no rows to predict"),
        Some("unknown field `obs`"),
    ),
    (
        "replay_1e400.json",
        Some("unknown field `state`"),
        Some("state[2]: number out of range"),
    ),
    (
        "replay_no_actions.json",
        Some("unknown field `state`"),
        Some("actions is empty: nothing to replay"),
    ),
    (
        "not_an_object.json",
        Some("invalid type: sequence, expected an object"),
        Some("invalid type: sequence, expected an object"),
    ),
    ("predict_valid.json", None, Some("unknown field `obs`")),
    ("predict_bom.json", None, Some("unknown field `act`")),
    ("replay_valid.json", Some("unknown field `state`"), None),
];

#[test]
fn hostile_corpus_should_give_these_errors() {
    let mut problems = Vec::new();
    let mut expect = |what: String, got: Result<(), String>, want: Option<&str>| match (got, want) {
        (Ok(()), None) => {}
        (Err(e), Some(w)) if e.contains(w) => println!("{what}: {e}"),
        (got, want) => problems.push(format!("{what}: got {got:?}, expected {want:?}")),
    };
    for (name, bytes) in corpus("checkpoint") {
        let want = HOSTILE_CHECKPOINTS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| *m);
        let got = checkpoint::from_bytes(&bytes).map(|_| ());
        expect(format!("checkpoint/{name}"), got, want);
    }
    for (name, bytes) in corpus("csv") {
        let want = HOSTILE_CSVS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| *m);
        let text = String::from_utf8(bytes).unwrap();
        let got = csv::parse(&text).map(|_| ()).map_err(|e| e.to_string());
        expect(format!("csv/{name}"), got, want);
    }
    let json_files = corpus("json");
    for (name, bytes) in &json_files {
        let (_, predict, replay) = HOSTILE_JSON
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("json/{name} is not listed in HOSTILE_JSON"));
        let text = std::str::from_utf8(bytes).unwrap();
        let got = json::parse_predict_input(text)
            .map(|_| ())
            .map_err(|e| e.to_string());
        expect(format!("json/{name} as predict input"), got, *predict);
        let got = json::parse_replay_input(text)
            .map(|_| ())
            .map_err(|e| e.to_string());
        expect(format!("json/{name} as replay input"), got, *replay);
    }
    for (name, _, _) in HOSTILE_JSON {
        assert!(
            json_files.iter().any(|(n, _)| n == name),
            "json/{name} is missing"
        );
    }
    for (name, bytes) in corpus("policy") {
        let want = HOSTILE_POLICIES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| *m);
        let got = match check_policy(&bytes) {
            Outcome::Accepted => Ok(()),
            Outcome::Refused(e) => Err(e),
        };
        expect(format!("policy/{name}"), got, want);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A small model with every tensor non-trivial: fitted-looking normaliser, permuted elites.
fn small_model(cfg: ModelConfig, seed: u64) -> Ensemble {
    let mut m = Ensemble::new(cfg, seed).unwrap();
    for (j, (mu, sd)) in m.input_mean.iter_mut().zip(&mut m.input_std).enumerate() {
        *mu = 0.25 * j as f32 - 0.5;
        *sd = 0.5 + 0.125 * j as f32;
    }
    m.elites.reverse();
    m
}

fn base_config() -> ModelConfig {
    ModelConfig {
        obs_dim: 3,
        act_dim: 1,
        ensemble_size: 3,
        hidden: 6,
        num_layers: 2,
        activation: Activation::Silu,
        probabilistic: true,
        learn_reward: false,
        num_elites: 2,
    }
}

/// A safetensors file from a header text and the data, with no checks.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn split(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let r = header_range(bytes).unwrap();
    let serde_json::Value::Object(h) = serde_json::from_slice(&bytes[r.clone()]).unwrap() else {
        panic!("header is not an object")
    };
    (h, bytes[r.end..].to_vec())
}

fn join(h: &serde_json::Map<String, serde_json::Value>, data: &[u8]) -> Vec<u8> {
    raw_safetensors(&serde_json::to_string(h).unwrap(), data)
}

/// Edit one metadata string (`config`, `elites`, `format`) of a valid checkpoint as text.
fn with_meta(bytes: &[u8], key: &str, f: impl FnOnce(&str) -> String) -> Vec<u8> {
    let (mut h, data) = split(bytes);
    let meta = h["__metadata__"].as_object_mut().unwrap();
    let new = f(meta[key].as_str().unwrap());
    meta.insert(key.into(), new.into());
    join(&h, &data)
}

/// Edit one tensor's header entry (dtype, shape) of a valid checkpoint.
fn with_tensor(bytes: &[u8], name: &str, f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let (mut h, data) = split(bytes);
    f(h.get_mut(name).unwrap());
    join(&h, &data)
}

/// Overwrite the data of one tensor (f32 values) in a valid checkpoint.
fn with_value(bytes: &[u8], name: &str, index: usize, v: f32) -> Vec<u8> {
    let (h, mut data) = split(bytes);
    let start = h[name]["data_offsets"][0].as_u64().unwrap() as usize + 4 * index;
    data[start..start + 4].copy_from_slice(&v.to_le_bytes());
    join(&h, &data)
}

/// Writes `tests/fuzz_corpus/`. Run with `cargo test --test fuzz -- --ignored` after a change
/// of the formats; commit the result.
#[test]
#[ignore]
fn regenerate_corpus() {
    let write = |kind: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(kind);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    // SAC files and a replay buffer, valid and with one hostile header each.
    let sac_cfg = mbrl_gpu::policy::SacConfig {
        hidden: 8,
        ..Default::default()
    };
    let mut sac = mbrl_gpu::policy::Sac::new(sac_cfg, 3, &[-2.0], &[2.0], 1).unwrap();
    sac.updates = 3;
    let policy = policy_files::policy_bytes(&sac).unwrap();
    write("policy", "valid_policy.safetensors", &policy);
    write(
        "policy",
        "valid_critic.safetensors",
        &policy_files::critic_bytes(&sac).unwrap(),
    );
    write(
        "policy",
        "valid_agent.safetensors",
        &policy_files::agent_bytes(&sac).unwrap(),
    );
    let mut replay = mbrl_gpu::policy::Replay::new(3, 1, 4);
    for i in 0..6 {
        replay.push(&[i as f32; 3], &[0.5], -1.0, &[0.0; 3], i == 5);
    }
    write(
        "policy",
        "valid_replay.safetensors",
        &policy_files::replay_bytes(&replay).unwrap(),
    );
    write(
        "policy",
        "hidden_huge_policy.safetensors",
        &with_meta(&policy, "config", |c| {
            c.replace("\"hidden\":8", "\"hidden\":16384")
        }),
    );
    write(
        "policy",
        "obs_dim_huge_policy.safetensors",
        &with_meta(&policy, "obs_dim", |_| "65536".into()),
    );

    // Valid checkpoints: the shapes the readers must keep accepting.
    let good = checkpoint::to_bytes(&small_model(base_config(), 1)).unwrap();
    write("checkpoint", "valid_pets_like.safetensors", &good);
    let linear = ModelConfig {
        ensemble_size: 1,
        num_layers: 0,
        probabilistic: false,
        learn_reward: true,
        num_elites: 1,
        activation: Activation::Tanh,
        ..base_config()
    };
    let b = checkpoint::to_bytes(&small_model(linear, 2)).unwrap();
    write("checkpoint", "valid_linear_reward.safetensors", &b);
    let relu = ModelConfig {
        obs_dim: 2,
        act_dim: 2,
        hidden: 3,
        num_layers: 1,
        activation: Activation::Relu,
        ensemble_size: 4,
        num_elites: 4,
        ..base_config()
    };
    let b = checkpoint::to_bytes(&small_model(relu, 3)).unwrap();
    write("checkpoint", "valid_relu.safetensors", &b);

    // Hostile checkpoints, each one defect in an otherwise valid file.
    let cfg = |from: &str, to: &str| {
        with_meta(&good, "config", |c| {
            assert!(c.contains(from), "{c} lacks {from}");
            c.replace(from, to)
        })
    };
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        (
            "num_layers_1e9.safetensors",
            cfg("\"num_layers\":2", "\"num_layers\":1e9"),
        ),
        (
            "num_layers_huge.safetensors",
            cfg("\"num_layers\":2", "\"num_layers\":1000000000"),
        ),
        (
            "hidden_2p62.safetensors",
            cfg("\"hidden\":6", "\"hidden\":4611686018427387904"),
        ),
        (
            "hidden_1e400.safetensors",
            cfg("\"hidden\":6", "\"hidden\":1e400"),
        ),
        (
            "too_many_params.safetensors",
            cfg(
                "\"hidden\":6,\"num_layers\":2",
                "\"hidden\":65536,\"num_layers\":64",
            ),
        ),
        (
            "negative_obs_dim.safetensors",
            cfg("\"obs_dim\":3", "\"obs_dim\":-3"),
        ),
        (
            "unknown_config_field.safetensors",
            cfg("\"hidden\":6", "\"hidden\":6,\"dropout\":0.1"),
        ),
        (
            "shape_mismatch.safetensors",
            cfg("\"hidden\":6", "\"hidden\":8"),
        ),
        (
            // Same byte count: [3, 1, 6] f32 as [3, 1, 12] f16.
            "dtype_f16.safetensors",
            with_tensor(&good, "layers.0.bias", |t| {
                t["dtype"] = "F16".into();
                t["shape"] = serde_json::json!([3, 1, 12]);
            }),
        ),
        (
            "dtype_f64.safetensors",
            with_tensor(&good, "input_mean", |t| {
                t["dtype"] = "F64".into();
                t["shape"] = serde_json::json!([1, 2]);
            }),
        ),
        ("duplicate_tensor.safetensors", {
            // serde_json's map cannot hold a key twice: splice the text.
            let (h, data) = split(&good);
            let entry = format!(
                "\"input_std\":{}",
                serde_json::to_string(&h["input_std"]).unwrap()
            );
            let text = serde_json::to_string(&h).unwrap();
            assert!(text.contains(&entry));
            let text = text.replacen('{', &format!("{{{entry},"), 1);
            raw_safetensors(&text, &data)
        }),
        ("header_len_past_end.safetensors", {
            let mut b = good.clone();
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) + b.len() as u64;
            b[..8].copy_from_slice(&n.to_le_bytes());
            b
        }),
        ("unexpected_tensor.safetensors", {
            let (mut h, mut data) = split(&good);
            let end = data.len();
            data.extend_from_slice(&[0; 4]);
            h.insert(
                "layers.9.weight".into(),
                serde_json::json!({"dtype": "F32", "shape": [1], "data_offsets": [end, end + 4]}),
            );
            join(&h, &data)
        }),
        (
            "nan_weight.safetensors",
            with_value(&good, "layers.1.weight", 5, f32::NAN),
        ),
        (
            "zero_std.safetensors",
            with_value(&good, "input_std", 1, 0.0),
        ),
        (
            "elites_duplicate.safetensors",
            with_meta(&good, "elites", |_| "[1,1]".into()),
        ),
        (
            "elites_count.safetensors",
            with_meta(&good, "elites", |_| "[0]".into()),
        ),
        (
            "elites_out_of_range.safetensors",
            with_meta(&good, "elites", |_| "[0,3]".into()),
        ),
        (
            "wrong_format.safetensors",
            with_meta(&good, "format", |_| "mbrl-gpu/policy/1".into()),
        ),
    ];
    for (name, bytes) in &hostile {
        write("checkpoint", name, bytes);
    }

    let csvs: &[(&str, &str)] = &[
        (
            "valid.csv",
            "obs_0,obs_1,act_0,next_obs_0,next_obs_1,reward\n\
             0.1,-0.2,0.5,0.11,-0.19,1\n0.11,-0.19,-0.5,0.1,-0.2,0.5\n\
             1e-3,2.5e3,1,0.002,2500.5,-1\n",
        ),
        (
            "valid_reordered_crlf.csv",
            "act_0, next_obs_0 ,obs_0\r\n0.5,1.5,1\r\n\r\n-0.5,1,1.5\r\n",
        ),
        (
            "bom.csv",
            "\u{feff}obs_0,act_0,act_1,next_obs_0\n1,2,3,4\n5,6,7,8\n",
        ),
        ("empty.csv", ""),
        ("header_only.csv", "obs_0,act_0,next_obs_0\n"),
        (
            "ragged.csv",
            "obs_0,obs_1,act_0,next_obs_0,next_obs_1\n1,2,3,4,5\n1,2,3,4\n",
        ),
        ("nan.csv", "obs_0,act_0,next_obs_0\n1,NaN,3\n"),
        (
            "duplicate_column.csv",
            "obs_0,obs_0,act_0,next_obs_0\n1,1,2,3\n",
        ),
        (
            "duplicate_reward.csv",
            "reward,obs_0,act_0,next_obs_0,reward\n0,1,2,3,0\n",
        ),
        (
            "overflow_f32.csv",
            "obs_0,obs_1,act_0,next_obs_0,next_obs_1\n1,2,3,4,5\n1,1e39,3,4,5\n",
        ),
        (
            "unknown_column.csv",
            "obs_0,act_0,next_obs_0,speed\n1,2,3,4\n",
        ),
    ];
    for (name, text) in csvs {
        write("csv", name, text.as_bytes());
    }

    let jsons: &[(&str, &str)] = &[
        ("empty.json", ""),
        (
            "predict_valid.json",
            r#"{"obs": [[0.1, -0.2, 3], [1e-3, 2e3, -0.5]], "act": [[0.5], [-1]]}"#,
        ),
        (
            "predict_bom.json",
            "\u{feff}{\"act\": [[0.5, 0.25]], \"obs\": [[1, 2]]}\n",
        ),
        (
            "predict_ragged.json",
            r#"{"obs": [[1, 2], [3]], "act": [[0], [0]]}"#,
        ),
        (
            "predict_overflow_f32.json",
            r#"{"obs": [[1], [1e39]], "act": [[0], [0]]}"#,
        ),
        (
            "predict_unknown_field.json",
            r#"{"ob": [[1]], "act": [[0]]}"#,
        ),
        ("predict_no_rows.json", r#"{"obs": [], "act": []}"#),
        (
            "replay_valid.json",
            r#"{"state": [0.01, -0.02, 0.03, 1e-5], "actions": [[0.5], [-1], [1]]}"#,
        ),
        (
            "replay_1e400.json",
            r#"{"state": [0, 0, 1e400, 0], "actions": [[0]]}"#,
        ),
        (
            "replay_no_actions.json",
            r#"{"state": [0, 0, 0, 0], "actions": []}"#,
        ),
        ("not_an_object.json", "[[1, 2], [3, 4]]"),
    ];
    for (name, text) in jsons {
        write("json", name, text.as_bytes());
    }
}
