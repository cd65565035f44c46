//! Tracking against a real MLflow 3.17.2 server: what is logged is read back through the REST API.
//!
//! One server is shared by the tests of this binary (a start costs 10-16 s and ~480 MiB).

mod track_support;

use distillery::track::mlflow::Run;
use distillery::track::{
    ClientConfig, LocalStore, Metric, MlflowClient, MlflowError, NodeRun, RunId, RunStatus, Tracker,
    TrackerConfig, flatten_params, list_runs, sync,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use track_support::{MlflowServer, mlflow_executable};

/// The shared server's URI, or None when MLflow tests are skipped.
fn server() -> Option<&'static str> {
    static SERVER: OnceLock<Option<MlflowServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let mlflow = mlflow_executable()?;
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("track-mlflow-{}", std::process::id()));
            Some(MlflowServer::start(&mlflow, &dir, true))
        })
        .as_ref()
        .map(|s| s.uri.as_str())
}

fn fast_config(store: &Path, uri: &str) -> TrackerConfig {
    let mut config = TrackerConfig::new(store, Some(uri.to_string()));
    config.push_interval = Duration::from_millis(100);
    config
}

/// The MLflow run made from a local run, found by its tag.
fn mlflow_run(client: &MlflowClient, experiment: &str, local: &RunId) -> Run {
    let exp = client.get_experiment_by_name(experiment).unwrap().expect("experiment exists");
    let runs = client
        .search_runs(&[&exp.experiment_id], &format!("tags.`distillery.local_run_id` = '{local}'"))
        .unwrap();
    assert_eq!(runs.len(), 1, "exactly one MLflow run for local run {local}");
    runs.into_iter().next().unwrap()
}

fn assert_history(client: &MlflowClient, run: &Run, key: &str, logged: &[Metric]) {
    let mut want: Vec<&Metric> = logged.iter().filter(|m| m.key == key).collect();
    let mut got = client.get_metric_history(&run.info.run_id, key).unwrap();
    assert_eq!(got.len(), want.len(), "history of {key}: every point exactly once");
    want.sort_by_key(|m| (m.step, m.timestamp_ms));
    got.sort_by_key(|m| (m.step, m.timestamp_ms));
    for (g, w) in got.iter().zip(want) {
        assert!(g.same_as(&as_stored(w)), "{key}: logged {w:?}, server has {g:?}");
    }
}

/// What MLflow's SQL store keeps of a point: NaN stays NaN, but it cannot store infinities and
/// clamps them to the largest finite double (sqlalchemy_store.sanitize_metric_value).
fn as_stored(m: &Metric) -> Metric {
    let value = if m.value.is_infinite() { f64::MAX.copysign(m.value) } else { m.value };
    Metric { value, ..m.clone() }
}

