//! Training recipes end to end on the built-in digits (issue 14): a new head when the classes
//! change (decided when resolving, shown by `plan`, recorded in model.json), gradient
//! accumulation and the weight EMA through a real run, and costs that count the loss heads and
//! the teacher pass.

mod e2e_support;

use std::path::Path;

use e2e_support::{cli, entry, json, text};
use serde_json::Value;

fn write(dir: &Path, body: &str) -> std::path::PathBuf {
    e2e_support::write(dir, "r.yaml", body)
}

fn first_epoch_loss(entry: &Path) -> f64 {
    let h = std::fs::read_to_string(entry.join("history.jsonl")).unwrap();
    serde_json::from_str::<Value>(h.lines().next().unwrap()).unwrap()["loss"].as_f64().unwrap()
}

const HEADS: &str = r#"
experiment: heads
datasets:
  pre:   { source: builtin/digits, classes: [0, 1, 2, 3, 4] }
  again: { source: builtin/digits, classes: [0, 1, 2, 3, 4], split: test }
  other: { source: builtin/digits, classes: [5, 6, 7, 8, 9], per_class: 30 }
models:
  m: { arch: cnn, channels: [8, 16] }
nodes:
  pt:       { train: { model: m, data: pre, epochs: 4, batch_size: 32 } }
  ft_other: { finetune: { from: pt, data: other, epochs: 1, batch_size: 30 } }
  ft_keep:  { finetune: { from: pt, data: other, epochs: 1, batch_size: 30, head: keep } }
  ft_same:  { finetune: { from: pt, data: again, epochs: 1, batch_size: 30 } }
  lp_new:   { train: { model: m, data: again, init: pt, freeze: backbone, epochs: 1, head: new } }
"#;

#[test]
fn a_new_head_when_the_classes_change_decided_before_running_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), HEADS);
    // `plan` says, under each node, which head it gets and why.
    let out = cli(&["plan"], &spec);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan = text(&out.stdout);
    let note = |node: &str| -> String {
        let mut lines = plan.lines().skip_while(|l| !l.contains(&format!(" {node} ")));
        lines.nth(1).unwrap_or_else(|| panic!("no line after {node}:\n{plan}")).trim().to_string()
    };
    assert_eq!(
        note("ft_other"),
        "head: new: `pt` was trained on other classes (0, 1, 2, 3, 4; this node: 5, 6, 7, 8, 9)"
    );
    assert_eq!(note("ft_keep"), "head: keep: set in the spec");
    assert_eq!(note("ft_same"), "head: keep: `pt` was trained on the same classes (0, 1, 2, 3, 4)");
    assert_eq!(note("lp_new"), "head: new: set in the spec");
    // `plan --json` has them too, in the jobs `worker` runs.
    let out = cli(&["plan", "--json"], &spec);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = v["jobs"].as_array().unwrap().iter().find(|j| j["name"] == "ft_other").unwrap().clone();
    assert_eq!(job["work"]["train"]["model"]["head"]["keep"], false, "{job}");

    let out = cli(&["run"], &spec);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for (node, keep) in [("ft_other", false), ("ft_keep", true), ("ft_same", true), ("lp_new", false)] {
        let (e, m) = entry(dir.path(), node);
        assert_eq!(json(&e.join("model.json"))["head"]["keep"], keep, "{node}");
        assert_eq!(m["metrics"]["head"], if keep { "keep" } else { "new" }, "{node}");
    }
    // The issue's symptom: the pre-trained head on other classes starts far worse than a new one.
    let (new, kept) = (
        first_epoch_loss(&entry(dir.path(), "ft_other").0),
        first_epoch_loss(&entry(dir.path(), "ft_keep").0),
    );
    assert!(new < kept, "first fine-tuning loss: new head {new}, kept head {kept}");
    // A fresh model has no head to decide on: nothing in model.json.
    assert!(json(&entry(dir.path(), "pt").0.join("model.json")).get("head").is_none());
}

