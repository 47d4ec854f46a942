//! JSON inputs of the command line, parsed as carefully as checkpoints and CSVs:
//!
//! - `predict --input`: `{"obs": [[...], ...], "act": [[...], ...]}`, one row per query;
//! - `env replay --input`: `{"state": [...], "actions": [[...], ...]}`, the state being
//!   Gymnasium's `env.unwrapped.state`.
//!
//! Unknown or repeated fields, numbers outside f32 (`1e39` would silently become `inf`),
//! ragged rows and empty inputs are errors that name the field, row and column (0-based, as
//! the JSON arrays index them) and, from `serde_json`, the line and column in the text. A
//! UTF-8 byte-order mark is accepted. At most [`MAX_VALUES`] numbers are read.
use crate::{invalid, Error, Result};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::path::Path;

/// Most numbers (plus rows) one input may hold: 10 million, ~40 MB of f32 — a thousand times
/// the largest batch `predict` is useful for — so that a runaway file is refused instead of
/// growing vectors until the allocator aborts.
pub const MAX_VALUES: usize = 10_000_000;

/// `predict`'s input: `obs[r]` and `act[r]` are the observation and action of query row r.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictInput {
    pub obs: Vec<Vec<f32>>,
    pub act: Vec<Vec<f32>>,
}

/// `env replay`'s input: the simulator state to start from and one action per step.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayInput {
    pub state: Vec<f64>,
    pub actions: Vec<Vec<f32>>,
}

const PREDICT_FORM: &str = r#"{"obs": [[...], ...], "act": [[...], ...]}"#;
const REPLAY_FORM: &str = r#"{"state": [...], "actions": [[...], ...]}"#;

/// Read a text file (CSV or JSON) and drop a leading UTF-8 byte-order mark. Bytes that are
/// not UTF-8 are an error naming the offset of the first bad byte.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        invalid!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// Parse `predict`'s input. Checks that obs and act have the same, non-zero number of rows
/// and that each is rectangular; the model's dimensions are checked by the caller.
pub fn parse_predict_input(text: &str) -> Result<PredictInput> {
    let mut v = parse_object(text, PREDICT_FORM, &["obs", "act"], &[Kind::F32Rows; 2])?;
    let (act, obs) = (v.pop().rows(), v.pop().rows());
    let od = rectangular("obs", &obs)?;
    let ad = rectangular("act", &act)?;
    if obs.len() != act.len() {
        return Err(Error::Shape(format!(
            "{} observations but {} actions",
            obs.len(),
            act.len()
        )));
    }
    if obs.is_empty() {
        return Err(invalid!("obs and act are empty: no rows to predict"));
    }
    if od == 0 || ad == 0 {
        return Err(invalid!(
            "rows must not be empty (obs rows have {od} values, act rows {ad})"
        ));
    }
    Ok(PredictInput { obs, act })
}

/// Parse `env replay`'s input. Checks that the state and the action list are not empty and
/// that every action has the same length; the environment checks the dimensions.
pub fn parse_replay_input(text: &str) -> Result<ReplayInput> {
    let mut v = parse_object(
        text,
        REPLAY_FORM,
        &["state", "actions"],
        &[Kind::F64List, Kind::F32Rows],
    )?;
    let (actions, state) = (v.pop().rows(), v.pop().list());
    if state.is_empty() {
        return Err(invalid!("state is empty"));
    }
    if actions.is_empty() {
        return Err(invalid!("actions is empty: nothing to replay"));
    }
    rectangular("actions", &actions)?;
    Ok(ReplayInput { state, actions })
}

/// The common row length, or an error naming the first row that differs from row 0.
fn rectangular(field: &str, rows: &[Vec<f32>]) -> Result<usize> {
    let Some(first) = rows.first() else {
        return Ok(0);
    };
    match rows.iter().position(|r| r.len() != first.len()) {
        Some(i) => Err(Error::Shape(format!(
            "{field}[{i}] has {} values but {field}[0] has {}: every row must have the same \
             length",
            rows[i].len(),
            first.len()
        ))),
        None => Ok(first.len()),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// `[[f32, ...], ...]`
    F32Rows,
    /// `[f64, ...]`
    F64List,
}

enum Parsed {
    Rows(Vec<Vec<f32>>),
    List(Vec<f64>),
}

/// `Option<Parsed>` as `parse_object` returns it: every field present, of its declared kind.
trait Take {
    fn rows(self) -> Vec<Vec<f32>>;
    fn list(self) -> Vec<f64>;
}

impl Take for Option<Parsed> {
    fn rows(self) -> Vec<Vec<f32>> {
        match self {
            Some(Parsed::Rows(r)) => r,
            _ => unreachable!("parse_object returns every field with its declared kind"),
        }
    }
    fn list(self) -> Vec<f64> {
        match self {
            Some(Parsed::List(l)) => l,
            _ => unreachable!("parse_object returns every field with its declared kind"),
        }
    }
}

/// Parse an object with exactly the fields `names` (of kinds `kinds`), each once. Returns
/// one value per field, in the order of `names`.
fn parse_object(
    text: &str,
    form: &str,
    names: &'static [&'static str],
    kinds: &'static [Kind],
) -> Result<Vec<Parsed>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(invalid!("the input is empty; expected {form}"));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = de
        .deserialize_map(Object { names, kinds })
        .and_then(|v| de.end().map(|()| v));
    let values = parsed.map_err(|e| {
        let msg = e.to_string();
        // Our own messages start with the element they are about (`obs[2][1] ...`) or the
        // bound; serde's (syntax, missing or unknown field) get the expected form appended.
        if names.iter().any(|n| msg.starts_with(&format!("{n}["))) || msg.starts_with("more than") {
            invalid!("{msg}")
        } else {
            invalid!("{msg}; expected {form}")
        }
    })?;
    values
        .into_iter()
        .zip(names)
        .map(|(v, name)| v.ok_or_else(|| invalid!("missing field `{name}`; expected {form}")))
        .collect()
}