#[test]
fn live_push_round_trips_params_metrics_nesting_artifacts_and_cache_pointers() {
    let Some(uri) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join(".distillery");
    let spec = dir.path().join("quickstart.yaml");
    std::fs::write(&spec, "experiment: live-roundtrip\n").unwrap();
    let checkpoint = dir.path().join("model.safetensors");
    let weights: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&checkpoint, &weights).unwrap();

    // 150 params and 1500 points of one key: both cross MLflow's per-request batch limits.
    let mut config =
        json!({"losses": {"kd": {"weight": 1, "temperature": 4.0}, "ce": 1}, "classes": [5, 6, 7]});
    for i in 0..150 {
        config["extra"][format!("p{i:03}")] = json!(i);
    }
    let t0 = 1_700_000_000_000i64;
    let mut logged: Vec<Metric> =
        (0..1500).map(|s| Metric::new("train/loss", 1.0 / (s as f64 + 1.0), s, t0 + s)).collect();
    logged.push(Metric::new("val/acc", f64::NAN, 0, t0));
    logged.push(Metric::new("val/acc", 0.5, 1, t0 + 1));
    logged.push(Metric::new("grad_norm", f64::INFINITY, 0, t0));
    logged.push(Metric::new("grad_norm", f64::NEG_INFINITY, 1, t0 + 1));

    let tracker = Tracker::open(fast_config(&store, uri)).unwrap();
    let inv =
        tracker.start_invocation("live-roundtrip", Some(&spec), &[("team".into(), "kd".into())]).unwrap();
    let node = NodeRun {
        node_name: "kd",
        kind: "distill",
        cache_key: "abc123",
        config: &config,
        device: "cpu",
        tags: &[],
    };
    let kd = tracker.start_node_run(&inv, &node).unwrap();
    for chunk in logged.chunks(64) {
        tracker.log_metrics(&kd, chunk).unwrap();
    }
    tracker.log_artifact(&kd, &checkpoint, "checkpoints/final.safetensors").unwrap();
    tracker.end_run(&kd, RunStatus::Finished).unwrap();
    let again = NodeRun { node_name: "kd_cached", ..node };
    let cached = tracker.log_cached(&inv, &again, &kd, &[]).unwrap();
    tracker.end_run(&inv, RunStatus::Failed).unwrap();
    let report = tracker.finish().expect("a tracking uri gives a report");
    assert!(report.is_complete(), "{report:?}");

    let client = MlflowClient::new(uri, ClientConfig::default()).unwrap();
    let parent = mlflow_run(&client, "live-roundtrip", &inv);
    let child = mlflow_run(&client, "live-roundtrip", &kd);
    let cached_run = mlflow_run(&client, "live-roundtrip", &cached);

    // Nesting, names, statuses.
    assert_eq!(child.tag("mlflow.parentRunId"), Some(parent.info.run_id.as_str()));
    assert_eq!(cached_run.tag("mlflow.parentRunId"), Some(parent.info.run_id.as_str()));
    assert_eq!(parent.tag("mlflow.parentRunId"), None);
    assert_eq!(child.info.run_name.as_deref(), Some("kd"));
    assert_eq!(parent.info.status, "FAILED");
    assert_eq!(child.info.status, "FINISHED");
    assert!(child.info.end_time.is_some());

    // Params: exactly the flattened config.
    let mut server_params: Vec<(String, String)> =
        child.data.params.iter().map(|p| (p.key.clone(), p.value.clone())).collect();
    server_params.sort();
    assert_eq!(server_params, flatten_params(&config));
    assert_eq!(child.param("losses.kd.temperature"), Some("4.0"));
    assert_eq!(child.param("classes"), Some("[5,6,7]"));

    // Tags.
    assert_eq!(child.tag("distillery.node_kind"), Some("distill"));
    assert_eq!(child.tag("distillery.cache_key"), Some("abc123"));
    assert_eq!(child.tag("distillery.device"), Some("cpu"));
    assert!(child.tag("distillery.host").is_some_and(|h| !h.is_empty()));
    assert_eq!(parent.tag("team"), Some("kd"));
    assert_eq!(parent.tag("mlflow.source.name"), Some(spec.display().to_string().as_str()));

    // The full metric history, NaN and infinities included, every point once.
    for key in ["train/loss", "val/acc", "grad_norm"] {
        assert_history(&client, &child, key, &logged);
    }

    // Artifacts: the checkpoint's bytes, and the spec on the invocation.
    let listed = client.list_artifacts(&child.info.run_id, "checkpoints").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, "checkpoints/final.safetensors");
    assert_eq!(listed[0].file_size, Some(weights.len() as i64));
    assert_eq!(client.download_artifact(&child.info, "checkpoints/final.safetensors").unwrap(), weights);
    assert_eq!(
        client.download_artifact(&parent.info, "spec/quickstart.yaml").unwrap(),
        b"experiment: live-roundtrip\n"
    );

    // The cached node points to the run that trained it and has no metrics of its own.
    assert_eq!(cached_run.tag("distillery.cached_from_mlflow_run"), Some(child.info.run_id.as_str()));
    assert_eq!(cached_run.tag("distillery.cached_from"), Some(kd.as_str()));
    assert_eq!(cached_run.info.status, "FINISHED");
    assert!(cached_run.data.metrics.is_empty());

    // The local listing knows every run is on the server.
    let runs = list_runs(&store).unwrap();
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|r| r.synced.len() == 1 && r.synced[0].complete), "{runs:?}");
}

