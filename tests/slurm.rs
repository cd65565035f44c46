//! The Slurm launcher against a real Slurm (slurmctld + slurmd + munge on this machine, started
//! by scripts/local-slurm-start, which scripts/test runs; clients find it through SLURM_CONF):
//! a graph in dependency order with the local run's weights, a failing node and the rerun that
//! submits only what is missing, a requeued job resuming from its checkpoint, `--detach` then
//! `status`, a request the cluster refuses as a located error before anything is submitted, and
//! Ctrl-C cancelling only this run's jobs. Under CI=true a missing Slurm fails these tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

mod e2e_support;
mod track_support;
use e2e_support::{json, text, write};

/// One test at a time: they share one node's two CPUs, and the timing tests need them.
static CLUSTER: Mutex<()> = Mutex::new(());

/// Whether a Slurm answers; under CI=true one must.
fn cluster() -> Option<std::sync::MutexGuard<'static, ()>> {
    let ok = std::env::var_os("SLURM_CONF").is_some()
        && Command::new("sinfo").arg("-h").output().is_ok_and(|o| o.status.success());
    if !ok {
        let msg =
            "no Slurm answers (set SLURM_CONF to a running cluster: scripts/local-slurm-start starts one)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("skipped: {msg}");
        return None;
    }
    Some(CLUSTER.lock().unwrap_or_else(|p| p.into_inner()))
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_distillery"));
    c.env_remove("MLFLOW_TRACKING_URI").env("DISTILLERY_SLURM_POLL_MS", "300");
    c
}

/// Runs `cmd`, killing it after `limit` (a test must never hang).
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let id = child.id();
    let watchdog = std::thread::spawn(move || {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(200));
            if std::fs::metadata(format!("/proc/{id}")).is_err() {
                return false;
            }
        }
        let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
        true
    });
    let out = child.wait_with_output().unwrap();
    let killed = watchdog.join().unwrap();
    assert!(!killed, "did not finish within {limit:?}:\n{}\n{}", text(&out.stdout), text(&out.stderr));
    out
}

fn run(spec: &Path, store: &Path, extra: &[&str]) -> Output {
    let mut c = bin();
    c.arg("run").arg(spec).arg("--store").arg(store).args(extra);
    output_within(c, Duration::from_secs(300))
}

/// Node -> (entry folder, manifest) of a store.
fn entries(store: &Path) -> BTreeMap<String, (PathBuf, Value)> {
    let mut out = BTreeMap::new();
    for shard in std::fs::read_dir(store.join("objects")).unwrap() {
        for e in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let p = e.unwrap().path();
            let m = json(&p.join("manifest.json"));
            out.insert(m["node"].as_str().unwrap().to_string(), (p, m));
        }
    }
    out
}

/// The submission records of a store, by node.
fn records(store: &Path) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(store.join("slurm/jobs")) else { return out };
    for d in dir {
        let p = d.unwrap().path().join("record.json");
        if p.is_file() {
            let r = json(&p);
            out.insert(r["node"].as_str().unwrap().to_string(), r);
        }
    }
    out
}

fn job_ids(r: &Value) -> Vec<u64> {
    r["attempts"].as_array().unwrap().iter().map(|a| a["job_id"].as_u64().unwrap()).collect()
}

/// squeue's state of a job (`COMPLETED`, `CANCELLED` ...), or "" once it is not listed.
fn squeue_state(id: u64) -> String {
    let o =
        Command::new("squeue").args(["-h", "-t", "all", "-j", &id.to_string(), "-o", "%T"]).output().unwrap();
    text(&o.stdout).trim().to_string()
}

/// The files of every entry whose bytes are results (weights, teacher outputs, images), by node
/// and path, with their sha256: what a local and a cluster run must share bit for bit. Metrics
/// and histories hold timings, so those are compared by their result values instead.
fn result_files(store: &Path) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for (node, (_, m)) in entries(store) {
        for f in m["files"].as_array().unwrap() {
            let path = f["path"].as_str().unwrap();
            if !path.ends_with(".json") && !path.ends_with(".jsonl") {
                out.insert((node.clone(), path.to_string()), f["sha256"].as_str().unwrap().to_string());
            }
        }
    }
    out
}

