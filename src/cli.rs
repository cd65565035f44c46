//! The command line: parses flags, calls the library, prints. Errors are rendered once, here.
//!
//! Exit codes: 0 success; 1 invalid input (bad experiment file, failed node); 2 internal error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::diag::{self, Diagnostic};
use crate::graph::{self, Graph};
use crate::plan::{self, Status};
use crate::spec::{self, Experiment};

#[derive(Parser, Debug)]
#[command(name = "distillery", version, about = "Run knowledge-distillation experiments declared in YAML")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check an experiment file and report every problem in it.
    Validate { file: PathBuf },
    /// Show every node in order, its cache key, and why it would run.
    Plan {
        file: PathBuf,
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
            let (exp, g) = load_graph(&file)?;
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
        Command::Plan { file, json, force } => {
            let (exp, g) = load_graph(&file)?;
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
            let entries = plan::plan(&g, &plan::EmptyStore, &forced);
            if json {
                let v = serde_json::json!({ "experiment": exp.name, "nodes": entries });
                writeln!(out, "{}", serde_json::to_string_pretty(&v).expect("plan serialises"))?;
            } else {
                write!(out, "{}", render_plan(&exp, &entries))?;
            }
        }
        Command::Graph { file, format } => {
            let (exp, g) = load_graph(&file)?;
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
    }
    Ok(())
}

fn invalid(diags: &[Diagnostic]) -> Failure {
    let cwd = std::env::current_dir().ok();
    Failure::Invalid(diag::render(diags, cwd.as_deref()))
}

/// Loads, validates and builds the graph of an experiment file.
pub fn load_graph(file: &Path) -> Result<(Experiment, Graph), Failure> {
    let (exp, mut diags) = spec::load_partial(file);
    let Some(exp) = exp else { return Err(invalid(&diags)) };
    match graph::build(&exp, &graph::spec_fingerprint) {
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
