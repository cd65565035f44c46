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

/// Runs `spec` tracked to `server`, SIGKILLs it once its train node's run has `points` loss points
/// on the server, and returns that MLflow run's id and the process id.
fn run_and_kill_after(
    spec: &std::path::Path,
    log: &std::path::Path,
    server: &MlflowServer,
    points: usize,
) -> (String, u32) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(["run", spec.to_str().unwrap(), "--tracking", &server.uri])
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let client = server.client();
    let node_run = loop {
        assert!(t0.elapsed().as_secs() < 120, "no epochs logged: {}", std::fs::read_to_string(log).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(100));
        let Ok(Some(exp)) = client.get_experiment_by_name("e2e-tracking") else { continue };
        let runs = client.search_runs(&[&exp.experiment_id], "").unwrap();
        if let Some(r) = runs.iter().find(|r| r.param("kind") == Some("train"))
            && client.get_metric_history(&r.info.run_id, "loss").unwrap().len() >= points
        {
            break r.info.run_id.clone();
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    (node_run, child.id())
}

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
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{e}");
        e
    };
    let first = run();
    let second = run(); // everything cached
    // The cached nodes' records go from a background `sync`, after `run` returned.
    assert!(second.contains("2 cached node run(s) go to the server in the background"), "{second}");
    assert!(!first.contains("in the background"), "nothing was cached the first time: {first}");

    let client = server.client();
    let exp = client.get_experiment_by_name("e2e-tracking").unwrap().expect("experiment from the spec");
    // Its report is the log's last line, written once it is done.
    let t0 = std::time::Instant::now();
    let log = loop {
        let log =
            std::fs::read_to_string(dir.path().join(".distillery/sync/background.log")).unwrap_or_default();
        if log.contains("runs complete") {
            break log;
        }
        assert!(t0.elapsed().as_secs() < 60, "the background push did not finish; its log:\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(log.contains("3 of 3 runs complete; sent 2 new runs"), "{log}");
    // ... and a `sync` afterwards finds nothing left (it waits for a background push still going).
    let out = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(["sync", "--to", &server.uri, spec.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("sent 0 new runs"), "{said}");
    // MLflow's UI shows it as model training, not as a GenAI app's traces.
    assert!(
        exp.tags.iter().any(|t| t.key == "mlflow.experimentKind" && t.value == "custom_model_development"),
        "{:?}",
        exp.tags
    );
    // The invocation's page, printed once a run.
    for e in [&first, &second] {
        let urls: Vec<&str> = e.lines().filter(|l| l.contains("tracking: http")).collect();
        assert_eq!(urls.len(), 1, "{e}");
        assert!(
            urls[0].contains(&format!("{}/#/experiments/{}/runs/", server.uri, exp.experiment_id)),
            "{e}"
        );
    }
    let runs = client.search_runs(&[&exp.experiment_id], "").unwrap();
    let parents: Vec<_> = runs.iter().filter(|r| r.tag("mlflow.parentRunId").is_none()).collect();
    assert_eq!(parents.len(), 2, "one parent run per invocation");
    let children: Vec<_> = runs.iter().filter(|r| r.tag("mlflow.parentRunId").is_some()).collect();
    assert_eq!(children.len(), 4, "a nested run per node per invocation");
    let trained: Vec<_> = children
        .iter()
        .filter(|r| r.param("loop.trainer.epochs") == Some("3") && r.tag(CACHED_FROM_MLFLOW_TAG).is_none())
        .collect();
    assert_eq!(trained.len(), 1, "the train node ran once");
    let original = trained[0];
    assert_eq!(original.info.status, "FINISHED");
    // Params read as the spec does: the dataset by name beside its key.
    assert_eq!(original.param("inputs.data.name"), Some("task"));
    assert_eq!(original.param("loop.trainer.optimizer.type"), Some("adamw"));
    // Final metrics are metrics of the run: the stored result's, costs included.
    let flops = original.metric("flops").expect("flops");
    assert!(flops > 0.0 && original.metric("cost.own.seconds").is_some(), "{:?}", original.data.metrics);
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
    // What the report evaluated on `test` is a metric of its run.
    let acc = table.metric("evaluated.scratch.accuracy").expect("the row's test accuracy");
    assert!((0.0..=1.0).contains(&acc), "{acc}");
    let cached: Vec<_> = children.iter().filter(|r| r.tag(CACHED_FROM_MLFLOW_TAG).is_some()).collect();
    let cached_train = cached
        .iter()
        .find(|r| r.tag(CACHED_FROM_MLFLOW_TAG) == Some(original.info.run_id.as_str()))
        .expect("the cached train node points to its original run");
    // ... and carries the original's metrics.
    assert_eq!(cached_train.metric("flops"), Some(flops));
    let cached_table = cached.iter().find(|r| r.param("kind") == Some("report")).expect("cached report run");
    assert_eq!(cached_table.metric("evaluated.scratch.accuracy"), Some(acc));
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
    // Killed once the node has logged a few epochs (and they reached the server).
    let (node_run, pid) = run_and_kill_after(&spec, &log, &server, 3);
    let client = server.client();
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
    assert!(reason.contains(&format!("pid {pid}")), "{reason}");
}

/// A node killed mid-training continues from its checkpoint the next time, in the same MLflow
/// run: FAILED after the kill (reaped, synced), RUNNING again, then FINISHED, with every epoch's
/// point once (the epochs after the last checkpoint are trained again, not logged again).
#[test]
fn a_killed_node_resumed_from_its_checkpoint_finishes_its_own_mlflow_run() {
    let Some(mlflow) = mlflow_executable() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = MlflowServer::start(&mlflow, &dir.path().join("mlflow"), false);
    let spec = dir.path().join("r.yaml");
    let epochs = 4000;
    std::fs::write(
        &spec,
        SPEC.replace(
            "epochs: 3, batch_size: 20",
            &format!("epochs: {epochs}, batch_size: 20, checkpoint_every: 7"),
        ),
    )
    .unwrap();
    let log = dir.path().join("run.log");
    let (node_run, _) = run_and_kill_after(&spec, &log, &server, 8);
    let client = server.client();
    let first = std::fs::read_to_string(&log).unwrap();
    assert!(!first.contains("done    scratch"), "it finished before the kill; make it longer:\n{first}");
    let out = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(["sync", "--to", &server.uri, spec.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let failed = client.get_run(&node_run).unwrap();
    assert_eq!(failed.info.status, "FAILED");
    assert!(failed.tag("distillery.end_reason").is_some());
    let before = client.get_metric_history(&node_run, "loss").unwrap().len();

    let out = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(["run", spec.to_str().unwrap(), "--tracking", &server.uri])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let start = stderr.lines().find(|l| l.starts_with("  start   scratch")).expect("scratch ran again");
    assert!(start.contains("(resuming from epoch "), "{stderr}");
    eprintln!("{before} epochs logged before the kill; {}", start.trim());

    let exp = client.get_experiment_by_name("e2e-tracking").unwrap().unwrap();
    let runs = client.search_runs(&[&exp.experiment_id], "").unwrap();
    let trained: Vec<_> = runs.iter().filter(|r| r.param("kind") == Some("train")).collect();
    assert_eq!(trained.len(), 1, "no second run for the resumed node");
    let run = trained[0];
    assert_eq!(run.info.run_id, node_run, "the same MLflow run");
    assert_eq!(run.info.status, "FINISHED");
    assert!(run.info.end_time > failed.info.end_time, "{:?} {:?}", run.info.end_time, failed.info.end_time);
    let resumed = run.tag("distillery.resumed").expect("tagged as resumed");
    assert!(start.contains(resumed), "{resumed:?} is not where it resumed: {start}");
    assert_eq!(run.tag("distillery.end_reason"), None, "the kill's reason is not its end any more");
    let mut steps: Vec<i64> =
        client.get_metric_history(&node_run, "loss").unwrap().iter().map(|m| m.step).collect();
    steps.sort();
    assert_eq!(steps, (1..=epochs).collect::<Vec<i64>>(), "every epoch once");
    let files: Vec<String> =
        client.list_artifacts(&node_run, "").unwrap().into_iter().map(|f| f.path).collect();
    assert!(files.iter().any(|f| f == "model.safetensors"), "{files:?}");
    // Two invocations; the resumed node stays under the first, the report ran in the second.
    assert_eq!(runs.iter().filter(|r| r.tag("mlflow.parentRunId").is_none()).count(), 2);
}

/// The same through the library, step by step: FAILED (its process died) and KILLED (Ctrl-C)
/// runs reopened twice, each state on the server in turn, and a final sync with nothing to send.
#[test]
fn a_reopened_run_goes_back_to_running_on_the_server_then_ends_once_more() {
    use distillery::track::{Metric, NodeRun, RESUMED_TAG, RunStatus, Tracker, TrackerConfig, sync};
    use std::time::{Duration, Instant};
    let Some(mlflow) = mlflow_executable() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = MlflowServer::start(&mlflow, &dir.path().join("mlflow"), false);
    let client = server.client();
    let store = dir.path().join(".distillery");
    let config = || {
        let mut c = TrackerConfig::new(&store, Some(server.uri.clone()));
        c.push_interval = Duration::from_millis(100);
        c
    };
    let params = serde_json::json!({"epochs": 6});
    let node = NodeRun {
        node_name: "kd",
        kind: "distill",
        cache_key: "k-resume",
        config: &params,
        device: "cpu",
        tags: &[],
    };
    let points = |steps: std::ops::RangeInclusive<i64>, t: i64| -> Vec<Metric> {
        steps.map(|s| Metric::new("loss", 1.0 / s as f64, s, t + s)).collect()
    };
    // Until the live push has set the status and (sent after it) the resumed tag.
    let wait_running = |id: &str, resumed: &str| {
        let t0 = Instant::now();
        loop {
            let run = client.get_run(id).unwrap();
            if run.info.status == "RUNNING" && run.tag(RESUMED_TAG) == Some(resumed) {
                return run;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "still {} {:?}",
                run.info.status,
                run.tag(RESUMED_TAG)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // 1. Steps 1-3, then the process dies: the tracker goes without ending the run.
    let local = {
        let t = Tracker::open(config()).unwrap();
        let inv = t.start_invocation("resume-lib", None, &[]).unwrap();
        let run = t.start_node_run(&inv, &node).unwrap();
        t.log_metrics(&run, &points(1..=3, 1000)).unwrap();
        t.end_run(&inv, RunStatus::Failed).unwrap();
        let report = t.finish().unwrap();
        assert!(report.is_complete(), "{report}");
        run
    }; // its owner lock goes with it
    let report = sync(&store, &server.uri).unwrap(); // reaps it, pushes FAILED
    assert_eq!(report.statuses_sent, 1, "{report}");
    let exp = client.get_experiment_by_name("resume-lib").unwrap().unwrap();
    let filter = format!("tags.`distillery.local_run_id` = '{local}'");
    let found = client.search_runs(&[&exp.experiment_id], &filter).unwrap();
    assert_eq!(found.len(), 1);
    let mlflow_id = found[0].info.run_id.clone();
    let failed = client.get_run(&mlflow_id).unwrap();
    assert_eq!(failed.info.status, "FAILED");
    assert!(failed.tag("distillery.end_reason").is_some());

    // 2. The next process resumes it from a checkpoint of step 2: RUNNING again on the server,
    //    step 3 logged again (dropped), step 4 new; then Ctrl-C ends it KILLED.
    {
        let t = Tracker::open(config()).unwrap();
        let inv = t.start_invocation("resume-lib", None, &[]).unwrap();
        let id = t.resume_node_run("k-resume", "epoch 3 of 6, batch 0 of 1").unwrap();
        assert_eq!(id.as_ref(), Some(&local), "the interrupted run goes on");
        let running = wait_running(&mlflow_id, "epoch 3 of 6, batch 0 of 1");
        assert_eq!(running.tag("distillery.end_reason"), None);
        t.log_metrics(&local, &points(3..=4, 2000)).unwrap();
        t.end_run(&local, RunStatus::Killed).unwrap();
        t.end_run(&inv, RunStatus::Killed).unwrap();
        assert!(t.finish().unwrap().is_complete());
    }
    assert_eq!(client.get_run(&mlflow_id).unwrap().info.status, "KILLED");

    // 3. Resumed again, from step 4, and it finishes.
    {
        let t = Tracker::open(config()).unwrap();
        let inv = t.start_invocation("resume-lib", None, &[]).unwrap();
        let id = t.resume_node_run("k-resume", "epoch 5 of 6, batch 0 of 1").unwrap();
        assert_eq!(id.as_ref(), Some(&local));
        wait_running(&mlflow_id, "epoch 3 of 6, batch 0 of 1; epoch 5 of 6, batch 0 of 1");
        t.log_metrics(&local, &points(4..=6, 3000)).unwrap();
        t.end_run(&local, RunStatus::Finished).unwrap();
        t.end_run(&inv, RunStatus::Finished).unwrap();
        let report = t.finish().unwrap();
        assert!(report.is_complete(), "{report}");
    }
    let runs = client.search_runs(&[&exp.experiment_id], "tags.`distillery.run_kind` = 'node'").unwrap();
    assert_eq!(runs.len(), 1, "one MLflow run for the node");
    let done = client.get_run(&mlflow_id).unwrap();
    assert_eq!(done.info.status, "FINISHED");
    assert!(done.info.end_time > failed.info.end_time);
    assert_eq!(done.tag(RESUMED_TAG), Some("epoch 3 of 6, batch 0 of 1; epoch 5 of 6, batch 0 of 1"));
    assert_eq!(
        done.tag("mlflow.parentRunId"),
        found[0].tag("mlflow.parentRunId"),
        "still nested where it began"
    );
    let history = client.get_metric_history(&mlflow_id, "loss").unwrap();
    let mut got: Vec<(i64, i64)> = history.iter().map(|m| (m.step, m.timestamp_ms)).collect();
    got.sort();
    assert_eq!(got, vec![(1, 1001), (2, 1002), (3, 1003), (4, 2004), (5, 3005), (6, 3006)], "each step once");
    // Nothing left to send.
    let again = sync(&store, &server.uri).unwrap();
    assert!(again.is_complete(), "{again}");
    assert_eq!((again.metrics_sent, again.statuses_sent, again.tags_sent), (0, 0, 0), "{again}");
}

/// A plugin's `metric` messages and its result's metrics reach its MLflow run as a built-in
/// node's do.
#[test]
fn a_plugin_nodes_metrics_reach_its_mlflow_run() {
    let Some(mlflow) = mlflow_executable() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = MlflowServer::start(&mlflow, &dir.path().join("mlflow"), false);
    let p = dir.path().join("plugins/scorer");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("plugin.json"),
        r#"{"name":"scorer","protocol":1,"command":["sh","run.sh"],"produces":"files"}"#,
    )
    .unwrap();
    std::fs::write(
        p.join("run.sh"),
        r#"echo '{"type":"hello","protocol":1}'
read -r req
out=$(printf '%s' "$req" | sed 's/.*"out_dir":"\([^"]*\)".*/\1/')
echo done > "$out/score.txt"
echo '{"type":"metric","name":"fid","value":3.5,"step":1}'
echo '{"type":"metric","name":"fid","value":2.5,"step":2}'
echo '{"type":"result","outputs":{"score":"score.txt"},"metrics":{"final_fid":2.5}}'
"#,
    )
    .unwrap();
    let spec = dir.path().join("p.yaml");
    std::fs::write(
        &spec,
        "experiment: plugin-tracking\ndatasets: { d: { source: builtin/digits } }\nnodes:\n  score: { plugin: { name: scorer } }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(["run", spec.to_str().unwrap(), "--tracking", &server.uri])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let client = server.client();
    let exp = client.get_experiment_by_name("plugin-tracking").unwrap().expect("experiment");
    let runs = client.search_runs(&[&exp.experiment_id], "").unwrap();
    let node = runs.iter().find(|r| r.tag("mlflow.parentRunId").is_some()).expect("the node's run");
    let history = client.get_metric_history(&node.info.run_id, "plugin.fid").unwrap();
    let points: Vec<(i64, f64)> = history.iter().map(|m| (m.step, m.value)).collect();
    assert_eq!(points, [(1, 3.5), (2, 2.5)]);
    assert_eq!(node.metric("final_fid"), Some(2.5));
    assert_eq!(node.param("plugin.name"), Some("scorer"), "{:?}", node.data.params);
}
