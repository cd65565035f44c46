//! Plugins and synthetic data end to end (`distillery run` on real processes and files): the
//! protocol's failure cases, each a clear node failure while the rest of the run goes on; the
//! repository's example plugin; the stable-diffusion plugin's `--dry-run`; and the graph
//! `generator -> generate -> distill with synthetic`, cached on a second run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod e2e_support;
use e2e_support::{entry, json, text};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(spec: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distillery"))
        .arg("run")
        .arg(spec)
        .env_remove("MLFLOW_TRACKING_URI")
        .output()
        .unwrap()
}

/// `plugins/NAME/` under `dir` with a manifest and an executable `run.sh`.
fn shell_plugin(dir: &Path, name: &str, produces: &str, script: &str) {
    let d = dir.join("plugins").join(name);
    std::fs::create_dir_all(&d).unwrap();
    let manifest = serde_json::json!({
        "name": name, "protocol": 1, "command": ["sh", "run.sh"], "produces": produces,
    });
    std::fs::write(d.join("plugin.json"), manifest.to_string()).unwrap();
    std::fs::write(d.join("run.sh"), script).unwrap();
}

/// Reads the request line and sets `$out` (the request's out_dir).
const PRELUDE: &str = r#"echo '{"type":"hello","protocol":1,"produces":"files"}'
read -r req
out=$(printf '%s' "$req" | sed 's/.*"out_dir":"\([^"]*\)".*/\1/')
"#;

/// A small dataset and a trained model for plugins to read.
const HEAD: &str = r#"
datasets:
  task: { source: builtin/digits, classes: [5, 6], per_class: 20 }
models:
  small: { arch: mlp, hidden: [16] }
nodes:
  scratch: { train: { model: small, data: task, epochs: 1, batch_size: 20 } }
"#;

const SPEC: &str = r#"
  good:    { plugin: { name: good, inputs: { data: task, model: scratch }, params: { k: 3 } } }
  crash:   { plugin: { name: crash } }
  hang:    { plugin: { name: hang, timeout: 1 } }
  garbled: { plugin: { name: garbled } }
  empty:   { plugin: { name: empty } }
  leak:    { plugin: { name: leak } }
  selfish: { plugin: { name: selfish } }
  nohello: { plugin: { name: nohello } }
  stray:   { plugin: { name: stray } }
  deaf:    { plugin: { name: deaf, timeout: 2, params: { blob: BLOB } } }
"#;

