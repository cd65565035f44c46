//! Resuming long runs (issue 15, parts 1 and 2) end to end on the built-in digits: a run killed
//! (SIGKILL) at random moments, or stopped by SIGTERM mid-epoch, and run again until it is done
//! ends with the very bytes of an uninterrupted run, for every node kind that trains: train
//! (with dropout, batch norm, an average and validation), finetune with a frozen backbone,
//! distill with align_uniform and with crd (memory banks, a negative sampler).

mod e2e_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_support::{cli, entry, text};

const SPEC: &str = r#"
experiment: resume
datasets:
  data: { source: builtin/digits, per_class: 30 }
  val:  { source: builtin/digits, split: test, per_class: 10 }
models:
  c:  { arch: cnn, channels: [8, 16] }
  m:  { arch: mlp, hidden: [32] }
  mb: { arch: mobilenetv2, width_mult: 0.25, stem: cifar }
seed: 3
nodes:
  t:   { train: { model: c, data: data, epochs: 4, batch_size: 20, val: val, ema: 0.9, checkpoint_every: EVERY, optimizer: { type: sgd, lr: 0.05, momentum: 0.9 } } }
  mbt: { train: { model: mb, data: data, epochs: 3, batch_size: 30, checkpoint_every: EVERY } }
  lp:  { finetune: { from: t, data: data, freeze: backbone, head_lr_mult: 10, epochs: 3, batch_size: 20, checkpoint_every: EVERY, head: new } }
  au:  { distill: { teacher: t, student: m, data: data, losses: align_uniform, epochs: 3, batch_size: 20, accumulate: 2, checkpoint_every: EVERY } }
  crd: { distill: { teacher: t, student: m, data: data, losses: { crd: { weight: 1, nce_k: 64, dim: 16 } }, epochs: 3, batch_size: 20, checkpoint_every: EVERY } }
"#;

const NODES: [&str; 5] = ["t", "mbt", "lp", "au", "crd"];

fn spec(dir: &Path, every: &str) -> PathBuf {
    e2e_support::write(dir, "r.yaml", &SPEC.replace("EVERY", every))
}

fn spawn(spec: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(["run", "-j", "1"])
        .arg(spec)
        .env_remove("MLFLOW_TRACKING_URI")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn checkpoints(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir.join(".distillery/checkpoints")) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors"))
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Each node's final weights, file by file (model, and the average or best where kept).
fn results(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for node in NODES {
        let (d, _) = entry(dir, node);
        for f in ["model.safetensors", "best.safetensors", "ema.safetensors", "history.jsonl"] {
            if let Ok(bytes) = std::fs::read(d.join(f)) {
                // History rows hold seconds; compare them without.
                let bytes = if f == "history.jsonl" { without_seconds(&bytes) } else { bytes };
                out.push((format!("{node}/{f}"), bytes));
            }
        }
    }
    out
}

fn without_seconds(history: &[u8]) -> Vec<u8> {
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(history).lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        v.as_object_mut().unwrap().remove("epoch_seconds");
        rows.push(v.to_string());
    }
    rows.join("\n").into_bytes()
}

fn same(a: &[(String, Vec<u8>)], b: &[(String, Vec<u8>)]) {
    let names = |r: &[(String, Vec<u8>)]| r.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(a), names(b));
    for ((n, x), (_, y)) in a.iter().zip(b) {
        assert!(x == y, "{n} differs from the uninterrupted run's");
    }
}

fn uninterrupted() -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&["run", "-j", "1"], &spec(dir.path(), "1"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    results(dir.path())
}

