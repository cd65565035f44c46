//! Properties: matrix expansion and cache keys depend on what a spec says, not how it is written.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use serde_json::{Value, json};

use distillery::{graph, spec};

/// A random experiment: `n` chains of train -> finetune -> distill, some with a node matrix.
fn experiment(n: usize, epochs: Vec<u32>, temps: Vec<u32>, seeds: usize, matrix_on: Vec<bool>) -> Value {
    let mut nodes = serde_json::Map::new();
    for i in 0..n {
        nodes.insert(
            format!("pt{i}"),
            json!({ "train": { "model": "big", "data": "a", "epochs": epochs[i] }, "seed": 0 }),
        );
        nodes.insert(
            format!("ft{i}"),
            json!({ "finetune": { "from": format!("pt{i}"), "data": "b", "head_lr_mult": 10 } }),
        );
        let mut kd = json!({ "distill": { "teacher": format!("ft{i}"), "student": "small", "data": "b",
            "losses": { "ce": 1, "kd": { "weight": 1, "temperature": temps[i] } } } });
        if matrix_on[i] {
            kd["matrix"] = json!({ "losses.kd.temperature": [1, 2, 8] });
        }
        nodes.insert(format!("kd{i}"), kd);
    }
    let rows: Vec<String> = (0..n).map(|i| format!("kd{i}")).collect();
    nodes.insert("table".into(), json!({ "report": { "rows": rows, "eval": "b" } }));
    json!({
        "experiment": "generated",
        "datasets": { "a": { "source": "builtin/digits", "classes": [0, 1] }, "b": { "source": "builtin/digits", "per_class": 5 } },
        "models": { "big": { "arch": "resnet", "depth": 8 }, "small": { "arch": "cnn", "channels": [4, 8] } },
        "nodes": nodes,
        "matrix": { "seed": (0..seeds as u64).collect::<Vec<_>>() },
    })
}

/// The same value with every object's keys in a shuffled order, as flow-style YAML (JSON).
fn shuffled_json(v: &Value, rng: &mut u64) -> String {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    fn go(v: &Value, next: &mut dyn FnMut() -> u64, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut entries: Vec<(&String, &Value)> = m.iter().collect();
                for i in (1..entries.len()).rev() {
                    entries.swap(i, (next() % (i as u64 + 1)) as usize);
                }
                out.push_str("{ ");
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(",\n   ");
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push_str(" :  ");
                    go(v, next, out);
                }
                out.push_str(" }");
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    go(x, next, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    go(v, &mut next, &mut out);
    out
}

fn keys(text: &str) -> (Vec<String>, BTreeMap<String, String>) {
    let exp = spec::load_str(Path::new("generated.yaml"), text).unwrap_or_else(|d| {
        panic!("{}\n{text}", distillery::diag::render(&d, None));
    });
    let g = distillery::resolve::build(&exp, &graph::spec_fingerprint, &distillery::resolve::path_digest)
        .expect("graph builds");
    let order = exp.nodes.iter().map(|n| n.name.clone()).collect();
    let keys = g.node_order().map(|ix| (g.dag[ix].name().to_string(), g.key(ix).hex())).collect();
    (order, keys)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn keys_ignore_key_order_style_and_whitespace(
        n in 1usize..4,
        epochs in prop::collection::vec(1u32..50, 4),
        temps in prop::collection::vec(1u32..9, 4),
        seeds in 1usize..4,
        matrix_on in prop::collection::vec(any::<bool>(), 4),
        shuffle_seed in 1u64..u64::MAX,
    ) {
        let v = experiment(n, epochs, temps, seeds, matrix_on.clone());
        let block = serde_yaml::to_string(&v).unwrap();
        let mut rng = shuffle_seed;
        let flow = shuffled_json(&v, &mut rng);
        let (order_a, keys_a) = keys(&block);
        let (order_b, keys_b) = keys(&flow);
        prop_assert_eq!(&keys_a, &keys_b);
        // Same text, same result: expansion and keys are deterministic.
        let (order_a2, keys_a2) = keys(&block);
        prop_assert_eq!(&order_a, &order_a2);
        prop_assert_eq!(&keys_a, &keys_a2);
        // Declared order wins over the key order a file happens to use only within a section:
        // instance sets agree.
        let mut sa = order_a.clone();
        let mut sb = order_b.clone();
        sa.sort();
        sb.sort();
        prop_assert_eq!(sa, sb);
        // Instance count: pt fixed seed (1) + ft per seed + kd per seed (x3 temperatures when on) + table.
        let expected: usize = (0..n).map(|i| 1 + seeds + seeds * if matrix_on[i] { 3 } else { 1 }).sum::<usize>() + 1;
        prop_assert_eq!(order_a.len(), expected);
    }

    #[test]
    fn changing_a_setting_changes_exactly_its_dependants(
        n in 2usize..4,
        epochs in prop::collection::vec(1u32..50, 4),
        which in 0usize..2,
    ) {
        let temps = vec![4; 4];
        let base = experiment(n, epochs.clone(), temps.clone(), 2, vec![false; 4]);
        let mut changed_epochs = epochs.clone();
        changed_epochs[which] += 1;
        let changed = experiment(n, changed_epochs, temps, 2, vec![false; 4]);
        let (_, a) = keys(&serde_yaml::to_string(&base).unwrap());
        let (_, b) = keys(&serde_yaml::to_string(&changed).unwrap());
        for (name, ka) in &a {
            let affected = name.starts_with(&format!("pt{which}"))
                || name.starts_with(&format!("ft{which}"))
                || name.starts_with(&format!("kd{which}"))
                // The teacher's outputs, a vertex of their own, read the changed teacher.
                || name.starts_with(&format!("teacher_outputs(ft{which}"))
                || name == "table";
            prop_assert_eq!(ka != &b[name], affected, "node {}", name);
        }
    }
}

#[test]
fn seeds_and_names_do_not_leak_into_other_keys() {
    // Renaming a node keeps its key (keys hash content, not names) ...
    let a = "datasets: { d: { source: builtin/digits } }\nmodels: { m: { arch: mlp, hidden: [8] } }\nnodes: { x: { train: { model: m, data: d } } }\n";
    let b = a.replace("x:", "renamed:");
    let (_, ka) = keys(a);
    let (_, kb) = keys(&b);
    assert_eq!(ka["x"], kb["renamed"]);
    // ... and so does renaming a dataset or a model; changing the seed does not.
    let c = a.replace("d: {", "digits: {").replace("data: d", "data: digits");
    assert_eq!(keys(&c).1["x"], ka["x"]);
    let d = format!("seed: 1\n{a}");
    assert_ne!(keys(&d).1["x"], ka["x"]);
}