#[test]
fn each_protocol_failure_is_a_clear_node_failure_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    shell_plugin(
        d,
        "good",
        "files",
        &format!(
            r#"{PRELUDE}echo '{{"type":"progress","done":1,"total":2,"message":"half"}}'
echo '{{"type":"log","level":"warning","message":"a warning from the plugin"}}'
printf '%s' "$req" > "$out/request.json"
echo '{{"type":"metric","name":"answer","value":42}}'
echo '{{"type":"result","outputs":{{"request":"request.json"}},"metrics":{{"answer":42}}}}'
"#
        ),
    );
    shell_plugin(d, "crash", "files", &format!("{PRELUDE}echo 'boom: the model file is bad' >&2\nexit 3\n"));
    shell_plugin(d, "hang", "files", &format!("{PRELUDE}sleep 60\n"));
    shell_plugin(d, "garbled", "files", &format!("{PRELUDE}echo 'this is not json'\n"));
    shell_plugin(d, "empty", "files", &format!("{PRELUDE}echo '{{\"type\":\"result\"}}'\n"));
    shell_plugin(
        d,
        "leak",
        "files",
        &format!(
            "{PRELUDE}echo x > \"$out/ok.txt\"; echo x > \"$out/../leak.txt\"\necho '{{\"type\":\"result\"}}'\n"
        ),
    );
    shell_plugin(
        d,
        "selfish",
        "files",
        &format!("{PRELUDE}echo x > \"$out/ok.txt\"; echo x > cache.txt\necho '{{\"type\":\"result\"}}'\n"),
    );
    shell_plugin(d, "nohello", "files", "echo 'starting up' >&2\nexit 0\n");
    // Leaves a process behind holding its stderr: the host does not wait for it.
    shell_plugin(
        d,
        "stray",
        "files",
        &format!("{PRELUDE}echo x > \"$out/ok.txt\"\n(sleep 120 >&2 &)\necho '{{\"type\":\"result\"}}'\n"),
    );
    // Never reads its (large) request.
    shell_plugin(d, "deaf", "files", "echo '{\"type\":\"hello\",\"protocol\":1}'\nsleep 60\n");
    let spec = d.join("p.yaml");
    // A request larger than a pipe's buffer.
    let yaml = format!("experiment: plugins{HEAD}{SPEC}");
    std::fs::write(&spec, yaml.replace("BLOB", &"x".repeat(100_000))).unwrap();
    let t0 = Instant::now();
    let out = run(&spec);
    let took = t0.elapsed();
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    // The hanging plugin was stopped at its timeout, not waited for.
    assert!(took < Duration::from_secs(40), "took {took:?}\n{e}");
    assert!(e.contains("done    scratch"), "{e}");
    assert!(e.contains("done    good"), "{e}");
    assert!(e.contains("done    stray"), "{e}");
    assert!(e.contains("warning good: plugin: a warning from the plugin"), "{e}");
    let failed = |node: &str, needle: &str| {
        let line = e
            .lines()
            .find(|l| l.contains(&format!("FAILED  {node}:")))
            .unwrap_or_else(|| panic!("{node}:\n{e}"));
        let start = e.find(line).unwrap();
        let block = &e[start..(start + 3000).min(e.len())];
        assert!(block.contains(needle), "{node}: no `{needle}` in\n{block}");
        // Errors name where the plugin is set.
        assert!(line.contains("p.yaml:"), "{line}");
    };
    failed("crash", "exited with status 3");
    failed("crash", "boom: the model file is bad");
    failed("hang", "did not finish within its timeout of 1 s");
    failed("garbled", "not JSON");
    failed("garbled", "this is not json");
    failed("empty", "produced nothing");
    failed("leak", "wrote outside its output folder: leak.txt");
    failed("selfish", "changed the files of its own folder");
    failed("nohello", "before its hello");
    failed("nohello", "starting up");
    failed("deaf", "did not finish within its timeout of 2 s");
    // Nothing failed was stored; the good plugin's entry holds its output, log and request.
    let (good, m) = entry(d, "good");
    assert_eq!(m["metrics"]["answer"], 42.0);
    let req = json(&good.join("out/request.json"));
    assert_eq!(req["type"], "request");
    assert_eq!(req["protocol"], 1);
    assert_eq!(req["params"]["k"], 3);
    assert_eq!(req["inputs"]["data"]["kind"], "dataset");
    assert_eq!(req["inputs"]["model"]["kind"], "model");
    assert!(Path::new(req["inputs"]["model"]["path"].as_str().unwrap()).join("model.safetensors").is_file());
    assert!(good.join("plugin/messages.jsonl").is_file());
    // A second run: the good plugin is cached, the failed ones run again (and fail again).
    let again = run(&spec);
    let e2 = text(&again.stderr);
    assert!(e2.contains("cached  good"), "{e2}");
    assert!(e2.contains("FAILED  crash"), "{e2}");
    // Editing the plugin changes its key: it runs again.
    let f = d.join("plugins/good/run.sh");
    let mut s = std::fs::read_to_string(&f).unwrap();
    s.push_str("# edited\n");
    std::fs::write(&f, s).unwrap();
    let third = text(&run(&spec).stderr);
    assert!(third.contains("done    good"), "{third}");
}

#[test]
fn a_missing_plugin_or_a_bad_manifest_is_a_located_validate_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("plugins/bad")).unwrap();
    std::fs::write(
        d.join("plugins/bad/plugin.json"),
        r#"{"name":"bad","protocol":9,"command":["x"],"produces":"files"}"#,
    )
    .unwrap();
    let spec = d.join("v.yaml");
    std::fs::create_dir_all(d.join("plugins/narrow")).unwrap();
    std::fs::write(
        d.join("plugins/narrow/plugin.json"),
        r#"{"name":"narrow","protocol":1,"command":["x"],"consumes":["dataset"],"produces":"files"}"#,
    )
    .unwrap();
    std::fs::write(
        &spec,
        r#"experiment: v
datasets:
  d: { source: builtin/digits }
  few: { source: builtin/digits, classes: [0, 1] }
models: { m: { arch: mlp, hidden: [8] } }
nodes:
  a: { plugin: { name: nowhere } }
  b: { plugin: { name: bad } }
  t: { train: { model: m, data: few } }
  c: { plugin: { name: narrow, inputs: { data: d, model: t } } }
  gm: { generator: { data: few } }
  g: { generate: { generator: { node: gm }, data: d, ratio: 1 } }
  g2: { generate: { generator: { node: gm }, data: few, ratio: 1 } }
  k: { train: { model: m, data: few, synthetic: { from: g2, ratio: 2 } } }
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_distillery")).arg("validate").arg(&spec).output().unwrap();
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("v.yaml:7:"), "{e}");
    assert!(e.contains("no plugin `nowhere`"), "{e}");
    assert!(e.contains("protocol 9 is not one this build speaks"), "{e}");
    assert!(e.contains("plugin `narrow` does not take a model"), "{e}");
    assert!(e.contains("nodes.c.plugin.inputs.model"), "{e}");
    assert!(e.contains("generator `gm` is trained on `few`, which has no class \"2\""), "{e}");
    assert!(e.contains("ratio 2 needs more synthetic images than `g2` makes (ratio 1)"), "{e}");
}

