//! Long runs (issue 15) end to end on the built-in digits: a node with `val:` keeps its final
//! and its best-on-validation weights, and `evaluate` and reports choose between them.

mod e2e_support;

use std::path::Path;
use std::process::Command;

use e2e_support::{cli, entry, text};
use serde_json::Value;

fn write(dir: &Path, body: &str) -> std::path::PathBuf {
    e2e_support::write(dir, "l.yaml", body)
}

const BEST: &str = r#"
experiment: best
datasets:
  data: { source: builtin/digits, per_class: 20 }
  val:  { source: builtin/digits, split: test, per_class: 15 }
models:
  m: { arch: mlp, hidden: [16] }
nodes:
  t:     { train: { model: m, data: data, epochs: 8, batch_size: 40, val: val, optimizer: { type: sgd, lr: 0.3 } } }
  final: { evaluate: { model: t, data: val } }
  best:  { evaluate: { model: t, data: val, weights: best } }
  table: { report: { rows: [t], eval: val, weights: best, columns: [accuracy, train_seconds] } }
"#;

#[test]
fn a_validated_node_keeps_final_and_best_weights_and_evaluate_chooses() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), BEST);
    let out = cli(&["run"], &spec);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (t, m) = entry(dir.path(), "t");
    assert!(t.join("model.safetensors").is_file() && t.join("best.safetensors").is_file());
    let trained = &m["metrics"];
    let best_epoch = trained["best_epoch"].as_u64().unwrap();
    assert!((1..=8).contains(&best_epoch), "{trained}");
    // The best weights are those of the best epoch: evaluated on the same set, the same accuracy.
    let (_, best) = entry(dir.path(), "best");
    let best = &best["metrics"];
    assert_eq!(best["accuracy"], trained["best_val_accuracy"], "{best} vs {trained}");
    assert_eq!((best["weights"].as_str(), best["best_epoch"].as_u64()), (Some("best"), Some(best_epoch)));
    // Final weights: the last epoch's accuracy, and nothing said about weights.
    let (_, fin) = entry(dir.path(), "final");
    assert_eq!(fin["metrics"]["accuracy"], trained["final_val_accuracy"]);
    assert!(fin["metrics"].get("weights").is_none());
    // The history's best epoch is the one kept.
    let history = std::fs::read_to_string(t.join("history.jsonl")).unwrap();
    let accs: Vec<f64> = history
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["val_accuracy"].as_f64().unwrap())
        .collect();
    let first_max = accs.iter().position(|a| *a == accs.iter().cloned().fold(f64::MIN, f64::max)).unwrap();
    assert_eq!(first_max as u64 + 1, best_epoch, "{accs:?}");
    // A report that evaluates best weights says so in its columns.
    let e = text(&out.stdout) + &text(&out.stderr);
    assert!(e.contains("accuracy (%), best on val"), "{e}");
}

#[test]
fn best_weights_of_a_node_without_val_or_a_report_without_eval_are_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(
        dir.path(),
        &BEST
            .replace(", val: val, optimizer", ", optimizer")
            .replace("eval: val, weights: best", "weights: best"),
    );
    let out = cli(&["validate"], &spec);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("error[conflict]: nodes.best.evaluate.weights: `weights: best`, but `t` keeps no best weights (it has no `val:` set)"),
        "{e}"
    );
    assert!(e.contains("l.yaml:11:"), "{e}");
    assert!(e.contains("nodes.table.report.weights: `weights: best` without `eval:`"), "{e}");
    assert!(e.contains("l.yaml:12:"), "{e}");
}

#[test]
fn export_writes_the_chosen_weights_model_json_and_a_loader_and_refuses_what_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), BEST);
    assert_eq!(cli(&["run"], &spec).status.code(), Some(0));
    let export = |node: &str, to: &Path, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_distillery"))
            .arg("export")
            .arg(&spec)
            .arg(node)
            .arg("--to")
            .arg(to)
            .args(extra)
            .output()
            .unwrap()
    };
    let (t, m) = entry(dir.path(), "t");
    let to = dir.path().join("out");
    let out = export("t", &to, &["--weights", "best"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains(&format!("best weights, epoch {}", m["metrics"]["best_epoch"])), "{said}");
    assert_eq!(
        std::fs::read(to.join("model.safetensors")).unwrap(),
        std::fs::read(t.join("best.safetensors")).unwrap()
    );
    assert_eq!(std::fs::read(to.join("model.json")).unwrap(), std::fs::read(t.join("model.json")).unwrap());
    assert_eq!(std::fs::read_to_string(to.join("load.py")).unwrap(), distillery::export::LOADER);
    // Again into the same folder: refused, the first export kept.
    let out = export("t", &to, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("already exists"), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(to.join("model.safetensors")).unwrap(),
        std::fs::read(t.join("best.safetensors")).unwrap()
    );
    // An evaluate node has no model; an unknown node is named with a suggestion.
    let e = text(&export("final", &dir.path().join("x"), &[]).stderr);
    assert!(e.contains("error: export final: the node trained no model"), "{e}");
    let e = text(&export("tt", &dir.path().join("x"), &[]).stderr);
    assert!(e.contains("error: export tt:") && e.contains("`t`"), "{e}");
    // A node whose current settings were never run.
    std::fs::write(&spec, BEST.replace("epochs: 8", "epochs: 7")).unwrap();
    let e = text(&export("t", &dir.path().join("x"), &[]).stderr);
    assert!(
        e.contains("no stored result for this node's current settings") && e.contains("--only 't'"),
        "{e}"
    );
    assert!(!dir.path().join("x").exists());
}
