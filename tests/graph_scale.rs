//! validate + graph + plan on generated experiments of 100,000 nodes: no input crashes the
//! process (every graph walk is iterative), and the time stays linear in the spec's size.
//!
//! The time bounds are generous (the 10,000-node bench, `cargo bench --bench plan_10k`, is the
//! measurement); they are there to fail when something turns quadratic again.

use std::path::Path;
use std::time::{Duration, Instant};

use distillery::diag::Code;
use distillery::{cli, data, graph, plan, spec};

const N: usize = 100_000;

const HEADER: &str = "experiment: scale
datasets:
  d: { source: builtin/digits, per_class: 7 }
  t: { source: builtin/digits, split: test }
models:
  m: { arch: mlp, hidden: [4] }
nodes:
";

/// A chain written consumer-first: node i starts from node i+1, the last one trains from scratch.
fn consumer_first_chain(n: usize) -> String {
    let mut s = String::from(HEADER);
    for i in 0..n - 1 {
        s.push_str(&format!("  n{i}: {{ finetune: {{ from: n{}, data: d }} }}\n", i + 1));
    }
    s.push_str(&format!("  n{}: {{ train: {{ model: m, data: d }} }}\n", n - 1));
    s
}

/// A chain written producer-first: node i starts from node i-1.
fn producer_first_chain(n: usize) -> String {
    let mut s = String::from(HEADER);
    s.push_str("  n0: { train: { model: m, data: d } }\n");
    for i in 1..n {
        s.push_str(&format!("  n{i}: {{ finetune: {{ from: n{}, data: d }} }}\n", i - 1));
    }
    s
}

/// One loop through every node: node i starts from node i+1, the last from node 0.
fn cycle(n: usize) -> String {
    let mut s = String::from(HEADER);
    for i in 0..n {
        s.push_str(&format!("  n{i}: {{ finetune: {{ from: n{}, data: d }} }}\n", (i + 1) % n));
    }
    s
}

/// What the plan_10k bench declares, `n / 4` times: train -> finetune -> distill -> evaluate.
fn pipelines(n: usize) -> String {
    let mut s = String::from(HEADER);
    s.push_str("  # pipelines\n");
    for i in 0..n / 4 {
        s.push_str(&format!(
            "  pt{i}: {{ train: {{ model: m, data: d, epochs: {e}, optimizer: sgd, schedule: cosine }} }}
  ft{i}: {{ finetune: {{ from: pt{i}, data: d, head_lr_mult: 10 }} }}
  kd{i}: {{ distill: {{ teacher: ft{i}, student: m, data: d, losses: {{ ce: 1, kd: {{ weight: 1, temperature: 4 }} }} }} }}
  ev{i}: {{ evaluate: {{ model: kd{i}, data: t }} }}
",
            e = 10 + i % 50
        ));
    }
    s
}

/// `validate` on `text`, as the CLI runs it (a real file, data fingerprints from the data layer).
fn check(text: &str) -> Result<(spec::Experiment, graph::Graph), Vec<distillery::diag::Diagnostic>> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scale.yaml");
    std::fs::write(&file, text).unwrap();
    cli::check(&file, &data::FingerprintCache::in_memory())
}

/// Runs `f` on a thread with the stack a test thread gets (2 MiB, smaller than a main thread's
/// 8 MiB), so recursion one frame a node shows as a failure here rather than in users' hands.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .expect("no stack overflow or panic")
}

/// Time bound for 100,000 nodes: about 4x what they take in release on a quiet 2-core machine
/// (7 s), so other tests and builds running beside this one do not make it fail, while a
/// quadratic step (100x the 10,000-node time at 10x the nodes: minutes) still does. The
/// unoptimised build is several times slower.
fn bound() -> Duration {
    Duration::from_secs(if cfg!(debug_assertions) { 150 } else { 30 })
}

/// The value, or a panic that shows the diagnostics as people read them (not the source text).
fn valid<T>(r: Result<T, Vec<distillery::diag::Diagnostic>>) -> T {
    r.unwrap_or_else(|d| {
        let text = distillery::diag::render(&d, None);
        panic!("the generated spec is invalid:\n{}", &text[..text.len().min(2000)])
    })
}

