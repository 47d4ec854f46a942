//! Transition CSVs as robots log them: a header naming `obs_0..obs_{n-1}`,
//! `act_0..act_{m-1}`, `next_obs_0..next_obs_{n-1}` and optionally `reward`, in any order,
//! then one numeric row per transition.
use crate::model::Transitions;
use crate::{invalid, Error, Result};
use std::path::Path;

/// Parse CSV text. Errors name the line (1-based, header = line 1) and the column.
pub fn parse(text: &str) -> Result<Transitions> {
    // Spreadsheet programs (Excel's "CSV UTF-8") start the file with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| invalid!("the CSV is empty"))?;
    let cols: Vec<&str> = header.split(',').map(|c| c.trim()).collect();
    let mut seen = std::collections::HashSet::new();
    // Empty names are left to the unknown-column message below.
    if let Some(c) = cols.iter().find(|c| !c.is_empty() && !seen.insert(**c)) {
        return Err(invalid!("CSV header: duplicated column {c}"));
    }
    let find = |prefix: &str| -> Vec<(usize, usize)> {
        let mut v: Vec<(usize, usize)> = cols
            .iter()
            .enumerate()
            .filter_map(|(ci, c)| {
                // Only the canonical spelling (`obs_3`, not `obs_03` or `obs_+3`), so that
                // two names for one column cannot both pass the duplicate check above.
                c.strip_prefix(prefix)
                    .and_then(|rest| {
                        let k = rest.parse::<usize>().ok()?;
                        (k.to_string() == rest).then_some(k)
                    })
                    .map(|k| (k, ci))
            })
            .collect();
        v.sort();
        v
    };
    let obs = find("obs_");
    let act = find("act_");
    let next = find("next_obs_");
    let reward = cols.iter().position(|c| *c == "reward");
    let contiguous = |v: &[(usize, usize)], name: &str| -> Result<Vec<usize>> {
        for (i, (k, _)) in v.iter().enumerate() {
            if *k != i {
                return Err(invalid!(
                    "CSV header: {name} columns must be numbered 0..n without gaps or repeats \
                     (found {name}{k} where {name}{i} was expected)"
                ));
            }
        }
        Ok(v.iter().map(|(_, c)| *c).collect())
    };
    let obs = contiguous(&obs, "obs_")?;
    let act = contiguous(&act, "act_")?;
    let next = contiguous(&next, "next_obs_")?;
    if obs.is_empty() || act.is_empty() {
        return Err(invalid!(
            "CSV header must name obs_0.., act_0.. and next_obs_0.. columns (got: {header})"
        ));
    }
    if next.len() != obs.len() {
        return Err(Error::Shape(format!(
            "CSV header has {} obs_ columns but {} next_obs_ columns",
            obs.len(),
            next.len()
        )));
    }
    let known = obs.len() + act.len() + next.len() + usize::from(reward.is_some());
    if known != cols.len() {
        let extra: Vec<&str> = cols
            .iter()
            .enumerate()
            .filter(|(ci, _)| {
                !obs.contains(ci) && !act.contains(ci) && !next.contains(ci) && Some(*ci) != reward
            })
            .map(|(_, c)| *c)
            .collect();
        return Err(invalid!("CSV header has unknown columns {extra:?}"));
    }
    let mut t = Transitions::new(obs.len(), act.len());
    let mut vals = vec![0.0f32; cols.len()];
    for (li, line) in lines {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != cols.len() {
            return Err(Error::Shape(format!(
                "CSV line {}: {} fields, the header has {}",
                li + 1,
                fields.len(),
                cols.len()
            )));
        }
        for (ci, f) in fields.iter().enumerate() {
            let v: f32 = f.trim().parse().map_err(|_| {
                invalid!(
                    "CSV line {}: column {} is {:?}, not a number",
                    li + 1,
                    cols[ci],
                    f.trim()
                )
            })?;
            if v.is_infinite() && !is_infinity_literal(f.trim()) {
                return Err(invalid!(
                    "CSV line {}: column {} is {}, out of f32 range (largest magnitude {:e})",
                    li + 1,
                    cols[ci],
                    f.trim(),
                    f32::MAX
                ));
            }
            if !v.is_finite() {
                return Err(invalid!(
                    "CSV line {} (transition {}): column {} is {v}; only finite values can be \
                     trained on",
                    li + 1,
                    t.len(),
                    cols[ci]
                ));
            }
            vals[ci] = v;
        }
        let o: Vec<f32> = obs.iter().map(|&c| vals[c]).collect();
        let a: Vec<f32> = act.iter().map(|&c| vals[c]).collect();
        let n: Vec<f32> = next.iter().map(|&c| vals[c]).collect();
        t.push(&o, &a, &n, reward.map(|c| vals[c]));
    }
    if t.is_empty() {
        return Err(invalid!("the CSV has a header but no transitions"));
    }
    Ok(t)
}

