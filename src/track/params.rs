//! Params as MLflow stores them: flat string keys and string values, with MLflow's limits
//! checked here because the server truncates long values silently.

use serde_json::Value;

/// A key or value MLflow would refuse or silently cut, or an unusable artifact path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what} {key:?}: {reason}")]
pub struct InvalidEntity {
    pub what: &'static str,
    pub key: String,
    pub reason: String,
}

/// Longest metric, param or tag key MLflow accepts.
pub const MAX_KEY_LEN: usize = 250;
/// Longest param value MLflow stores without truncating it.
pub const MAX_PARAM_VALUE_LEN: usize = 6000;
/// Longest tag value MLflow stores without truncating it.
pub const MAX_TAG_VALUE_LEN: usize = 8000;

/// A resolved job's key value (`Job::key_value`: `{format, kind, seed, inputs, work}`) as people
/// read it, before [`flatten_params`]: the work's settings at the top (`loop.batch_size`, not
/// `work.train.loop.batch_size`), each input as `{ key, name }` (`inputs.teacher.name`), a loss
/// list by loss name (`losses.kd.temperature`), an enum written `{"AdamW": {..}}` as
/// `{ type: adamw, .. }`, and the key's format as `cache_format`. `names` maps each input role
/// to the names of its inputs.
pub fn readable(key_value: &Value, names: &[(String, String)]) -> Value {
    let mut out = serde_json::Map::new();
    let Value::Object(top) = key_value else { return key_value.clone() };
    for (k, v) in top {
        match k.as_str() {
            "format" => {
                out.insert("cache_format".into(), v.clone());
            }
            "inputs" => {
                let mut inputs = serde_json::Map::new();
                for (role, key) in v.as_object().into_iter().flatten() {
                    let mut of: Vec<&str> =
                        names.iter().filter(|(r, _)| r == role).map(|(_, n)| n.as_str()).collect();
                    of.sort();
                    let name = match of.as_slice() {
                        [one] => Value::String(one.to_string()),
                        many => Value::from(many.to_vec()),
                    };
                    inputs.insert(role.clone(), serde_json::json!({ "key": key, "name": name }));
                }
                out.insert("inputs".into(), Value::Object(inputs));
            }
            "work" => match v {
                Value::Object(w) if w.len() == 1 => {
                    for (wk, wv) in w.values().next().and_then(Value::as_object).into_iter().flatten() {
                        out.insert(wk.clone(), tidy(wv));
                    }
                }
                other => {
                    out.insert("work".into(), tidy(other));
                }
            },
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// Enums as `{ type, .. }`, loss lists by name, recursively.
fn tidy(v: &Value) -> Value {
    match v {
        Value::Object(m) if m.len() == 1 => {
            let (k, inner) = m.iter().next().expect("one entry");
            match inner {
                Value::Object(fields) if k.starts_with(|c: char| c.is_ascii_uppercase()) => {
                    let mut o = serde_json::Map::new();
                    o.insert("type".into(), Value::String(k.to_ascii_lowercase()));
                    for (fk, fv) in fields {
                        o.insert(fk.clone(), tidy(fv));
                    }
                    Value::Object(o)
                }
                _ => Value::Object(m.iter().map(|(k, v)| (k.clone(), tidy(v))).collect()),
            }
        }
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), tidy(v))).collect()),
        Value::Array(items)
            if !items.is_empty() && items.iter().all(|i| i.get("loss").is_some_and(Value::is_string)) =>
        {
            let mut o = serde_json::Map::new();
            for i in items {
                let mut fields = i.as_object().expect("an object with `loss`").clone();
                let name =
                    fields.remove("loss").and_then(|n| n.as_str().map(String::from)).unwrap_or_default();
                o.insert(name, tidy(&Value::Object(fields)));
            }
            Value::Object(o)
        }
        Value::Array(items) => Value::Array(items.iter().map(tidy).collect()),
        other => other.clone(),
    }
}

/// A node's final metrics (its stored result's `metrics`) as MLflow metric points: every number
/// under a dotted key (`accuracy`, `cost.own.seconds`, `evaluated.kd/seed_0.accuracy`: each part
/// through [`metric_name`]), booleans as 0 and 1; strings, lists and keys MLflow would still
/// refuse (too long) are left out.
pub fn final_metrics(m: &Value) -> Vec<(String, f64)> {
    fn walk(v: &Value, prefix: String, out: &mut Vec<(String, f64)>) {
        match v {
            Value::Object(map) => {
                for (k, c) in map {
                    // An instance name as a key (a report's `evaluated`) in MLflow's alphabet.
                    let k = metric_name(k);
                    walk(c, if prefix.is_empty() { k } else { format!("{prefix}.{k}") }, out);
                }
            }
            Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    out.push((prefix, x));
                }
            }
            Value::Bool(b) => out.push((prefix, f64::from(u8::from(*b)))),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(m, String::new(), &mut out);
    out.retain(|(k, _)| !k.is_empty() && check_key("metric", k).is_ok());
    out
}

