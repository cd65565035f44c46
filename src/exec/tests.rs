//! The scheduler against a small runner of our own that writes files, can fail, and can block
//! until cancelled — so ordering, caching, failure containment and resume are tested exactly.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::plan::Selection;
use crate::spec::{self, Experiment};

const SPEC: &str = "
datasets: { d: { source: builtin/digits } }
models: { m: { arch: mlp, hidden: [8] } }
nodes:
  a: { train: { model: m, data: d } }
  b: { finetune: { from: a, data: d } }
  c: { finetune: { from: b, data: d } }
  x: { train: { model: m, data: d, epochs: 7 } }
  y: { finetune: { from: x, data: d } }
";

/// Writes `result.txt` with the node's name and its inputs' contents; fails or waits on request.
#[derive(Default)]
struct Toy {
    fail: Vec<String>,
    /// Nodes whose runner panics (a bug, a missing driver) instead of returning an error.
    panic: Vec<String>,
    wait_for_cancel: Vec<String>,
    ran: Mutex<Vec<String>>,
    /// Sleep this long in every node, tracking how many run at once.
    hold: Option<Duration>,
    running: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
    /// Each run's (node, device), and the most runs one device had at once.
    devices: Mutex<Vec<(String, String)>>,
    on_device: Mutex<HashMap<String, usize>>,
    device_peak: std::sync::atomic::AtomicUsize,
}

impl NodeRunner for Toy {
    fn run(&self, task: &Task<'_>) -> Result<NodeOutput, NodeError> {
        let job = task;
        let name = &task.job.name;
        self.ran.lock().unwrap().push(name.clone());
        self.devices.lock().unwrap().push((name.clone(), task.job.device.clone()));
        if let Some(d) = self.hold {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.running.fetch_add(1, SeqCst) + 1;
            self.peak.fetch_max(now, SeqCst);
            let here = {
                let mut m = self.on_device.lock().unwrap();
                let n = m.entry(task.job.device.clone()).or_default();
                *n += 1;
                *n
            };
            self.device_peak.fetch_max(here, SeqCst);
            std::thread::sleep(d);
            *self.on_device.lock().unwrap().get_mut(&task.job.device).unwrap() -= 1;
            self.running.fetch_sub(1, SeqCst);
        }
        if self.panic.contains(name) {
            panic!("{} hit a bug", name);
        }
        if self.fail.contains(name) {
            return Err(NodeError::Failed(format!("{} exploded", name)));
        }
        let mut body = name.clone();
        for (role, entry) in &job.entries {
            body += &format!(" {role}=({})", std::fs::read_to_string(entry.file("result.txt")).unwrap());
        }
        std::fs::write(job.out_dir.join("result.txt"), &body).unwrap();
        if self.wait_for_cancel.contains(name) {
            while !job.cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(5));
            }
            job.cancel.check()?;
        }
        Ok(NodeOutput { metrics: serde_json::json!({ "accuracy": 1.0 }) })
    }
}

#[derive(Default)]
struct Log(Mutex<Vec<Event>>);

impl EventSink for Log {
    fn event(&self, e: Event) {
        self.0.lock().unwrap().push(e);
    }
}

fn setup() -> (tempfile::TempDir, Experiment, Graph, Store) {
    let dir = tempfile::tempdir().unwrap();
    let exp = spec::load_str(&dir.path().join("t.yaml"), SPEC).unwrap();
    let g =
        crate::resolve::build(&exp, &crate::graph::spec_fingerprint, &crate::resolve::path_digest).unwrap();
    let store = Store::open(dir.path().join(".distillery")).unwrap();
    (dir, exp, g, store)
}

/// Plans `sel` over the store and runs that plan with the toy runner in this process.
fn go_sel(
    exp: &Experiment,
    g: &Graph,
    store: &Store,
    toy: &Toy,
    opts: &RunOptions,
    sel: &Selection,
    log: &dyn EventSink,
    cancel: &Cancel,
) -> Summary {
    let entries = crate::plan::plan(g, &store.scoped(&exp.name), sel);
    run(g, &entries, store, &Local { store, runner: toy }, opts, log, cancel)
}

fn go(
    exp: &Experiment,
    g: &Graph,
    store: &Store,
    toy: &Toy,
    opts: &RunOptions,
    log: &dyn EventSink,
    cancel: &Cancel,
) -> Summary {
    go_sel(exp, g, store, toy, opts, &Selection::default(), log, cancel)
}

fn opts(jobs: usize) -> RunOptions {
    RunOptions { jobs, ..RunOptions::default() }
}