const FIVE: &str = r#"
experiment: slurm5
defaults:
  resources: { cpus: 1, memory: 500M, time: 10m }
datasets:
  task: { source: builtin/digits, classes: [5, 6, 7, 8, 9], per_class: 20 }
  test: { source: builtin/digits, classes: [5, 6, 7, 8, 9], split: test }
models:
  big:   { arch: resnet, depth: 8, width: 8 }
  small: { arch: cnn, channels: [8, 16] }
nodes:
  teacher: { train: { model: big, data: task, epochs: 2, batch_size: 32 } }
  scratch: { train: { model: small, data: task, epochs: 2, batch_size: 32 } }
  kd:      { distill: { teacher: teacher, student: small, data: task, losses: kd, epochs: 2, batch_size: 32 } }
  ft:      { finetune: { from: kd, data: task, epochs: 1, batch_size: 32 }, resources: { gpus: 1 } }
  table:   { report: { rows: [scratch, kd, ft, teacher], eval: test, columns: [accuracy] } }
"#;

#[test]
fn a_graph_runs_as_jobs_in_dependency_order_with_the_local_runs_results() {
    let Some(_c) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "five.yaml", FIVE);
    let (local, cluster) = (dir.path().join("local"), dir.path().join("cluster"));
    let out = run(&spec, &local, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = run(&spec, &cluster, &["--launcher", "slurm"]);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{so}\n{se}");
    assert!(se.contains("6 ran, 0 cached, 0 failed"), "{se}");
    // The report's table is printed as after a local run.
    assert!(so.contains("| scratch |"), "{so}");
    let recs = records(&cluster);
    assert_eq!(recs.len(), 6, "{recs:?}");
    let id = |n: &str| job_ids(&recs[n])[0];
    for (node, r) in &recs {
        assert_eq!(job_ids(r).len(), 1, "{node} was submitted once: {r}");
        let a = &r["attempts"][0];
        assert!(so.contains(&format!("submitted {node}: slurm job {}", a["job_id"])), "{so}");
        assert_eq!(squeue_state(a["job_id"].as_u64().unwrap()), "COMPLETED", "{node}");
    }
    // Each job waits on its inputs' jobs; those without node inputs wait on nothing.
    let deps = |n: &str| -> Vec<u64> {
        recs[n]["attempts"][0]["dependency"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect()
    };
    assert!(deps("teacher").is_empty() && deps("scratch").is_empty());
    assert_eq!(deps("teacher_outputs(teacher on task)"), vec![id("teacher")]);
    let mut kd = deps("kd");
    kd.sort();
    assert_eq!(kd, vec![id("teacher"), id("teacher_outputs(teacher on task)")]);
    assert_eq!(deps("ft"), vec![id("kd")]);
    let mut t = deps("table");
    t.sort();
    let mut want = vec![id("scratch"), id("kd"), id("ft"), id("teacher")];
    want.sort();
    assert_eq!(t, want);
    // The resources asked for, a fake GRES GPU included.
    let flags = |n: &str| recs[n]["attempts"][0]["flags"].to_string();
    assert!(flags("ft").contains("--gres=gpu:1") && flags("ft").contains("--mem=500M"), "{}", flags("ft"));
    assert!(flags("kd").contains("--time=0-00:10:00") && !flags("kd").contains("gres"), "{}", flags("kd"));

    // Bit-identical weights and teacher outputs, and the same accuracies.
    let (a, b) = (result_files(&local), result_files(&cluster));
    assert!(a.len() >= 5, "{a:?}");
    assert_eq!(a, b);
    let (ea, eb) = (entries(&local), entries(&cluster));
    assert_eq!(ea.keys().collect::<Vec<_>>(), eb.keys().collect::<Vec<_>>());
    for (node, (_, m)) in &ea {
        assert_eq!(m["metrics"]["accuracy"], eb[node].1["metrics"]["accuracy"], "{node}");
        assert_eq!(m["canonical"], eb[node].1["canonical"], "{node}");
    }
    let rows = |s: &Path| {
        let (d, _) = &entries(s)["table"];
        let v = json(&d.join("rows.json"));
        v.as_array().unwrap().iter().map(|r| r["accuracy"].clone()).collect::<Vec<_>>()
    };
    assert_eq!(rows(&local), rows(&cluster));
    // The jobs ran the binary snapshotted into the store.
    let script = std::fs::read_to_string(
        cluster.join("slurm/jobs").join(recs["kd"]["key"].as_str().unwrap()).join("run.sh"),
    )
    .unwrap();
    assert!(script.contains(&cluster.join("slurm/bin").display().to_string()), "{script}");

    // Again: nothing to submit.
    let out = run(&spec, &cluster, &["--launcher", "slurm"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("nothing to submit"), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("0 ran, 6 cached"), "{}", text(&out.stderr));
}

/// A plugin that fails while the file `FAIL` is beside the spec, and one that depends on it.
const FLAKY: &str = r#"
experiment: flaky
launcher: slurm
datasets:
  task: { source: builtin/digits, classes: [5, 6], per_class: 20 }
models:
  small: { arch: mlp, hidden: [16] }
nodes:
  scratch: { train: { model: small, data: task, epochs: 1, batch_size: 20 } }
  other:   { train: { model: small, data: task, epochs: 2, batch_size: 20 } }
  flaky:   { plugin: { name: flaky, inputs: { model: scratch } } }
  after:   { plugin: { name: flaky, inputs: { prev: flaky }, params: { second: true } } }
"#;

fn flaky_plugin(dir: &Path) {
    let d = dir.join("plugins/flaky");
    std::fs::create_dir_all(&d).unwrap();
    let manifest = serde_json::json!({ "name": "flaky", "protocol": 1, "command": ["sh", "run.sh"], "produces": "files" });
    std::fs::write(d.join("plugin.json"), manifest.to_string()).unwrap();
    let script = format!(
        r#"echo '{{"type":"hello","protocol":1,"produces":"files"}}'
read -r req
out=$(printf '%s' "$req" | sed 's/.*"out_dir":"\([^"]*\)".*/\1/')
if [ -e '{}/FAIL' ]; then echo "the flaky plugin fails on purpose" >&2; exit 3; fi
echo ok > "$out/ok.txt"
echo '{{"type":"result","outputs":{{"ok":"ok.txt"}},"metrics":{{}}}}'
"#,
        dir.display()
    );
    std::fs::write(d.join("run.sh"), script).unwrap();
}

#[test]
fn a_failing_job_leaves_the_others_done_and_the_rerun_submits_only_the_rest() {
    let Some(_c) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    flaky_plugin(dir.path());
    let spec = write(dir.path(), "flaky.yaml", FLAKY);
    let store = dir.path().join("store");
    std::fs::write(dir.path().join("FAIL"), "").unwrap();
    // `launcher: slurm` in the spec: no flag needed.
    let out = run(&spec, &store, &[]);
    let se = text(&out.stderr);
    assert!(!out.status.success(), "{se}");
    assert!(se.contains("2 ran, 0 cached, 1 failed, 1 blocked"), "{se}");
    // The failure names the job and quotes its stderr (the plugin's, through the worker's).
    assert!(se.contains("the flaky plugin fails on purpose"), "{se}");
    let recs = records(&store);
    let after = job_ids(&recs["after"])[0];
    // Slurm cancelled the dependant (its dependency can never be met).
    let t0 = Instant::now();
    while squeue_state(after) != "CANCELLED" && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(squeue_state(after), "CANCELLED");
    let done = entries(&store);
    assert!(done.contains_key("scratch") && done.contains_key("other") && !done.contains_key("flaky"));

    std::fs::remove_file(dir.path().join("FAIL")).unwrap();
    let out = run(&spec, &store, &[]);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{so}\n{se}");
    assert!(se.contains("2 ran, 2 cached, 0 failed"), "{se}");
    assert!(so.contains("submitted flaky") && so.contains("submitted after"), "{so}");
    assert!(!so.contains("submitted scratch") && !so.contains("submitted other"), "{so}");
    let recs = records(&store);
    assert_eq!(job_ids(&recs["scratch"]).len(), 1);
    assert_eq!(job_ids(&recs["other"]).len(), 1);
    assert_eq!(job_ids(&recs["flaky"]).len(), 2);
    assert_eq!(job_ids(&recs["after"]).len(), 2);
}

const SLOW: &str = r#"
experiment: slow
datasets:
  pre: { source: builtin/digits, classes: [0, 1, 2, 3, 4] }
models:
  big: { arch: resnet, depth: 8, width: 16 }
nodes:
  slow: { train: { model: big, data: pre, epochs: EPOCHS }, resources: { cpus: 2 } }
"#;

/// Waits until `f` is true, up to `limit`.
fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn_run(spec: &Path, store: &Path, extra: &[&str]) -> Child {
    let mut c = bin();
    c.arg("run")
        .arg(spec)
        .arg("--store")
        .arg(store)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

/// The events a worker wrote for `node`.
fn events(store: &Path, node: &str) -> Vec<Value> {
    let recs = records(store);
    let Some(r) = recs.get(node) else { return Vec::new() };
    let p = store.join("slurm/jobs").join(r["key"].as_str().unwrap()).join("events.jsonl");
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_requeued_job_resumes_from_its_checkpoint_and_is_not_submitted_twice() {
    let Some(_c) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "slow.yaml", &SLOW.replace("EPOCHS", "60"));
    let store = dir.path().join("store");
    let child = spawn_run(&spec, &store, &["--launcher", "slurm"]);
    // Requeue it once it is a few epochs in (each epoch's end is a step boundary).
    wait_for(Duration::from_secs(120), "epoch 3", || {
        events(&store, "slow").iter().any(|e| e["event"] == "progress" && e["epoch"].as_u64() >= Some(3))
    });
    let id = job_ids(&records(&store)["slow"])[0];
    let ok = Command::new("scontrol").args(["requeue", &id.to_string()]).status().unwrap();
    assert!(ok.success());
    // Slurm holds a requeued job back for its credential's lifetime (scripts/local-slurm-start
    // makes it 10 s) and then starts it again, under the same id.
    wait_for(Duration::from_secs(60), "the requeue", || squeue_state(id) == "PENDING");
    let out = child.wait_with_output().unwrap();
    let se = text(&out.stderr);
    assert!(out.status.success(), "{se}");
    assert!(se.contains("1 ran, 0 cached, 0 failed"), "{se}");
    assert!(se.contains("resuming from epoch"), "{se}");
    // One submission; two starts, the second from the first's checkpoint.
    assert_eq!(job_ids(&records(&store)["slow"]), vec![id], "{}", records(&store)["slow"]);
    let starts: Vec<Value> = events(&store, "slow").into_iter().filter(|e| e["event"] == "started").collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(starts[0]["resume"].is_null());
    assert!(starts[1]["resume"].as_str().is_some_and(|s| s.starts_with("epoch ")), "{starts:?}");
    // And it ends where an uninterrupted local run ends.
    let local = dir.path().join("local");
    let out = run(&spec, &local, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(result_files(&local), result_files(&store));
}

#[test]
fn detach_submits_and_returns_then_status_shows_the_finished_graph() {
    let Some(_c) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "slow.yaml", &SLOW.replace("EPOCHS", "8"));
    let store = dir.path().join("store");
    let t0 = Instant::now();
    let out = run(&spec, &store, &["--launcher", "slurm", "--detach"]);
    let so = text(&out.stdout);
    assert!(out.status.success(), "{so}\n{}", text(&out.stderr));
    assert!(so.contains("submitted slow: slurm job") && so.contains("distillery status"), "{so}");
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert!(!entries_exist(&store, "slow"), "detach returned after the job, not at submission");
    let mut c = bin();
    c.arg("status").arg(&spec).arg("--store").arg(&store);
    let out = output_within(c, Duration::from_secs(200));
    let se = text(&out.stderr);
    assert!(out.status.success(), "{se}");
    assert!(se.contains("watching `slow`"), "{se}");
    assert!(se.contains("done    slow") && se.contains("1 ran, 0 cached, 0 failed"), "{se}");
    assert!(entries_exist(&store, "slow"));
    // Watching again: finished.
    let mut c = bin();
    c.arg("status").arg(&spec).arg("--store").arg(&store);
    let out = output_within(c, Duration::from_secs(60));
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("0 ran, 1 cached"), "{}", text(&out.stderr));
}

fn entries_exist(store: &Path, node: &str) -> bool {
    store.join("objects").is_dir() && entries(store).contains_key(node)
}

#[test]
fn a_request_the_cluster_refuses_is_a_located_error_before_anything_is_submitted() {
    let Some(_c) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The local cluster has 2 (fake) GPUs and 2 CPUs.
    let spec =
        write(dir.path(), "five.yaml", &FIVE.replace("resources: { gpus: 1 }", "resources: { gpus: 3 }"));
    let store = dir.path().join("store");
    let out = run(&spec, &store, &["--launcher", "slurm"]);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(se.contains("error[resources]"), "{se}");
    assert!(se.contains("five.yaml:15:"), "{se}");
    assert!(se.contains("--gres=gpu:3"), "{se}");
    assert!(records(&store).is_empty(), "nothing may be submitted");
    // `validate` asks too, for a spec that says `launcher: slurm`.
    let spec = write(
        dir.path(),
        "v.yaml",
        &format!("launcher: slurm{}", FIVE.replace("resources: { gpus: 1 }", "resources: { gpus: 3 }")),
    );
    let mut c = bin();
    c.arg("validate").arg(&spec);
    let out = output_within(c, Duration::from_secs(60));
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(se.contains("error[resources]") && se.contains("v.yaml:15:"), "{se}");
    // And the defaults' line for a request made there.
    let spec = write(dir.path(), "cpus.yaml", &FIVE.replace("cpus: 1,", "cpus: 64,"));
    let out = run(&spec, &store, &["--launcher", "slurm"]);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(se.contains("cpus.yaml:4:"), "{se}");
    assert!(records(&store).is_empty());
}

#[test]
fn ctrl_c_cancels_this_runs_jobs_and_no_others() {
    let Some(_c) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Someone else's job.
    let other = Command::new("sbatch")
        .args(["--parsable", "--job-name=not-ours", "--cpus-per-task=1", "--wrap=sleep 120"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(other.status.success(), "{}", text(&other.stderr));
    let other: u64 = text(&other.stdout).trim().parse().unwrap();
    let spec = write(dir.path(), "slow.yaml", &SLOW.replace("EPOCHS", "200").replace("cpus: 2", "cpus: 1"));
    let store = dir.path().join("store");
    let child = spawn_run(&spec, &store, &["--launcher", "slurm"]);
    wait_for(Duration::from_secs(120), "the job to start", || {
        events(&store, "slow").iter().any(|e| e["event"] == "progress")
    });
    let ok = Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{se}");
    let id = job_ids(&records(&store)["slow"])[0];
    assert!(
        se.contains(&format!(
            "cancelled the 1 Slurm job(s) this run submitted that had not ended ({id} slow)"
        )),
        "{se}"
    );
    wait_for(Duration::from_secs(30), "the cancel", || squeue_state(id) == "CANCELLED");
    let st = squeue_state(other);
    assert!(st == "RUNNING" || st == "PENDING", "{st}");
    let _ = Command::new("scancel").arg(other.to_string()).status();
}

/// A plugin that holds `MB` megabytes for a moment.
const HOG: &str = r#"
experiment: hog
launcher: slurm
nodes:
  hog: { plugin: { name: hog }, resources: { memory: 200M, retries: 1, retry_scale: 3 } }
"#;

#[test]
fn a_job_out_of_memory_is_retried_with_more_memory() {
    let Some(_c) = cluster() else { return };
    // Slurm enforces `--mem` through the memory cgroup (scripts/local-slurm-start picks
    // proctrack/cgroup where the cgroup v1 memory controller is mounted, as on CI).
    let conf = Command::new("scontrol").args(["show", "config"]).output().unwrap();
    assert!(text(&conf.stdout).contains("proctrack/cgroup"), "this cluster does not enforce --mem");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("plugins/hog");
    std::fs::create_dir_all(&d).unwrap();
    let manifest =
        serde_json::json!({ "name": "hog", "protocol": 1, "command": ["sh", "run.sh"], "produces": "files" });
    std::fs::write(d.join("plugin.json"), manifest.to_string()).unwrap();
    std::fs::write(
        d.join("run.sh"),
        r#"echo '{"type":"hello","protocol":1,"produces":"files"}'
read -r req
out=$(printf '%s' "$req" | sed 's/.*"out_dir":"\([^"]*\)".*/\1/')
python3 -c "import time; x = b'x' * (300 << 20); time.sleep(1)" || exit 9
echo ok > "$out/ok.txt"
echo '{"type":"result","outputs":{"ok":"ok.txt"},"metrics":{}}'
"#,
    )
    .unwrap();
    let spec = write(dir.path(), "hog.yaml", HOG);
    let store = dir.path().join("store");
    let out = run(&spec, &store, &[]);
    let se = text(&out.stderr);
    assert!(out.status.success(), "{se}");
    assert!(se.contains("ended (OUT_OF_MEMORY): submitted again as job"), "{se}");
    let r = &records(&store)["hog"];
    let flags: Vec<String> = r["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["flags"].as_array().unwrap()[0].to_string())
        .collect();
    assert_eq!(flags, ["\"--mem=200M\"", "\"--mem=600M\""], "{r}");
    assert_eq!(squeue_state(job_ids(r)[0]), "OUT_OF_MEMORY");
}

#[test]
fn without_slurm_or_with_local_only_flags_it_says_what_to_do() {
    // No cluster needed: sbatch is not on this PATH.
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "five.yaml", FIVE);
    let store = dir.path().join("store");
    let mut c = bin();
    c.arg("run").arg(&spec).arg("--store").arg(&store).args(["--launcher", "slurm"]).env("PATH", dir.path());
    let out = output_within(c, Duration::from_secs(60));
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(se.contains("cannot run `sbatch`") && se.contains("--launcher local"), "{se}");
    assert!(!se.contains("error[resources]"), "not the request's fault: {se}");
    assert!(records(&store).is_empty());
    let out = run(&spec, &store, &["--launcher", "slurm", "-j", "4"]);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(se.contains("--jobs cannot be used with the slurm launcher"), "{se}");
    let out = run(&spec, &store, &["--detach"]);
    assert!(text(&out.stderr).contains("--detach needs the slurm launcher"), "{}", text(&out.stderr));
    let mut c = bin();
    c.arg("status").arg(&spec).arg("--store").arg(&store);
    let out = output_within(c, Duration::from_secs(60));
    assert!(
        text(&out.stderr).contains("nothing of") && text(&out.stderr).contains("was submitted"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_cluster_runs_metrics_reach_mlflow_as_a_local_runs_do() {
    let Some(_c) = cluster() else { return };
    let Some(mlflow) = track_support::mlflow_executable() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = track_support::MlflowServer::start(&mlflow, &dir.path().join("mlflow"), false);
    let spec = write(dir.path(), "slow.yaml", &SLOW.replace("EPOCHS", "4"));
    let store = dir.path().join("store");
    let mut c = bin();
    c.arg("run").arg(&spec).arg("--store").arg(&store).args([
        "--launcher",
        "slurm",
        "--tracking",
        &server.uri,
    ]);
    let out = output_within(c, Duration::from_secs(200));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The worker logged nothing itself (compute nodes need no network): its events, forwarded by
    // the watching process, made the node's run.
    let client = server.client();
    let exp = client.get_experiment_by_name("slow").unwrap().expect("experiment");
    let runs = client.search_runs(&[&exp.experiment_id], "").unwrap();
    let node = runs.iter().find(|r| r.param("kind") == Some("train")).expect("the node's run");
    assert!(node.tag("mlflow.parentRunId").is_some());
    let loss = client.get_metric_history(&node.info.run_id, "loss").unwrap();
    assert_eq!(loss.len(), 4, "one loss point per epoch");
    assert!(node.metric("flops").is_some_and(|f| f > 0.0), "{:?}", node.data.metrics);
    // And the stored result's files as artifacts.
    let files: Vec<String> =
        client.list_artifacts(&node.info.run_id, "").unwrap().into_iter().map(|f| f.path).collect();
    assert!(files.iter().any(|f| f == "model.safetensors"), "{files:?}");

    // Detached, finished before anyone watched: `status` reports it then, to MLflow too.
    let spec = write(
        dir.path(),
        "detached.yaml",
        &SLOW.replace("EPOCHS", "3").replace("experiment: slow", "experiment: slow-detached"),
    );
    let store = dir.path().join("store2");
    let out = run(&spec, &store, &["--launcher", "slurm", "--detach"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for(Duration::from_secs(120), "the detached job", || entries_exist(&store, "slow"));
    let status = || {
        let mut c = bin();
        c.arg("status").arg(&spec).arg("--store").arg(&store).args(["--tracking", &server.uri]);
        output_within(c, Duration::from_secs(120))
    };
    let out = status();
    let se = text(&out.stderr);
    assert!(out.status.success(), "{se}");
    assert!(se.contains("1 ran, 0 cached"), "reported as a run of this watch: {se}");
    let exp = client.get_experiment_by_name("slow-detached").unwrap().expect("experiment");
    let runs = client.search_runs(&[&exp.experiment_id], "").unwrap();
    let node = runs.iter().find(|r| r.param("kind") == Some("train")).expect("the node's run");
    assert_eq!(client.get_metric_history(&node.info.run_id, "loss").unwrap().len(), 3);
    // Reported once: the next watch finds it cached.
    let out = status();
    assert!(text(&out.stderr).contains("0 ran, 1 cached"), "{}", text(&out.stderr));
}

#[test]
fn a_job_near_its_time_limit_keeps_a_checkpoint_and_continues_in_a_new_job() {
    let Some(_c) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    // About 110 s of training on one core, under a 1-minute limit: Slurm sends SIGTERM 10 s
    // before it (--signal=B:TERM@10), the worker keeps a checkpoint and stops, and the next job
    // continues from it.
    let spec = write(
        dir.path(),
        "tl.yaml",
        &SLOW.replace("EPOCHS", "600").replace("resources: { cpus: 2 }", "resources: { cpus: 1, time: 1m }"),
    );
    let store = dir.path().join("store");
    let out = run(&spec, &store, &["--launcher", "slurm"]);
    let se = text(&out.stderr);
    assert!(out.status.success(), "{se}");
    assert!(se.contains("the worker stopped on SIGTERM"), "{se}");
    let r = &records(&store)["slow"];
    assert!(job_ids(r).len() >= 2, "{r}");
    assert!(r["attempts"][0]["flags"].to_string().contains("--time=0-00:01:00"), "{r}");
    let starts: Vec<Value> = events(&store, "slow").into_iter().filter(|e| e["event"] == "started").collect();
    assert!(starts[1]["resume"].as_str().is_some_and(|s| s.starts_with("epoch ")), "{starts:?}");
}