/// A small xorshift for the kill times, seeded by the clock (printed, to replay a failure).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn killed_at_random_steps_and_resumed_every_node_ends_bit_for_bit_as_an_uninterrupted_run() {
    let reference = uninterrupted();
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "1");
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("kill-time seed {seed}");
    let mut rng = Rng(seed);
    // Checkpoints present when a process was killed: each is a node stopped mid-run and resumed.
    let mut resumed = BTreeSet::new();
    let mut resumes_said = 0;
    for attempt in 0.. {
        assert!(attempt < 60, "the run never finished");
        let started = std::time::SystemTime::now();
        let mut child = spawn(&spec);
        // Wait for this process to keep a checkpoint of its own, then kill it a random moment
        // later (most often mid-epoch, between two checkpoints).
        let done = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            // (Of a node not stopped yet: every node is killed once at least.)
            let fresh = checkpoints(dir.path()).iter().any(|c| {
                let p = dir.path().join(".distillery/checkpoints").join(c);
                !resumed.contains(c) && p.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= started)
            });
            if fresh {
                std::thread::sleep(Duration::from_millis(rng.below(8)));
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if done.is_none() {
            resumed.extend(checkpoints(dir.path()));
            child.kill().unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let said = text(&out.stdout) + &text(&out.stderr);
        resumes_said += said.matches("resuming from epoch").count();
        for l in said.lines().filter(|l| l.contains("resuming")) {
            eprintln!("{l}");
        }
        // (It may have finished just before the kill.)
        if out.status.code() == Some(0) {
            break;
        }
        assert!(done.is_none(), "the run failed: {said}");
    }
    assert_eq!(resumed.len(), NODES.len(), "every node killed mid-run once at least: {resumed:?}");
    assert!(resumes_said > 0);
    same(&results(dir.path()), &reference);
    assert!(checkpoints(dir.path()).is_empty(), "a committed node's checkpoint is removed");
}

#[cfg(unix)]
#[test]
fn sigterm_keeps_a_checkpoint_mid_epoch_and_a_damaged_or_unwritable_one_costs_a_warning_only() {
    let reference = uninterrupted();
    let term = |dir: &Path| -> String {
        let spec = spec(dir, "auto");
        let child = spawn(&spec);
        // Until the first node is well into its run (its history is being written).
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            let tmp = dir.join(".distillery/tmp");
            let busy = std::fs::read_dir(&tmp).into_iter().flatten().flatten().any(|e| {
                std::fs::read_to_string(e.path().join("history.jsonl")).is_ok_and(|h| h.lines().count() >= 1)
            });
            if busy {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(15));
        let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(ok.success());
        let out = child.wait_with_output().unwrap();
        assert_ne!(out.status.code(), Some(0), "stopped, not done");
        let ck = checkpoints(dir);
        assert_eq!(ck.len(), 1, "one checkpoint, of the node it stopped: {ck:?}");
        ck.into_iter().next().unwrap()
    };

    // Stopped and run again: it says where it resumes and ends as if never stopped.
    let dir = tempfile::tempdir().unwrap();
    term(dir.path());
    let out = cli(&["run", "-j", "1"], &spec(dir.path(), "auto"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("resuming from epoch"), "{said}");
    eprintln!("{}", said.lines().filter(|l| l.contains("resuming")).collect::<Vec<_>>().join("\n"));
    same(&results(dir.path()), &reference);

    // A damaged checkpoint: a warning, and the node trains from its first epoch.
    let dir = tempfile::tempdir().unwrap();
    let name = term(dir.path());
    let p = dir.path().join(".distillery/checkpoints").join(&name);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let out = cli(&["run", "-j", "1"], &spec(dir.path(), "auto"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("is ignored") && said.contains("training from the first epoch"), "{said}");
    assert!(!said.contains("resuming from epoch"), "{said}");
    same(&results(dir.path()), &reference);

    // A checkpoint that cannot be written (here a folder is in its way): warnings, and the run
    // itself is unaffected.
    let dir = tempfile::tempdir().unwrap();
    let name = term(dir.path());
    let p = dir.path().join(".distillery/checkpoints").join(&name);
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    let out = cli(&["run", "-j", "1"], &spec(dir.path(), "1"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("is ignored") && said.contains("no checkpoint kept this time"), "{said}");
    same(&results(dir.path()), &reference);
}

#[test]
fn checkpoint_every_out_of_range_or_of_another_type_is_a_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&["validate"], &spec(dir.path(), "0"));
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("nodes.t.train.checkpoint_every: expected >= 1, got 0"), "{e}");
    assert!(e.contains("r.yaml:12:"), "{e}");
    let out = cli(&["validate"], &spec(dir.path(), "often"));
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("checkpoint_every") && e.contains("a number of epochs or `auto`"), "{e}");
    // A value past any integer type still quotes what was written.
    let out = cli(&["validate"], &spec(dir.path(), "5000000000"));
    assert!(text(&out.stderr).contains("expected <= 1000000, got 5000000000"), "{}", text(&out.stderr));
    let out = cli(&["validate"], &spec(dir.path(), "-2"));
    assert!(text(&out.stderr).contains("checkpoint_every: expected >= 0, got -2"), "{}", text(&out.stderr));
}
