//! `distillery run` end to end on the built-in digits: results, caching, resume after SIGKILL
//! and Ctrl-C, corrupt entries, and two processes on one store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SPEC: &str = r#"
experiment: e2e
datasets:
  pre:  { source: builtin/digits, classes: [0, 1, 2, 3, 4] }
  task: { source: builtin/digits, classes: [5, 6, 7, 8, 9], per_class: 20 }
  test: { source: builtin/digits, classes: [5, 6, 7, 8, 9], split: test }
models:
  big:   { arch: resnet, depth: 8, width: 16 }
  small: { arch: cnn, channels: [8, 16] }
nodes:
  teacher_pt: { train: { model: big, data: pre, epochs: 4 } }
  teacher:    { finetune: { from: teacher_pt, data: task, epochs: 4, batch_size: 32 } }
  scratch:    { train: { model: small, data: task, epochs: 4, batch_size: 32 } }
  kd:         { distill: { teacher: teacher, student: small, data: task, losses: kd, epochs: 4, batch_size: 32 } }
  slow:       { train: { model: big, data: pre, epochs: EPOCHS } }
  table:      { report: { rows: [scratch, kd, teacher], eval: test, columns: [accuracy, train_seconds] } }
"#;

fn spec(dir: &Path, slow_epochs: u32) -> PathBuf {
    let p = dir.join("e2e.yaml");
    std::fs::write(&p, SPEC.replace("EPOCHS", &slow_epochs.to_string())).unwrap();
    p
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_distillery"))
}

fn run(spec: &Path, extra: &[&str]) -> Output {
    let out = bin().arg("run").arg(spec).args(extra).env_remove("MLFLOW_TRACKING_URI").output().unwrap();
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// "N ran, M cached, ..." from the summary line.
fn counts(out: &Output) -> (usize, usize) {
    let e = text(&out.stderr);
    let line = e.lines().rev().find(|l| l.contains(" ran, ")).unwrap_or_else(|| panic!("no summary:\n{e}"));
    let n = |w: &str| -> usize {
        let i = line.find(w).unwrap();
        line[..i].split([' ', ',']).filter(|s| !s.is_empty()).next_back().unwrap().parse().unwrap()
    };
    (n(" ran"), n(" cached"))
}

/// Every store entry: its folder and its manifest.
fn entries(dir: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir.join(".distillery/objects")).unwrap() {
        for e in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let p = e.unwrap().path();
            let m = serde_json::from_str(&std::fs::read_to_string(p.join("manifest.json")).unwrap()).unwrap();
            out.push((p, m));
        }
    }
    out
}

