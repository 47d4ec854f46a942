//! Every hyper-parameter reachable without editing code: a preset, then a TOML file
//! (`--config FILE.toml`, e.g. the `config.toml` a run wrote), then `--set section.key=value`
//! overrides, each layer checked key by key against the configuration it changes.
//!
//! The mechanism is generic over any serde configuration, so every algorithm command uses the
//! same one. A key that the configuration does not have, or a value of the wrong type, is
//! refused with the key's dotted name; nothing is silently ignored.
use crate::{invalid, Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use toml::{Table, Value};

/// Largest configuration file read: real ones are a few hundred bytes, and the limit keeps a
/// wrong path (a dataset, a device file) from being read whole into memory.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Read a TOML file as a table (a UTF-8 BOM is accepted, as editors on Windows write one).
pub fn read_table(path: &Path) -> Result<Table> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(invalid!("--config {}: not a regular file", path.display()));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(invalid!(
            "--config {}: {} bytes is not a configuration file (at most {MAX_CONFIG_BYTES})",
            path.display(),
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| invalid!("--config {}: not UTF-8 text ({e})", path.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.parse::<Table>()
        .map_err(|e| invalid!("--config {}: not valid TOML: {e}", path.display()))
}

/// Parse one `--set key=value`. The value is TOML (`30`, `1e-3`, `true`, `[1e-4, 2e-4]`,
/// `"ts1"`); a bare word that is not TOML is taken as a string, so `--set propagation=tsinf`
/// needs no quotes.
pub fn parse_set(arg: &str) -> Result<(String, Value)> {
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| invalid!("--set {arg:?}: expected key=value, e.g. planner.horizon=30"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|p| p.trim().is_empty()) {
        return Err(invalid!(
            "--set {arg:?}: the key must be dotted names, e.g. planner.horizon"
        ));
    }
    let raw = raw.trim();
    let value = match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t.remove("v").expect("the key parsed above"),
        Err(_) => Value::String(raw.to_string()),
    };
    Ok((key.to_string(), value))
}

/// The TOML table of a configuration.
pub fn to_table<T: Serialize>(cfg: &T) -> Result<Table> {
    Table::try_from(cfg).map_err(|e| invalid!("configuration to TOML: {e}"))
}

/// `T` from a table, with the message naming the setting when serde names one.
pub fn from_table<T: DeserializeOwned>(t: Table) -> Result<T> {
    Value::Table(t)
        .try_into()
        .map_err(|e: toml::de::Error| invalid!("configuration: {}", e.message().trim()))
}

/// Where a value came from, for messages: `--config FILE` or `--set`.
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    File(&'a Path),
    Set,
}

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "--config {}", p.display()),
            Origin::Set => write!(f, "--set"),
        }
    }
}

/// Apply every key of `over` onto `base` (recursively for tables). A key that `base` has must
/// keep its type (an integer may stand for a float, a single number for a one-element list);
/// a key `base` lacks is accepted only when `T` deserialises with it (an optional setting
/// that is unset, such as `train.patience`), otherwise refused by its dotted name.
pub fn merge<T: DeserializeOwned>(base: &mut Table, over: &Table, origin: Origin) -> Result<()> {
    let mut leaves = vec![];
    flatten(over, &mut vec![], &mut leaves);
    for (path, v) in leaves {
        set_leaf::<T>(base, &path, v, origin)?;
    }
    Ok(())
}

/// Apply one dotted `key = value` onto `base`, with the same checks as [`merge`].
pub fn set<T: DeserializeOwned>(base: &mut Table, key: &str, value: Value) -> Result<()> {
    let path: Vec<String> = key.split('.').map(|p| p.trim().to_string()).collect();
    set_leaf::<T>(base, &path, value, Origin::Set)
}

fn flatten(t: &Table, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
    for (k, v) in t {
        prefix.push(k.clone());
        match v {
            Value::Table(sub) => flatten(sub, prefix, out),
            _ => out.push((prefix.clone(), v.clone())),
        }
        prefix.pop();
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

/// The table holding `path`'s last key; every parent must already be a section of `root`.
fn parent_mut<'a>(root: &'a mut Table, path: &[String], origin: Origin) -> Result<&'a mut Table> {
    let mut cur = root;
    for (i, p) in path[..path.len() - 1].iter().enumerate() {
        let dotted = path[..=i].join(".");
        cur = match cur.get_mut(p) {
            Some(Value::Table(t)) => t,
            Some(_) => {
                return Err(invalid!(
                    "{origin} {}: {dotted} is a setting, not a section",
                    path.join(".")
                ))
            }
            None => {
                return Err(invalid!(
                    "{origin} {}: there is no section {dotted}",
                    path.join(".")
                ))
            }
        };
    }
    Ok(cur)
}

