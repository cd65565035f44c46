use super::*;

const GIB: u64 = 1 << 30;

fn exp(text: &str) -> Experiment {
    spec::load_str(std::path::Path::new("x.yaml"), text).unwrap_or_else(|d| panic!("{d:?}"))
}

/// `(path, message)` of every diagnostic, against `limit` bytes of memory.
fn check(text: &str, limit: u64) -> Vec<(String, String)> {
    let limit = MemoryLimit { bytes: limit, measured: true, gpu: false };
    data_checks_within(&exp(text), &FingerprintCache::in_memory(), limit)
        .into_iter()
        .map(|d| {
            assert!(d.location.is_some(), "{d:?} has no location");
            (d.path, d.message)
        })
        .collect()
}

const DIGITS: &str = "datasets: { d: { source: builtin/digits } }\n";

#[test]
fn memory_estimate_is_the_documented_rule_to_the_byte() {
    // mlp [4] on 1x8x8 digits, 10 classes: 64*4 + 4 + 4*10 + 10 = 310 parameters; activations
    // an image: the input 64 + linear 4 + ReLU 4 + logits 10 = 82.
    // AdamW: 310 * 4 bytes * (weights + gradients + 2 states) = 4960;
    // activations: 82 * batch 32 * 4 bytes * 2 = 20992; total 25952 bytes.
    let text = format!(
        "{DIGITS}models: {{ m: {{ arch: mlp, hidden: [4] }} }}\nnodes: {{ t: {{ train: {{ model: m, data: d, batch_size: 32 }} }} }}\n"
    );
    assert_eq!(check(&text, 25952), []);
    let refused = check(&text, 25951);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].1.contains("310 parameters"), "{}", refused[0].1);
    // SGD with momentum keeps one state a parameter: 310 * 4 * 3 = 3720, total 24712.
    let sgd = text.replace("batch_size: 32", "batch_size: 32, optimizer: { type: sgd, momentum: 0.9 }");
    assert_eq!(check(&sgd, 24712), []);
    assert_eq!(check(&sgd, 24711).len(), 1);
}

#[test]
fn a_model_too_big_for_memory_is_refused_at_its_width() {
    let text = format!(
        "{DIGITS}models: {{ big: {{ arch: resnet, depth: 18, width: 2048 }}, small: {{ arch: resnet, depth: 18, width: 16 }} }}\nnodes:\n  a: {{ train: {{ model: big, data: d }} }}\n  b: {{ train: {{ model: small, data: d }} }}\n"
    );
    let got = check(&text, GIB);
    assert_eq!(got.len(), 1, "only the big model is refused: {got:?}");
    let (path, message) = &got[0];
    assert_eq!(path, "models.big.width");
    assert!(message.starts_with("node `a` needs about "), "{message}");
    assert!(
        message.contains("1.1e10 parameters") && message.ends_with("this machine has 1.0 GiB"),
        "{message}"
    );
}

#[test]
fn activations_too_big_for_memory_are_refused_at_batch_size() {
    // cnn [64] on digits resized to 224: about 1e7 floats an image, 8e7 bytes at batch 1.
    let text = "datasets: { d: { source: builtin/digits, transforms: [{ type: resize, size: 224 }] } }\nmodels: { c: { arch: cnn, channels: [64] } }\nnodes: { t: { train: { model: c, data: d, batch_size: 1000 } } }\n";
    let got = check(text, GIB);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "nodes.t.train.batch_size");
    assert!(got[0].1.contains("x batch 1000 x 2"), "{}", got[0].1);
    assert_eq!(check(&text.replace("1000", "1"), GIB), []);
}

/// The lower bounds in spec validation cannot catch this: each setting is plausible alone.
#[test]
fn resnet_width_20000_on_224_pixel_images_is_refused_on_any_machine() {
    let text = "datasets: { d: { source: builtin/digits, transforms: [{ type: resize, size: 224 }] } }\nmodels: { r: { arch: resnet, depth: 18, width: 20000 } }\nnodes: { t: { train: { model: r, data: d } } }\n";
    let d = data_checks(&exp(text), &FingerprintCache::in_memory());
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].path, "models.r.width");
    assert!(d[0].message.starts_with("node `t` needs about 17 TiB"), "{}", d[0].message);
}

