//! The command line: parses flags, calls the library, prints. Errors are rendered once, here.
//!
//! Exit codes: 0 success; 1 invalid input (bad experiment file, failed node); 2 internal error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::data::FingerprintCache;
use crate::diag::{self, Diagnostic};
use crate::graph::{self, Graph};
use crate::plan::{self, Status};
use crate::resolve;
use crate::spec::{self, Experiment};
use crate::store::Store;

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
                plan::plan(&g, &st, &forced)
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
    let (exp, mut diags) = spec::load_partial(file);
    let Some(exp) = exp else { return Err(invalid(&diags)) };
    let cache = match store_dir.filter(|d| d.is_dir()) {
        Some(d) => FingerprintCache::open(&d.join("fingerprints.json"))
            .map_err(|e| Failure::Internal(e.to_string()))?,
        None => FingerprintCache::in_memory(),
    };
    let built = graph::build(&exp, &resolve::fingerprint(&exp, &cache));
    let _ = cache.save(); // a lost digest cache only costs re-hashing next time
    match built {
        Ok(g) if diags.is_empty() => Ok((exp, g)),
        Ok(_) => Err(invalid(&diags)),
        Err(more) => {
            diags.extend(more);
            Err(invalid(&diags))
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