fn set_leaf<T: DeserializeOwned>(
    root: &mut Table,
    path: &[String],
    v: Value,
    origin: Origin,
) -> Result<()> {
    let dotted = path.join(".");
    let key = path.last().expect("keys are never empty").clone();
    let parent = parent_mut(root, path, origin)?;
    // `none` unsets an optional setting (TOML has no null), e.g. `fixed_log_std=none`: the
    // setting then takes the value its absence means. A string setting keeps `none` as text.
    let unset = v.as_str() == Some("none")
        && matches!(parent.get(&key), Some(old) if !matches!(old, Value::String(_) | Value::Table(_)));
    let previous = match parent.get_mut(&key) {
        Some(Value::Table(_)) => {
            return Err(invalid!(
                "{origin} {dotted}: is a section of settings, not {}",
                type_name(&v)
            ))
        }
        Some(_) if unset => parent.remove(&key),
        Some(old) => {
            let new = coerce(old, &v).ok_or_else(|| {
                invalid!(
                    "{origin} {dotted} = {v}: expected {} (currently {old})",
                    type_name(old)
                )
            })?;
            Some(std::mem::replace(old, new))
        }
        None => {
            parent.insert(key.clone(), v.clone());
            None
        }
    };
    // Judged at once on the whole configuration, so a message names this key alone: a key
    // new to its table must be one `T` knows (an unset option), and a value must fit (a
    // negative count, an unknown mode).
    if let Err(e) = from_table::<T>(root.clone()) {
        let was_absent = previous.is_none();
        let parent = parent_mut(root, path, origin)?;
        match previous {
            Some(p) => {
                parent.insert(key, p);
            }
            None => {
                parent.remove(&key);
            }
        }
        let e = e.to_string();
        if unset {
            return Err(invalid!(
                "{origin} {dotted} = none: this setting is required and cannot be unset"
            ));
        }
        // `none` for a known optional setting that is unset already: the table is back as
        // it was, and nothing changes.
        if was_absent && v.as_str() == Some("none") && !e.contains("unknown field") {
            return Ok(());
        }
        let e = e.strip_prefix("configuration: ").unwrap_or(&e);
        return Err(invalid!("{origin} {dotted} = {v}: {e}"));
    }
    Ok(())
}

/// `new` converted to the type of `old`, or None when the types disagree.
fn coerce(old: &Value, new: &Value) -> Option<Value> {
    match (old, new) {
        (Value::Float(_), Value::Integer(i)) => Some(Value::Float(*i as f64)),
        (Value::Array(_), Value::Array(_)) => Some(new.clone()),
        // A single value for a list setting (`train.weight_decay=1e-4`): a one-element list.
        (Value::Array(_), Value::Integer(_) | Value::Float(_)) => {
            Some(Value::Array(vec![new.clone()]))
        }
        (a, b) if std::mem::discriminant(a) == std::mem::discriminant(b) => Some(new.clone()),
        _ => None,
    }
}

/// The dotted keys whose values differ between two configurations, as `key: a → b`.
pub fn differences<T: Serialize>(a: &T, b: &T) -> Result<Vec<String>> {
    let (mut la, mut lb) = (vec![], vec![]);
    flatten(&to_table(a)?, &mut vec![], &mut la);
    flatten(&to_table(b)?, &mut vec![], &mut lb);
    let mut out = vec![];
    for (k, va) in &la {
        match lb.iter().find(|(kb, _)| kb == k) {
            Some((_, vb)) if vb == va => {}
            Some((_, vb)) => out.push(format!("{}: {va} → {vb}", k.join("."))),
            None => out.push(format!("{}: {va} → unset", k.join("."))),
        }
    }
    for (k, vb) in &lb {
        if !la.iter().any(|(ka, _)| ka == k) {
            out.push(format!("{}: unset → {vb}", k.join(".")));
        }
    }
    Ok(out)
}

