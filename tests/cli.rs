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
    // 18 instances and the teacher's outputs they distill from.
    assert_eq!(nodes.len(), 19);
    // Each node's resolved job, as `distillery worker` runs it, with the plan's key.
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), nodes.len());
    for (n, j) in nodes.iter().zip(jobs) {
        assert_eq!((&n["node"], &n["key"]), (&j["name"], &j["key"]));
    }
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
    assert_eq!(pos("table"), 18);
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
fn a_full_disk_on_output_is_exit_1_not_internal() {
    // Writing the schema to a full device fails: the user's environment, not a bug of ours.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full exists on Linux");
    let out = bin().arg("schema").stdout(Stdio::from(full)).output().unwrap();
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.starts_with("error: cannot write output: no space left on the device\n  = help: "), "{e}");
}

#[test]
fn a_closed_output_pipe_exits_1_quietly() {
    // `distillery plan --json FILE | head -1`: the reader is gone before the plan is written.
    let dir = scratch!();
    let mut child = bin()
        .args(["plan", "experiments/quickstart.yaml", "--json", "--store"])
        .arg(dir.path().join("store"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "a closed pipe is not worth a message");
}

/// A tiny experiment on the built-in digits: a teacher, and kd over a two-key matrix
/// (instances `kd[losses.kd.temperature=2,seed=0]` ...).
const TINY: &str = "\
experiment: tiny
datasets:
  task: { source: builtin/digits, classes: [0, 1], per_class: 4 }
models:
  small: { arch: mlp, hidden: [8] }
defaults:
  train: { epochs: 1, batch_size: 4 }
  distill: { epochs: 1, batch_size: 4 }
nodes:
  teacher: { train: { model: small, data: task }, seed: 0 }
  kd:
    distill: { teacher: teacher, student: small, data: task, losses: kd }
    matrix: { losses.kd.temperature: [2, 4] }
matrix: { seed: [0, 1] }
";

/// Exit code and stderr of the binary run in `dir`, after checking it neither panicked nor
/// called the failure an internal error.
fn run_in(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = bin().current_dir(dir).args(args).output().unwrap();
    let e = text(&out.stderr);
    assert!(!e.contains("internal error") && !e.contains("panicked"), "{args:?}: {e}");
    (out.status.code(), text(&out.stdout), e)
}

#[test]
fn store_paths_root_cannot_write_are_exit_1_naming_the_path() {
    let dir = scratch!();
    let spec = write(dir.path(), "tiny.yaml", TINY);
    let file = write(dir.path(), "a-file", "not a folder");
    let objects_file = dir.path().join("store-with-file");
    std::fs::create_dir(&objects_file).unwrap();
    write(&objects_file, "objects", "not a folder");
    let cases = [
        (file.clone(), "it exists and is not a folder"),
        (file.join("store"), "a part of the path is a file, not a folder"),
        (PathBuf::from("/proc/distillery-no-such/store"), "no such file or folder"),
        (objects_file.clone(), "it exists and is not a folder"),
    ];
    for (store, reason) in cases {
        let (code, _, e) =
            run_in(dir.path(), &["run", spec.to_str().unwrap(), "--store", store.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{}: {e}", store.display());
        assert!(e.starts_with("error: "), "{e}");
        assert!(e.contains(&*store.display().to_string()), "names the path: {e}");
        assert!(e.contains(reason), "{}: {e}", store.display());
        assert!(e.contains("= help: ") && e.contains("--store DIR"), "says what to do: {e}");
    }
    // /sys refuses new folders even to root (permission denied, or a read-only mount).
    let (code, _, e) =
        run_in(dir.path(), &["run", spec.to_str().unwrap(), "--store", "/sys/distillery-store"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("/sys/distillery-store") && e.contains("= help: "), "{e}");
}

#[test]
fn runs_sync_and_gc_on_a_missing_store_say_so_and_create_nothing() {
    let dir = scratch!();
    let spec = write(dir.path(), "tiny.yaml", TINY);
    let spec = spec.to_str().unwrap();
    let missing = dir.path().join("typo");
    let m = missing.to_str().unwrap();
    let beside = dir.path().join(".distillery");
    for args in [
        vec!["runs", "--store", m],
        vec!["runs"],
        vec!["runs", spec],
        vec!["runs", spec, "--json"],
        vec!["sync", "--to", "http://127.0.0.1:9", "--store", m],
        vec!["sync", "--to", "http://127.0.0.1:9", spec],
        vec!["gc", spec, "--store", m],
        vec!["gc", spec],
    ] {
        let (code, out, e) = run_in(dir.path(), &args);
        assert_eq!(code, Some(1), "{args:?}: {e}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(e.starts_with("error: no store at "), "{args:?}: {e}");
        assert!(e.contains(".distillery") || e.contains("typo"), "names the path: {e}");
        assert!(e.contains("the folder does not exist") && e.contains("= help: "), "{args:?}: {e}");
    }
    assert!(!missing.exists() && !beside.exists(), "a command that reads created a store");
    let (code, _, e) = run_in(dir.path(), &["runs", "nope.yaml"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("cannot read experiment file nope.yaml"), "{e}");
}

#[test]
fn runs_and_sync_find_the_store_run_wrote_beside_the_file() {
    let dir = scratch!();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write(&dir.path().join("sub"), "tiny.yaml", TINY);
    let (code, _, e) = run_in(dir.path(), &["run", "sub/tiny.yaml"]);
    assert_eq!(code, Some(0), "{e}");
    assert!(dir.path().join("sub/.distillery/runs").is_dir());
    let listed = |args: &[&str]| {
        let (code, out, e) = run_in(dir.path(), args);
        assert_eq!(code, Some(0), "{args:?}: {e}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array().unwrap().len()
    };
    let n = listed(&["runs", "sub/tiny.yaml", "--json"]);
    assert_eq!(n, 1 + 5, "the invocation and its five nodes");
    assert_eq!(listed(&["runs", "--store", "sub/.distillery", "--json"]), n);
    // --store wins over the file's store.
    let (code, _, e) = run_in(dir.path(), &["runs", "sub/tiny.yaml", "--store", "elsewhere"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("no store at elsewhere"), "{e}");
    // Without a file: ./.distillery, which here does not exist.
    let (code, _, e) = run_in(dir.path(), &["runs"]);
    assert_eq!((code, e.starts_with("error: no store at .distillery")), (Some(1), true), "{e}");
    // sync reads the same store (the server is down: records stay, exit 1 asks to retry).
    let (code, _, e) = run_in(dir.path(), &["sync", "--to", "http://127.0.0.1:9", "sub/tiny.yaml"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(!e.contains("no store"), "{e}");
}

#[test]
fn plan_caps_the_node_column_and_prints_long_names_in_full() {
    // The width came from the longest name: 100,000 characters made `plan` panic (a format width
    // over u16::MAX); now the column is capped (render_plan's unit test takes 100,000).
    let dir = scratch!();
    let long = "n".repeat(128); // the longest name a spec may declare
    let spec = TINY.replace(
        "  teacher: {",
        &format!("  {long}: {{ train: {{ model: small, data: task }}, seed: 1 }}\n  teacher: {{"),
    );
    let spec = write(dir.path(), "long.yaml", &spec);
    let (code, out, e) = run_in(dir.path(), &["plan", spec.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{e}");
    assert!(out.contains(&format!("  run     {long}  train   ")), "in full, unpadded:\n{out}");
    assert!(out.contains(&format!("  run     {:<40}  train   ", "teacher")), "column capped at 40:\n{out}");
}

#[test]
fn force_accepts_a_partial_instance_selector() {
    let dir = scratch!();
    let spec = write(dir.path(), "tiny.yaml", TINY);
    let plan = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["plan", spec.to_str().unwrap(), "--json"];
        all.extend(args);
        let (code, out, e) = run_in(dir.path(), &all);
        assert_eq!(code, Some(0), "{args:?}: {e}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let forced = v["nodes"].as_array().unwrap().iter().filter(|n| n["reasons"][0]["reason"] == "forced");
        forced.map(|n| n["node"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(
        plan(&["--force", "kd[seed=1]"]),
        ["kd[losses.kd.temperature=2,seed=1]", "kd[losses.kd.temperature=4,seed=1]"]
    );
    assert_eq!(
        plan(&["--force", "kd[ seed=1 , losses.kd.temperature=4 ]"]),
        ["kd[losses.kd.temperature=4,seed=1]"]
    );
    assert_eq!(
        plan(&["--force", "kd[losses.kd.temperature=2,seed=0]"]),
        ["kd[losses.kd.temperature=2,seed=0]"]
    );
    assert_eq!(plan(&["--force", "kd"]).len(), 4);
    assert_eq!(
        plan(&["--force", "teacher", "--force", "kd[seed=0]", "--force", "kd[losses.kd.temperature=2]"])
            .len(),
        4
    );
}

#[test]
fn unknown_nodes_and_unmatched_selectors_are_all_reported_with_candidates() {
    let dir = scratch!();
    let spec = write(dir.path(), "tiny.yaml", TINY);
    let spec = spec.to_str().unwrap();
    let bad = ["kdd", "kd[seed=7]", "kd[sed=1]", "kd[seed]", "teacher[seed=0]", "zzz"];
    let mut args = vec!["plan", spec];
    for b in bad {
        args.extend(["--force", b]);
    }
    let (code, out, e) = run_in(dir.path(), &args);
    assert_eq!(code, Some(1), "{e}");
    assert!(out.is_empty(), "{out}");
    for want in [
        "error: --force kdd: no node named `kdd`\n  = help: did you mean `kd`?",
        "error: --force kd[seed=7]: no instance of `kd` has seed=7\n  = help: its instances are `kd[losses.kd.temperature=2,seed=0]`, ",
        "error: --force kd[sed=1]: `kd` has no matrix key `sed`\n  = help: did you mean `seed`?",
        "error: --force kd[seed]: `seed` is not key=value",
        "error: --force teacher[seed=0]: `teacher` has no matrix key `seed`\n  = help: `teacher` has no matrix instances: select it as `teacher`",
        "error: --force zzz: no node named `zzz`\n  = help: the nodes are `teacher`, `kd`",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    // run resolves --only, --from and --force the same way, before anything runs.
    for flag in ["--only", "--from", "--force"] {
        let (code, _, e) = run_in(dir.path(), &["run", spec, flag, "kd[seed=7]"]);
        assert_eq!(code, Some(1), "{e}");
        assert!(e.starts_with(&format!("error: {flag} kd[seed=7]: no instance of `kd` has seed=7")), "{e}");
        assert!(!e.contains("running"), "{e}");
    }
}

#[test]
fn run_only_and_force_with_a_partial_selector_run_those_instances() {
    let dir = scratch!();
    let spec = write(dir.path(), "tiny.yaml", TINY);
    let spec = spec.to_str().unwrap();
    let (code, _, e) = run_in(dir.path(), &["run", spec]);
    assert_eq!(code, Some(0), "{e}");
    let (code, _, e) = run_in(dir.path(), &["run", spec, "--force", "kd[seed=1]"]);
    assert_eq!(code, Some(0), "{e}");
    assert!(e.contains("2 ran, 4 cached, 0 failed"), "{e}");
    let (code, _, e) =
        run_in(dir.path(), &["run", spec, "--only", "kd[losses.kd.temperature=4]", "--force", "kd"]);
    assert_eq!(code, Some(0), "{e}");
    assert!(e.contains("2 ran, "), "{e}");
}

/// `plan` takes run's selectors and says what `run` with the same flags then does.
#[test]
fn plan_explains_only_and_from_and_run_does_what_it_says() {
    let dir = scratch!();
    let spec = write(dir.path(), "tiny.yaml", TINY);
    let spec = spec.to_str().unwrap();
    let (code, _, e) = run_in(dir.path(), &["run", spec]);
    assert_eq!(code, Some(0), "{e}");
    let (code, out, e) = run_in(dir.path(), &["plan", spec, "--from", "teacher", "--only", "kd[seed=1]"]);
    assert_eq!(code, Some(0), "{e}");
    // teacher is cached and not selected; the seed-1 kd instances are downstream of it.
    assert!(out.starts_with("plan for `tiny`: 6 nodes, 2 to run, 4 cached\n"), "{out}");
    let runs: Vec<&str> = out.lines().filter(|l| l.trim_start().starts_with("run ")).collect();
    assert_eq!(runs.len(), 2, "{out}");
    assert!(
        runs.iter().all(|l| l.contains("seed=1]") && l.ends_with("downstream of `teacher` (--from)")),
        "{out}"
    );
    let (code, _, e) = run_in(dir.path(), &["run", spec, "--from", "teacher", "--only", "kd[seed=1]"]);
    assert_eq!(code, Some(0), "{e}");
    assert!(e.contains("2 ran, 4 cached, 0 failed"), "{e}");
    // Not cached and not selected: skipped, and said so in the header.
    let fresh = scratch!();
    let spec2 = write(fresh.path(), "tiny.yaml", TINY);
    let (code, out, e) = run_in(fresh.path(), &["plan", spec2.to_str().unwrap(), "--only", "teacher"]);
    assert_eq!(code, Some(0), "{e}");
    assert!(out.starts_with("plan for `tiny`: 6 nodes, 1 to run, 0 cached, 5 skipped\n"), "{out}");
}

/// `worker` reads one job: anything else is a clear error (exit 1), never a hang or a panic.
#[test]
fn worker_refuses_what_is_not_a_job() {
    let dir = scratch!();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let garbage = write(dir.path(), "g.json", "not json");
    let empty = write(dir.path(), "e.json", r#"{ "jobs": [] }"#);
    let partial = write(dir.path(), "p.json", r#"{ "name": "x" }"#);
    for (file, says) in [
        ("/dev/zero", "not a regular file"),
        (garbage.to_str().unwrap(), "not a distillery job"),
        (empty.to_str().unwrap(), "the plan holds 0 jobs"),
        (partial.to_str().unwrap(), "missing field"),
    ] {
        let (code, _, e) = run_in(dir.path(), &["worker", file, "--store", store]);
        assert_eq!(code, Some(1), "{file}: {e}");
        assert!(e.contains(says), "{file}: {e}");
    }
}

/// `device: cuda:0` on a machine or binary that cannot run CUDA: `validate` and `run` fail before
/// any node starts, with one located error that says what is missing and what to do — never a
/// panic, a hang or a half-made store entry. (`scripts/test` builds this suite without the `cuda`
/// feature; a CUDA build on a machine without a driver gives the same error naming libcuda.)
#[test]
fn a_cuda_device_that_cannot_run_here_is_one_error_before_anything_runs() {
    let dir = scratch!();
    let spec = "experiment: e\ndevice: cuda:0\ndatasets: { d: { source: builtin/digits, per_class: 20 } }\n\
                models: { m: { arch: mlp, hidden: [8] } }\nnodes: { a: { train: { model: m, data: d, epochs: 1 } } }\n";
    let f = write(dir.path(), "gpu.yaml", spec);
    for cmd in ["validate", "run"] {
        let out = run(&[cmd, f.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {}", text(&out.stderr));
        let e = text(&out.stderr);
        assert!(e.contains("error[device]: device: device `cuda:0` cannot run here:"), "{cmd}: {e}");
        assert!(e.contains("gpu.yaml:2:9"), "{cmd}: located at the value: {e}");
        if cfg!(feature = "cuda") {
            assert!(e.contains("libcuda") || e.contains("no GPU") || e.contains("NVRTC"), "{e}");
        } else {
            assert!(e.contains("--features cuda"), "{cmd}: {e}");
        }
        assert!(e.contains("distillery doctor"), "{e}");
        assert!(!e.contains("panicked"), "{e}");
    }
    assert!(!dir.path().join(".distillery/objects").exists(), "nothing was computed");
    // `auto` runs on the CPU and says so once.
    let f = write(dir.path(), "auto.yaml", &spec.replace("cuda:0", "auto"));
    let out = run(&["run", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let e = text(&out.stderr);
    assert_eq!(e.matches("device: auto: running on the CPU").count(), 1, "{e}");
    assert!(!e.contains("panicked") && !e.contains("backtrace"), "{e}");
    // --gpus with a CPU experiment is refused, naming the fix.
    let f = write(dir.path(), "cpu.yaml", &spec.replace("cuda:0", "cpu"));
    let out = run(&["run", f.to_str().unwrap(), "--gpus", "0,1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("set `device: cuda`"), "{}", text(&out.stderr));
}

#[test]
fn doctor_reports_the_build_the_cpu_and_cuda() {
    let out = run(&["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.starts_with(&format!("distillery {}\n", env!("CARGO_PKG_VERSION"))), "{s}");
    let isa = ["avx512", "avx2", "baseline"];
    assert!(s.lines().any(|l| l.starts_with("cpu: ") && isa.iter().any(|i| l.contains(i))), "{s}");
    if cfg!(feature = "cuda") {
        assert!(s.contains("features: cuda") && s.contains("driver (libcuda):"), "{s}");
    } else {
        assert!(s.contains("features: none (CPU only)") && s.contains("cuda: not built"), "{s}");
    }
    let out = run(&["doctor", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cuda"]["built"], cfg!(feature = "cuda"));
    assert!(v["cpu_isa"].is_string() && v["cuda"]["gpus"].is_array(), "{v}");
}