fn outcome<'a>(s: &'a Summary, name: &str) -> &'a Outcome {
    &s.outcomes.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn runs_in_dependency_order_then_everything_is_cached() {
    let (_d, exp, g, store) = setup();
    let toy = Toy::default();
    let s = go(&exp, &g, &store, &toy, &opts(2), &Log::default(), &Cancel::default());
    assert!(s.ok(), "{s:?}");
    let ran = toy.ran.lock().unwrap().clone();
    let pos = |n: &str| ran.iter().position(|r| r == n).unwrap();
    assert!(pos("a") < pos("b") && pos("b") < pos("c") && pos("x") < pos("y"));
    // c saw b's result, which saw a's.
    let Lookup::Hit(e) = store.get(g.key(g.get("c").unwrap())).unwrap() else { panic!() };
    assert_eq!(std::fs::read_to_string(e.file("result.txt")).unwrap(), "c from=(b from=(a))");
    let toy2 = Toy::default();
    let s2 = go(&exp, &g, &store, &toy2, &opts(2), &Log::default(), &Cancel::default());
    assert!(s2.outcomes.iter().all(|(_, o)| *o == Outcome::Cached));
    assert!(toy2.ran.lock().unwrap().is_empty());
}

#[test]
fn a_failure_stops_its_dependants_only() {
    let (_d, exp, g, store) = setup();
    let toy = Toy { fail: vec!["b".into()], ..Toy::default() };
    let s = go(&exp, &g, &store, &toy, &opts(1), &Log::default(), &Cancel::default());
    assert!(!s.ok());
    assert!(matches!(outcome(&s, "a"), Outcome::Done { .. }));
    assert_eq!(outcome(&s, "b"), &Outcome::Failed { error: "b exploded".into() });
    assert_eq!(outcome(&s, "c"), &Outcome::Blocked { by: "b".into() });
    assert!(matches!(outcome(&s, "y"), Outcome::Done { .. }), "{s:?}");
    // The next run resumes with exactly the unfinished nodes.
    let toy2 = Toy::default();
    go(&exp, &g, &store, &toy2, &opts(1), &Log::default(), &Cancel::default());
    assert_eq!(*toy2.ran.lock().unwrap(), ["b", "c"]);
}

/// Regression: a panic inside a node left the scheduler waiting for its result forever.
#[test]
fn a_panicking_node_fails_alone_and_the_run_goes_on() {
    let (d, exp, g, store) = setup();
    for jobs in [1, 2] {
        let toy = Toy { panic: vec!["b".into()], ..Toy::default() };
        let s = go(&exp, &g, &store, &toy, &opts(jobs), &Log::default(), &Cancel::default());
        assert!(!s.ok());
        assert_eq!(outcome(&s, "b"), &Outcome::Failed { error: "panicked: b hit a bug".into() });
        assert_eq!(outcome(&s, "c"), &Outcome::Blocked { by: "b".into() });
        assert!(matches!(outcome(&s, "y"), Outcome::Done { .. } | Outcome::Cached), "{s:?}");
        assert!(!store.contains(g.key(g.get("b").unwrap())), "a panic is never committed");
        assert_eq!(std::fs::read_dir(d.path().join(".distillery/tmp")).unwrap().count(), 0);
    }
}

#[test]
fn cancel_mid_node_leaves_nothing_half_written_and_resumes() {
    let (d, exp, g, store) = setup();
    let toy = Toy { wait_for_cancel: vec!["b".into()], ..Toy::default() };
    let cancel = Cancel::default();
    let c2 = cancel.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        c2.cancel();
    });
    let s = go(&exp, &g, &store, &toy, &opts(1), &Log::default(), &cancel);
    stopper.join().unwrap();
    assert!(s.cancelled());
    assert_eq!(outcome(&s, "b"), &Outcome::Cancelled);
    assert!(!store.contains(g.key(g.get("b").unwrap())));
    assert_eq!(
        std::fs::read_dir(d.path().join(".distillery/tmp")).unwrap().count(),
        0,
        "no half-written entry"
    );
    let toy2 = Toy::default();
    let s2 = go(&exp, &g, &store, &toy2, &opts(1), &Log::default(), &Cancel::default());
    assert!(s2.ok());
    let ran = toy2.ran.lock().unwrap().clone();
    assert!(!ran.contains(&"a".to_string()), "finished nodes are not rerun: {ran:?}");
    assert!(ran.contains(&"b".to_string()) && ran.contains(&"c".to_string()));
}

