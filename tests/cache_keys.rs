//! A cached result is a promise: every spec setting that reaches a node's computation changes
//! that node's cache key.
//!
//! The test walks every leaf of a spec that sets every field (checked against the JSON Schema,
//! so a new field cannot be forgotten), changes it to another valid value, and requires the key
//! of a node that reads it to change. The settings deliberately left out of keys are listed in
//! `NEUTRAL`, each with its reason.

#![recursion_limit = "256"]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use distillery::data::FingerprintCache;

/// Leaves (JSON pointers, `*` for any name) that change no key, and why.
const NEUTRAL: &[(&str, &str)] = &[
    ("/experiment", "the experiment's name labels runs; results do not depend on it"),
    ("/description", "free text"),
    ("/nodes/*/description", "free text"),
    ("/device", "the device runs the same computation; CPU and CUDA results are one experiment"),
    (
        "/launcher",
        "where jobs run; a Slurm job's results are bit-identical to a local run's (tests/slurm.rs)",
    ),
    (
        "/nodes/*/resources/*",
        "what a cluster job asks for (cores, memory, time ...); the computation is the same",
    ),
    ("/nodes/*/resources/sbatch/*", "more sbatch flags, as the other resources"),
    ("/datasets/*/path", "the content it points at is hashed instead: moving data keeps the key"),
    (
        "/nodes/*/*/checkpoint_every",
        "how often progress is saved; a resumed run ends bit for bit as an uninterrupted one (tests/resume.rs)",
    ),
    ("/nodes/*/*/timeout", "how long a plugin may take; a plugin that finishes gives the same result"),
    ("/nodes/*/*/generator/timeout", "as a plugin node's timeout"),
    (
        "/nodes/s/distill/teacher_cache",
        "`s` augments its batches, so its teacher's outputs cannot be kept either way; where they can, `auto` adds a teacher_outputs input and `off` does not (tests/run.rs)",
    ),
];

/// Leaves that cannot change alone into another valid spec: a tagged enum's tag (each variant's
/// own fields are walked, and the spec uses several variants) and a dataset's source (which
/// sets which other keys are allowed; the content fingerprint covers what it reads).
const STRUCTURAL: &[&str] = &["type", "source", "arch", "loss"];

/// Schema properties the base spec below cannot set, and why; every other property of the
/// schema must appear in it.
const NOT_EXERCISED: &[(&str, &str)] = &[
    ("labels", "CIFAR-100 only (needs a CIFAR-100 file); DatasetSpec is hashed whole (resolve::dataset_key)"),
    ("train_list", "set in the `listed` dataset only when lists exist; hashed with the dataset's settings"),
    ("test_list", "as train_list"),
    ("loss", "a loss's tag, written as its key under `losses:` (each loss's settings are walked)"),
    ("matrix", "expands nodes into instances named by their values; tests/determinism.rs covers it"),
    ("pivot", "a report's matrix key: needs a matrix, as `matrix`; part of ReportWork, so of the key"),
    ("defaults", "merged into each node before typing; the nodes' own settings are what is walked"),
    ("include", "merged before typing, like defaults"),
    (
        "weights",
        "a file path: its content's sha256 is in the key, not the path (resolve::jobs tests: a_pretrained_file_is_keyed_by_its_content)",
    ),
    ("pretrained", "a file path; as weights"),
];

