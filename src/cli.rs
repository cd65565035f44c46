//! The command line: parses flags, calls the library, prints. Errors are rendered once, here.
//!
//! Exit codes: 0 success; 1 invalid input (bad experiment file, failed node); 2 internal error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::data::FingerprintCache;
use crate::diag::{self, Diagnostic};
use crate::exec::{self, Cancel, RunOptions};
use crate::graph::{self, Graph};
use crate::plan::{self, Status};
use crate::resolve;
use crate::spec::{self, Experiment};
use crate::store::Store;
use crate::track;

#[derive(Parser, Debug)]
#[command(name = "distillery", version, about = "Run knowledge-distillation experiments declared in YAML")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check an experiment file and report every problem in it (data files included).
    Validate { file: PathBuf },
    /// Show every node in order, its cache key, and why it would run.
    Plan {
        file: PathBuf,
        /// The artifact store (default: .distillery beside the experiment file).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Plan these nodes to run even when cached.
        #[arg(long, value_name = "NODE")]
        force: Vec<String>,
    },
    /// Run every node that is not cached, then print the report tables.
    Run {
        file: PathBuf,
        /// Nodes run at once.
        #[arg(long, short = 'j', default_value_t = 1)]
        jobs: usize,
        /// Run only these nodes (their inputs must be cached).
        #[arg(long, value_name = "NODE")]
        only: Vec<String>,
        /// Rerun these nodes and everything downstream of them.
        #[arg(long, value_name = "NODE")]
        from: Vec<String>,
        /// Nodes using the device at once (default: --jobs on cpu, 1 on a GPU).
        #[arg(long, value_name = "N")]
        device_slots: Option<usize>,
        /// Rerun these nodes even if cached.
        #[arg(long, value_name = "NODE")]
        force: Vec<String>,
        /// The artifact store (default: .distillery beside the experiment file).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// Log to this MLflow server (default: $MLFLOW_TRACKING_URI; runs are always recorded
        /// locally and pushed when the server answers).
        #[arg(long, value_name = "URI")]
        tracking: Option<String>,
    },
    /// List the runs recorded in the local run store.
    Runs {
        /// The store (default: .distillery in the current folder).
        #[arg(long, value_name = "DIR", default_value = ".distillery")]
        store: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Push runs recorded locally to an MLflow server (idempotent).
    Sync {
        #[arg(long, value_name = "URI")]
        to: String,
        #[arg(long, value_name = "DIR", default_value = ".distillery")]
        store: PathBuf,
    },
    /// Print the experiment graph.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// Print the JSON Schema of experiment files (for editor completion and checks).
    Schema,
    /// Remove stored results that none of the given experiment files references.
    Gc {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The artifact store (default: .distillery beside the first experiment file).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

/// Why a command failed: the user's input, or us.
pub enum Failure {
    Invalid(String),
    Internal(String),
    /// Ctrl-C: exit 130, the shell's convention.
    Interrupted,
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Internal(format!("cannot write output: {e}"))
    }
}

pub fn main_with(cli: Cli) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match run(cli, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(text)) => {
            let _ = out.flush();
            eprint!("{text}");
            ExitCode::from(1)
        }
        Err(Failure::Interrupted) => ExitCode::from(130),
        Err(Failure::Internal(text)) => {
            let _ = out.flush();
            eprintln!("internal error: {text}");
            ExitCode::from(2)
        }
    }
}

pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), Failure> {
    match cli.command {
        Command::Validate { file } => {
            let (exp, g) = load_graph(&file, None)?;
            let n_decl =
                exp.nodes.iter().map(|n| n.base.as_str()).collect::<std::collections::HashSet<_>>().len();
            writeln!(
                out,
                "ok: {} is valid: experiment `{}`, {} datasets, {} models, {} nodes ({} instances), {} files read",
                file.display(),
                exp.name,
                exp.datasets.len(),
                exp.models.len(),
                n_decl,
                g.node_order().count(),
                exp.files.len()
            )?;
        }
        Command::Plan { file, store, json, force } => {
            let store_dir = store.unwrap_or_else(|| default_store(&file));
            let (exp, g) = load_graph(&file, Some(&store_dir))?;
            for f in &force {
                if g.get(f).is_none() && !exp.nodes.iter().any(|n| &n.base == f) {
                    return Err(Failure::Invalid(format!("error: --force {f}: no such node\n")));
                }
            }
            let forced: Vec<String> = exp
                .nodes
                .iter()
                .filter(|n| force.iter().any(|f| f == &n.name || f == &n.base))
                .map(|n| n.name.clone())
                .collect();
            let entries = if store_dir.join("objects").is_dir() {
                let st = Store::open(&store_dir).map_err(|e| Failure::Internal(e.to_string()))?;
                plan::plan(&g, &st.scoped(&exp.name), &forced)
            } else {
                plan::plan(&g, &plan::EmptyStore, &forced)
            };
            if json {
                let v = serde_json::json!({ "experiment": exp.name, "nodes": entries });
                writeln!(out, "{}", serde_json::to_string_pretty(&v).expect("plan serialises"))?;
            } else {
                write!(out, "{}", render_plan(&exp, &entries))?;
            }
        }
        Command::Graph { file, format } => {
            let (exp, g) = load_graph(&file, None)?;
            let text = match format {
                GraphFormat::Dot => graph::to_dot(&g, &exp.name),
                GraphFormat::Mermaid => graph::to_mermaid(&g),
            };
            write!(out, "{text}")?;
        }
        Command::Run { file, jobs, only, from, device_slots, force, store, tracking } => {
            let store_dir = store.unwrap_or_else(|| default_store(&file));
            std::fs::create_dir_all(&store_dir)
                .map_err(|e| Failure::Internal(format!("{}: {e}", store_dir.display())))?;
            let (exp, g) = load_graph(&file, Some(&store_dir))?;
            for name in only.iter().chain(&from).chain(&force) {
                if g.get(name).is_none() && !exp.nodes.iter().any(|n| &n.base == name) {
                    return Err(Failure::Invalid(format!("error: no node named `{name}`\n")));
                }
            }
            let device_slots = device_slots.unwrap_or(match exp.device {
                spec::Device::Cpu => jobs,
                // One node a GPU at a time: two would compete for its memory.
                spec::Device::Cuda(_) | spec::Device::Auto => 1,
            });
            let opts = RunOptions { jobs, only, from, force, device_slots };
            run_experiment(&exp, &g, &store_dir, opts, tracking.as_deref(), out)?;
        }
        Command::Runs { store, json } => {
            let runs = track::list_runs(&store).map_err(|e| Failure::Invalid(format!("error: {e}\n")))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&runs).expect("runs serialise"))?;
            } else {
                write!(out, "{}", track::format_runs(&runs))?;
            }
        }
        Command::Sync { to, store } => {
            let report = track::sync(&store, &to).map_err(|e| Failure::Invalid(format!("error: {e}\n")))?;
            writeln!(out, "{report}")?;
            if !report.is_complete() {
                return Err(Failure::Invalid("error: some records were not pushed; run sync again\n".into()));
            }
        }
        Command::Schema => {
            let s = spec::json_schema();
            writeln!(out, "{}", serde_json::to_string_pretty(&s).expect("schema serialises"))?;
        }
        Command::Gc { files, store } => {
            let store_dir = store.unwrap_or_else(|| default_store(&files[0]));
            let mut live = std::collections::HashSet::new();
            for f in &files {
                let (_, g) = load_graph(f, Some(&store_dir))?;
                live.extend(g.keys.values().cloned());
            }
            let st = Store::open(&store_dir).map_err(|e| Failure::Internal(e.to_string()))?;
            let (n, bytes) = st.gc(&live).map_err(|e| Failure::Internal(e.to_string()))?;
            writeln!(out, "removed {n} entries ({:.1} MB) from {}", bytes as f64 / 1e6, store_dir.display())?;
        }
    }
    Ok(())
}

fn invalid(diags: &[Diagnostic]) -> Failure {
    let cwd = std::env::current_dir().ok();
    Failure::Invalid(diag::render(diags, cwd.as_deref()))
}

/// `.distillery` beside the experiment file.
pub fn default_store(file: &Path) -> PathBuf {
    file.parent().unwrap_or(Path::new(".")).join(".distillery")
}

/// Loads, validates and builds the graph of an experiment file, fingerprinting dataset content
/// (file digests are kept in the store, when there is one, so each file is hashed once).
pub fn load_graph(file: &Path, store_dir: Option<&Path>) -> Result<(Experiment, Graph), Failure> {
    let cache = match store_dir.filter(|d| d.is_dir()) {
        Some(d) => FingerprintCache::open(&d.join("fingerprints.json"))
            .map_err(|e| Failure::Internal(e.to_string()))?,
        None => FingerprintCache::in_memory(),
    };
    let checked = check(file, &cache);
    let _ = cache.save(); // a lost digest cache only costs re-hashing next time
    checked.map_err(|d| invalid(&d))
}

/// Everything `validate` checks, in order: the spec, then references, cycles and data files,
/// then settings that need the data; as many problems as can be found in one pass.
pub fn check(file: &Path, cache: &FingerprintCache) -> Result<(Experiment, Graph), Vec<Diagnostic>> {
    let (exp, mut diags) = spec::load_partial(file);
    let Some(exp) = exp else { return Err(diags) };
    let built = graph::build(&exp, &resolve::fingerprint(&exp, cache));
    match built {
        Ok(g) => {
            if diags.is_empty() {
                diags.extend(resolve::data_checks(&exp, cache));
            }
            if diags.is_empty() { Ok((exp, g)) } else { Err(diags) }
        }
        Err(more) => {
            diags.extend(more);
            Err(diags)
        }
    }
}

