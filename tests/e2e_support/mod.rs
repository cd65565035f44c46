//! What the end-to-end tests of the `distillery` binary share: running it on a spec, and reading
//! the entries of the store it wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// `distillery ARGS SPEC` (no MLflow tracking).
pub fn cli(args: &[&str], spec: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(args)
        .arg(spec)
        .env_remove("MLFLOW_TRACKING_URI")
        .output()
        .unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes `body` as `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

/// The store entry of node `node` (in `.distillery` beside the spec): its folder and manifest.
pub fn entry(dir: &Path, node: &str) -> (PathBuf, Value) {
    for shard in std::fs::read_dir(dir.join(".distillery/objects")).unwrap() {
        for e in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let p = e.unwrap().path();
            let m: Value =
                serde_json::from_str(&std::fs::read_to_string(p.join("manifest.json")).unwrap()).unwrap();
            if m["node"] == node {
                return (p, m);
            }
        }
    }
    panic!("no entry for {node}")
}

pub fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
