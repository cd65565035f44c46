//! validate + plan of a generated 10,000-node experiment (issue target: under 0.5 s on 2 cores).
//!
//! `cargo bench --bench plan_10k` prints the median of 7 runs of load + graph + plan, and of
//! each stage, so a regression shows where it is. `cargo bench --bench plan_10k -- 100000` runs
//! another size (nodes, rounded down to whole 4-node chains).

use std::time::Instant;

use distillery::{graph, plan, spec};

fn generated(n_chains: usize) -> String {
    let mut s = String::from(
        "experiment: bench\ndatasets:\n  a: { source: builtin/digits, classes: [0, 1, 2, 3, 4] }\n  b: { source: builtin/digits, per_class: 20 }\n  t: { source: builtin/digits, split: test }\nmodels:\n  big: { arch: resnet, depth: 18 }\n  small: { arch: mobilenetv2, width_mult: 0.5 }\nnodes:\n",
    );
    for i in 0..n_chains {
        s.push_str(&format!(
            "  pt{i}: {{ train: {{ model: big, data: a, epochs: {e}, optimizer: sgd, schedule: cosine }} }}\n  ft{i}: {{ finetune: {{ from: pt{i}, data: b, head_lr_mult: 10 }} }}\n  kd{i}:\n    distill:\n      teacher: ft{i}\n      student: small\n      data: b\n      losses: {{ ce: 1, kd: {{ weight: 1, temperature: 4 }}, align_uniform: {{ projector: mocov2 }} }}\n  ev{i}: {{ evaluate: {{ model: kd{i}, data: t }} }}\n",
            e = 10 + i % 50
        ));
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // cargo passes `--bench`; the first number among the arguments is the node count.
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10_000);
    let text = generated(n / 4); // 4 nodes a chain
    let path = std::path::Path::new("bench.yaml");
    let (mut total, mut t_load, mut t_graph, mut t_plan) = (vec![], vec![], vec![], vec![]);
    let mut n_nodes = 0;
    for _ in 0..7 {
        let t0 = Instant::now();
        let exp = spec::load_str(path, &text).unwrap_or_else(|d| {
            panic!("the generated spec is invalid:\n{}", distillery::diag::render(&d, None))
        });
        let t1 = Instant::now();
        let g = distillery::resolve::build(&exp, &graph::spec_fingerprint, &distillery::resolve::path_digest)
            .expect("graph builds");
        let t2 = Instant::now();
        let p = plan::plan(&g, &plan::EmptyStore, &plan::Selection::default());
        let t3 = Instant::now();
        n_nodes = p.len();
        total.push((t3 - t0).as_secs_f64());
        t_load.push((t1 - t0).as_secs_f64());
        t_graph.push((t2 - t1).as_secs_f64());
        t_plan.push((t3 - t2).as_secs_f64());
    }
    println!("validate + plan, {n_nodes} nodes, median of 7:");
    let target = if n_nodes == 10_000 { "  (target < 0.5 s)" } else { "" };
    println!("  total  {:>8.3} s{target}", median(total));
    println!("  spec   {:>8.3} s", median(t_load));
    println!("  graph  {:>8.3} s", median(t_graph));
    println!("  plan   {:>8.3} s", median(t_plan));
}
