//! `distillery report` end to end: every report from the store without running anything
//! (missing rows shown as missing), the same table the report node wrote once it ran, and
//! costs that count what a row needs upstream (a fine-tuned student's pre-training).

mod e2e_support;

use e2e_support::{cli, entry, text};
use serde_json::Value;

const SPEC: &str = r#"
experiment: report-e2e
datasets:
  pre:  { source: builtin/digits, classes: [0, 1, 2, 3, 4], per_class: 20 }
  task: { source: builtin/digits, classes: [5, 6, 7, 8, 9], per_class: 10 }
  test: { source: builtin/digits, classes: [5, 6, 7, 8, 9], split: test }
models:
  small: { arch: cnn, channels: [4, 8] }
defaults:
  train:    { epochs: 2, batch_size: 25 }
  finetune: { epochs: 2, batch_size: 25 }
  distill:  { epochs: 2, batch_size: 25 }
nodes:
  teacher:    { train: { model: small, data: task, epochs: 3 }, seed: 7 }
  scratch:    { train: { model: small, data: task } }
  student_pt: { train: { model: small, data: pre } }
  student_ft: { finetune: { from: student_pt, data: task } }
  kd:         { distill: { teacher: teacher, student: small, data: task, losses: kd } }
  table:
    report:
      title: Students
      rows: [scratch, student_ft, kd]
      eval: test
      columns: [accuracy, cost_seconds, cost_flops, teacher_flops]
      compare_to: student_ft
matrix: { seed: [0, 1, 2] }
"#;

fn report_json(spec: &std::path::Path) -> Value {
    let out = cli(&["report", "--format", "json"], spec);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn cell<'a>(t: &'a Value, row: &str, col: usize) -> &'a Value {
    let r = t["rows"].as_array().unwrap().iter().find(|r| r["label"] == row).unwrap();
    &r["cells"][col]
}

#[test]
fn report_renders_from_the_store_and_counts_pretraining() {
    let dir = tempfile::tempdir().unwrap();
    let spec = e2e_support::write(dir.path(), "r.yaml", SPEC);

    // Before anything ran: every row missing, and said so; nothing is run or written.
    let out = cli(&["report"], &spec);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    assert!(o.contains("| scratch    |      missing |"), "{o}");
    assert!(e.contains("no store at"), "{e}");
    assert!(!dir.path().join(".distillery/objects").exists());

    // The rows but not the report: training costs are there, evaluation is not (it is the report's).
    let out = cli(&["run", "--only", "scratch", "--only", "student_pt", "--only", "student_ft"], &spec);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = &report_json(&spec)[0];
    assert_eq!(t["ran"], false);
    assert_eq!(cell(&t["table"], "scratch", 0)["text"], "–");
    assert!(cell(&t["table"], "scratch", 1)["mean"].as_f64().unwrap() > 0.0);
    assert_eq!(cell(&t["table"], "kd", 1)["text"], "missing");
    assert_eq!(cell(&t["table"], "kd", 1)["missing"], 3);

    // After the run: the report node's own table, the same one `report` renders.
    let out = cli(&["run"], &spec);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = &report_json(&spec)[0];
    assert_eq!(t["ran"], true);
    let (dir_table, _) = entry(dir.path(), "table");
    let written: Value =
        serde_json::from_slice(&std::fs::read(dir_table.join("table.json")).unwrap()).unwrap();
    assert_eq!(t["table"], written);

    // student_ft's cost is its fine-tuning plus student_pt's pre-training, seed by seed.
    let mean = |f: &dyn Fn(u64) -> f64| (0..3).map(f).sum::<f64>() / 3.0;
    let m = |node: String, k: &str| entry(dir.path(), &node).1["metrics"][k].as_f64().unwrap();
    let want_flops =
        mean(&|s| m(format!("student_pt[seed={s}]"), "flops") + m(format!("student_ft[seed={s}]"), "flops"))
            / 1e9;
    let want_secs = mean(&|s| {
        m(format!("student_pt[seed={s}]"), "train_seconds")
            + m(format!("student_ft[seed={s}]"), "train_seconds")
    });
    let ft = |c| cell(&t["table"], "student_ft", c)["mean"].as_f64().unwrap();
    assert!((ft(2) - want_flops).abs() < 1e-9 * want_flops, "{} vs {want_flops}", ft(2));
    assert!((ft(1) - want_secs).abs() < 1e-9 * want_secs, "{} vs {want_secs}", ft(1));
    assert!(ft(2) > m("scratch[seed=0]".into(), "flops") / 1e9, "pre-training counted");
    // kd: its own training; the teacher's whole cost apart, and compared with student_ft.
    let kd_teacher = cell(&t["table"], "kd", 3)["mean"].as_f64().unwrap();
    assert!((kd_teacher - m("teacher".into(), "flops") / 1e9).abs() < 1e-9 * kd_teacher);
    let vs = cell(&t["table"], "kd", 4)["text"].as_str().unwrap();
    assert!(vs.contains("less compute") && vs.contains(" pts ["), "{vs}");

    // Every format; --out writes a file a report.
    for f in ["md", "csv", "latex", "html"] {
        let out = cli(&["report", "--format", f], &spec);
        assert!(out.status.success() && !out.stdout.is_empty(), "{f}: {}", text(&out.stderr));
    }
    let to = dir.path().join("out");
    let out = cli(&["report", "--format", "html", "--out", to.to_str().unwrap()], &spec);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // HTML is one page for the experiment.
    let page = std::fs::read_to_string(to.join("report-e2e.html")).unwrap();
    assert!(page.starts_with("<!doctype html>") && page.contains("<table class=\"report\">"), "{page}");
}

#[test]
fn report_options_that_name_nothing_are_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = SPEC.replace("compare_to: student_ft", "compare_to: nobody\n      pivot: width");
    let spec = e2e_support::write(dir.path(), "r.yaml", &bad);
    let out = cli(&["validate"], &spec);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("`compare_to: nobody` is not one of the report's rows"), "{e}");
    assert!(e.contains("use one of: scratch, student_ft, kd"), "{e}");
    assert!(e.contains("`pivot: width`: no row's instances have that matrix key"), "{e}");
    assert!(e.contains("r.yaml:"), "located: {e}");
}