struct Object {
    names: &'static [&'static str],
    kinds: &'static [Kind],
}

impl<'de> Visitor<'de> for Object {
    type Value = Vec<Option<Parsed>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an object with fields {:?}", self.names)
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out: Vec<Option<Parsed>> = self.names.iter().map(|_| None).collect();
        // Shared by every field: the bound is on the whole input.
        let mut budget = MAX_VALUES;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let Some(i) = self.names.iter().position(|n| *n == key) else {
                return Err(de::Error::unknown_field(&key, self.names));
            };
            if out[i].is_some() {
                return Err(de::Error::duplicate_field(self.names[i]));
            }
            let field = self.names[i];
            out[i] = Some(match self.kinds[i] {
                Kind::F32Rows => Parsed::Rows(map.next_value_seed(Rows {
                    field,
                    budget: &mut budget,
                })?),
                Kind::F64List => Parsed::List(map.next_value_seed(List {
                    field,
                    budget: &mut budget,
                })?),
            });
        }
        Ok(out)
    }
}

/// Take one value from the budget, or fail.
fn charge<E: de::Error>(budget: &mut usize) -> std::result::Result<(), E> {
    *budget = budget
        .checked_sub(1)
        .ok_or_else(|| E::custom(format!("more than {MAX_VALUES} values in one input")))?;
    Ok(())
}

/// serde_json appends " at line L column C" to an error; when we wrap an inner error, the
/// outer one gets the position again, so the inner copy is dropped.
fn without_position(msg: String) -> String {
    match msg.rfind(" at line ") {
        Some(i)
            if msg[i + 9..]
                .split(" column ")
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) =>
        {
            msg[..i].to_string()
        }
        _ => msg,
    }
}

/// One number at `what` (e.g. `obs[2][1]`), as f64 and finite (JSON has no NaN or
/// infinity; serde_json refuses `1e400` as out of range).
fn number<'de, A: SeqAccess<'de>>(
    seq: &mut A,
    what: impl Fn() -> String,
) -> std::result::Result<Option<f64>, A::Error> {
    seq.next_element::<f64>()
        .map_err(|e| de::Error::custom(format!("{}: {}", what(), without_position(e.to_string()))))
}

struct Rows<'b> {
    field: &'static str,
    budget: &'b mut usize,
}

impl<'de> DeserializeSeed<'de> for Rows<'_> {
    type Value = Vec<Vec<f32>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Rows<'_> {
    type Value = Vec<Vec<f32>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} as a list of rows of numbers", self.field)
    }

    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut rows = Vec::new();
        loop {
            // A row costs a value too: `[[],[],...]` allocates per row.
            charge(self.budget)?;
            let row = seq.next_element_seed(Row {
                field: self.field,
                row: rows.len(),
                budget: &mut *self.budget,
            })?;
            match row {
                Some(r) => rows.push(r),
                None => return Ok(rows),
            }
        }
    }
}

struct Row<'b> {
    field: &'static str,
    row: usize,
    budget: &'b mut usize,
}

impl<'de> DeserializeSeed<'de> for Row<'_> {
    type Value = Vec<f32>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Row<'_> {
    type Value = Vec<f32>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}[{}] as a list of numbers", self.field, self.row)
    }

    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut row = Vec::new();
        loop {
            charge(self.budget)?;
            let at = || format!("{}[{}][{}]", self.field, self.row, row.len());
            let Some(v) = number(&mut seq, at)? else {
                return Ok(row);
            };
            let x = v as f32;
            if !x.is_finite() {
                return Err(de::Error::custom(format!(
                    "{} is {v:e}, outside the f32 range (largest magnitude {:e})",
                    at(),
                    f32::MAX
                )));
            }
            row.push(x);
        }
    }
}

struct List<'b> {
    field: &'static str,
    budget: &'b mut usize,
}