#[test]
fn only_force_and_from_select_what_runs() {
    let (_d, exp, g, store) = setup();
    // --only b with a not cached: b is blocked, nothing else runs.
    let toy = Toy::default();
    let s = go_sel(
        &exp,
        &g,
        &store,
        &toy,
        &opts(1),
        &Selection { only: vec!["b".into()], ..Selection::default() },
        &Log::default(),
        &Cancel::default(),
    );
    assert_eq!(outcome(&s, "b"), &Outcome::Blocked { by: "a (not cached, not selected)".into() });
    assert!(toy.ran.lock().unwrap().is_empty());
    go(&exp, &g, &store, &Toy::default(), &opts(1), &Log::default(), &Cancel::default());
    // --force b reruns b alone; --from b reruns b and c.
    let toy = Toy::default();
    go_sel(
        &exp,
        &g,
        &store,
        &toy,
        &opts(1),
        &Selection { force: vec!["b".into()], ..Selection::default() },
        &Log::default(),
        &Cancel::default(),
    );
    assert_eq!(*toy.ran.lock().unwrap(), ["b"]);
    let toy = Toy::default();
    go_sel(
        &exp,
        &g,
        &store,
        &toy,
        &opts(1),
        &Selection { from: vec!["b".into()], ..Selection::default() },
        &Log::default(),
        &Cancel::default(),
    );
    assert_eq!(*toy.ran.lock().unwrap(), ["b", "c"]);
}

#[test]
fn a_corrupt_result_is_reported_and_recomputed() {
    let (_d, exp, g, store) = setup();
    go(&exp, &g, &store, &Toy::default(), &opts(1), &Log::default(), &Cancel::default());
    let Lookup::Hit(e) = store.get(g.key(g.get("a").unwrap())).unwrap() else { panic!() };
    std::fs::write(e.file("result.txt"), "tampered").unwrap();
    let toy = Toy::default();
    let log = Log::default();
    let s = go(&exp, &g, &store, &toy, &opts(1), &log, &Cancel::default());
    assert!(s.ok());
    assert_eq!(*toy.ran.lock().unwrap(), ["a"], "only the corrupt node reruns");
    let warned =
        log.0.lock().unwrap().iter().any(
            |e| matches!(e, Event::Warning { node, message } if node == "a" && message.contains("corrupt")),
        );
    assert!(warned);
}

#[test]
fn jobs_run_independent_nodes_at_once_within_device_slots() {
    use std::sync::atomic::Ordering::SeqCst;
    // a and x are independent: with two jobs they overlap...
    let (_d, exp, g, store) = setup();
    let toy = Toy { hold: Some(Duration::from_millis(150)), ..Toy::default() };
    assert!(go(&exp, &g, &store, &toy, &opts(2), &Log::default(), &Cancel::default()).ok());
    assert_eq!(toy.peak.load(SeqCst), 2);
    // ...but one device slot serialises nodes that use the device.
    let (_d, exp, g, store) = setup();
    let toy = Toy { hold: Some(Duration::from_millis(50)), ..Toy::default() };
    let one_slot = RunOptions { jobs: 2, device_slots: 1, ..RunOptions::default() };
    assert!(go(&exp, &g, &store, &toy, &one_slot, &Log::default(), &Cancel::default()).ok());
    assert_eq!(toy.peak.load(SeqCst), 1);
}

/// `--gpus 0,1`: independent nodes run one per GPU at once, never two on one GPU (a slot each),
/// each job's device is the GPU it was placed on, and `Started` says so (the MLflow run's tag).
#[test]
fn nodes_spread_over_devices_one_slot_each() {
    use std::sync::atomic::Ordering::SeqCst;
    let (_d, exp, g, store) = setup();
    let toy = Toy { hold: Some(Duration::from_millis(150)), ..Toy::default() };
    let two_gpus = RunOptions { jobs: 4, device_slots: 1, devices: vec!["cuda:0".into(), "cuda:1".into()] };
    let log = Log::default();
    assert!(go(&exp, &g, &store, &toy, &two_gpus, &log, &Cancel::default()).ok());
    assert_eq!(toy.peak.load(SeqCst), 2, "a and x (then b and y) overlap, one per GPU");
    assert_eq!(toy.device_peak.load(SeqCst), 1, "never two nodes on one GPU");
    let seen = toy.devices.lock().unwrap().clone();
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|(_, d)| d == "cuda:0" || d == "cuda:1"), "{seen:?}");
    assert!(seen.iter().any(|(_, d)| d == "cuda:1"), "the second GPU is used: {seen:?}");
    let started: Vec<(String, String)> = log
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Started { node, device, .. } => Some((node.clone(), device.clone())),
            _ => None,
        })
        .collect();
    let mut a = started.clone();
    let mut b = seen.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "Started names the device each node ran on");
    // Two slots a GPU: four nodes may share two GPUs, two on each at most.
    let (_d, exp, g, store) = setup();
    let toy = Toy { hold: Some(Duration::from_millis(100)), ..Toy::default() };
    let opts = RunOptions { jobs: 4, device_slots: 2, devices: vec!["cuda:0".into(), "cuda:1".into()] };
    assert!(go(&exp, &g, &store, &toy, &opts, &Log::default(), &Cancel::default()).ok());
    assert!(toy.device_peak.load(SeqCst) <= 2);
}