fn base_spec() -> Value {
    json!({
        "experiment": "keys",
        "description": "every field",
        "seed": 3,
        "device": "cpu",
        "launcher": "slurm",
        "datasets": {
            "a": { "source": "builtin/digits", "classes": [0, 1, 2], "per_class": 40, "seed": 5,
                   "split": "train", "holdout": 0.25, "class_names": ["zero", "one", "two"],
                   "transforms": [ { "type": "resize", "size": 10 }, { "type": "center_crop", "size": 9 },
                                   { "type": "pad_crop", "size": 9, "padding": 1 },
                                   { "type": "random_resized_crop", "size": 8 }, "flip",
                                   { "type": "normalize", "mean": [0.3], "std": [0.2] } ] },
            "b": { "source": "builtin/digits", "classes": [0, 1, 2], "fraction": 0.5, "split": "all" },
            "f": { "source": "folder", "path": "imgs", "image_size": 6, "split_fraction": 0.5 },
        },
        "models": {
            "m": { "arch": "mlp", "hidden": [8, 4] },
            "c": { "arch": "cnn", "channels": [4, 32] },
            "r": { "arch": "resnet", "depth": 8, "width": 8, "stem": "cifar" },
            "v": { "arch": "vit", "preset": "tiny", "patch_size": 2, "depth": 2, "heads": 2, "dim": 16 },
            "n": { "arch": "mobilenetv2", "width_mult": 0.5, "stem": "cifar" },
        },
        "nodes": {
            "t": { "description": "teacher", "seed": 1,
                "resources": { "cpus": 2, "memory": "2G", "gpus": 1, "gpu_type": "a100", "partition": "gpu", "account": "lab",
                               "qos": "normal", "time": "2h", "sbatch": ["--constraint=ib"], "retries": 1, "retry_scale": 1.5 },
                "train": {
                "model": "r", "data": "a", "epochs": 6, "batch_size": 8, "drop_last": true, "warmup_epochs": 1,
                "grad_clip": 1.5, "label_smoothing": 0.1, "val": "b", "accumulate": 2, "checkpoint_every": 3,
                "ema": { "decay": 0.9, "output": true },
                "optimizer": { "type": "sgd", "lr": 0.05, "momentum": 0.8, "nesterov": true, "weight_decay": 0.001 },
                "schedule": { "type": "multistep", "milestones": [2, 4], "gamma": 0.5 },
                "augment": { "type": "dsa", "strategy": "flip_color", "mode": "M" } } },
            "lp": { "train": { "model": "r", "data": "a", "init": "t", "freeze": "backbone", "batch_size": 8, "head": "new",
                "optimizer": { "type": "adamw", "lr": 0.002, "beta1": 0.8, "beta2": 0.99, "eps": 1e-7, "weight_decay": 0.02 },
                "schedule": { "type": "cosine", "step_every": "step" } } },
            "ft": { "finetune": { "from": "t", "data": "a", "head_lr_mult": 5, "epochs": 2, "batch_size": 8, "head": "keep", "accumulate": 3,
                "warmup_epochs": 1, "grad_clip": 2.0, "label_smoothing": 0.1, "freeze": "backbone",
                "augment": "dsa", "val": "b", "optimizer": "sgd",
                "schedule": { "type": "linear", "end_factor": 0.1, "step_every": "step" } } },
            "tf": { "train": { "model": "m", "data": "f", "batch_size": 4,
                "schedule": { "type": "onecycle", "max_lr": 0.2, "pct_start": 0.25, "anneal_strategy": "linear",
                              "div_factor": 10, "final_div_factor": 100, "cycle_momentum": true,
                              "base_momentum": 0.3, "max_momentum": 0.6, "step_every": "step" } } },
            "s": { "distill": { "teacher": "ft", "student": "c", "data": "a", "student_init": "lp", "head": "new", "ema": 0.99, "accumulate": 2,
                "epochs": 2, "batch_size": 8, "warmup_epochs": 1,
                "grad_clip": 1.0, "val": "b", "teacher_cache": "off", "augment": "dsa",
                "optimizer": "adamw", "schedule": "cosine",
                "losses": { "ce": { "weight": 1, "label_smoothing": 0.1 },
                            "kd": { "weight": 0.5, "temperature": 3 },
                            "align_uniform": { "weight": 1, "alpha": 2, "t": 2, "projector": "simclr", "dim": 16, "align_weight": 1, "uniform_weight": 1 },
                            "crd": { "weight": 0.7, "projector": "linear", "dim": 16, "nce_k": 8, "nce_t": 0.1, "momentum": 0.4, "seed": 3 },
                            "srrl": { "weight": 1, "embed_weight": 2, "connector": "mlp" },
                            "fitnet": { "weight": 0.3, "regressor": true },
                            "cosine": { "weight": 0.2, "regressor": true } } } },
            "s2": { "distill": { "batch_size": 8, "teacher": "t", "student": "n", "data": "a", "losses": "kd",
                "schedule": { "type": "exponential", "gamma": 0.9, "step_every": "step" } } },
            "s3": { "distill": { "batch_size": 8, "teacher": "t", "student": "v", "data": "a", "losses": "srrl" } },
            "s4": { "distill": { "batch_size": 8, "teacher": "t", "student": "m", "data": "a", "losses": "align_uniform" } },
            // A generator `model` has one value (cvae) so far: left at its default.
            "gm": { "generator": { "data": "a", "latent": 4, "hidden": [16, 8], "epochs": 2, "batch_size": 8, "lr": 0.002, "beta": 0.5 } },
            "gm2": { "generator": { "data": "b" } },
            "g": { "generate": { "generator": { "node": "gm" }, "data": "a", "ratio": 2, "preview": 4 } },
            "gp": { "generate": { "generator": { "plugin": "stable-diffusion", "params": { "model": "sd", "steps": 10 }, "timeout": 100 },
                "data": "a", "per_class": 5, "prompt": "a photo of a {c}" } },
            "syn": { "train": { "model": "m", "data": "a", "batch_size": 8, "synthetic": { "from": "g", "ratio": 0.5 } } },
            "p": { "plugin": { "name": "example", "inputs": { "d": "a", "w": "t" }, "params": { "k": 1, "s": "x" }, "timeout": 60 } },
            "e": { "evaluate": { "model": "s", "data": "b", "metrics": ["top1", "top5", "loss", "per_class"], "batch_size": 16, "weights": "best" } },
            "rep": { "report": { "rows": [{ "node": "e", "label": "e" }, "t", { "node": "s", "label": "student", "teacher_cost": "separate" }], "eval": "b",
                "columns": ["accuracy", "top5", "loss", "train_seconds", "images_per_second", "flops", "params"],
                "title": "T", "format": "latex", "weights": "best", "teacher_cost": "amortised", "compare_to": "e" } },
        },
    })
}