#[test]
fn the_example_plugin_lists_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = d.join("x.yaml");
    std::fs::write(
        &spec,
        format!(
            "experiment: example{HEAD}  listed:  {{ plugin: {{ name: example, inputs: {{ data: task, model: scratch }}, params: {{ note: hi }} }} }}\n"
        ),
    )
    .unwrap();
    // The repository's own plugin folder, found from the experiment's folder upwards: copy it.
    let to = d.join("plugins/example");
    std::fs::create_dir_all(&to).unwrap();
    for f in ["plugin.json", "plugin.py"] {
        std::fs::copy(repo().join("plugins/example").join(f), to.join(f)).unwrap();
    }
    // Run from the experiment's folder with relative paths: the plugin, in its own folder, is
    // still told where to write.
    let out = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(["run", "x.yaml"])
        .current_dir(d)
        .env_remove("MLFLOW_TRACKING_URI")
        .output()
        .unwrap();
    let e = text(&out.stderr);
    assert!(out.status.success(), "{e}");
    let (dir, m) = entry(d, "listed");
    assert_eq!(m["metrics"]["inputs"], 2.0);
    let s = json(&dir.join("out/summary.json"));
    assert_eq!(s["params"]["note"], "hi");
    assert_eq!(s["inputs"]["data"]["kind"], "dataset");
    let files = s["inputs"]["model"]["files"].as_array().unwrap();
    assert!(files.iter().any(|f| f == "model.safetensors"), "{s}");
}

/// The stable-diffusion plugin speaks the protocol and checks its request without torch.
#[test]
fn stable_diffusion_dry_run_validates_the_request_and_writes_its_prompts() {
    let out_dir = tempfile::tempdir().unwrap();
    let request = |params: serde_json::Value| {
        serde_json::json!({
            "type": "request", "protocol": 1, "kind": "generate", "node": "gen", "seed": 3,
            "device": "cuda", "out_dir": out_dir.path(), "scratch_dir": out_dir.path(),
            "params": params, "channels": 1, "image_size": [28, 28],
            "classes": [
                { "index": 0, "name": "T-shirt/top", "prompt": "a picture of a T-shirt/top", "count": 50 },
                { "index": 1, "name": "Trouser", "prompt": "a picture of a Trouser", "count": 100 }
            ]
        })
    };
    let talk = |req: serde_json::Value| {
        let mut child = Command::new("python3")
            .arg(repo().join("plugins/stable-diffusion/plugin.py"))
            .arg("--dry-run")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        writeln!(child.stdin.take().unwrap(), "{req}").unwrap();
        child.wait_with_output().unwrap()
    };
    let ok = talk(request(serde_json::json!({ "model": "CompVis/stable-diffusion-v1-4" })));
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let lines: Vec<serde_json::Value> =
        text(&ok.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["type"], "hello");
    assert_eq!(lines[0]["produces"], "images");
    assert_eq!(lines.last().unwrap()["type"], "result");
    assert_eq!(lines.last().unwrap()["metrics"]["images"], 150);
    let plan = json(&out_dir.path().join("prompts.json"));
    assert_eq!(plan["classes"][0]["prompt"], "a picture of a T-shirt/top");
    assert_eq!(plan["classes"][1]["count"], 100);
    assert_eq!(plan["params"]["fp16"], true);
    assert_eq!(plan["params"]["steps"], 50);
    for (params, needle) in [
        (serde_json::json!({}), "params.model is required"),
        (serde_json::json!({ "model": "m", "stepz": 3 }), "unknown params ['stepz']"),
        (serde_json::json!({ "model": "m", "steps": 0 }), "params.steps: expected 1..1000"),
        (serde_json::json!({ "model": "m", "fp16": "yes" }), "params.fp16: expected bool"),
    ] {
        let bad = talk(request(params));
        assert_eq!(bad.status.code(), Some(2));
        assert!(text(&bad.stderr).contains(needle), "{}", text(&bad.stderr));
    }
}