/// `inf`, `+Infinity`, ...: the spellings Rust's float parser reads as infinity, as opposed
/// to a finite number too large for f32 (`1e39`), which it also rounds to infinity.
fn is_infinity_literal(s: &str) -> bool {
    let s = s.trim_start_matches(['+', '-']);
    s.eq_ignore_ascii_case("inf") || s.eq_ignore_ascii_case("infinity")
}

pub fn read(path: &Path) -> Result<Transitions> {
    let text = super::json::read_text(path)?;
    parse(&text).map_err(|e| invalid!("{}: {e}", path.display()))
}

/// Render transitions as CSV (header + rows), the inverse of [`parse`].
pub fn render(t: &Transitions) -> String {
    let (o, a) = (t.obs_dim, t.act_dim);
    let mut s = String::new();
    let mut head: Vec<String> = (0..o).map(|i| format!("obs_{i}")).collect();
    head.extend((0..a).map(|i| format!("act_{i}")));
    head.extend((0..o).map(|i| format!("next_obs_{i}")));
    if t.has_reward() {
        head.push("reward".into());
    }
    s.push_str(&head.join(","));
    s.push('\n');
    for r in 0..t.len() {
        let mut row: Vec<String> = t.obs[r * o..(r + 1) * o]
            .iter()
            .map(|v| v.to_string())
            .collect();
        row.extend(t.act[r * a..(r + 1) * a].iter().map(|v| v.to_string()));
        row.extend(t.next_obs[r * o..(r + 1) * o].iter().map(|v| v.to_string()));
        if t.has_reward() {
            row.push(t.reward[r].to_string());
        }
        s.push_str(&row.join(","));
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_should_round_trip_and_accept_any_column_order() {
        let text = "act_0,obs_1,obs_0,next_obs_0,next_obs_1,reward\n0.5,2,1,1.5,2.5,-1\n";
        let t = parse(text).unwrap();
        assert_eq!((t.obs_dim, t.act_dim, t.len()), (2, 1, 1));
        assert_eq!(t.obs, vec![1.0, 2.0]);
        assert_eq!(t.reward, vec![-1.0]);
        let back = parse(&render(&t)).unwrap();
        assert_eq!(back.next_obs, t.next_obs);
    }

    #[test]
    fn csv_errors_should_name_line_and_column() {
        let e = parse("obs_0,act_0,next_obs_0\n1,2,3\n1,nan,3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("act_0") && e.contains("transition 1"),
            "{e}"
        );
        let e = parse("obs_0,act_0,next_obs_0\n1,2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = parse("obs_0,obs_2,act_0,next_obs_0,next_obs_1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("obs_2"), "{e}");
        let e = parse("obs_0,act_0,next_obs_0,speed\n1,2,3,4\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("speed"), "{e}");
    }

    #[test]
    fn csv_should_accept_a_utf8_bom() {
        let t = parse("\u{feff}obs_0,act_0,next_obs_0\n1,2,3\n").unwrap();
        assert_eq!(
            (t.obs, t.act, t.next_obs),
            (vec![1.0], vec![2.0], vec![3.0])
        );
    }

    #[test]
    fn csv_should_name_a_duplicated_column() {
        let e = parse("obs_0,obs_0,act_0,next_obs_0\n1,1,2,3\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "CSV header: duplicated column obs_0");
        let e = parse("obs_0,act_0,reward,next_obs_0,reward\n1,2,0,3,0\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "CSV header: duplicated column reward");
        // Non-canonical numbering is not a second spelling of obs_0.
        let e = parse("obs_0,obs_00,act_0,next_obs_0\n1,1,2,3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown columns [\"obs_00\"]"), "{e}");
    }

    #[test]
    fn csv_should_refuse_values_beyond_f32_by_line_and_column() {
        let e = parse("obs_0,act_0,next_obs_0\n1,2,3\n1,2,-1e39\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "CSV line 3: column next_obs_0 is -1e39, out of f32 range (largest magnitude \
             3.4028235e38)"
        );
        // An explicit infinity is a non-finite value, not an out-of-range one.
        let e = parse("obs_0,act_0,next_obs_0\n1,inf,3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is inf; only finite values"), "{e}");
        // The largest f32 itself is accepted.
        assert!(parse("obs_0,act_0,next_obs_0\n3.4028235e38,0,0\n").is_ok());
    }
}