#[test]
fn offline_runs_sync_once_and_a_lost_ledger_finds_runs_again_without_duplicates() {
    let Some(uri) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join(".distillery");
    let tracker = Tracker::open(TrackerConfig::new(&store, None)).unwrap();
    let inv = tracker.start_invocation("offline-sync", None, &[]).unwrap();
    let config = json!({"epochs": 2});
    let node = NodeRun {
        node_name: "scratch",
        kind: "train",
        cache_key: "k",
        config: &config,
        device: "cpu",
        tags: &[],
    };
    let a = tracker.start_node_run(&inv, &node).unwrap();
    let logged: Vec<Metric> =
        (0..2500).map(|s| Metric::new("loss", (s as f64).sin(), s, 1_000 + s)).collect();
    tracker.log_metrics(&a, &logged).unwrap();
    tracker.end_run(&a, RunStatus::Killed).unwrap();
    tracker.end_run(&inv, RunStatus::Killed).unwrap();
    assert!(tracker.finish().is_none());
    assert!(list_runs(&store).unwrap().iter().all(|r| r.synced.is_empty()));

    let first = sync(&store, uri).unwrap();
    assert!(first.is_complete(), "{first:?}");
    assert_eq!((first.runs_created, first.metrics_sent, first.statuses_sent), (2, 2500, 2));

    let second = sync(&store, &format!("{uri}/")).unwrap();
    assert!(second.is_complete(), "{second:?}");
    assert_eq!(
        (second.runs_created, second.runs_matched, second.metrics_sent, second.statuses_sent),
        (0, 0, 0, 0)
    );

    // Losing the ledger: runs are found by their tag, metrics sent again are absorbed by MLflow.
    std::fs::remove_dir_all(store.join("sync")).unwrap();
    let third = sync(&store, uri).unwrap();
    assert!(third.is_complete(), "{third:?}");
    assert_eq!((third.runs_created, third.runs_matched), (0, 2));

    let client = MlflowClient::new(uri, ClientConfig::default()).unwrap();
    let run = mlflow_run(&client, "offline-sync", &a);
    assert_eq!(run.info.status, "KILLED");
    assert_history(&client, &run, "loss", &logged);
    let exp = client.get_experiment_by_name("offline-sync").unwrap().unwrap();
    assert_eq!(client.search_runs(&[&exp.experiment_id], "").unwrap().len(), 2, "no duplicate runs");
}

#[test]
fn experiment_creation_is_idempotent_under_races() {
    let Some(uri) = server() else { return };
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    MlflowClient::new(uri, ClientConfig::default())
                        .unwrap()
                        .ensure_experiment("race")
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
}

#[test]
fn server_errors_keep_http_status_and_mlflow_error_code() {
    let Some(uri) = server() else { return };
    let client = MlflowClient::new(uri, ClientConfig::default()).unwrap();
    let err = client.get_run("0123456789abcdef0123456789abcdef").unwrap_err();
    assert_eq!((err.status(), err.error_code()), (Some(404), Some("RESOURCE_DOES_NOT_EXIST")), "{err}");

    let exp = client.ensure_experiment("errors").unwrap();
    let run = client.create_run(&exp, "r", 0, &[]).unwrap();
    client.log_batch(&run.run_id, &[], &[("lr".into(), "0.1".into())], &[]).unwrap();
    // Same value again is fine (idempotent); a different value is refused by MLflow.
    client.log_batch(&run.run_id, &[], &[("lr".into(), "0.1".into())], &[]).unwrap();
    let err = client.log_batch(&run.run_id, &[], &[("lr".into(), "0.2".into())], &[]).unwrap_err();
    assert_eq!((err.status(), err.error_code()), (Some(400), Some("INVALID_PARAMETER_VALUE")), "{err}");
    assert!(!err.is_transient());

    // Limits are checked here, not cut by the server.
    let long = "v".repeat(6001);
    assert!(matches!(
        client.log_batch(&run.run_id, &[], &[("note".into(), long)], &[]),
        Err(MlflowError::Invalid(_))
    ));
    let base_with_path = MlflowClient::new(&format!("{uri}/not-mlflow"), ClientConfig::default()).unwrap();
    let err = base_with_path.get_experiment_by_name("errors").unwrap_err();
    assert_eq!(err.status(), Some(404), "the base path is kept, so this prefix reaches nothing: {err}");
}