/// A generator plugin in Python (standard library only) that writes 16x16 RGB PNG files: the
/// host converts them to the task's 8x8 grey images.
const PNG_PLUGIN: &str = r#"
import json, os, struct, sys, zlib
print(json.dumps({"type": "hello", "protocol": 1, "produces": "images"}), flush=True)
req = json.loads(sys.stdin.readline())
def png(path, w, h, rgb):
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
for c in req["classes"]:
    d = os.path.join(req["out_dir"], "images", str(c["index"]))
    os.makedirs(d)
    for i in range(c["count"]):
        png(os.path.join(d, f"{i:04d}.png"), 16, 16, [40 * c["index"] + i % 7] * 3)
print(json.dumps({"type": "result", "outputs": {"images": "images"}}), flush=True)
"#;

const SYNTH: &str = r#"
experiment: synth
datasets:
  big:  { source: builtin/digits, classes: [5, 6, 7] }
  task: { source: builtin/digits, classes: [5, 6, 7], per_class: 10 }
  test: { source: builtin/digits, classes: [5, 6, 7], split: test }
models:
  small: { arch: mlp, hidden: [32] }
nodes:
  gen_model: { generator: { data: big, epochs: 2, hidden: [64], latent: 4, batch_size: 64 } }
  gen1:      { generate: { generator: { node: gen_model }, data: task, ratio: 2, preview: 4 } }
  pgen:      { generate: { generator: { plugin: pngs }, data: task, per_class: 5 } }
  teacher:   { train: { model: small, data: task, epochs: 2, batch_size: 10 } }
  kd:        { distill: { teacher: teacher, student: small, data: task, losses: kd, epochs: 1, batch_size: 10 } }
  kd_syn:    { distill: { teacher: teacher, student: small, data: task, losses: kd, epochs: 1, batch_size: 10, synthetic: { from: gen1, ratio: 2 } } }
  ft_syn:    { train: { model: small, data: task, epochs: 1, batch_size: 10, synthetic: { from: pgen, ratio: 0.5 } } }
  table:     { report: { rows: [kd, kd_syn, ft_syn], eval: test, columns: [accuracy, cost_seconds] } }
"#;

#[test]
fn generator_generate_and_distill_with_synthetic_data_then_all_cached() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("plugins/pngs");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("plugin.json"),
        r#"{"name":"pngs","protocol":1,"command":["python3","plugin.py"],"produces":"images"}"#,
    )
    .unwrap();
    std::fs::write(p.join("plugin.py"), PNG_PLUGIN).unwrap();
    let spec = d.join("s.yaml");
    std::fs::write(&spec, SYNTH).unwrap();
    let out = run(&spec);
    let e = text(&out.stderr);
    assert!(out.status.success(), "{e}");
    // The built-in generator's set: twice the real images a class, 8x8 grey, with a preview.
    let (g, m) = entry(d, "gen1");
    assert_eq!(m["metrics"]["per_class"], serde_json::json!([20, 20, 20]));
    assert_eq!(std::fs::metadata(g.join("images.u8")).unwrap().len(), 60 * 64);
    let preview = image::open(g.join("preview.png")).unwrap();
    assert_eq!((preview.width(), preview.height()), (4 * 66, 3 * 66));
    let info = json(&g.join("dataset.json"));
    assert_eq!(info["prompts"][0], "a picture of a 5");
    // The plugin's PNG files, converted: 5 a class, grey, of the value it drew.
    let (pg, _) = entry(d, "pgen");
    let bytes = std::fs::read(pg.join("images.u8")).unwrap();
    assert_eq!(bytes.len(), 15 * 64);
    assert_eq!(bytes[64 * 5], 40, "class 1's first image");
    // The student saw real + synthetic images: 30 + 60.
    let (_, kd) = entry(d, "kd_syn");
    let (_, plain) = entry(d, "kd");
    assert_ne!(kd["key"], plain["key"]);
    assert!(e.contains("teacher_outputs(teacher on task + gen1 x2)"), "{e}");
    let (to, _) = entry(d, "teacher_outputs(teacher on task + gen1 x2)");
    // 90 images x 3 classes of logits, f32.
    assert_eq!(std::fs::metadata(to.join("logits.f32")).unwrap().len(), 90 * 3 * 4);
    // The synthetic data's making is in the student's cost: the generator's training.
    let gen_cost = entry(d, "gen_model").1["metrics"]["cost"]["own"]["seconds"].as_f64().unwrap();
    let pre = kd["metrics"]["cost"]["pretraining"]["seconds"].as_f64().unwrap();
    assert!(pre >= gen_cost && gen_cost > 0.0, "{pre} vs {gen_cost}");
    // Everything is cached the second time: nothing is generated again.
    let again = run(&spec);
    let e2 = text(&again.stderr);
    assert!(again.status.success(), "{e2}");
    assert!(!e2.contains("done "), "{e2}");
    assert!(e2.contains("cached  gen1") && e2.contains("cached  pgen"), "{e2}");
}
