//! Snapshots of what people read: diagnostics for every bad spec, plans and graphs of good ones.
//!
//! Each file under tests/specs/bad/ is wrong in one way (its first line says how); the snapshot
//! shows the rendered diagnostics with file:line:col. Cache keys are redacted from plan snapshots
//! (tests/determinism.rs checks them).

use std::path::{Path, PathBuf};

use distillery::diag::{self, Diagnostic};
use distillery::{graph, plan, spec};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every diagnostic for a file, exactly as `validate` finds them.
fn diagnose(path: &Path) -> Vec<Diagnostic> {
    let rel = path.strip_prefix(root()).unwrap().to_path_buf();
    let cache = distillery::data::FingerprintCache::in_memory();
    match distillery::cli::check(&rel_to_cwd(&rel), &cache) {
        Ok(_) => Vec::new(),
        Err(d) => d,
    }
}

/// Tests run in the package root, so a path relative to it is the one users would type.
fn rel_to_cwd(rel: &Path) -> PathBuf {
    assert_eq!(std::env::current_dir().unwrap(), root(), "tests must run from the package root");
    rel.to_path_buf()
}

#[test]
fn bad_specs_report_located_diagnostics() {
    let mut n = 0;
    insta::glob!("specs/bad/*.yaml", |path| {
        n += 1;
        let diags = diagnose(path);
        assert!(!diags.is_empty(), "{} was accepted", path.display());
        for d in &diags {
            let loc = d.location.as_ref().unwrap_or_else(|| panic!("{}: no location: {d:?}", path.display()));
            assert!(loc.line >= 1 && loc.col >= 1);
        }
        insta::assert_snapshot!(diag::render(&diags, Some(&root())));
    });
    assert!(n >= 25, "the corpus has {n} bad specs, want at least 25");
}

#[test]
fn several_errors_are_reported_at_once() {
    let diags = diagnose(&root().join("tests/specs/bad/several-errors-at-once.yaml"));
    let codes: Vec<&str> = diags.iter().map(|d| d.code.as_str()).collect();
    // The unknown `lr` does not hide `epochs: 0` in the same node.
    assert_eq!(codes, ["unknown-key", "out-of-range", "out-of-range", "missing-reference"]);
}

#[test]
fn first_unknown_key_does_not_hide_the_nodes_other_errors() {
    let diags = diagnose(&root().join("tests/specs/bad/several-errors-in-one-node.yaml"));
    let found: Vec<(&str, &str)> = diags.iter().map(|d| (d.code.as_str(), d.path.as_str())).collect();
    assert_eq!(
        found,
        [
            ("unknown-key", "nodes.teacher.train.epoch"),
            ("wrong-type", "nodes.teacher.train.batch_size"),
            ("missing-reference", "nodes.teacher.train.data"),
        ]
    );
}

#[test]
fn defaults_typo_is_reported_once_at_defaults() {
    let diags = diagnose(&root().join("tests/specs/bad/defaults-unknown-setting.yaml"));
    let found: Vec<(&str, Option<&str>)> =
        diags.iter().map(|d| (d.path.as_str(), d.node.as_deref())).collect();
    assert_eq!(found, [("defaults.train.epoch", None), ("defaults.train.batch_size", None)]);
}

fn redact_keys(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() == 12 || run.len() == 64 {
            out.push_str("<key>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in s.chars() {
        if c.is_ascii_hexdigit() && !c.is_ascii_uppercase() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

fn good_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/specs/good"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.push(root().join("experiments/quickstart.yaml"));
    files.sort();
    files
}

#[test]
fn good_specs_plan_and_graph() {
    for path in good_files() {
        let rel = path.strip_prefix(root()).unwrap();
        let exp = spec::load(rel).unwrap_or_else(|d| panic!("{}", diag::render(&d, Some(&root()))));
        let g = distillery::resolve::build(&exp, &graph::spec_fingerprint, &distillery::resolve::path_digest)
            .expect("graph builds");
        let entries = plan::plan(&g, &plan::EmptyStore, &plan::Selection::default());
        let name = rel.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(
            format!("plan-{name}"),
            redact_keys(&distillery::cli::render_plan(&exp, &entries))
        );
        insta::assert_snapshot!(format!("dot-{name}"), redact_keys(&graph::to_dot(&g, &exp.name)));
        insta::assert_snapshot!(format!("mermaid-{name}"), graph::to_mermaid(&g));
    }
}

#[test]
fn include_and_defaults_merge_with_this_file_winning() {
    let exp = spec::load(Path::new("tests/specs/good/include.yaml")).unwrap();
    assert_eq!(exp.name, "include-example");
    assert_eq!(exp.files.len(), 2);
    let spec::NodeKind::Train(t) = &exp.node("scratch").unwrap().kind else { panic!() };
    assert_eq!(t.epochs, 4, "this file's defaults win over the included file's");
    assert_eq!(
        t.optimizer,
        spec::OptimizerSpec::Sgd { lr: 0.01, momentum: 0.9, nesterov: false, weight_decay: 5e-4 }
    );
    let spec::NodeKind::Train(lp) = &exp.node("lp").unwrap().kind else { panic!() };
    assert!(matches!(lp.optimizer, spec::OptimizerSpec::Adamw { .. }), "the node's own setting wins");
}

#[test]
fn matrix_instances_reference_matching_instances() {
    let exp = spec::load(Path::new("tests/specs/good/matrix-inheritance.yaml")).unwrap();
    let names: Vec<&str> = exp.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names.len(), 1 + 6 + 6 + 1);
    let e = exp.node("eval_kd[losses.kd.temperature=4,seed=2]").expect("evaluate inherits both dimensions");
    let spec::NodeKind::Evaluate(ev) = &e.kind else { panic!() };
    assert_eq!(ev.model.0, "kd[losses.kd.temperature=4,seed=2]");
    let kd = exp.node("kd[losses.kd.temperature=4,seed=2]").unwrap();
    assert_eq!(kd.seed, 2);
    let spec::NodeKind::Distill(d) = &kd.kind else { panic!() };
    assert_eq!(d.teacher.0, "teacher", "a teacher with a fixed seed is not expanded");
    assert!(d.losses.0.iter().any(|l| *l
        == distillery::losses::WeightedLoss::new(
            1.0,
            distillery::losses::LossConfig::Kd(distillery::losses::KdConfig { temperature: 4.0 })
        )));
    assert_eq!(exp.node("teacher").unwrap().seed, 7);
}
