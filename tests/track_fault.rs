//! Nothing lost: the MLflow server is stopped in the middle of a run and restarted; the live push
//! and `sync` then deliver every metric point exactly once.

mod track_support;

use distillery::track::{
    ClientConfig, Metric, MlflowClient, NodeRun, RunStatus, Tracker, TrackerConfig, sync,
};
use serde_json::json;
use std::time::{Duration, Instant};
use track_support::{MlflowServer, mlflow_executable};

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn server_stopped_mid_run_then_restarted_gets_every_metric_exactly_once() {
    let Some(mlflow) = mlflow_executable() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = MlflowServer::start(&mlflow, &dir.path().join("server"), false);
    let store = dir.path().join(".distillery");

    let mut config = TrackerConfig::new(&store, Some(server.uri.clone()));
    config.push_interval = Duration::from_millis(100);
    config.max_retry_interval = Duration::from_millis(500);
    config.client = ClientConfig {
        max_attempts: 2,
        backoff: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let tracker = Tracker::open(config).unwrap();
    let inv = tracker.start_invocation("fault", None, &[]).unwrap();
    let node_config = json!({"epochs": 3});
    let node = NodeRun {
        node_name: "student",
        kind: "distill",
        cache_key: "k",
        config: &node_config,
        device: "cpu",
        tags: &[],
    };
    let run = tracker.start_node_run(&inv, &node).unwrap();

    let mut logged = Vec::new();
    let mut step = 0i64;
    let mut log_steps = |n: i64, logged: &mut Vec<Metric>, call_micros: &mut Vec<u128>| {
        for _ in 0..n {
            let t = 1_700_000_000_000 + step;
            let points = [
                Metric::new("loss", 1.0 / (step as f64 + 1.0), step, t),
                Metric::new("acc", if step % 50 == 7 { f64::NAN } else { step as f64 / 1000.0 }, step, t),
            ];
            let start = Instant::now();
            tracker.log_metrics(&run, &points).unwrap();
            call_micros.push(start.elapsed().as_micros());
            logged.extend(points);
            step += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let mut up_micros = Vec::new();
    let mut down_micros = Vec::new();

    // Phase 1: server up, pushed live.
    log_steps(100, &mut logged, &mut up_micros);
    wait_until("the live push of phase 1", Duration::from_secs(20), || {
        tracker.push_state().unwrap().last_report.is_some_and(|r| r.metrics_sent > 0)
    });

    // Phase 2: the server stops mid-run; logging goes on without blocking.
    server.stop();
    log_steps(150, &mut logged, &mut down_micros);
    wait_until("the push to notice the server is down", Duration::from_secs(20), || {
        tracker.push_state().unwrap().last_error.is_some()
    });

    // Phase 3: the server returns (same port, same store); the live push catches up by itself.
    server.restart();
    log_steps(50, &mut logged, &mut up_micros);
    tracker.end_run(&run, RunStatus::Finished).unwrap();
    tracker.end_run(&inv, RunStatus::Finished).unwrap();
    // A concurrent sync takes turns with the live push (ledger lock) and sends nothing twice.
    let report = sync(&store, &server.uri).unwrap();
    assert!(report.is_complete(), "{report:?}");
    let last = tracker.finish().unwrap();
    assert!(last.is_complete(), "{last:?}");
    let again = sync(&store, &server.uri).unwrap();
    assert_eq!((again.runs_created, again.metrics_sent, again.statuses_sent), (0, 0, 0), "{again:?}");

    let median = |v: &mut Vec<u128>| {
        v.sort();
        v[v.len() / 2]
    };
    eprintln!(
        "log_metrics per call: median {} us with the server up, {} us while it was down (max {} us)",
        median(&mut up_micros),
        median(&mut down_micros),
        down_micros.iter().max().unwrap()
    );

    let client = MlflowClient::new(&server.uri, ClientConfig::default()).unwrap();
    let exp = client.get_experiment_by_name("fault").unwrap().unwrap();
    let runs = client.search_runs(&[&exp.experiment_id], "").unwrap();
    assert_eq!(runs.len(), 2, "no duplicate runs");
    let child = runs.iter().find(|r| r.tag("distillery.local_run_id") == Some(run.as_str())).unwrap();
    assert_eq!(child.info.status, "FINISHED");
    for key in ["loss", "acc"] {
        let mut want: Vec<&Metric> = logged.iter().filter(|m| m.key == key).collect();
        let mut got = client.get_metric_history(&child.info.run_id, key).unwrap();
        assert_eq!(got.len(), want.len(), "{key}: every point exactly once ({} logged)", want.len());
        want.sort_by_key(|m| m.step);
        got.sort_by_key(|m| m.step);
        assert!(got.iter().zip(&want).all(|(g, w)| g.same_as(w)), "{key}: values differ");
    }
}