/// sha256 of the stored weights and model info, by node name.
fn stored(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (_, m) in entries(dir) {
        for f in m["files"].as_array().unwrap() {
            let path = f["path"].as_str().unwrap();
            // Timings differ run to run; weights and data-derived files must not.
            if path == "model.safetensors" || path == "model.json" {
                out.push((
                    format!("{}/{path}", m["node"].as_str().unwrap()),
                    f["sha256"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn wait_for(child: &mut Child, log: &Path, needle: &str, limit: Duration) {
    let t0 = Instant::now();
    loop {
        if std::fs::read_to_string(log).unwrap_or_default().contains(needle) {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "process ended before `{needle}`");
        assert!(t0.elapsed() < limit, "no `{needle}` within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_logged(spec: &Path, log: &Path) -> Child {
    let f = std::fs::File::create(log).unwrap();
    bin()
        .arg("run")
        .arg(spec)
        .env_remove("MLFLOW_TRACKING_URI")
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .unwrap()
}

#[test]
fn runs_everything_then_everything_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 1);
    let first = run(&spec, &["-j", "2"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    // Six nodes and the teacher's outputs the distill node reads.
    assert_eq!(counts(&first), (7, 0));
    let table = text(&first.stdout);
    for row in ["| scratch", "| kd", "| teacher"] {
        assert!(table.contains(row), "{table}");
    }
    let t0 = Instant::now();
    let second = run(&spec, &[]);
    assert_eq!(counts(&second), (0, 7));
    assert!(t0.elapsed() < Duration::from_secs(2), "a cached run took {:?}", t0.elapsed());
    assert_eq!(first.stdout, second.stdout, "the cached table is the same table");
    // plan agrees.
    let plan = bin().args(["plan", spec.to_str().unwrap()]).output().unwrap();
    assert!(text(&plan.stdout).contains("0 to run, 7 cached"), "{}", text(&plan.stdout));
}

#[test]
fn sigkill_mid_node_reruns_only_unfinished_nodes_with_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 400);
    let log = dir.path().join("log");
    let mut child = spawn_logged(&spec, &log);
    wait_for(&mut child, &log, "slow  epoch", Duration::from_secs(120));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(std::fs::read_dir(dir.path().join(".distillery/tmp")).unwrap().count() <= 1, true);
    // Let the slow node finish quickly now: same spec except its epochs (a new key for it only).
    let spec_fast = self::spec(dir.path(), 1);
    let resumed = run(&spec_fast, &[]);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed.stderr));
    let (ran, cached) = counts(&resumed);
    assert_eq!(ran + cached, 7);
    assert!(ran < 7, "finished nodes were rerun: {}", text(&resumed.stderr));
    assert!(text(&resumed.stderr).contains("done    slow"));
    // The same spec from scratch in another store gives bit-identical weights.
    let other = tempfile::tempdir().unwrap();
    let spec_other = self::spec(other.path(), 1);
    assert_eq!(run(&spec_other, &[]).status.code(), Some(0));
    assert_eq!(stored(dir.path()), stored(other.path()));
}

#[test]
fn ctrl_c_stops_cleanly_and_the_next_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 400);
    let log = dir.path().join("log");
    let mut child = spawn_logged(&spec, &log);
    wait_for(&mut child, &log, "slow  epoch", Duration::from_secs(120));
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{}", std::fs::read_to_string(&log).unwrap());
    assert!(std::fs::read_to_string(&log).unwrap().contains("stopped slow"));
    assert_eq!(
        std::fs::read_dir(dir.path().join(".distillery/tmp")).unwrap().count(),
        0,
        "nothing half-written"
    );
    let plan = bin().args(["plan", spec.to_str().unwrap()]).output().unwrap();
    let p = text(&plan.stdout);
    assert!(p.lines().any(|l| l.contains("run") && l.contains("slow")), "{p}");
}

#[test]
fn a_corrupt_entry_is_detected_and_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 1);
    assert_eq!(run(&spec, &[]).status.code(), Some(0));
    let before = stored(dir.path());
    // Flip one byte of one stored checkpoint.
    let target = entries(dir.path())
        .into_iter()
        .map(|(p, _)| p.join("model.safetensors"))
        .find(|p| p.exists())
        .unwrap();
    let mut bytes = std::fs::read(&target).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&target, bytes).unwrap();
    let again = run(&spec, &[]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("corrupt"), "{}", text(&again.stderr));
    assert_eq!(counts(&again).0, 1, "only the corrupt node reruns: {}", text(&again.stderr));
    assert_eq!(stored(dir.path()), before, "recomputed bit-identically");
    assert_eq!(std::fs::read_dir(dir.path().join(".distillery/corrupt")).unwrap().count(), 1);
}

#[test]
fn two_runs_on_one_store_compute_each_node_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 1);
    let a = bin()
        .arg("run")
        .arg(&spec)
        .env_remove("MLFLOW_TRACKING_URI")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = bin()
        .arg("run")
        .arg(&spec)
        .env_remove("MLFLOW_TRACKING_URI")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.code(), Some(0), "{}", text(&a.stderr));
    assert_eq!(b.status.code(), Some(0), "{}", text(&b.stderr));
    // The per-key lock makes one process wait for the other and reuse its result: every node
    // is trained exactly once across both.
    let starts = |o: &Output| text(&o.stderr).lines().filter(|l| l.starts_with("  start ")).count();
    assert_eq!(starts(&a) + starts(&b), 7, "{}\n{}", text(&a.stderr), text(&b.stderr));
    assert_eq!(counts(&a).0 + counts(&b).0, 7);
    let third = run(&spec, &[]);
    assert_eq!(counts(&third), (0, 7));
    let kinds = entry_kinds(dir.path());
    assert_eq!(kinds.iter().filter(|k| *k != "teacher_outputs").count(), 6, "one entry a node: {kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "teacher_outputs").count(),
        1,
        "the teacher's outputs, once: {kinds:?}"
    );
}