/// A tiny image folder (two classes of four 4x4 PNGs) for the folder source's settings.
fn write_folder(dir: &Path) {
    for (c, class) in ["cat", "dog"].iter().enumerate() {
        let d = dir.join("imgs").join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..4u8 {
            let img = image::RgbImage::from_fn(4, 4, |x, y| {
                image::Rgb([x as u8 * 40, y as u8 * 40, c as u8 * 90 + i])
            });
            img.save(d.join(format!("{i}.png"))).unwrap();
        }
    }
}

/// The repository's plugins beside the spec, and a second plugin of each kind, named as a model
/// of the base spec (`m`: files, `c`: images) so that a name change has a valid value to try.
fn write_plugins(dir: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    for (from, to) in [
        ("example", "example"),
        ("stable-diffusion", "stable-diffusion"),
        ("example", "m"),
        ("stable-diffusion", "c"),
    ] {
        let d = dir.join("plugins").join(to);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["plugin.json", "plugin.py"] {
            let text = std::fs::read_to_string(repo.join(from).join(f)).unwrap();
            let text = if f == "plugin.json" {
                text.replace(&format!("\"name\": \"{from}\""), &format!("\"name\": \"{to}\""))
            } else {
                text
            };
            std::fs::write(d.join(f), text).unwrap();
        }
    }
}

/// The cache key of every node instance, or the diagnostics' text.
fn keys(file: &Path, spec: &Value, cache: &FingerprintCache) -> Result<BTreeMap<String, String>, String> {
    std::fs::write(file, serde_json::to_string_pretty(spec).unwrap()).unwrap();
    let (_, g) = distillery::cli::check(file, cache)
        .map_err(|d| d.iter().map(|d| format!("{}: {}", d.path, d.message)).collect::<Vec<_>>().join("; "))?;
    Ok(g.node_order().map(|ix| (g.dag[ix].name().to_string(), g.key(ix).hex())).collect())
}

/// Every leaf of `v` (scalars, and arrays as a whole) as a JSON pointer.
fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                leaves(x, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(a) => {
            if a.len() >= 2 {
                out.push(at.clone()); // shortened by one as a whole
            }
            for (i, x) in a.iter().enumerate() {
                leaves(x, format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at),
    }
}

fn matches(pattern: &str, pointer: &str) -> bool {
    let (p, q): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), pointer.split('/').collect());
    p.len() == q.len() && p.iter().zip(&q).all(|(a, b)| *a == "*" || a == b)
}

/// Other values a leaf could take: the first that validates is used.
fn candidates(v: &Value, words: &BTreeSet<String>, names: &[String]) -> Vec<Value> {
    match v {
        Value::Bool(b) => vec![json!(!b)],
        Value::Number(n) if n.is_u64() || n.is_i64() => {
            let n = n.as_i64().unwrap();
            [n + 1, n + 2, n + 3, n * 2, n - 1]
                .into_iter()
                .filter(|&x| x >= 0 && x != n)
                .map(|x| json!(x))
                .collect()
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap();
            [x * 0.5, x + 0.25, x * 2.0, 0.1].into_iter().filter(|&y| y != x).map(|y| json!(y)).collect()
        }
        Value::String(s) => {
            let mut c: Vec<Value> = names.iter().chain(words).filter(|w| *w != s).map(|w| json!(w)).collect();
            c.push(json!(format!("{s} x")));
            c
        }
        Value::Array(a) if a.len() >= 2 => vec![Value::Array(a[..a.len() - 1].to_vec())],
        _ => Vec::new(),
    }
}

