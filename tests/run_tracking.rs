//! `distillery run --tracking URI` against a real MLflow server: one parent run per invocation,
//! a nested run per node with params and per-epoch metrics, and cached nodes pointing to their
//! original run.

mod track_support;

use std::process::Command;

use distillery::track::CACHED_FROM_MLFLOW_TAG;
use track_support::{MlflowServer, mlflow_executable};

const SPEC: &str = r#"
experiment: e2e-tracking
datasets:
  task: { source: builtin/digits, classes: [5, 6, 7], per_class: 20 }
  test: { source: builtin/digits, classes: [5, 6, 7], split: test }
models:
  small: { arch: cnn, channels: [8] }
nodes:
  scratch: { train: { model: small, data: task, epochs: 3, batch_size: 20 } }
  table:   { report: { rows: [scratch], eval: test } }
"#;

#[test]
fn every_node_is_a_nested_mlflow_run_and_cached_nodes_point_to_the_original() {
    let Some(mlflow) = mlflow_executable() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = MlflowServer::start(&mlflow, &dir.path().join("mlflow"), false);
    let spec = dir.path().join("t.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_distillery"))
            .args(["run", spec.to_str().unwrap(), "--tracking", &server.uri])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run();
    run(); // everything cached

    let client = server.client();
    let exp = client.get_experiment_by_name("e2e-tracking").unwrap().expect("experiment from the spec");
    let runs = client.search_runs(&[&exp.experiment_id], "").unwrap();
    let parents: Vec<_> = runs.iter().filter(|r| r.tag("mlflow.parentRunId").is_none()).collect();
    assert_eq!(parents.len(), 2, "one parent run per invocation");
    let children: Vec<_> = runs.iter().filter(|r| r.tag("mlflow.parentRunId").is_some()).collect();
    assert_eq!(children.len(), 4, "a nested run per node per invocation");
    let trained: Vec<_> = children
        .iter()
        .filter(|r| {
            r.param("work.train.loop.trainer.epochs") == Some("3") && r.tag(CACHED_FROM_MLFLOW_TAG).is_none()
        })
        .collect();
    assert_eq!(trained.len(), 1, "the train node ran once");
    let original = trained[0];
    assert_eq!(original.info.status, "FINISHED");
    let loss = client.get_metric_history(&original.info.run_id, "loss").unwrap();
    assert_eq!(loss.len(), 3, "one loss point per epoch");
    // Artifacts through the mlflow-artifacts API: the checkpoint and the table.
    let files: Vec<String> =
        client.list_artifacts(&original.info.run_id, "").unwrap().into_iter().map(|f| f.path).collect();
    for want in ["model.safetensors", "model.json", "history.jsonl", "metrics.json"] {
        assert!(files.iter().any(|f| f == want), "{want} missing from {files:?}");
    }
    let table = children
        .iter()
        .find(|r| r.tag(CACHED_FROM_MLFLOW_TAG).is_none() && r.param("kind") == Some("report"))
        .expect("the report node's run");
    let files: Vec<String> =
        client.list_artifacts(&table.info.run_id, "").unwrap().into_iter().map(|f| f.path).collect();
    assert!(files.iter().any(|f| f == "table.md"), "{files:?}");
    let spec_on_parent = parents.iter().any(|p| {
        client.list_artifacts(&p.info.run_id, "spec").unwrap().iter().any(|f| f.path == "spec/t.yaml")
    });
    assert!(spec_on_parent, "the spec is an artifact of the invocation run");
    let cached: Vec<_> = children.iter().filter(|r| r.tag(CACHED_FROM_MLFLOW_TAG).is_some()).collect();
    assert!(
        cached.iter().any(|r| r.tag(CACHED_FROM_MLFLOW_TAG) == Some(original.info.run_id.as_str())),
        "the cached train node points to its original run"
    );
}

/// A run whose process was killed stays RUNNING nowhere: the next command that uses the store
/// ends it as FAILED with the reason, locally and on the server.
#[test]
fn a_killed_run_is_marked_failed_with_its_reason_the_next_time_the_store_is_used() {
    let Some(mlflow) = mlflow_executable() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = MlflowServer::start(&mlflow, &dir.path().join("mlflow"), false);
    let spec = dir.path().join("k.yaml");
    std::fs::write(&spec, SPEC.replace("epochs: 3, batch_size: 20", "epochs: 100000, batch_size: 20"))
        .unwrap();
    let log = dir.path().join("run.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(["run", spec.to_str().unwrap(), "--tracking", &server.uri])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Killed once the node has logged a few epochs (and they reached the server).
    let t0 = std::time::Instant::now();
    let client = server.client();
    let node_run = loop {
        assert!(t0.elapsed().as_secs() < 120, "no epochs logged: {}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(200));
        let Ok(Some(exp)) = client.get_experiment_by_name("e2e-tracking") else { continue };
        let runs = client.search_runs(&[&exp.experiment_id], "").unwrap();
        if let Some(r) = runs.iter().find(|r| r.param("kind") == Some("train"))
            && client.get_metric_history(&r.info.run_id, "loss").unwrap().len() >= 3
        {
            break r.info.run_id.clone();
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(client.get_run(&node_run).unwrap().info.status, "RUNNING", "nothing ended it yet");
    // The next use of the store: `runs` ends it locally, `sync` pushes that.
    let runs = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(["runs", spec.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&runs.stdout);
    assert!(!listed.contains("\"RUNNING\"") && !listed.contains("\"running\""), "{listed}");
    let out = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(["sync", "--to", &server.uri, spec.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let run = client.get_run(&node_run).unwrap();
    assert_eq!(run.info.status, "FAILED");
    let reason = run.tag("distillery.end_reason").expect("the reason is tagged");
    assert!(reason.contains("ended without finishing it: killed, crashed"), "{reason}");
    assert!(reason.contains(&format!("pid {}", child.id())), "{reason}");
}