#[test]
fn consumer_first_chain_of_100k_nodes_does_not_overflow_the_stack() {
    let (exp, g) = on_small_stack(|| valid(check(&consumer_first_chain(N))));
    assert_eq!(exp.nodes.len(), N);
    // Inputs before readers: the last-declared node comes first.
    let order: Vec<&str> = g.node_order().map(|ix| g.dag[ix].name()).collect();
    assert_eq!((order[0], order[N - 1]), (format!("n{}", N - 1).as_str(), "n0"));
}

#[test]
fn producer_first_chain_of_100k_nodes_does_not_overflow_the_stack() {
    let (_, g) = on_small_stack(|| valid(check(&producer_first_chain(N))));
    assert_eq!(g.node_order().count(), N);
}

#[test]
fn cycle_of_100k_nodes_is_one_short_error() {
    let diags = on_small_stack(|| check(&cycle(N)).expect_err("a cycle is an error"));
    let text = distillery::diag::render(&diags, None);
    assert_eq!(diags.len(), 1, "{}", &text[..text.len().min(2000)]);
    let d = &diags[0];
    assert_eq!(d.code, Code::Cycle);
    assert!(d.location.is_some());
    assert!(
        d.message.starts_with("cycle: n0 -> n1 -> n2 -> ")
            && d.message.contains(&format!("… {} more … -> n{} -> n0 (each uses the next)", N - 9, N - 1)),
        "{}",
        d.message
    );
    assert!(d.message.len() < 200, "the path shown is capped: {} bytes", d.message.len());
}

/// validate + plan of `text` (`n` nodes), timed.
fn validate_and_plan(text: &str, n: usize) -> Duration {
    let t0 = Instant::now();
    let exp = valid(spec::load_str(Path::new("scale.yaml"), text));
    let g =
        valid(distillery::resolve::build(&exp, &graph::spec_fingerprint, &distillery::resolve::path_digest));
    let p = plan::plan(&g, &plan::EmptyStore, &plan::Selection::default());
    let took = t0.elapsed();
    assert_eq!(p.iter().filter(|e| e.kind != "teacher_outputs").count(), n);
    took
}

#[test]
fn validate_and_plan_of_100k_nodes_is_linear() {
    for (what, make) in
        [("pipelines", pipelines as fn(usize) -> String), ("consumer-first chain", consumer_first_chain)]
    {
        // The same spec at a tenth of the size, measured beside it: linear time is about 10x
        // that, a quadratic step 100x. Either the ratio or the absolute bound must hold, so a
        // machine slowed by other work for the whole test does not fail it (a node lookup that
        // scanned every node made this 3x slower and failed CI at 32 s).
        let small = validate_and_plan(&make(N / 10), N / 10);
        let took = validate_and_plan(&make(N), N);
        let ratio = took.as_secs_f64() / small.as_secs_f64().max(1e-3);
        assert!(
            took < bound() || ratio < 30.0,
            "{what}: validate + plan of {N} nodes took {took:?} (bound {:?}), {ratio:.1}x the {} nodes' {small:?}",
            bound(),
            N / 10
        );
    }
}

#[test]
fn validate_of_100k_wrong_references_is_linear() {
    // Every node names a dataset as its teacher: 100,000 errors, each with its help.
    let mut text = String::from(HEADER);
    text.push_str("  pt: { train: { model: m, data: d } }\n");
    for i in 0..N - 1 {
        text.push_str(&format!(
            "  kd{i}: {{ distill: {{ teacher: d, student: m, data: d, losses: kd }} }}\n"
        ));
    }
    let t0 = Instant::now();
    let diags = check(&text).expect_err("a dataset is no teacher");
    // Rendered as the CLI prints them: every one with its source line (that walked the file
    // from its start for each diagnostic: quadratic).
    let all = distillery::diag::render(&diags, None);
    let took = t0.elapsed();
    assert!(all.ends_with(&format!("{} errors found\n", N - 1)), "{}", &all[all.len().saturating_sub(200)..]);
    let text = distillery::diag::render(&diags[..diags.len().min(3)], None);
    assert_eq!(diags.len(), N - 1, "{text}");
    // The help lists nodes that can teach (train, finetune, distill), the trained one first.
    let help = |d: &distillery::diag::Diagnostic| d.help.clone().unwrap_or_default();
    assert!(
        diags.iter().all(|d| help(d).starts_with("point `teacher` at one of: pt")),
        "{}",
        help(&diags[0])
    );
    assert!(took < bound(), "validate of {N} wrong references took {took:?} (bound {:?})", bound());
}
