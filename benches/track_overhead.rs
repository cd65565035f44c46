//! What tracking costs a training loop, with and without a live MLflow server.
//!
//!   export DISTILLERY_MLFLOW="$(scripts/mlflow-venv)"   # optional: without it only local cases run
//!   cargo bench --bench track_overhead
//!
//! A "step" is a fixed amount of CPU work on the training thread (about 60 ms here; a resnet8
//! step at batch 64 is 50-150 ms on 2 cores), followed by logging six metrics as the executor
//! will. Printed: median step time without tracking, with the local store only, and with the
//! live push to a server on the same machine; the median cost of one `log_metrics` call; and,
//! for the client choice, one REST round trip on the pooled connection versus a new client per
//! request (what the mlflow-client crate does).

#[path = "../tests/track_support/mod.rs"]
mod track_support;

use distillery::track::{
    ClientConfig, Metric, MlflowClient, NodeRun, RunId, RunStatus, Tracker, TrackerConfig, now_ms,
};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Steps per configuration, run in interleaved rounds so machine noise hits all alike.
const ROUNDS: usize = 8;
const STEPS_PER_ROUND: usize = 15;

fn work() -> f64 {
    // Deterministic CPU work the optimiser cannot remove.
    let mut acc = 0.0f64;
    for i in 0..4_000_000u32 {
        acc += black_box((i as f64).sqrt().sin());
    }
    acc
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A training loop's view of one configuration: optionally a tracker with an open node run.
struct Loop<'a> {
    name: &'static str,
    tracker: Option<(&'a Tracker, RunId, RunId)>,
    step_ms: Vec<f64>,
    log_us: Vec<f64>,
    next_step: i64,
}

impl<'a> Loop<'a> {
    fn new(name: &'static str, tracker: Option<&'a Tracker>) -> Loop<'a> {
        let tracker = tracker.map(|t| {
            let inv = t.start_invocation("bench-overhead", None, &[]).unwrap();
            let config = serde_json::json!({"epochs": 1});
            let node = NodeRun {
                node_name: "bench",
                kind: "train",
                cache_key: "k",
                config: &config,
                device: "cpu",
                tags: &[],
            };
            let run = t.start_node_run(&inv, &node).unwrap();
            (t, inv, run)
        });
        Loop { name, tracker, step_ms: Vec::new(), log_us: Vec::new(), next_step: 0 }
    }

    fn steps(&mut self, n: usize) {
        for _ in 0..n {
            let start = Instant::now();
            let loss = work();
            if let Some((t, _, run)) = &self.tracker {
                let (ts, step) = (now_ms(), self.next_step);
                let points = [
                    Metric::new("train/loss", loss, step, ts),
                    Metric::new("train/loss_ce", loss * 0.5, step, ts),
                    Metric::new("train/loss_kd", loss * 0.25, step, ts),
                    Metric::new("train/loss_align_uniform", f64::NAN, step, ts),
                    Metric::new("train/lr", 0.05, step, ts),
                    Metric::new("train/acc", 0.5, step, ts),
                ];
                let log_start = Instant::now();
                t.log_metrics(run, &points).unwrap();
                self.log_us.push(log_start.elapsed().as_secs_f64() * 1e6);
            }
            self.next_step += 1;
            self.step_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }

    fn finish(self, base_ms: f64) -> f64 {
        let step = median(self.step_ms);
        let log = if self.log_us.is_empty() {
            String::new()
        } else {
            format!(", log_metrics median {:.1} us", median(self.log_us.clone()))
        };
        println!(
            "{:<22} median {step:.2} ms/step ({:+.2}% vs none){log}",
            self.name,
            (step / base_ms - 1.0) * 100.0
        );
        if let Some((t, inv, run)) = self.tracker {
            t.end_run(&run, RunStatus::Finished).unwrap();
            t.end_run(&inv, RunStatus::Finished).unwrap();
        }
        median(self.log_us)
    }
}

fn rest_latency(uri: &str) {
    // Pooled connection versus a new client (and connection) per request.
    let client = MlflowClient::new(uri, ClientConfig::default()).unwrap();
    let exp = client.ensure_experiment("bench-rest").unwrap();
    let run = client.create_run(&exp, "rest", now_ms(), &[]).unwrap();
    let time = |f: &mut dyn FnMut(i64)| -> f64 {
        let mut v = Vec::new();
        for i in 0..40 {
            let start = Instant::now();
            f(i);
            v.push(start.elapsed().as_secs_f64() * 1e3);
        }
        median(v)
    };
    let get_pooled = time(&mut |_| {
        client.get_experiment_by_name("bench-rest").unwrap();
    });
    let get_fresh = time(&mut |_| {
        MlflowClient::new(uri, ClientConfig::default())
            .unwrap()
            .get_experiment_by_name("bench-rest")
            .unwrap();
    });
    let batch_pooled = time(&mut |i| {
        client.log_batch(&run.run_id, &[Metric::new("m", 1.0, i, now_ms())], &[], &[]).unwrap()
    });
    println!(
        "REST round trip (server on this machine): get-by-name median {get_pooled:.2} ms pooled, {get_fresh:.2} ms with a new client each; \
         log-batch (sqlite commit) median {batch_pooled:.2} ms"
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let local = Tracker::open(TrackerConfig::new(dir.path().join("local"), None)).unwrap();
    let server = track_support::mlflow_executable()
        .map(|mlflow| track_support::MlflowServer::start(&mlflow, &dir.path().join("server"), false));
    let live = server
        .as_ref()
        .map(|s| Tracker::open(TrackerConfig::new(dir.path().join("live"), Some(s.uri.clone()))).unwrap());
    let live_slow = server.as_ref().map(|s| {
        let mut config = TrackerConfig::new(dir.path().join("live5"), Some(s.uri.clone()));
        config.push_interval = Duration::from_secs(5);
        Tracker::open(config).unwrap()
    });

    let mut none = Loop::new("no tracking", None);
    let mut local_loop = Loop::new("local store only", Some(&local));
    let mut live_loop = live.as_ref().map(|t| Loop::new("live push, every 1 s", Some(t)));
    let mut live_slow_loop = live_slow.as_ref().map(|t| Loop::new("live push, every 5 s", Some(t)));
    none.steps(10); // warm-up, not counted
    none.step_ms.clear();
    for _ in 0..ROUNDS {
        none.steps(STEPS_PER_ROUND);
        local_loop.steps(STEPS_PER_ROUND);
        for l in [live_loop.as_mut(), live_slow_loop.as_mut()].into_iter().flatten() {
            l.steps(STEPS_PER_ROUND);
        }
    }
    let base = median(none.step_ms.clone());
    println!(
        "{} steps per configuration in {ROUNDS} interleaved rounds; a step is ~{base:.0} ms of CPU work",
        ROUNDS * STEPS_PER_ROUND
    );
    none.finish(base);
    local_loop.finish(base);
    let Some(live_loop) = live_loop else {
        println!("live push to MLflow: skipped (DISTILLERY_MLFLOW not set)");
        return;
    };
    let live_log = live_loop.finish(base);
    live_slow_loop.unwrap().finish(base);
    for tracker in [live.unwrap(), live_slow.unwrap()] {
        let report = tracker.finish().unwrap();
        assert!(report.is_complete(), "{report:?}");
    }
    for resnet8_ms in [50.0, 150.0] {
        println!(
            "  log_metrics on the training thread = {:.3}% of a {resnet8_ms:.0} ms resnet8 step",
            live_log / 1e3 / resnet8_ms * 100.0
        );
    }
    rest_latency(&server.as_ref().unwrap().uri);
    std::thread::sleep(Duration::from_millis(10));
}