/// A node instance's name as part of a metric key: `kd[losses.kd.temperature=2,seed=0]` ->
/// `kd/losses.kd.temperature_2/seed_0` (MLflow keys take no brackets, `=` or `,`).
pub fn metric_name(instance: &str) -> String {
    let mut s = String::with_capacity(instance.len());
    for c in instance.chars() {
        match c {
            '[' | ',' => s.push('/'),
            ']' => {}
            c if c.is_ascii_alphanumeric() || "_-. :".contains(c) => s.push(c),
            _ => s.push('_'),
        }
    }
    s.trim_end_matches('/').to_string()
}

/// Flattens a resolved node config into MLflow params with dotted keys.
///
/// Objects nest with `.`; an array of scalars stays one param (its JSON text, e.g. `[0,1,2]`,
/// so a class list is one readable value rather than one param per element); an array holding
/// objects or arrays is indexed (`rows.0.name`). Strings are stored without quotes. An empty
/// object or array keeps its key with the value `{}` or `[]` so nothing silently disappears.
/// Keys come out sorted, so the same config always gives the same params.
pub fn flatten_params(config: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    flatten_into(config, String::new(), &mut out);
    out.sort();
    out
}

fn flatten_into(value: &Value, prefix: String, out: &mut Vec<(String, String)>) {
    let join = |key: &str| {
        if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") }
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                flatten_into(child, join(key), out);
            }
        }
        Value::Array(items) if items.iter().any(|v| v.is_object() || v.is_array()) => {
            for (idx, child) in items.iter().enumerate() {
                flatten_into(child, join(&idx.to_string()), out);
            }
        }
        Value::String(s) => out.push((prefix, s.clone())),
        // A bare scalar at the top has no key: name it "value" rather than emit an empty key.
        other if prefix.is_empty() => out.push(("value".to_string(), other.to_string())),
        other => out.push((prefix, other.to_string())),
    }
}

/// Checks a metric, param or tag key against MLflow's rules: at most 250 characters of
/// letters, digits, `_ - . / space :`, and no path tricks (`/a`, `a//b`, `a/../b`), because MLflow
/// may store keys as file names.
pub(crate) fn check_key(what: &'static str, key: &str) -> Result<(), InvalidEntity> {
    let invalid = |reason: String| Err(InvalidEntity { what, key: key.to_string(), reason });
    if key.is_empty() {
        return invalid("must not be empty".into());
    }
    let n_chars = key.chars().count();
    if n_chars > MAX_KEY_LEN {
        return invalid(format!("is {n_chars} characters, MLflow allows at most {MAX_KEY_LEN}"));
    }
    if let Some(bad) =
        key.chars().find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ' ' | ':')))
    {
        return invalid(format!(
            "contains {bad:?}; use letters, digits, underscores, dashes, periods, spaces, colons and slashes"
        ));
    }
    if key.starts_with('/')
        || key.ends_with('/')
        || key.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return invalid("must be a relative path without empty, '.' or '..' segments".into());
    }
    Ok(())
}

pub(crate) fn check_param(key: &str, value: &str) -> Result<(), InvalidEntity> {
    check_key("param", key)?;
    check_value("param", key, value, MAX_PARAM_VALUE_LEN)
}

pub(crate) fn check_tag(key: &str, value: &str) -> Result<(), InvalidEntity> {
    // Tags MLflow sets itself (mlflow.parentRunId ...) follow the same key rules.
    check_key("tag", key)?;
    check_value("tag", key, value, MAX_TAG_VALUE_LEN)
}