/// Every string an enum of the schema allows, and every property name it declares.
fn schema_words(v: &Value, words: &mut BTreeSet<String>, props: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("enum", Value::Array(a)) => {
                        words.extend(a.iter().filter_map(|s| s.as_str().map(String::from)))
                    }
                    ("const", Value::String(s)) => {
                        words.insert(s.clone());
                    }
                    ("properties", Value::Object(p)) => props.extend(p.keys().cloned()),
                    _ => {}
                }
                schema_words(x, words, props);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| schema_words(x, words, props)),
        _ => {}
    }
}

/// Which node keys a leaf must change: the node it is under, or (datasets, models, the seed)
/// some node.
fn owner(pointer: &str) -> Option<String> {
    let mut parts = pointer.split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("nodes"), Some(n)) => Some(n.to_string()),
        _ => None,
    }
}

#[test]
fn every_setting_that_reaches_a_node_changes_its_key() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path());
    write_plugins(dir.path());
    let file: PathBuf = dir.path().join("keys.yaml");
    let cache = FingerprintCache::in_memory();
    let base = base_spec();
    let base_keys = keys(&file, &base, &cache).unwrap_or_else(|e| panic!("the base spec is invalid: {e}"));

    let (mut words, mut props) = (BTreeSet::new(), BTreeSet::new());
    schema_words(&distillery::spec::json_schema(), &mut words, &mut props);
    // The file schema leaves loss settings open (a map per loss name): walk the typed losses' own.
    let losses = serde_json::to_value(schemars::schema_for!(distillery::spec::Loss)).unwrap();
    schema_words(&losses, &mut words, &mut props);
    let mut names: Vec<String> = Vec::new();
    for section in ["datasets", "models", "nodes"] {
        names.extend(base[section].as_object().unwrap().keys().cloned());
    }

    // Completeness: every field the schema knows is set by the base spec, or listed.
    let mut set: BTreeSet<String> = BTreeSet::new();
    let mut pointers = Vec::new();
    leaves(&base, String::new(), &mut pointers);
    for p in &pointers {
        set.extend(p.split('/').map(String::from));
    }
    let missing: Vec<&String> =
        props.iter().filter(|p| !set.contains(*p) && !NOT_EXERCISED.iter().any(|(n, _)| n == p)).collect();
    assert!(
        missing.is_empty(),
        "schema fields the base spec does not set (add them, or list them with a reason): {missing:?}"
    );

    let mut failures = Vec::new();
    let mut checked = 0;
    for p in &pointers {
        if p.rsplit('/').next().is_some_and(|last| STRUCTURAL.contains(&last)) {
            continue;
        }
        let neutral = NEUTRAL.iter().any(|(pat, _)| matches(pat, p));
        let mut tried = Vec::new();
        let mut verdict = None;
        for c in candidates(base.pointer(p).unwrap(), &words, &names) {
            let mut spec = base.clone();
            *spec.pointer_mut(p).unwrap() = c.clone();
            match keys(&file, &spec, &cache) {
                Ok(k) => {
                    let changed: Vec<&String> =
                        k.iter().filter(|(n, v)| base_keys.get(*n) != Some(v)).map(|(n, _)| n).collect();
                    let ok = match owner(p) {
                        Some(node) => changed.iter().any(|n| {
                            n.starts_with(&node)
                                && (n.len() == node.len() || n[node.len()..].starts_with('['))
                        }),
                        None => !changed.is_empty(),
                    };
                    verdict = Some((c, ok, changed.len()));
                    break;
                }
                Err(e) => tried.push(format!("{c} ({e})")),
            }
        }
        match verdict {
            Some((_, true, _)) if !neutral => checked += 1,
            Some((_, false, _)) if neutral => checked += 1,
            Some((c, changed, n)) => failures.push(format!(
                "{p} = {c}: {}",
                if changed {
                    format!("changed {n} keys but is listed as neutral")
                } else {
                    "changed no key".into()
                }
            )),
            None if neutral => {}
            None => {
                tried.truncate(4);
                failures.push(format!("{p}: no other valid value found; tried {}", tried.join(" | ")))
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} settings:\n{}",
        failures.len(),
        pointers.len(),
        failures.join("\n")
    );
    assert!(checked > 100, "only {checked} settings were checked");
}
