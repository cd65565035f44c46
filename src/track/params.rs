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