/// The `kind` of every store entry.
fn entry_kinds(dir: &Path) -> Vec<String> {
    entries(dir).into_iter().map(|(_, m)| m["kind"].as_str().unwrap().to_string()).collect()
}

#[test]
fn teacher_outputs_are_computed_once_and_shared_unless_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tc.yaml");
    // Two students over three seeds.
    let spec_text = SPEC.replace("EPOCHS", "1").replace("  table:", "  au: { distill: { teacher: teacher, student: small, data: task, losses: align_uniform, epochs: 2, batch_size: 32 } }\n  table:")
        + "matrix: { seed: [0, 1, 2] }\n";
    std::fs::write(&p, &spec_text).unwrap();
    let out = run(&p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The teacher is expanded over the seeds too: one set of outputs per teacher instance,
    // shared by that seed's kd and au students.
    let kinds = entry_kinds(dir.path());
    assert_eq!(kinds.iter().filter(|k| *k == "distill").count(), 6, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "teacher_outputs").count(), 3, "{kinds:?}");
    // Off: no cache entry, same nodes run.
    let off = tempfile::tempdir().unwrap();
    let p = off.path().join("tc.yaml");
    std::fs::write(
        &p,
        spec_text
            .replace("losses: kd,", "losses: kd, teacher_cache: off,")
            .replace("losses: align_uniform,", "losses: align_uniform, teacher_cache: off,"),
    )
    .unwrap();
    let out = run(&p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(entry_kinds(off.path()).iter().filter(|k| *k == "teacher_outputs").count(), 0);
}

#[test]
fn a_failing_node_blocks_only_its_dependants() {
    let dir = tempfile::tempdir().unwrap();
    // kd fails at run time (an absurd learning rate makes its loss non-finite); scratch runs.
    let p = dir.path().join("f.yaml");
    std::fs::write(
        &p,
        SPEC.replace("EPOCHS", "1").replace(
            "losses: kd, epochs: 4, batch_size: 32 }",
            "losses: kd, epochs: 4, batch_size: 32, optimizer: { type: sgd, lr: 1.0e30 } }",
        ),
    )
    .unwrap();
    let out = run(&p, &[]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("FAILED  kd"), "{e}");
    assert!(e.contains("blocked table"), "{e}");
    assert!(e.contains("done    scratch"), "{e}");
}

#[test]
fn a_non_finite_loss_stops_the_node_naming_term_and_step_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nan.yaml");
    // An absurd learning rate: the weights blow up after the first update.
    std::fs::write(
        &p,
        SPEC.replace("EPOCHS", "1").replace(
            "losses: kd, epochs: 4, batch_size: 32 }",
            "losses: kd, epochs: 4, batch_size: 32, optimizer: { type: sgd, lr: 1.0e30 } }",
        ),
    )
    .unwrap();
    let out = run(&p, &[]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    let line = e.lines().find(|l| l.contains("FAILED  kd")).unwrap_or_else(|| panic!("{e}"));
    assert!(
        line.contains("loss term")
            && line.contains(" at step ")
            && (line.contains("NaN") || line.contains("inf")),
        "{line}"
    );
    assert!(e.contains("blocked table"), "{e}");
    assert_eq!(
        std::fs::read_dir(dir.path().join(".distillery/tmp")).unwrap().count(),
        0,
        "no half-written entry"
    );
}

#[test]
fn finetune_from_a_safetensors_file_and_a_clear_error_for_the_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 1);
    assert_eq!(run(&spec, &["--only", "teacher_pt"]).status.code(), Some(0));
    // The stored checkpoint is a torchvision-named safetensors file: use it as "hub" weights.
    let weights =
        entries(dir.path()).into_iter().map(|(p, _)| p.join("model.safetensors")).find(|p| p.exists());
    std::fs::copy(weights.unwrap(), dir.path().join("hub.safetensors")).unwrap();
    let hub = |model: &str| {
        format!(
            "datasets:\n  task: {{ source: builtin/digits, classes: [5, 6, 7, 8, 9], per_class: 20 }}\nmodels:\n  big: {{ arch: resnet, depth: 8, width: 16 }}\n  other: {{ arch: resnet, depth: 8, width: 32 }}\nnodes:\n  ft: {{ finetune: {{ weights: hub.safetensors, model: {model}, data: task, epochs: 1, batch_size: 32 }} }}\n"
        )
    };
    let ok = dir.path().join("hub.yaml");
    std::fs::write(&ok, hub("big")).unwrap();
    let out = run(&ok, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bad = dir.path().join("hub-bad.yaml");
    std::fs::write(&bad, hub("other")).unwrap();
    let out = run(&bad, &[]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("FAILED  ft") && e.contains("conv1.weight") && e.contains("shape"), "{e}");
}