#[test]
fn a_bad_record_fails_its_run_and_the_rest_still_sync() {
    let Some(uri) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join(".distillery");
    let tracker = Tracker::open(TrackerConfig::new(&store_dir, None)).unwrap();
    let inv = tracker.start_invocation("bad-record", None, &[]).unwrap();
    let config = json!({});
    let node =
        NodeRun { node_name: "n", kind: "train", cache_key: "k", config: &config, device: "cpu", tags: &[] };
    let good = tracker.start_node_run(&inv, &node).unwrap();
    let bad = tracker.start_node_run(&inv, &node).unwrap();
    tracker.log_metrics(&good, &[Metric::new("loss", 1.0, 0, 1)]).unwrap();
    drop(tracker);
    // A hand-edited store: the server would refuse this key; the push reports the run and moves on.
    let store = LocalStore::open(&store_dir).unwrap();
    std::fs::write(
        store.run_dir(&bad).join("metrics.jsonl"),
        "{\"key\":\"bad key!\",\"value\":1,\"step\":0,\"timestamp\":1}\n",
    )
    .unwrap();
    let report = sync(&store_dir, uri).unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0, bad);
    assert!(report.failed[0].1.contains("bad key!"), "{report:?}");
    assert_eq!(report.runs_complete, 2);
    assert!(!report.is_complete());
}

#[test]
fn a_cached_node_pushes_its_original_from_an_earlier_offline_invocation() {
    let Some(uri) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join(".distillery");
    let config = json!({"epochs": 1});
    let node = NodeRun {
        node_name: "teacher",
        kind: "train",
        cache_key: "teacher-key",
        config: &config,
        device: "cpu",
        tags: &[],
    };
    let logged = vec![Metric::new("loss", 0.75, 0, 10), Metric::new("loss", 0.25, 1, 20)];

    // Yesterday, offline: the teacher is trained.
    let offline = Tracker::open(TrackerConfig::new(&store, None)).unwrap();
    let inv1 = offline.start_invocation("cached-original", None, &[]).unwrap();
    let trained = offline.start_node_run(&inv1, &node).unwrap();
    offline.log_metrics(&trained, &logged).unwrap();
    offline.end_run(&trained, RunStatus::Finished).unwrap();
    offline.end_run(&inv1, RunStatus::Finished).unwrap();
    drop(offline);

    // Today, live: the teacher comes from the cache.
    let live = Tracker::open(fast_config(&store, uri)).unwrap();
    let inv2 = live.start_invocation("cached-original", None, &[]).unwrap();
    let original = live.find_run_by_cache_key("teacher-key").unwrap().unwrap();
    assert_eq!(original, trained);
    let cached = live.log_cached(&inv2, &node, &original, &[]).unwrap();
    live.end_run(&inv2, RunStatus::Finished).unwrap();
    let report = live.finish().unwrap();
    assert!(report.is_complete(), "{report:?}");

    let client = MlflowClient::new(uri, ClientConfig::default()).unwrap();
    let original_run = mlflow_run(&client, "cached-original", &trained);
    let cached_run = mlflow_run(&client, "cached-original", &cached);
    assert_eq!(cached_run.tag("distillery.cached_from_mlflow_run"), Some(original_run.info.run_id.as_str()));
    assert_eq!(original_run.info.status, "FINISHED");
    assert_history(&client, &original_run, "loss", &logged);
    // Its invocation came along whole, status included.
    assert_eq!(mlflow_run(&client, "cached-original", &inv1).info.status, "FINISHED");
}
