//! The command line as users run it: the real binary, its output and its exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_distillery"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh directory per test, removed at the end.
macro_rules! scratch {
    () => {
        tempfile::tempdir().expect("temp dir")
    };
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn validate_accepts_the_quickstart() {
    let out = run(&["validate", "experiments/quickstart.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.starts_with("ok: experiments/quickstart.yaml is valid"), "{s}");
    assert!(s.contains("8 nodes (18 instances)"), "{s}");
}

#[test]
fn invalid_input_exits_1_with_located_errors_on_stderr() {
    let out = run(&["validate", "tests/specs/bad/unknown-node-setting.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let e = text(&out.stderr);
    assert!(e.contains("error[unknown-key]: nodes.teacher.train.epoch: unknown key `epoch`"), "{e}");
    assert!(e.contains("--> tests/specs/bad/unknown-node-setting.yaml:10:47"), "{e}");
    assert!(e.contains("did you mean `epochs`?"), "{e}");
}

#[test]
fn missing_file_and_bad_flags_are_invalid_input() {
    let dir = scratch!();
    let missing = dir.path().join("nope.yaml");
    let out = run(&["validate", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read experiment file"), "{}", text(&out.stderr));
    let out = run(&["graph", "experiments/quickstart.yaml", "--format", "png"]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn plan_json_lists_every_instance_with_key_and_reason() {
    let dir = scratch!();
    let store = dir.path().to_str().unwrap();
    let out = run(&["plan", "experiments/quickstart.yaml", "--json", "--force", "kd", "--store", store]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 18);
    for n in nodes {
        let key = n["key"].as_str().unwrap();
        assert_eq!(key.len(), 64);
        assert_eq!(n["status"], "run");
        let want = if n["node"].as_str().unwrap().starts_with("kd[") { "forced" } else { "no_entry" };
        assert_eq!(n["reasons"][0]["reason"], want, "{n}");
    }
    // Inputs come before the nodes that read them.
    let pos = |name: &str| nodes.iter().position(|n| n["node"] == name).unwrap();
    assert!(pos("teacher_pt") < pos("teacher") && pos("teacher") < pos("kd[seed=0]"));
    assert_eq!(pos("table"), 17);
}

#[test]
fn plan_is_identical_across_runs_and_spec_formatting() {
    let dir = scratch!();
    let original = std::fs::read_to_string("experiments/quickstart.yaml").unwrap();
    // Same content, reordered top-level sections, comments removed, extra blank lines.
    let mut lines: Vec<&str> = original.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let matrix = lines.iter().position(|l| l.starts_with("matrix:")).unwrap();
    let m = lines.remove(matrix);
    lines.insert(0, m);
    let reformatted = write(dir.path(), "q.yaml", &lines.join("\n\n"));
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let a = run(&["plan", "experiments/quickstart.yaml", "--json", "--store", store]);
    let b = run(&["plan", reformatted.to_str().unwrap(), "--json", "--store", store]);
    let c = run(&["plan", "experiments/quickstart.yaml", "--json", "--store", store]);
    assert_eq!(a.stdout, c.stdout);
    let keys = |o: &Output| -> Vec<(String, String)> {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["nodes"].as_array().unwrap().iter().map(|n| (n["node"].to_string(), n["key"].to_string())).collect()
    };
    assert_eq!(keys(&a), keys(&b));
}

#[test]
fn graph_renders_dot_and_mermaid() {
    let dot = text(&run(&["graph", "experiments/quickstart.yaml"]).stdout);
    assert!(dot.starts_with("digraph \"quickstart\" {"), "{dot}");
    assert!(dot.contains("\"teacher\" -> \"kd[seed=0]\";"), "{dot}");
    let mm = text(&run(&["graph", "experiments/quickstart.yaml", "--format", "mermaid"]).stdout);
    assert!(mm.starts_with("flowchart LR\n"), "{mm}");
}

#[test]
fn schema_is_json_schema_of_the_whole_file() {
    let out = run(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
    for k in ["datasets", "models", "nodes", "matrix", "include", "defaults"] {
        assert!(v["properties"].get(k).is_some(), "schema lacks `{k}`");
    }
    assert!(v["$defs"]["DistillSpec"]["properties"].get("losses").is_some());
}

#[test]
fn an_output_error_is_internal_exit_2() {
    // Writing the schema to a full device fails: our problem, not the user's input.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full exists on Linux");
    let out = bin().arg("schema").stdout(Stdio::from(full)).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).starts_with("internal error: cannot write output"), "{}", text(&out.stderr));
}