/// Regression: an explicit `normalize` was applied in training, but `model.json` recorded the
/// selection's own statistics and evaluation used those (93% in training, 10% on test); a
/// `resize` was applied in training and not at evaluation (a shape error, or worse).
#[test]
fn a_model_is_evaluated_with_the_preprocessing_it_was_trained_with() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("norm.yaml");
    std::fs::write(
        &p,
        r#"
experiment: preprocess
datasets:
  train: { source: builtin/digits, transforms: [ { type: resize, size: 12 }, { type: normalize, mean: [0.9], std: [0.05] } ] }
  test:  { source: builtin/digits, split: test }
models:
  m: { arch: mlp, hidden: [32] }
nodes:
  t: { train: { model: m, data: train, epochs: 4 } }
  e: { evaluate: { model: t, data: test } }
"#,
    )
    .unwrap();
    let out = run(&p, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let by_node = |n: &str| entries(dir.path()).into_iter().find(|(_, m)| m["node"] == n).unwrap();
    let (tdir, t) = by_node("t");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tdir.join("model.json")).unwrap()).unwrap();
    let first = |k: &str| info[k][0].as_f64().unwrap() as f32;
    assert_eq!((first("mean"), first("std")), (0.9, 0.05), "{info}");
    assert_eq!(info["image_shape"], serde_json::json!([1, 12, 12]), "{info}");
    assert_eq!(info["preprocess"]["resize"], 12, "{info}");
    let train_acc = t["metrics"]["final_train_accuracy"].as_f64().unwrap();
    let test_acc = by_node("e").1["metrics"]["accuracy"].as_f64().unwrap();
    assert!(train_acc > 0.8, "training did not learn: {train_acc}");
    assert!(
        test_acc > train_acc - 0.15,
        "test accuracy {test_acc} vs train {train_acc}: not evaluated as trained"
    );
}