/// The plan as a table for people.
pub fn render_plan(exp: &Experiment, entries: &[plan::PlanEntry]) -> String {
    use std::fmt::Write as _;
    let width = entries.iter().map(|e| e.node.len()).max().unwrap_or(4).max(4);
    let runs = entries.iter().filter(|e| matches!(e.status, Status::Run { .. })).count();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "plan for `{}`: {} nodes, {} to run, {} cached",
        exp.name,
        entries.len(),
        runs,
        entries.len() - runs
    );
    for e in entries {
        let (word, why) = match &e.status {
            Status::Cached => ("cached", String::new()),
            Status::Run { reasons } => {
                ("run", reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
            }
        };
        let _ = writeln!(s, "  {word:<6}  {:<width$}  {:<8}  {}  {why}", e.node, e.kind, &e.key[..12]);
    }
    s
}

/// Runs a loaded experiment: Ctrl-C stops it cleanly (a second Ctrl-C exits at once), every node
/// is recorded as a run, and the report tables are printed at the end.
fn run_experiment(
    exp: &Experiment,
    g: &Graph,
    store_dir: &Path,
    opts: RunOptions,
    tracking: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let internal = |e: &dyn std::fmt::Display| Failure::Internal(e.to_string());
    crate::engine::tune_allocator();
    let cancel = Cancel::default();
    {
        let c = cancel.clone();
        // A second Ctrl-C while stopping exits immediately (nothing half-written is ever committed).
        let _ = ctrlc::set_handler(move || {
            if c.is_cancelled() {
                std::process::exit(130);
            }
            eprintln!("\n  interrupt: finishing nothing half-way; Ctrl-C again to exit now");
            c.cancel();
        });
    }
    let store = Store::open(store_dir).map_err(|e| internal(&e))?;
    let uri = track::resolve_tracking_uri(tracking);
    let tracker = track::Tracker::open(track::TrackerConfig::new(store_dir, uri))
        .map_err(|e| Failure::Invalid(format!("error: {e}\n")))?;
    let parent = tracker
        .start_invocation(
            &exp.name,
            Some(&exp.path),
            &[("distillery.version".into(), env!("CARGO_PKG_VERSION").into())],
        )
        .map_err(|e| internal(&e))?;
    let terminal = exec::sinks::Terminal::new(std::time::Duration::from_secs(2));
    let tracking_sink = exec::sinks::Tracking::new(&tracker, &store, exp, g, parent.clone());
    let sink = exec::sinks::Fanout(vec![&terminal, &tracking_sink]);
    let fingerprints = std::sync::Arc::new(
        FingerprintCache::open(&store_dir.join("fingerprints.json")).map_err(|e| internal(&e))?,
    );
    let runner = crate::nodes::Runner::new(fingerprints, store.clone());
    let n = g.node_order().count();
    eprintln!("running `{}`: {n} nodes, store {}", exp.name, store_dir.display());
    let t0 = std::time::Instant::now();
    let summary = exec::run(exp, g, &store, &runner, &opts, &sink, &cancel);
    let status = if summary.cancelled() {
        track::RunStatus::Killed
    } else if summary.ok() {
        track::RunStatus::Finished
    } else {
        track::RunStatus::Failed
    };
    let _ = tracker.end_run(&parent, status);
    if let Some(report) = tracker.finish() {
        if !report.is_complete() {
            eprintln!(
                "  tracking: not everything reached the server yet; `distillery sync --to URI` pushes the rest"
            );
        }
    }
    // Tables of the report nodes that finished.
    for (name, outcome) in &summary.outcomes {
        let Some(ix) = g.get(name) else { continue };
        if !matches!(outcome, exec::Outcome::Done { .. } | exec::Outcome::Cached) {
            continue;
        }
        if exp.node(name).is_some_and(|n| matches!(n.kind, spec::NodeKind::Report(_))) {
            if let Ok(crate::store::Lookup::Hit(e)) = store.get(g.key(ix)) {
                if let Some(t) = e.manifest.metrics.get("table").and_then(|v| v.as_str()) {
                    writeln!(out, "\n{t}")?;
                }
            }
        }
    }
    let count = |f: fn(&exec::Outcome) -> bool| summary.outcomes.iter().filter(|(_, o)| f(o)).count();
    eprintln!(
        "{} ran, {} cached, {} failed, {} blocked, {} interrupted in {:.1} s",
        count(|o| matches!(o, exec::Outcome::Done { .. })),
        count(|o| *o == exec::Outcome::Cached),
        count(|o| matches!(o, exec::Outcome::Failed { .. })),
        count(|o| matches!(o, exec::Outcome::Blocked { .. })),
        count(|o| *o == exec::Outcome::Cancelled),
        t0.elapsed().as_secs_f64()
    );
    if summary.cancelled() {
        return Err(Failure::Interrupted);
    }
    if !summary.ok() {
        let failed: Vec<String> = summary
            .outcomes
            .iter()
            .filter_map(|(n, o)| match o {
                exec::Outcome::Failed { error } => Some(format!("  {n}: {error}")),
                _ => None,
            })
            .collect();
        return Err(Failure::Invalid(format!(
            "error: {} node(s) failed:\n{}\n",
            failed.len(),
            failed.join("\n")
        )));
    }
    Ok(())
}
