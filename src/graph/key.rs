//! Cache keys: a hash of what determines a node's result, and nothing else.
//!
//! key = sha256(canonical JSON of a resolved job's key value, `job::Job::key_value`): its work
//! with every default filled in, its seed, and its inputs' keys by role. Names, key order,
//! comments and whitespace in the YAML therefore never change a key; the device does not either
//! (results on CPU and CUDA are the same experiment).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::spec::DatasetSpec;

/// Bump when the meaning of a cached artifact changes (node code, artifact layout): every key
/// changes with it and old entries are simply never hit again.
/// 2: dataset keys hash every dataset setting (transforms were missing); `model.json` records
/// the preprocessing training applied; a short epoch is a failure.
/// 3: keys hash resolved jobs (defaults included); `model.json` records the engine's model
/// config; teacher outputs are vertices of their own.
/// 4: a trained entry's metrics record its cost and its lineage's (`report::cost`), which reports
/// add up; entries without it would show a fine-tuned student without its pre-training.
pub const FORMAT_VERSION: u32 = 4;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// The key of a canonical JSON value.
    pub fn of(v: &Value) -> CacheKey {
        CacheKey(Sha256::digest(canonical_json(v).as_bytes()).into())
    }

    pub fn hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(DIGITS[(b >> 4) as usize] as char);
            s.push(DIGITS[(b & 15) as usize] as char);
        }
        s
    }

    /// A key from its 64 hex digits.
    pub fn from_hex(s: &str) -> Option<CacheKey> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(CacheKey(k))
    }

    /// The first 12 hex digits, for people.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.short())
    }
}

/// JSON with object keys sorted at every level and no whitespace.
pub fn canonical_json(v: &Value) -> String {
    // serde_json keeps object keys sorted unless some crate in the build turns on its
    // `preserve_order` feature; check once, and sort ourselves only then.
    static MAPS_SORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *MAPS_SORTED.get_or_init(|| json!({"b": 0, "a": 0}).to_string() == r#"{"a":0,"b":0}"#) {
        return v.to_string();
    }
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let b: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(b.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// Fingerprint of a dataset from its settings alone (used until the data layer reads content).
/// (Reads nothing, so it never fails; `resolve::fingerprint` hashes the content.)
pub fn spec_fingerprint(_name: &str, d: &DatasetSpec) -> Result<CacheKey, String> {
    let v = serde_json::to_value(d).expect("dataset settings serialise");
    Ok(CacheKey::of(&json!({ "format": FORMAT_VERSION, "dataset": v })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": null}});
        assert_eq!(canonical_json(&a), r#"{"a":{"x":null,"y":[1,{"c":3,"d":2}]},"b":1}"#);
    }

    #[test]
    fn key_hex_is_sha256() {
        // sha256("1") — the canonical JSON of the number 1.
        let k = CacheKey::of(&json!(1));
        assert_eq!(k.hex(), "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b");
        assert_eq!(k.short(), "6b86b273ff34");
    }
}