/// The configuration as TOML text, as `config.toml` and `--print-config` show it.
pub fn to_toml<T: Serialize>(cfg: &T) -> Result<String> {
    toml::to_string(cfg).map_err(|e| invalid!("configuration to TOML: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        horizon: usize,
        alpha: f32,
        decay: Vec<f32>,
        patience: Option<usize>,
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        planner: Inner,
    }

    fn base() -> Outer {
        Outer {
            name: "a".into(),
            planner: Inner {
                horizon: 15,
                alpha: 0.1,
                decay: vec![1.0],
                patience: None,
            },
        }
    }

    fn apply(sets: &[&str]) -> Result<Outer> {
        let mut t = to_table(&base())?;
        for s in sets {
            let (k, v) = parse_set(s)?;
            set::<Outer>(&mut t, &k, v)?;
        }
        from_table(t)
    }

    #[test]
    fn sets_should_change_exactly_the_named_settings() {
        let c = apply(&[
            "planner.horizon=30",
            "planner.alpha=1",
            "planner.decay=2e-4",
            "planner.patience=5",
            "name=bare-word",
        ])
        .unwrap();
        assert_eq!(c.planner.horizon, 30);
        assert_eq!(c.planner.alpha, 1.0);
        assert_eq!(c.planner.decay, vec![2e-4]);
        assert_eq!(c.planner.patience, Some(5));
        assert_eq!(c.name, "bare-word");
    }

    /// `none` unsets an optional setting (and only that); a string setting takes it as text.
    /// `sets` must be refused with a message that holds every one of `words`.
    fn refused(sets: &[&str], words: &[&str]) {
        let e = apply(sets).unwrap_err().to_string();
        assert!(words.iter().all(|w| e.contains(w)), "{e}");
    }

    #[test]
    fn none_should_unset_an_optional_setting_only() {
        let c = apply(&["planner.patience=5", "planner.patience=none"]).unwrap();
        assert_eq!(c.planner.patience, None);
        assert_eq!(c.planner, base().planner);
        // Unset already: nothing changes; an unknown key is still refused by name.
        assert_eq!(apply(&["planner.patience=none"]).unwrap(), base());
        refused(&["planner.patiense=none"], &["planner.patiense"]);
        refused(
            &["planner.horizon=none"],
            &["planner.horizon", "cannot be unset"],
        );
        // Refused without a trace: the setting keeps its value for the next --set.
        let mut t = to_table(&base()).unwrap();
        let (k, v) = parse_set("planner.horizon=none").unwrap();
        assert!(set::<Outer>(&mut t, &k, v).is_err());
        assert_eq!(from_table::<Outer>(t).unwrap(), base());
        assert_eq!(apply(&["name=none"]).unwrap().name, "none");
    }

    #[test]
    fn unknown_keys_and_wrong_types_should_be_refused_by_name() {
        refused(&["planner.horizn=30"], &["planner.horizn", "horizon"]);
        refused(&["plannr.horizon=30"], &["plannr"]);
        refused(&["planner.horizon=abc"], &["planner.horizon", "integer"]);
        refused(&["planner.horizon=1.5"], &["planner.horizon"]);
        refused(&["planner=3"], &["section"]);
        refused(&["planner.horizon=-1"], &["horizon"]);
        assert!(parse_set("horizon").is_err());
        assert!(parse_set("=3").is_err());
        assert!(parse_set("a..b=3").is_err());
    }

    #[test]
    fn a_file_should_merge_like_sets() {
        let mut t = to_table(&base()).unwrap();
        let over: Table = "[planner]\nhorizon = 40\n".parse().unwrap();
        merge::<Outer>(&mut t, &over, Origin::Set).unwrap();
        let c: Outer = from_table(t).unwrap();
        assert_eq!(c.planner.horizon, 40);
        assert_eq!(c.planner.alpha, 0.1);
        let mut t = to_table(&base()).unwrap();
        let over: Table = "[planner]\nhorizon = 40\nbogus = 1\n".parse().unwrap();
        let e = merge::<Outer>(&mut t, &over, Origin::Set)
            .unwrap_err()
            .to_string();
        assert!(e.contains("planner.bogus"), "{e}");
    }
}