fn check_value(what: &'static str, key: &str, value: &str, max: usize) -> Result<(), InvalidEntity> {
    let n_chars = value.chars().count();
    if n_chars > max {
        return Err(InvalidEntity {
            what,
            key: key.to_string(),
            reason: format!(
                "value is {n_chars} characters, MLflow keeps at most {max} and would cut it silently"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(config: Value, expect: &[(&str, &str)]) {
        let got = flatten_params(&config);
        let want: Vec<(String, String)> =
            expect.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_key_value_reads_as_the_spec_does() {
        let kv = json!({
            "format": 4, "kind": "distill", "seed": 0,
            "inputs": { "teacher": "abc", "data": "def", "rows/0": ["k1", "k2"] },
            "work": { "distill": {
                "losses": [{ "loss": "kd", "weight": 1, "temperature": 4.0 }, { "loss": "ce", "weight": 1 }],
                "loop": { "trainer": { "optimizer": { "AdamW": { "lr": 0.001 } }, "schedule": "None" } },
                "student": { "arch": { "arch": { "Cnn": { "channels": [8, 16] } } } } } },
        });
        let names: Vec<(String, String)> =
            [("teacher", "t"), ("data", "task"), ("rows/0", "b[seed=1]"), ("rows/0", "b[seed=0]")]
                .iter()
                .map(|(r, n)| (r.to_string(), n.to_string()))
                .collect();
        check(
            readable(&kv, &names),
            &[
                ("cache_format", "4"),
                ("inputs.data.key", "def"),
                ("inputs.data.name", "task"),
                ("inputs.rows/0.key", r#"["k1","k2"]"#),
                ("inputs.rows/0.name", r#"["b[seed=0]","b[seed=1]"]"#),
                ("inputs.teacher.key", "abc"),
                ("inputs.teacher.name", "t"),
                ("kind", "distill"),
                ("loop.trainer.optimizer.lr", "0.001"),
                ("loop.trainer.optimizer.type", "adamw"),
                ("loop.trainer.schedule", "None"),
                ("losses.ce.weight", "1"),
                ("losses.kd.temperature", "4.0"),
                ("losses.kd.weight", "1"),
                ("seed", "0"),
                ("student.arch.arch.channels", "[8,16]"),
                ("student.arch.arch.type", "cnn"),
            ],
        );
    }

    #[test]
    fn final_metrics_are_the_numbers_under_dotted_keys() {
        let m = json!({ "accuracy": 0.5, "table": "| a |", "cost": { "own": { "seconds": 2, "nodes": ["a"] } },
                        "joined": true, "device": "cpu", "evaluated": { "kd[seed=0]": { "accuracy": 0.25 } } });
        assert_eq!(
            final_metrics(&m),
            [
                ("accuracy".to_string(), 0.5),
                ("cost.own.seconds".into(), 2.0),
                ("evaluated.kd/seed_0.accuracy".into(), 0.25),
                ("joined".into(), 1.0)
            ]
        );
        assert_eq!(metric_name("kd[losses.kd.temperature=2,seed=0]"), "kd/losses.kd.temperature_2/seed_0");
        assert!(
            check_key("metric", &format!("evaluated.{}.accuracy", metric_name("a[b=c d,seed=1]"))).is_ok()
        );
    }

    #[test]
    fn nested_objects_become_dotted_keys() {
        check(
            json!({"lr": 0.001, "losses": {"kd": {"weight": 1, "temperature": 4.0}, "ce": 1}, "model": "small"}),
            &[
                ("losses.ce", "1"),
                ("losses.kd.temperature", "4.0"),
                ("losses.kd.weight", "1"),
                ("lr", "0.001"),
                ("model", "small"),
            ],
        );
    }

    #[test]
    fn scalar_arrays_stay_one_param_and_object_arrays_are_indexed() {
        check(
            json!({"classes": [0, 1, 2], "rows": [{"name": "kd"}, {"name": "au"}], "tags": ["a", "b"]}),
            &[("classes", "[0,1,2]"), ("rows.0.name", "kd"), ("rows.1.name", "au"), ("tags", r#"["a","b"]"#)],
        );
    }

    #[test]
    fn empty_containers_null_and_bools_keep_their_keys() {
        check(
            json!({"extra": {}, "list": [], "none": null, "flip": true}),
            &[("extra", "{}"), ("flip", "true"), ("list", "[]"), ("none", "null")],
        );
        check(json!(3), &[("value", "3")]);
    }

    #[test]
    fn keys_are_checked_like_mlflow() {
        assert!(check_key("metric", "train/loss").is_ok());
        assert!(check_key("metric", "val acc:top-1").is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", "./a", "a/", "loss!", "a\nb"] {
            assert!(check_key("metric", bad).is_err(), "{bad:?} should be rejected");
        }
        let long = "k".repeat(251);
        let err = check_key("metric", &long).unwrap_err().to_string();
        assert!(err.contains("251 characters, MLflow allows at most 250"), "{err}");
        assert!(check_key("metric", &"k".repeat(250)).is_ok());
    }

    #[test]
    fn long_param_values_are_refused_not_truncated() {
        assert!(check_param("p", &"v".repeat(6000)).is_ok());
        let err = check_param("p", &"v".repeat(6001)).unwrap_err().to_string();
        assert_eq!(
            err,
            r#"param "p": value is 6001 characters, MLflow keeps at most 6000 and would cut it silently"#
        );
        assert!(check_tag("t", &"v".repeat(8001)).is_err());
    }
}