impl<'de> DeserializeSeed<'de> for List<'_> {
    type Value = Vec<f64>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for List<'_> {
    type Value = Vec<f64>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} as a list of numbers", self.field)
    }

    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut list = Vec::new();
        loop {
            charge(self.budget)?;
            let at = || format!("{}[{}]", self.field, list.len());
            let Some(v) = number(&mut seq, at)? else {
                return Ok(list);
            };
            // serde_json never yields a non-finite f64; kept so the claim does not rest on it.
            if !v.is_finite() {
                return Err(de::Error::custom(format!("{} is {v}", at())));
            }
            list.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predict_input_should_parse_and_accept_a_bom() {
        let p = parse_predict_input("\u{feff}{\"obs\": [[1, 2.5]], \"act\": [[-1]]}").unwrap();
        assert_eq!(p.obs, vec![vec![1.0, 2.5]]);
        assert_eq!(p.act, vec![vec![-1.0]]);
    }

    #[test]
    fn predict_input_errors_should_name_the_element() {
        let e = |t: &str| parse_predict_input(t).unwrap_err().to_string();
        let m = e(r#"{"obs": [[1, 2], [3, 1e39]], "act": [[0], [0]]}"#);
        assert!(m.contains("obs[1][1]") && m.contains("f32 range"), "{m}");
        let m = e(r#"{"obs": [[1, 2], [3, 1e400]], "act": [[0], [0]]}"#);
        assert!(m.contains("obs[1][1]") && m.contains("out of range"), "{m}");
        assert_eq!(m.matches("at line").count(), 1, "{m}");
        let m = e(r#"{"obs": [[1, 2], [3]], "act": [[0], [0]]}"#);
        assert!(m.contains("obs[1] has 1 values but obs[0] has 2"), "{m}");
        let m = e(r#"{"obs": [[1]], "act": [[0]], "extra": 1}"#);
        assert!(m.contains("unknown field `extra`"), "{m}");
        let m = e(r#"{"obs": [[1]], "obs": [[1]], "act": [[0]]}"#);
        assert!(m.contains("duplicate field `obs`"), "{m}");
        let m = e(r#"{"obs": [[1]]}"#);
        assert!(m.contains("missing field `act`"), "{m}");
        let m = e(r#"{"obs": [[1]], "act": [[0], [1]]}"#);
        assert!(m.contains("1 observations but 2 actions"), "{m}");
        let m = e(r#"{"obs": [], "act": []}"#);
        assert!(m.contains("empty"), "{m}");
        let m = e(r#"{"obs": [[]], "act": [[]]}"#);
        assert!(m.contains("rows must not be empty"), "{m}");
        let m = e("  \u{feff}");
        assert!(m.contains("expected"), "{m}");
        let m = e("\u{feff} \n");
        assert!(m.contains("the input is empty"), "{m}");
        let m = e(r#"{"obs": [[1, NaN]], "act": [[0]]}"#);
        assert!(m.contains("obs[0][1]"), "{m}");
        let m = e(r#"{"obs": [[1, "2"]], "act": [[0]]}"#);
        assert!(m.contains("obs[0][1]") && m.contains("invalid type"), "{m}");
        let m = e(r#"{"obs": [[1]], "act": [[0]]} trailing"#);
        assert!(m.contains("trailing"), "{m}");
    }

    #[test]
    fn replay_input_should_parse_and_refuse_empty_or_ragged_input() {
        let r = parse_replay_input(r#"{"state": [0.1, 1e300], "actions": [[0.5], [-1]]}"#).unwrap();
        assert_eq!(r.state, vec![0.1, 1e300]);
        assert_eq!(r.actions, vec![vec![0.5], vec![-1.0]]);
        let e = |t: &str| parse_replay_input(t).unwrap_err().to_string();
        assert!(e(r#"{"state": [], "actions": [[0]]}"#).contains("state is empty"));
        assert!(e(r#"{"state": [1], "actions": []}"#).contains("nothing to replay"));
        let m = e(r#"{"state": [1], "actions": [[0], [0, 1]]}"#);
        assert!(m.contains("actions[1] has 2 values"), "{m}");
        let m = e(r#"{"state": [1, 1e999], "actions": [[0]]}"#);
        assert!(m.contains("state[1]"), "{m}");
        let m = e(r#"{"state": [1], "actions": [[1e39]]}"#);
        assert!(
            m.contains("actions[0][0]") && m.contains("f32 range"),
            "{m}"
        );
    }

    #[test]
    fn inputs_beyond_the_value_bound_should_be_refused() {
        let mut t = String::from("{\"obs\": [");
        let row = "[0,0,0,0,0,0,0,0,0,0],".repeat(MAX_VALUES / 10 + 1);
        t.push_str(&row);
        t.push_str("[0]], \"act\": []}");
        let m = parse_predict_input(&t).unwrap_err().to_string();
        assert!(m.contains("more than 10000000 values"), "{m}");
    }
}