#[test]
fn a_head_that_cannot_be_kept_or_has_nothing_to_replace_is_a_located_validate_error() {
    let dir = tempfile::tempdir().unwrap();
    // Kept, but 5 pre-trained classes and 3 to fine-tune on.
    let spec = write(
        dir.path(),
        &HEADS.replace("classes: [5, 6, 7, 8, 9], per_class: 30", "classes: [5, 6, 7], per_class: 30"),
    );
    let out = cli(&["validate"], &spec);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let e = text(&out.stderr);
    assert!(e.contains("error[conflict]: nodes.ft_keep.finetune.head: head: keep, but `pt` was trained on 5 classes and this node's data has 3"), "{e}");
    assert!(e.contains("r.yaml:12:"), "located at the ft_keep line: {e}");
    assert!(e.contains("help: use `head: new`"), "{e}");
    // The others (a new head, or the same classes) are fine.
    assert_eq!(e.matches("error[").count(), 1, "{e}");
    // `head` on a model trained from scratch.
    let spec =
        write(dir.path(), &format!("{HEADS}  fresh: {{ train: {{ model: m, data: pre, head: keep }} }}\n"));
    let out = cli(&["validate"], &spec);
    let e = text(&out.stderr);
    assert!(
        e.contains("error[conflict]: nodes.fresh.train.head: `head` with a randomly initialised model"),
        "{e}"
    );
    assert!(e.contains("r.yaml:15:"), "{e}");
}

const RECIPES: &str = r#"
experiment: recipes
datasets:
  data: { source: builtin/digits, per_class: 25 }
  test: { source: builtin/digits, split: test }
models:
  t: { arch: cnn, channels: [8, 16] }
  s: { arch: mlp, hidden: [32] }
nodes:
  teacher: { train: { model: t, data: data, epochs: 2, batch_size: 50 } }
  acc:     { train: { model: s, data: data, epochs: 2, batch_size: 40, accumulate: 3, ema: 0.9, val: test } }
  avg:     { train: { model: s, data: data, epochs: 2, batch_size: 40, ema: { decay: 0.5, output: true } } }
  kd:      { distill: { teacher: teacher, student: s, data: data, losses: kd, epochs: 1, batch_size: 50 } }
  au:      { distill: { teacher: teacher, student: s, data: data, losses: align_uniform, epochs: 1, batch_size: 50 } }
"#;

#[test]
fn accumulation_ema_and_costs_through_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), RECIPES);
    let out = cli(&["run"], &spec);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // 250 images in batches of 40: 6 full batches and one of 10; groups of 3 batches: 3 steps.
    let (acc, m) = entry(dir.path(), "acc");
    let metrics = &m["metrics"];
    assert_eq!(
        (metrics["batches_per_epoch"].as_u64(), metrics["steps_per_epoch"].as_u64()),
        (Some(7), Some(3))
    );
    assert_eq!(metrics["steps"], 6);
    // The average is evaluated alongside and kept beside the trained weights.
    let history = std::fs::read_to_string(acc.join("history.jsonl")).unwrap();
    for line in history.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        assert!(row["ema_val_accuracy"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{row}");
    }
    assert!(metrics["best_ema_val_accuracy"].as_f64().is_some(), "{metrics}");
    assert!(acc.join("ema.safetensors").is_file());
    assert_ne!(
        std::fs::read(acc.join("ema.safetensors")).unwrap(),
        std::fs::read(acc.join("model.safetensors")).unwrap()
    );
    // `output: true`: the average is the node's model, the trained weights are kept beside it.
    let (avg, _) = entry(dir.path(), "avg");
    assert_eq!(json(&avg.join("model.json"))["ema_decay"], 0.5);
    assert!(avg.join("trained.safetensors").is_file() && !avg.join("ema.safetensors").exists());

    // Costs: align/uniform's projectors and pairwise distances are counted; KD has no head.
    let (_, kd) = entry(dir.path(), "kd");
    let (_, au) = entry(dir.path(), "au");
    let (kd, au) = (&kd["metrics"], &au["metrics"]);
    assert_eq!(kd["loss_head_flops"], 0, "{kd}");
    let head = au["loss_head_flops"].as_u64().unwrap();
    // mocov2 to 128 on both sides (32 and 16 wide), 250 images, batch 50, x3 for training.
    let per_image = 2 * (32 * 32 + 32 * 128) + 2 * (16 * 16 + 16 * 128) + 2 * 2 * 50 * 128;
    assert_eq!(head, 3 * per_image * 250);
    assert_eq!(au["flops"].as_u64().unwrap(), kd["flops"].as_u64().unwrap() + head);
    // The teacher's outputs were computed once, as their own entry: their time is in the cost.
    for m in [kd, au] {
        let pass = m["teacher_pass_seconds"].as_f64().unwrap();
        assert!(pass > 0.0, "{m}");
        let (total, looped) = (m["train_seconds"].as_f64().unwrap(), m["loop_seconds"].as_f64().unwrap());
        assert!((total - (looped + pass)).abs() < 1e-9, "{m}");
    }
}