#[test]
fn on_cuda_the_estimate_says_it_is_against_host_memory() {
    let text = format!(
        "device: cuda:1\n{DIGITS}models: {{ big: {{ arch: resnet, depth: 18, width: 2048 }} }}\nnodes: {{ a: {{ train: {{ model: big, data: d }} }} }}\n"
    );
    let got = check(&text, GIB);
    assert!(
        got[0].1.ends_with("an estimate against host memory: the memory of `cuda:1` is not queried)"),
        "{}",
        got[0].1
    );
}

#[test]
fn a_distill_node_counts_the_teachers_weights() {
    // The student alone fits; with the teacher's resnet18 (11e6 parameters, 45 MB) it does not.
    let text = format!(
        "{DIGITS}models: {{ t: {{ arch: resnet, depth: 18 }}, s: {{ arch: mlp, hidden: [4] }} }}\nnodes:\n  teacher: {{ train: {{ model: t, data: d }} }}\n  kd: {{ distill: {{ teacher: teacher, student: s, data: d, losses: kd }} }}\n"
    );
    let got = check(&text, 20 << 20);
    let kd: Vec<_> = got.iter().filter(|(_, m)| m.starts_with("node `kd`")).collect();
    assert_eq!(kd.len(), 1, "{got:?}");
    assert!(kd[0].1.contains("the teacher's weights 43 MiB"), "{}", kd[0].1);
}

#[test]
fn mem_total_is_read_in_kib() {
    assert_eq!(mem_total("MemTotal:       32658400 kB\nMemFree: 1 kB\n"), Some(32658400 * 1024));
    assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    assert_eq!(mem_total("MemTotal: lots\n"), None);
    assert!(MemoryLimit::of_this_machine().bytes > 0);
}

/// An image folder whose class folders hold no images used to fail only when a node ran.
#[test]
fn image_folder_without_images_is_located_at_its_path() {
    let dir = tempfile::tempdir().unwrap();
    for class in ["cat", "dog"] {
        std::fs::create_dir(dir.path().join(class)).unwrap();
        std::fs::write(dir.path().join(class).join("notes.txt"), "not an image").unwrap();
    }
    let file = dir.path().join("exp.yaml");
    let text = format!(
        "datasets: {{ pets: {{ source: folder, path: {}, split_fraction: 0.8 }} }}\nmodels: {{ m: {{ arch: mlp, hidden: [8] }} }}\nnodes: {{ t: {{ train: {{ model: m, data: pets }} }} }}\n",
        dir.path().display()
    );
    std::fs::write(&file, text).unwrap();
    let diags = crate::cli::check(&file, &FingerprintCache::in_memory()).err().expect("refused");
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].path, "datasets.pets.path");
    assert_eq!(
        diags[0].message,
        format!("image folder `{}` has no images for the train split", dir.path().display())
    );
    assert_eq!(diags[0].location.as_ref().map(|l| l.line), Some(1));
}

/// A finetune chain is walked without recursion: its last node finds the first node's model.
#[test]
fn a_long_finetune_chain_is_sized_without_recursion() {
    const N: usize = 5_000;
    let mut text = format!("{DIGITS}models: {{ m: {{ arch: mlp, hidden: [4] }} }}\nnodes:\n");
    text.push_str("  n0: { train: { model: m, data: d, batch_size: 4 } }\n");
    for i in 1..N {
        text.push_str(&format!("  n{i}: {{ finetune: {{ from: n{}, data: d, batch_size: 4 }} }}\n", i - 1));
    }
    let t0 = std::time::Instant::now();
    // A test thread's stack: one frame a node would overflow it.
    let got = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || check(&text, 1))
        .unwrap()
        .join()
        .expect("no stack overflow");
    assert_eq!(got.len(), N, "every node's model is sized (and refused under 1 byte)");
    assert!(got[N - 1].1.starts_with(&format!("node `n{}` needs about", N - 1)), "{}", got[N - 1].1);
    assert!(t0.elapsed() < std::time::Duration::from_secs(20), "took {:?}", t0.elapsed());
}

#[test]
fn sizes_are_shown_in_the_largest_unit_that_is_at_least_one() {
    let shown: Vec<String> = [300, 43 << 20, 3 << 29, 412 << 30, 17_463 << 30].map(gib).to_vec();
    assert_eq!(shown, ["300 bytes", "43 MiB", "1.5 GiB", "412 GiB", "17 TiB"]);
}