/// Every stored file whose bytes do not depend on timing (weights, model info, teacher
/// outputs), by node name.
fn deterministic_files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (_, m) in entries(dir) {
        for f in m["files"].as_array().unwrap() {
            let path = f["path"].as_str().unwrap();
            if ["model.safetensors", "model.json", "features.f32", "logits.f32"].contains(&path) {
                out.push((
                    format!("{}/{path}", m["node"].as_str().unwrap()),
                    f["sha256"].as_str().unwrap().into(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// The launcher seam: `plan --json` writes each node's resolved job, and `distillery worker`
/// runs it in a process of its own against the store, into the entry `run` makes in-process.
#[test]
fn worker_runs_the_jobs_of_plan_json_into_the_entries_run_makes() {
    let a = tempfile::tempdir().unwrap();
    let spec_a = spec(a.path(), 1);
    let out = run(&spec_a, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let b = tempfile::tempdir().unwrap();
    let spec_b = spec(b.path(), 1);
    let plan = bin().args(["plan", "--json"]).arg(&spec_b).output().unwrap();
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let store_b = b.path().join(".distillery");
    // Out of order, a job's inputs are not there yet: the worker says so and writes nothing.
    let jobs = plan["jobs"].as_array().unwrap();
    let kd = jobs.iter().find(|j| j["name"] == "kd").unwrap();
    let file = b.path().join("kd.json");
    std::fs::write(&file, kd.to_string()).unwrap();
    let early = bin().arg("worker").arg(&file).arg("--store").arg(&store_b).output().unwrap();
    assert_eq!(early.status.code(), Some(1));
    assert!(text(&early.stderr).contains("is not in the store"), "{}", text(&early.stderr));
    // In the plan's order (inputs first), each job in its own process.
    for (i, job) in jobs.iter().enumerate() {
        let file = b.path().join(format!("job{i}.json"));
        std::fs::write(&file, serde_json::to_string_pretty(job).unwrap()).unwrap();
        let w = bin().arg("worker").arg(&file).arg("--store").arg(&store_b).output().unwrap();
        assert_eq!(w.status.code(), Some(0), "{}: {}", job["name"], text(&w.stderr));
    }
    assert_eq!(deterministic_files(a.path()), deterministic_files(b.path()), "bit for bit");
    // And `run` finds every one of them.
    let again = run(&spec_b, &[]);
    assert_eq!(counts(&again), (0, 7), "{}", text(&again.stderr));
    // A job whose contents were edited does not match its key: refused, not run.
    let mut edited = jobs[0].clone();
    edited["work"]["train"]["loop"]["batch_size"] = 7.into();
    std::fs::write(&file, edited.to_string()).unwrap();
    let w = bin().arg("worker").arg(&file).arg("--store").arg(&store_b).output().unwrap();
    assert_eq!(w.status.code(), Some(1));
    assert!(text(&w.stderr).contains("does not match its contents"), "{}", text(&w.stderr));
}

/// Teacher outputs are vertices of the graph: gc keeps them while a spec reads them.
#[test]
fn gc_keeps_referenced_teacher_outputs_and_removes_them_when_unreferenced() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 1);
    assert_eq!(run(&spec, &[]).status.code(), Some(0));
    let outputs = |d: &Path| entry_kinds(d).iter().filter(|k| *k == "teacher_outputs").count();
    assert_eq!(outputs(dir.path()), 1);
    let gc = bin().arg("gc").arg(&spec).output().unwrap();
    assert_eq!(gc.status.code(), Some(0), "{}", text(&gc.stderr));
    assert!(text(&gc.stdout).starts_with("removed 0 entries"), "{}", text(&gc.stdout));
    assert_eq!(outputs(dir.path()), 1);
    // Without the distill node (and the report that reads it), nothing reads the outputs.
    let other = dir.path().join("other.yaml");
    let text_other: String = SPEC
        .replace("EPOCHS", "1")
        .lines()
        .filter(|l| !l.trim_start().starts_with("kd:") && !l.trim_start().starts_with("table:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&other, text_other).unwrap();
    let gc = bin().arg("gc").arg(&other).arg("--store").arg(dir.path().join(".distillery")).output().unwrap();
    assert_eq!(gc.status.code(), Some(0), "{}", text(&gc.stderr));
    assert_eq!(outputs(dir.path()), 0);
}

/// `pretrained:` loads the file's weights into the model (here a linear probe keeps them
/// frozen, so the stored backbone is the file's, bit for bit); a file missing a tensor fails
/// the node naming the tensor and where `pretrained:` is written.
#[test]
fn pretrained_weights_are_loaded_and_a_bad_file_names_the_tensor_and_the_setting() {
    use distillery::engine::safetensors::{read, write};
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pretrained/resnet8_w4_digits5.safetensors");
    std::fs::copy(&fixture, dir.path().join("pre.safetensors")).unwrap();
    let yaml = r#"
experiment: pretrained
datasets:
  task: { source: builtin/digits, classes: [5, 6, 7, 8, 9], per_class: 20 }
models:
  r: { arch: resnet, depth: 8, width: 4, pretrained: pre.safetensors }
nodes:
  lp: { train: { model: r, data: task, epochs: 1, batch_size: 32, freeze: backbone } }
"#;
    let spec = dir.path().join("p.yaml");
    std::fs::write(&spec, yaml).unwrap();
    let out = run(&spec, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (entry, _) = entries(dir.path()).into_iter().find(|(_, m)| m["node"] == "lp").unwrap();
    let stored = read(&entry.join("model.safetensors")).unwrap();
    let file = read(&fixture).unwrap();
    let backbone: Vec<&String> = stored.keys().filter(|k| !k.starts_with("fc.")).collect();
    assert!(backbone.len() > 10, "{backbone:?}");
    for k in backbone {
        assert_eq!(stored[k], file[k], "{k} is not the pre-trained tensor");
    }
    // The head is the task's own (trained from its initialisation), not the file's.
    assert_ne!(stored["fc.weight"], file["fc.weight"]);

    // A file without conv1.weight: the node fails, naming the tensor and the setting's place.
    let mut broken = file.clone();
    broken.remove("conv1.weight");
    write(&dir.path().join("pre.safetensors"), &broken, &Default::default()).unwrap();
    let out = run(&spec, &[]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("conv1.weight"), "{e}");
    assert!(e.contains("p.yaml:6:") && e.contains("models.r.pretrained"), "{e}");
}
