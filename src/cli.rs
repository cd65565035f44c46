//! The command line: parses flags, calls the library, prints. Errors are rendered once, here.
//!
//! Exit codes: 0 success; 1 invalid input (bad experiment file, failed node) or the user's
//! environment (a full disk, a read-only or missing folder, a file where the store should be, a
//! closed output pipe); 2 internal error (a bug of ours); 130 interrupted.

use std::io::{self, Write};
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
use crate::store::{Store, StoreError};
use crate::track::{self, TrackError};

/// `eprintln!` without its panic when stderr is a closed pipe (a lost progress line is fine).
macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

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
        /// Plan only these nodes (see `run --only`).
        #[arg(long, value_name = "NODE")]
        only: Vec<String>,
        /// Plan these nodes and everything downstream of them to rerun (see `run --from`).
        #[arg(long, value_name = "NODE")]
        from: Vec<String>,
        /// Plan these nodes to run even when cached (`kd`, `kd[seed=1]`: see `run`).
        #[arg(long, value_name = "NODE")]
        force: Vec<String>,
    },
    /// Run every node that is not cached, then print the report tables.
    Run {
        file: PathBuf,
        /// Nodes run at once (default: 1 on the CPU; GPUs x --device-slots on GPUs).
        #[arg(long, short = 'j', value_name = "N")]
        jobs: Option<usize>,
        /// With `device: cuda` (or `auto`): the GPUs to spread nodes over, e.g. `0,1,3` (default:
        /// every GPU the driver lists). Each runs --device-slots nodes at once.
        #[arg(long, value_name = "LIST", value_delimiter = ',')]
        gpus: Vec<u32>,
        /// Run only these nodes (their inputs must be cached). NODE is a declared node (`kd`: all
        /// its instances), an instance (`kd[losses.kd.temperature=2,seed=1]`) or part of one
        /// (`kd[seed=1]`: every instance of kd with seed=1).
        #[arg(long, value_name = "NODE")]
        only: Vec<String>,
        /// Rerun these nodes and everything downstream of them.
        #[arg(long, value_name = "NODE")]
        from: Vec<String>,
        /// Nodes using the device at once (default: --jobs on cpu, 1 on each GPU).
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
        /// How nodes run (default: the spec's `launcher:`, else local): `slurm` submits one
        /// sbatch job per node (docs/cluster.md).
        #[arg(long, value_enum)]
        launcher: Option<LauncherArg>,
        /// With the slurm launcher: submit and return; `distillery status FILE` watches later.
        #[arg(long)]
        detach: bool,
    },
    /// Watch an experiment's Slurm jobs (submitted by `run --launcher slurm`, detached or not):
    /// the same per-node view as `run`, until every node is done or failed. Submits nothing;
    /// Ctrl-C stops watching and leaves the jobs running.
    Status {
        file: PathBuf,
        /// The artifact store (default: .distillery beside the experiment file).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// Log to this MLflow server (as `run` does).
        #[arg(long, value_name = "URI")]
        tracking: Option<String>,
    },
    /// List the runs recorded in the local run store.
    Runs {
        /// The experiment file whose store to read (.distillery beside it).
        file: Option<PathBuf>,
        /// The store (default: .distillery beside FILE; without FILE, ./.distillery).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Push runs recorded locally to an MLflow server (idempotent).
    Sync {
        #[arg(long, value_name = "URI")]
        to: String,
        /// The experiment file whose store to push (.distillery beside it).
        file: Option<PathBuf>,
        /// The store (default: .distillery beside FILE; without FILE, ./.distillery).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// Push only this run and, for an invocation, its node runs (`distillery runs` lists them).
        #[arg(long, value_name = "RUN")]
        run: Option<String>,
    },
    /// Print the experiment graph.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// Render every report of an experiment from the store, running nothing: a row whose node
    /// has not run is shown as missing.
    Report {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
        format: ReportFormat,
        /// Write each report to DIR/<report>.<ext> instead of printing it.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The artifact store (default: .distillery beside the experiment file).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Print the JSON Schema of experiment files (for editor completion and checks).
    Schema,
    /// Say what this binary and machine have: the build's features, the CPU's vector level, and
    /// for CUDA the driver, NVRTC, headers and GPUs (and what is missing).
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Run one resolved job (a node of `plan --json`'s "jobs") against a store: what a launcher
    /// that starts processes elsewhere (a cluster) runs. Its inputs must be in the store.
    #[command(hide = true)]
    Worker {
        /// A job as `plan --json` writes it (an element of its "jobs"), or a plan with one job.
        job: PathBuf,
        /// The artifact store the job's inputs are in and its result goes to.
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        /// Recompute even if the store has the job's entry.
        #[arg(long)]
        force: bool,
        /// Also append its events to FILE, one JSON line each (the Slurm launcher reads them).
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        /// Write how it stopped to FILE (`done`, `cached`, `failed`, `interrupted`) with the
        /// Slurm job id, when it stops.
        #[arg(long, value_name = "FILE")]
        exit: Option<PathBuf>,
    },
    /// Write a trained node's weights (torchvision names), model.json and a PyTorch loader
    /// (load.py) into a folder.
    Export {
        file: PathBuf,
        /// The node (one instance: `kd[seed=1]` for a node with a matrix).
        node: String,
        /// The folder to write (created; existing files are never overwritten).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// The final weights, or the best on the node's `val:` set.
        #[arg(long, value_enum, default_value_t = ExportWeights::Final)]
        weights: ExportWeights,
        /// The artifact store (default: .distillery beside the experiment file).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Remove stored results that none of the given experiment files references.
    Gc {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The artifact store (default: .distillery beside the first experiment file).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LauncherArg {
    Local,
    Slurm,
}

/// How `run_experiment` runs the plan's jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Local,
    /// Submit to Slurm, then watch (or return at once with `detach`).
    Slurm {
        detach: bool,
    },
    /// `status`: watch what was submitted.
    Attach,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportWeights {
    Final,
    Best,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ReportFormat {
    Md,
    Csv,
    Latex,
    Json,
    Html,
}

impl ReportFormat {
    fn format(self) -> crate::report::Format {
        use crate::report::Format as F;
        match self {
            ReportFormat::Md => F::Md,
            ReportFormat::Csv => F::Csv,
            ReportFormat::Latex => F::Latex,
            ReportFormat::Json => F::Json,
            ReportFormat::Html => F::Html,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

/// Why a command failed: the user's input or environment (exit 1), or us (exit 2).
#[derive(Debug)]
pub enum Failure {
    /// Bad input, a failed node, or an environment the user can fix; the rendered message
    /// (`error: ...`, lines ending in `\n`).
    Invalid(String),
    /// A bug of ours.
    Internal(String),
    /// Ctrl-C: exit 130, the shell's convention.
    Interrupted,
    /// Whoever read the output stopped reading (`distillery plan --json F | head -1`): exit 1
    /// without a message, as a closed pipe is not worth one.
    OutputClosed,
}

impl From<io::Error> for Failure {
    /// `?` on a write to the output: the output is wherever the user sent it, so a full disk or
    /// a device that refuses it is theirs to fix; a closed pipe ends quietly.
    fn from(e: io::Error) -> Failure {
        if e.kind() == io::ErrorKind::BrokenPipe {
            return Failure::OutputClosed;
        }
        match environment_fault(&e) {
            Some((reason, _)) => Failure::Invalid(format!(
                "error: cannot write output: {reason}\n  = help: send the output somewhere that can take it (a file on a disk with space, a pipe, the terminal)\n"
            )),
            None => Failure::Internal(format!("cannot write output: {e}")),
        }
    }
}

/// What an I/O error says about the user's environment when it is the environment's doing (a
/// full disk, a read-only or missing folder, a file where a folder should be): a lowercase
/// reason and what to do. `None` for errors that mean a bug of ours (exit 2).
pub fn environment_fault(e: &io::Error) -> Option<(&'static str, &'static str)> {
    use io::ErrorKind as K;
    const SPACE: &str = "free some space (`distillery gc FILE...` removes results no experiment uses)";
    Some(match e.kind() {
        K::StorageFull => ("no space left on the device", SPACE),
        K::QuotaExceeded => ("disk quota exceeded", SPACE),
        K::FileTooLarge => ("file too large for the file system", "use a file system that takes large files"),
        K::ReadOnlyFilesystem => ("the file system is read-only", "use a folder on a writable file system"),
        K::PermissionDenied => {
            ("permission denied", "make it writable for you, or use a folder you can write")
        }
        K::NotADirectory => {
            ("a part of the path is a file, not a folder", "move that file away, or use another folder")
        }
        K::AlreadyExists => ("it exists and is not a folder", "move it away, or use another folder"),
        K::IsADirectory => ("it is a folder, not a file", "move the folder away"),
        K::DirectoryNotEmpty => ("the folder is not empty", "move the folder away"),
        K::NotFound => {
            ("no such file or folder", "check the path (was a folder removed while distillery ran?)")
        }
        K::InvalidFilename => ("the file name is too long or not allowed here", "use a shorter path"),
        K::CrossesDevices => ("cannot move files between file systems", "keep the store on one file system"),
        K::TooManyLinks => ("too many links", "use another folder"),
        K::ResourceBusy | K::ExecutableFileBusy => {
            ("the file is busy", "retry once the program using it is done")
        }
        K::StaleNetworkFileHandle => {
            ("stale network file handle", "remount the network file system, or use a local folder")
        }
        K::OutOfMemory => ("out of memory", "close other programs, or run fewer nodes at once (-j)"),
        K::BrokenPipe => ("the pipe was closed by its reader", "keep the reader open until distillery ends"),
        // EIO: the disk or the network file system failed under us.
        _ if e.raw_os_error() == Some(5) => {
            ("input/output error", "check the disk (or the network file system)")
        }
        _ => return None,
    })
}

/// An I/O error at `path`: exit 1 with the reason and what to do when it is the environment's
/// (`hint` adds to the help), exit 2 otherwise.
fn io_failure(what: &str, path: &Path, e: &io::Error, hint: &str) -> Failure {
    match environment_fault(e) {
        Some((reason, help)) => {
            Failure::Invalid(format!("error: {what} {}: {reason}\n  = help: {help}{hint}\n", path.display()))
        }
        None => Failure::Internal(format!("{what} {}: {e}", path.display())),
    }
}

const STORE_HINT: &str = "; or choose another store with --store DIR";

/// Where to look for a store that a command only reads.
const FIND_STORE: &str = "`distillery run FILE` keeps its store in .distillery beside FILE (or in --store DIR): \
                          point this command at it the same way";

fn store_failure(e: StoreError) -> Failure {
    match e {
        StoreError::Io { path, source } => io_failure("store", &path, &source, STORE_HINT),
        e @ StoreError::NotAStore { .. } => Failure::Invalid(format!("error: {e}\n  = help: {FIND_STORE}\n")),
        e @ StoreError::Corrupt { .. } => Failure::Invalid(format!("error: {e}\n")),
    }
}

fn track_failure(e: TrackError) -> Failure {
    match e {
        TrackError::Io { path, source } => io_failure("run store", &path, &source, STORE_HINT),
        e @ TrackError::NoStore { .. } => Failure::Invalid(format!("error: {e}\n  = help: {FIND_STORE}\n")),
        e => Failure::Invalid(format!("error: {e}\n")),
    }
}

fn data_failure(e: crate::data::DataError) -> Failure {
    match e {
        crate::data::DataError::Io { path, source } => io_failure("store", &path, &source, STORE_HINT),
        e => Failure::Internal(e.to_string()),
    }
}

pub fn main_with(cli: Cli) -> ExitCode {
    let mut out = io::stdout().lock();
    // Output is line-buffered: the last flush can fail too (a full disk, a closed pipe).
    let result = run(cli, &mut out).and_then(|()| out.flush().map_err(Failure::from));
    let (code, message) = match result {
        Ok(()) => return ExitCode::SUCCESS,
        Err(Failure::Invalid(text)) => (1, text),
        Err(Failure::OutputClosed) => (1, String::new()),
        Err(Failure::Interrupted) => (130, String::new()),
        Err(Failure::Internal(text)) => (2, format!("internal error: {text}\n")),
    };
    if !message.is_empty() {
        let _ = out.flush();
        // Not eprint!: it panics when stderr is a closed pipe.
        let _ = io::stderr().write_all(message.as_bytes());
    }
    ExitCode::from(code)
}

pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), Failure> {
    match cli.command {
        Command::Validate { file } => {
            let (exp, _g) = load(&file, None, true)?;
            // `launcher: slurm`: ask the cluster about each request, when there is one to ask.
            if exp.launcher == spec::LauncherKind::Slurm {
                let all: Vec<&str> = exp.nodes.iter().map(|n| n.name.as_str()).collect();
                match resource_checks(&exp, &all) {
                    Ok(d) if d.is_empty() => {}
                    Ok(d) => return Err(invalid(&d)),
                    Err(e) => note!("note: resources not checked against a cluster: {e}"),
                }
            }
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
                exp.nodes.len(),
                exp.files.len()
            )?;
        }
        Command::Plan { file, store, json, only, from, force } => {
            let store_dir = store.unwrap_or_else(|| default_store(&file));
            let (exp, g) = load_graph(&file, Some(&store_dir))?;
            let sel = selection(&exp, &only, &from, &force)?;
            let entries = if store_dir.join("objects").is_dir() {
                // Read only: a plan writes nothing, so it works on a read-only store.
                let st = Store::open_existing(&store_dir).map_err(store_failure)?;
                plan::plan(&g, &st.scoped(&exp.name), &sel)
            } else {
                plan::plan(&g, &plan::EmptyStore, &sel)
            };
            if json {
                // Each node's resolved job, as `distillery worker` runs it.
                let jobs: Vec<&crate::job::Job> =
                    entries.iter().filter_map(|e| g.get(&e.node)).map(|ix| g.job(ix)).collect();
                let v = serde_json::json!({ "experiment": exp.name, "nodes": entries, "jobs": jobs });
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
        Command::Run {
            file,
            jobs,
            gpus,
            only,
            from,
            device_slots,
            force,
            store,
            tracking,
            launcher,
            detach,
        } => {
            let store_dir = store.unwrap_or_else(|| default_store(&file));
            std::fs::create_dir_all(&store_dir)
                .map_err(|e| io_failure("cannot create the store", &store_dir, &e, STORE_HINT))?;
            // Before any node starts: a device that cannot run here is one error, not a panic
            // in the first node's thread.
            let (exp, g) = load(&file, Some(&store_dir), true)?;
            let sel = selection(&exp, &only, &from, &force)?;
            let placed = placement(exp.device, &gpus, crate::engine::device::cuda())?;
            if let Some(n) = &placed.note {
                note!("{n}");
            }
            let slurm = match launcher {
                Some(l) => l == LauncherArg::Slurm,
                None => exp.launcher == spec::LauncherKind::Slurm,
            };
            if detach && !slurm {
                return Err(Failure::Invalid(
                    "error: --detach needs the slurm launcher (`--launcher slurm`, or `launcher: slurm` in the spec)\n".into(),
                ));
            }
            if slurm {
                let given: Vec<&str> = [
                    ("--jobs", jobs.is_some()),
                    ("--gpus", !gpus.is_empty()),
                    ("--device-slots", device_slots.is_some()),
                ]
                .into_iter()
                .filter_map(|(f, on)| on.then_some(f))
                .collect();
                if !given.is_empty() {
                    return Err(Failure::Invalid(format!(
                        "error: {} cannot be used with the slurm launcher: the cluster decides what runs at once and where\n  help: ask for cores and GPUs per node under `resources:` (docs/cluster.md)\n",
                        given.join(", ")
                    )));
                }
            }
            let (mode, opts) = if slurm {
                // Every job waits on the cluster, not on this machine.
                let n = g.node_order().count().max(1);
                (Mode::Slurm { detach }, RunOptions { jobs: n, device_slots: n, devices: Vec::new() })
            } else {
                (Mode::Local, run_options(&placed.devices, jobs, device_slots))
            };
            run_experiment(&exp, &g, &store_dir, &sel, opts, &placed, tracking.as_deref(), mode, out)?;
        }
        Command::Status { file, store, tracking } => {
            let store_dir = store.unwrap_or_else(|| default_store(&file));
            if !store_dir.join("slurm").is_dir() {
                return Err(Failure::Invalid(format!(
                    "error: nothing of {} was submitted to Slurm (no {})\n  help: `distillery run {} --launcher slurm` submits it\n",
                    file.display(),
                    store_dir.join("slurm").display(),
                    file.display()
                )));
            }
            let (exp, g) = load(&file, Some(&store_dir), false)?;
            let sel = plan::Selection::default();
            let placed = Placement { devices: Vec::new(), names: Default::default(), note: None };
            let n = g.node_order().count().max(1);
            let opts = RunOptions { jobs: n, device_slots: n, devices: Vec::new() };
            run_experiment(
                &exp,
                &g,
                &store_dir,
                &sel,
                opts,
                &placed,
                tracking.as_deref(),
                Mode::Attach,
                out,
            )?;
        }
        Command::Doctor { json } => {
            let report = crate::engine::device::cuda();
            let features: Vec<&str> = [("cuda", cfg!(feature = "cuda"))]
                .into_iter()
                .filter_map(|(f, on)| on.then_some(f))
                .collect();
            if json {
                let v = serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "features": features,
                    "cpu_isa": crate::engine::isa_summary(),
                    "cuda": report,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&v).expect("doctor serialises"))?;
            } else {
                let shown =
                    if features.is_empty() { "none (CPU only)".to_string() } else { features.join(", ") };
                writeln!(out, "distillery {}", env!("CARGO_PKG_VERSION"))?;
                writeln!(out, "features: {shown}")?;
                writeln!(
                    out,
                    "cpu: {} vector kernels ({} threads)",
                    crate::engine::isa_summary(),
                    rayon::current_num_threads()
                )?;
                for line in report.lines() {
                    writeln!(out, "{line}")?;
                }
            }
        }
        Command::Runs { file, store, json } => {
            let store = store_for(file.as_deref(), store)?;
            let runs = track::list_runs(&store).map_err(track_failure)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&runs).expect("runs serialise"))?;
            } else {
                write!(out, "{}", track::format_runs(&runs))?;
            }
        }
        Command::Sync { to, file, store, run } => {
            let store = store_for(file.as_deref(), store)?;
            let report = match run {
                Some(run) => track::sync_run(&store, &to, &track::RunId::new(run)),
                None => track::sync(&store, &to),
            }
            .map_err(track_failure)?;
            writeln!(out, "{report}")?;
            if !report.is_complete() {
                return Err(Failure::Invalid("error: some records were not pushed; run sync again\n".into()));
            }
        }
        Command::Report { file, format, out: dir, store } => {
            let store_dir = store.unwrap_or_else(|| default_store(&file));
            let (exp, g) = load_graph(&file, Some(&store_dir))?;
            let st = Store::open_existing(&store_dir).ok();
            if st.is_none() {
                note!(
                    "note: no store at {}: every row is missing (run the experiment first)",
                    store_dir.display()
                );
            }
            let tables = report_tables(&g, st.as_ref()).map_err(store_failure)?;
            if tables.is_empty() {
                note!("note: {} declares no report node", file.display());
            }
            let f = format.format();
            for t in &tables {
                if let Some(n) = &t.note {
                    note!("note: {}: {n}", t.name);
                }
            }
            let page = || experiment_page(&exp, &g, st.as_ref(), &store_dir, &tables);
            match (dir, f) {
                (Some(dir), f) => {
                    std::fs::create_dir_all(&dir).map_err(|e| io_failure("cannot create", &dir, &e, ""))?;
                    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
                    if f == crate::report::Format::Html {
                        files.push((dir.join(format!("{}.html", file_stem(&exp.name))), page().into_bytes()));
                    } else {
                        for t in &tables {
                            let stem = file_stem(&t.name);
                            let text = crate::report::render(&t.table, f);
                            files.push((dir.join(format!("{stem}.{}", f.extension())), text.into_bytes()));
                            for (plot, p) in crate::report::plots(&t.work, &t.rows).unwrap_or_default() {
                                files.push((dir.join(format!("{stem}.{plot}.svg")), p.svg.into_bytes()));
                                files.push((dir.join(format!("{stem}.{plot}.png")), p.png));
                            }
                        }
                    }
                    for (path, bytes) in files {
                        std::fs::write(&path, bytes)
                            .map_err(|e| io_failure("cannot write", &path, &e, ""))?;
                        writeln!(out, "{}", path.display())?;
                    }
                }
                (None, crate::report::Format::Json) => {
                    let all: Vec<serde_json::Value> = tables
                        .iter()
                        .map(|t| serde_json::json!({ "report": t.name, "ran": t.ran, "table": t.table }))
                        .collect();
                    writeln!(out, "{}", serde_json::to_string_pretty(&all).expect("json"))?;
                }
                (None, crate::report::Format::Html) => write!(out, "{}", page())?,
                (None, f) => {
                    for (i, t) in tables.iter().enumerate() {
                        if i > 0 {
                            writeln!(out)?;
                        }
                        write!(out, "{}", crate::report::render(&t.table, f))?;
                    }
                }
            }
        }
        Command::Schema => {
            let s = spec::json_schema();
            writeln!(out, "{}", serde_json::to_string_pretty(&s).expect("schema serialises"))?;
        }
        Command::Worker { job, store, force, events, exit } => {
            let r = worker(&job, &store, force, events.as_deref(), out);
            if let Some(path) = exit {
                let job_id = std::env::var("SLURM_JOB_ID").ok().and_then(|v| v.parse().ok());
                let (outcome, seconds, error) = match &r {
                    Ok(s) => (if s.is_some() { "done" } else { "cached" }, *s, None),
                    Err(Failure::Interrupted) => ("interrupted", None, None),
                    Err(Failure::Invalid(m) | Failure::Internal(m)) => {
                        ("failed", None, Some(m.trim().trim_start_matches("error: ").to_string()))
                    }
                    Err(Failure::OutputClosed) => ("failed", None, Some("its output was closed".into())),
                };
                let x = exec::slurm::ExitRecord { job_id, outcome: outcome.into(), seconds, error };
                if let Err(e) = x.write(&path) {
                    note!("warning: cannot write the exit record {}: {e}", path.display());
                }
            }
            r?;
        }
        Command::Export { file, node, to, weights, store } => {
            let store_dir = store.unwrap_or_else(|| default_store(&file));
            let (exp, g) = load_graph(&file, Some(&store_dir))?;
            let [names] = select_all(&exp, [("export", &vec![node.clone()])])?;
            let name = match names.as_slice() {
                [one] => one.clone(),
                many => {
                    let shown: Vec<&str> = many.iter().take(5).map(String::as_str).collect();
                    return Err(Failure::Invalid(format!(
                        "error: export {node}: {} instances match ({}{})
  = help: name one, e.g. `{}`
",
                        many.len(),
                        shown.join(", "),
                        if many.len() > 5 { ", ..." } else { "" },
                        many[0]
                    )));
                }
            };
            let ix = g.get(&name).expect("a selected instance is a vertex");
            let st = Store::open_existing(&store_dir).map_err(store_failure)?;
            let entry = match st.get(g.key(ix)).map_err(store_failure)? {
                crate::store::Lookup::Hit(e) => e,
                _ => {
                    return Err(Failure::Invalid(format!(
                        "error: export {name}: no stored result for this node's current settings
  = help: run it first: `distillery run {} --only '{name}'`
",
                        file.display()
                    )));
                }
            };
            let which = match weights {
                ExportWeights::Final => crate::job::Weights::Final,
                ExportWeights::Best => crate::job::Weights::Best,
            };
            let files = crate::export::export(&entry.dir, which, &to).map_err(|e| {
                Failure::Invalid(format!(
                    "error: export {name}: {e}
"
                ))
            })?;
            let how = match which {
                crate::job::Weights::Final => "final weights".to_string(),
                crate::job::Weights::Best => format!(
                    "best weights, epoch {}",
                    entry
                        .manifest
                        .metrics
                        .get("best_epoch")
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "?".into())
                ),
            };
            writeln!(out, "exported `{name}` ({how}, key {}) to {}:", &g.key(ix).hex()[..12], to.display())?;
            for f in &files {
                writeln!(out, "  {}", f.display())?;
            }
            writeln!(
                out,
                "load it in PyTorch: python {0}/load.py, or `sys.path.insert(0, \"{0}\"); from load import load; model = load(\"{0}\")`",
                to.display()
            )?;
        }
        Command::Gc { files, store } => {
            let store_dir = store.unwrap_or_else(|| default_store(&files[0]));
            // A store that is not there has nothing to remove; gc never creates one.
            let st = Store::open_existing(&store_dir).map_err(store_failure)?;
            let mut live = std::collections::HashSet::new();
            for f in &files {
                let (_, g) = load_graph(f, Some(&store_dir))?;
                live.extend(g.keys.values().cloned());
            }
            let (n, bytes) = st.gc(&live).map_err(store_failure)?;
            writeln!(out, "removed {n} entries ({:.1} MB) from {}", bytes as f64 / 1e6, store_dir.display())?;
        }
    }
    Ok(())
}

/// Where a run's device-using nodes go.
#[derive(Debug, PartialEq)]
pub struct Placement {
    /// `["cpu"]`, or the GPUs (`["cuda:0", "cuda:1"]`) nodes are spread over.
    pub devices: Vec<String>,
    /// Said once before the run (`device: auto` falling back to the CPU, and why).
    pub note: Option<String>,
    /// A GPU's model name by its spelling, for the MLflow runs.
    pub names: std::collections::HashMap<String, String>,
}

/// The devices of a run: the experiment's `device:` and `--gpus` against what the machine has
/// (`device_checks` has already refused a `cuda` that cannot run).
pub fn placement(
    device: spec::Device,
    gpus: &[u32],
    cuda: &crate::engine::device::CudaReport,
) -> Result<Placement, Failure> {
    let cpu = |note| Placement { devices: vec!["cpu".into()], note, names: Default::default() };
    let wrong = |why: String| {
        Failure::Invalid(format!(
            "error: --gpus: {why}
"
        ))
    };
    let chosen: Vec<u32> = match device {
        spec::Device::Cpu if gpus.is_empty() => return Ok(cpu(None)),
        spec::Device::Cpu => {
            return Err(wrong(
                "the experiment runs on the CPU (`device: cpu`); set `device: cuda` to spread its nodes over GPUs".into(),
            ));
        }
        spec::Device::Auto if cuda.problem().is_some() => {
            if !gpus.is_empty() {
                return Err(wrong(format!(
                    "no GPU can be used here: {}",
                    cuda.problem().unwrap_or_default()
                )));
            }
            let why = cuda.problem().unwrap_or_default();
            let why = why.split(';').next().unwrap_or(&why).to_string();
            return Ok(cpu(Some(format!("  device: auto: running on the CPU ({why})"))));
        }
        spec::Device::Cuda(Some(i)) if gpus.is_empty() || gpus == [i] => vec![i],
        spec::Device::Cuda(Some(i)) => {
            return Err(wrong(format!(
                "`device: cuda:{i}` pins every node to GPU {i}; write `device: cuda` to spread nodes over --gpus"
            )));
        }
        spec::Device::Cuda(None) | spec::Device::Auto if gpus.is_empty() => {
            cuda.gpus.iter().map(|g| g.index).collect()
        }
        spec::Device::Cuda(None) | spec::Device::Auto => {
            let mut seen = std::collections::HashSet::new();
            for &g in gpus {
                if !seen.insert(g) {
                    return Err(wrong(format!("GPU {g} is listed twice")));
                }
                cuda.check_index(g).map_err(wrong)?;
            }
            gpus.to_vec()
        }
    };
    let devices: Vec<String> = chosen.iter().map(|i| format!("cuda:{i}")).collect();
    let names = cuda
        .gpus
        .iter()
        .filter(|g| chosen.contains(&g.index))
        .map(|g| (format!("cuda:{}", g.index), g.name.clone()))
        .collect();
    Ok(Placement { devices, note: None, names })
}

/// `--jobs` and `--device-slots` with their defaults: on the CPU one node at a time and every
/// node may use it; on GPUs one node per GPU at a time (two would compete for its memory), and as
/// many jobs as GPU slots.
pub fn run_options(devices: &[String], jobs: Option<usize>, device_slots: Option<usize>) -> RunOptions {
    let on_gpu = devices.iter().any(|d| d.starts_with("cuda"));
    let (jobs, device_slots) = match (on_gpu, jobs, device_slots) {
        (false, jobs, slots) => {
            let jobs = jobs.unwrap_or(1).max(1);
            (jobs, slots.unwrap_or(jobs))
        }
        (true, jobs, slots) => {
            let slots = slots.unwrap_or(1).max(1);
            (jobs.unwrap_or(slots * devices.len()).max(1), slots)
        }
    };
    RunOptions { jobs, device_slots, devices: devices.to_vec() }
}

/// Selectors become full instance names once, here, before anything is planned or run.
fn selection(
    exp: &Experiment,
    only: &Vec<String>,
    from: &Vec<String>,
    force: &Vec<String>,
) -> Result<plan::Selection, Failure> {
    let [only, from, force] = select_all(exp, [("--only", only), ("--from", from), ("--force", force)])?;
    Ok(plan::Selection { only, from, force })
}

/// `distillery worker JOB.json --store DIR`: one job, in this process, against the store.
/// Largest job file `worker` reads (a job is a few KB; a plan of many jobs, a few MB).
const MAX_JOB_BYTES: u64 = 64 << 20;

/// Returns the seconds the job took (`None`: it was cached).
fn worker(
    file: &Path,
    store_dir: &Path,
    force: bool,
    events: Option<&Path>,
    out: &mut dyn Write,
) -> Result<Option<f64>, Failure> {
    let cannot = |e: io::Error| {
        io_failure("cannot read the job", file, &e, "; give a job written by `distillery plan --json`")
    };
    // A regular file of bounded size only (a device or a FIFO would read forever or block).
    let meta = std::fs::metadata(file).map_err(cannot)?;
    if !meta.is_file() || meta.len() > MAX_JOB_BYTES {
        return Err(Failure::Invalid(format!(
            "error: {}: not a job file ({})\n  help: give a job written by `distillery plan --json`\n",
            file.display(),
            if meta.is_file() { "larger than 64 MiB" } else { "not a regular file" }
        )));
    }
    let text = std::fs::read_to_string(file).map_err(cannot)?;
    let bad = |e: String| {
        Failure::Invalid(format!(
            "error: {}: not a distillery job ({e})\n  help: write one with `distillery plan --json FILE` and pass an element of its \"jobs\"\n",
            file.display()
        ))
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    // A whole plan with one job is accepted too.
    let v = match v.get("jobs").and_then(|j| j.as_array()) {
        Some(jobs) if jobs.len() == 1 => jobs[0].clone(),
        Some(jobs) => return Err(bad(format!("the plan holds {} jobs; pass one", jobs.len()))),
        None => v,
    };
    let job: crate::job::Job = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
    // The store a launcher points it at (created if new, as `run` does).
    let store = Store::open(store_dir).map_err(store_failure)?;
    let mut entries = Vec::new();
    for i in job.inputs.iter().filter(|i| matches!(i.source, crate::job::InputSource::Entry { .. })) {
        let key =
            crate::graph::CacheKey::from_hex(&i.key).ok_or_else(|| bad(format!("input key {:?}", i.key)))?;
        match store.get(&key).map_err(store_failure)? {
            crate::store::Lookup::Hit(e) => entries.push((i.role.clone(), e)),
            _ => {
                return Err(Failure::Invalid(format!(
                    "error: input `{}` ({}) of `{}` is not in the store {}\n  help: run the job's inputs first (`distillery run` does it in order)\n",
                    i.name,
                    &i.key[..12.min(i.key.len())],
                    job.name,
                    store_dir.display()
                )));
            }
        }
    }
    crate::engine::tune_allocator();
    let fingerprints = std::sync::Arc::new(
        FingerprintCache::open(&store_dir.join("fingerprints.json")).map_err(data_failure)?,
    );
    let runner = crate::nodes::Runner::new(fingerprints);
    let terminal = exec::sinks::Terminal::new(std::time::Duration::from_secs(2));
    let event_file = match events {
        Some(p) => Some(exec::slurm::EventFile::append(p).map_err(|e| {
            io_failure("cannot write the events file", p, &e, "; check the path is writable")
        })?),
        None => None,
    };
    let mut sinks: Vec<&dyn exec::EventSink> = vec![&terminal];
    if let Some(f) = &event_file {
        sinks.push(f);
    }
    let sink = exec::sinks::Fanout(sinks);
    // Slurm pre-empts and ends a job at its time limit with SIGTERM: checkpoint, then stop.
    let cancel = stop_on_signals();
    match exec::compute(&job, entries, &store, &runner, &sink, &cancel, force) {
        Ok((entry, seconds)) => {
            let how = match seconds {
                Some(s) => format!("done in {s:.1} s"),
                None => "cached".into(),
            };
            writeln!(out, "{}: {how}: {}", job.name, entry.dir.display())?;
            Ok(seconds)
        }
        Err(exec::NodeError::Cancelled) => Err(Failure::Interrupted),
        Err(e) => Err(Failure::Invalid(format!("error: {} failed: {e}\n", job.name))),
    }
}

fn invalid(diags: &[Diagnostic]) -> Failure {
    let cwd = std::env::current_dir().ok();
    Failure::Invalid(diag::render(diags, cwd.as_deref()))
}

/// `.distillery` beside the experiment file.
pub fn default_store(file: &Path) -> PathBuf {
    file.parent().unwrap_or(Path::new(".")).join(".distillery")
}

/// The store of a command whose experiment file is optional (`runs`, `sync`), by the rule every
/// command follows: `--store DIR` when given, else `.distillery` beside the experiment file,
/// else `./.distillery`.
fn store_for(file: Option<&Path>, store: Option<PathBuf>) -> Result<PathBuf, Failure> {
    if let Some(f) = file.filter(|f| !f.is_file()) {
        return Err(Failure::Invalid(format!(
            "error: cannot read experiment file {}: no such file\n  = help: give the experiment file whose store to use, or the store with --store DIR\n",
            f.display()
        )));
    }
    Ok(store.or_else(|| file.map(default_store)).unwrap_or_else(|| PathBuf::from(".distillery")))
}

/// [`select_instances`] for each flag, every problem of every flag reported at once.
fn select_all<const N: usize>(
    exp: &Experiment,
    flags: [(&str, &Vec<String>); N],
) -> Result<[Vec<String>; N], Failure> {
    let mut problems = Vec::new();
    let names = flags.map(|(flag, selectors)| select_instances(exp, flag, selectors, &mut problems));
    if problems.is_empty() { Ok(names) } else { Err(Failure::Invalid(problems.concat())) }
}

/// Resolves node selectors (of `--force`, `--only`, `--from`) into full instance names, in the
/// experiment's order: `kd` selects every instance of the declared node kd,
/// `kd[losses.kd.temperature=2,seed=1]` one instance, and a partial `kd[seed=1]` every instance of kd whose matrix values include
/// seed=1. A selector that names no node, or matches no instance, adds a rendered problem (with
/// did-you-mean) to `problems`.
fn select_instances(
    exp: &Experiment,
    flag: &str,
    selectors: &[String],
    problems: &mut Vec<String>,
) -> Vec<String> {
    let mut chosen = std::collections::HashSet::new();
    for sel in selectors {
        match select_one(exp, sel) {
            Ok(names) => chosen.extend(names),
            Err((what, help)) => problems.push(format!("error: {flag} {sel}: {what}\n  = help: {help}\n")),
        }
    }
    exp.nodes.iter().filter(|n| chosen.contains(n.name.as_str())).map(|n| n.name.clone()).collect()
}

/// The instances one selector matches, or (what is wrong, help).
fn select_one<'e>(exp: &'e Experiment, sel: &str) -> Result<Vec<&'e str>, (String, String)> {
    let exact: Vec<&str> =
        exp.nodes.iter().filter(|n| n.name == sel || n.base == sel).map(|n| n.name.as_str()).collect();
    if !exact.is_empty() {
        return Ok(exact);
    }
    let (base, inner) = match sel.strip_suffix(']').and_then(|s| s.split_once('[')) {
        Some((base, inner)) => (base, Some(inner)),
        None => (sel, None),
    };
    let instances: Vec<&spec::Node> = exp.nodes.iter().filter(|n| n.base == base).collect();
    if instances.is_empty() {
        let mut seen = std::collections::HashSet::new();
        let bases: Vec<&str> =
            exp.nodes.iter().map(|n| n.base.as_str()).filter(|b| seen.insert(*b)).collect();
        let help = match diag::did_you_mean(base, bases.iter().copied()) {
            Some(m) => format!("did you mean `{m}`?"),
            None => format!("the nodes are {}", list_some(&bases)),
        };
        return Err((format!("no node named `{base}`"), help));
    }
    // No brackets means `sel` is `base`, which matched above; `kd[]` selects every instance.
    let inner = inner.unwrap_or("");
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err((
                format!("`{part}` is not key=value"),
                format!("select instances by matrix values, like {}", list_some(&names(&instances))),
            ));
        };
        wanted.push((k.trim(), v.trim()));
    }
    let matched: Vec<&str> = instances
        .iter()
        .filter(|n| wanted.iter().all(|(k, v)| n.assignment.iter().any(|(k2, v2)| k2 == k && v2 == v)))
        .map(|n| n.name.as_str())
        .collect();
    if !matched.is_empty() {
        return Ok(matched);
    }
    // Say which part matched nothing: an unknown matrix key, or a value no instance has.
    let mut keys: Vec<&str> = Vec::new();
    for n in &instances {
        for (k, _) in &n.assignment {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
    }
    if let Some((k, _)) = wanted.iter().find(|(k, _)| !keys.contains(k)) {
        let help = match diag::did_you_mean(k, keys.iter().copied()) {
            Some(m) => format!("did you mean `{m}`?"),
            None if keys.is_empty() => format!("`{base}` has no matrix instances: select it as `{base}`"),
            None => format!("its matrix keys are {}", list_some(&keys)),
        };
        return Err((format!("`{base}` has no matrix key `{k}`"), help));
    }
    let pairs: Vec<String> = wanted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Err((
        format!("no instance of `{base}` has {}", pairs.join(",")),
        format!("its instances are {}", list_some(&names(&instances))),
    ))
}

fn names<'e>(nodes: &[&'e spec::Node]) -> Vec<&'e str> {
    nodes.iter().map(|n| n.name.as_str()).collect()
}

/// `a`, `b`, `c` ... and N more: a list of candidates short enough to read.
fn list_some(items: &[&str]) -> String {
    const SHOWN: usize = 8;
    let mut s = items.iter().take(SHOWN).map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

/// Loads, validates and builds the graph of an experiment file, fingerprinting dataset content
/// (file digests are kept in the store, when there is one, so each file is hashed once).
pub fn load_graph(file: &Path, store_dir: Option<&Path>) -> Result<(Experiment, Graph), Failure> {
    load(file, store_dir, false)
}

/// [`load_graph`], and for the commands that run nodes (`validate` says what `run` would
/// refuse) the experiment's `device:` against this machine, reported with the rest.
fn load(file: &Path, store_dir: Option<&Path>, device: bool) -> Result<(Experiment, Graph), Failure> {
    let cache = match store_dir.filter(|d| d.is_dir()) {
        Some(d) => FingerprintCache::open(&d.join("fingerprints.json")).map_err(data_failure)?,
        None => FingerprintCache::in_memory(),
    };
    let checked = check_all(file, &cache, device);
    let _ = cache.save(); // a lost digest cache only costs re-hashing next time
    checked.map_err(|d| invalid(&d))
}

/// Everything `validate` checks, in order: the spec, then references, cycles and data files,
/// then settings that need the data; as many problems as can be found in one pass. The device
/// is not checked (see [`resolve::device_checks`]).
pub fn check(file: &Path, cache: &FingerprintCache) -> Result<(Experiment, Graph), Vec<Diagnostic>> {
    check_all(file, cache, false)
}

fn check_all(
    file: &Path,
    cache: &FingerprintCache,
    device: bool,
) -> Result<(Experiment, Graph), Vec<Diagnostic>> {
    let (exp, diags) = spec::load_partial(file);
    let Some(exp) = exp else { return Err(diags) };
    // Reported after the rest, whatever the rest found (they do not depend on each other).
    let device = if device { resolve::device_checks(&exp) } else { Vec::new() };
    let checked = check_loaded(exp, diags, cache);
    match checked {
        Ok(ok) if device.is_empty() => Ok(ok),
        Ok(_) => Err(device),
        Err(mut diags) => {
            diags.extend(device);
            Err(diags)
        }
    }
}

fn check_loaded(
    exp: Experiment,
    mut diags: Vec<Diagnostic>,
    cache: &FingerprintCache,
) -> Result<(Experiment, Graph), Vec<Diagnostic>> {
    let built = graph::build(&exp, &resolve::fingerprint(&exp, cache));
    match built {
        Ok(mut g) => {
            // Jobs are resolved for a valid spec only (a partial one has holes they would report
            // again), and the data checks need the resolved settings to be sound.
            if diags.is_empty() {
                if let Err(more) = resolve::resolve_jobs(&exp, &mut g, &resolve::file_digest(cache)) {
                    diags.extend(more);
                }
            }
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

/// Widest the node column of a plan gets; longer names are printed in full, unpadded (a width
/// from the data could be anything, and a format width over u16::MAX panics).
const MAX_NODE_COLUMN: usize = 40;

/// The plan as a table for people.
pub fn render_plan(exp: &Experiment, entries: &[plan::PlanEntry]) -> String {
    use std::fmt::Write as _;
    let width = entries.iter().map(|e| e.node.chars().count()).max().unwrap_or(4).clamp(4, MAX_NODE_COLUMN);
    let kind_width = entries.iter().map(|e| e.kind.len()).max().unwrap_or(8).max(8);
    let runs = entries.iter().filter(|e| matches!(e.status, Status::Run { .. })).count();
    let mut s = String::new();
    let skipped = entries.iter().filter(|e| e.status == Status::Skipped).count();
    let _ = write!(
        s,
        "plan for `{}`: {} nodes, {} to run, {} cached",
        exp.name,
        entries.len(),
        runs,
        entries.len() - runs - skipped
    );
    let _ = if skipped > 0 { writeln!(s, ", {skipped} skipped") } else { writeln!(s) };
    for e in entries {
        let (word, why) = match &e.status {
            Status::Cached => ("cached", String::new()),
            Status::Skipped => ("skip", "not selected (--only), not cached".to_string()),
            Status::Run { reasons } => {
                ("run", reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
            }
        };
        let key = e.key.get(..12).unwrap_or(&e.key);
        let _ = writeln!(s, "  {word:<6}  {:<width$}  {:<kind_width$}  {key}  {why}", e.node, e.kind);
        for n in &e.notes {
            let _ = writeln!(s, "          {n}");
        }
    }
    s
}

/// Runs a loaded experiment: Ctrl-C stops it cleanly (a second Ctrl-C exits at once), every node
/// is recorded as a run, and the report tables are printed at the end.
/// A flag that Ctrl-C, SIGTERM and SIGHUP set: running training nodes keep a checkpoint at
/// their next step's boundary and stop, nothing half-written committed. A second signal while
/// stopping exits at once (the last checkpoint stays).
/// Starts `distillery sync --to URI --store DIR --run INVOCATION` detached from this process (its own process
/// group, so a Ctrl-C at the terminal does not stop it; it outlives `run`), appending its output to
/// `sync/background.log` in the store. It takes the ledger lock, so a `sync` started later waits
/// for it and then finds nothing left. Returns the log's path.
fn background_sync(store_dir: &Path, uri: &str, invocation: &track::RunId) -> std::io::Result<PathBuf> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    // Only our own binary: the library's CLI run from another program (a test harness) must not
    // start that program with `sync` arguments.
    if !exe.file_name().is_some_and(|n| n.to_string_lossy().starts_with("distillery")) {
        return Err(std::io::Error::other(format!("{} is not the distillery binary", exe.display())));
    }
    let dir = store_dir.join("sync");
    std::fs::create_dir_all(&dir)?;
    let log_path = dir.join("background.log");
    // Kept short: started over once it passes 1 MiB.
    let long = std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 1 << 20);
    let log =
        std::fs::OpenOptions::new().create(true).append(!long).write(true).truncate(long).open(&log_path)?;
    std::process::Command::new(exe)
        .arg("sync")
        .arg("--to")
        .arg(uri)
        .arg("--store")
        .arg(store_dir)
        .arg("--run")
        .arg(invocation.as_str())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    Ok(log_path)
}

fn stop_on_signals() -> Cancel {
    let cancel = Cancel::default();
    let c = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if c.is_cancelled() {
            std::process::exit(130);
        }
        note!(
            "\n  interrupt: keeping a checkpoint of each training node and stopping; Ctrl-C again to exit now"
        );
        c.cancel();
    });
    cancel
}

/// The Slurm launcher for `run --launcher slurm` (checked, binary snapshotted, every job
/// submitted) or `status` (attached to what was submitted).
#[allow(clippy::too_many_arguments)]
fn slurm_launcher<'s>(
    exp: &Experiment,
    g: &Graph,
    store: &'s Store,
    entries: &[plan::PlanEntry],

    mode: Mode,
    cancel: &Cancel,
    out: &mut dyn Write,
) -> Result<exec::slurm::Slurm<'s>, Failure> {
    let resources: std::collections::HashMap<String, spec::Resources> =
        exp.nodes.iter().map(|n| (n.name.clone(), n.resources.clone())).collect();
    let fail = |e: String| Failure::Invalid(format!("error: slurm: {e}\n"));
    if mode == Mode::Attach {
        return exec::slurm::Slurm::new(store, &exp.name, PathBuf::new(), resources, true).map_err(fail);
    }
    let to_run: Vec<&str> = entries
        .iter()
        .filter(|e| matches!(e.status, plan::Status::Run { .. }))
        .map(|e| e.node.as_str())
        .collect();
    // Before anything is submitted: can the cluster ever run each distinct request?
    match resource_checks(exp, &to_run) {
        Ok(diags) if diags.is_empty() => {}
        Ok(diags) => return Err(invalid(&diags)),
        Err(e) => {
            return Err(fail(format!(
                "{e}\n  help: run where Slurm's client (sbatch, squeue) reaches the cluster, or set SLURM_CONF; `--launcher local` runs here"
            )));
        }
    }
    let bin = exec::slurm::snapshot_binary(store.root()).map_err(fail)?;
    let s = exec::slurm::Slurm::new(store, &exp.name, bin, resources, false).map_err(fail)?;
    let forced = |name: &str| {
        entries.iter().any(|e| {
            e.node == name && matches!(&e.status, plan::Status::Run { reasons } if reasons.iter().any(plan::Reason::is_forced))
        })
    };
    let done = s.submit_all(g, entries, &forced, cancel).map_err(|e| {
        let mine = s.mine();
        let cancelled = if mine.is_empty() {
            String::new()
        } else {
            match s.cancel_mine() {
                Ok(c) => format!("\n  cancelled the {} job(s) submitted before it", c.len()),
                Err(e2) => {
                    format!("\n  and could not cancel the {} job(s) submitted before it ({e2})", mine.len())
                }
            }
        };
        fail(format!("{e}{cancelled}"))
    })?;
    for (node, id) in &done.new {
        writeln!(out, "submitted {node}: slurm job {id}")?;
    }
    for (node, id) in &done.adopted {
        writeln!(out, "already queued {node}: slurm job {id} (not submitted again)")?;
    }
    if done.new.is_empty() && done.adopted.is_empty() {
        writeln!(out, "nothing to submit: every node is cached")?;
    } else if mode == (Mode::Slurm { detach: true }) {
        writeln!(out, "detached: `distillery status {}` shows the jobs", exp.path.display())?;
    }
    Ok(s)
}

/// `sbatch --test-only` for each distinct `resources:` of `nodes`: a located `resources` error for
/// each request the cluster can never run; `Err` when there is no Slurm to ask.
fn resource_checks(exp: &Experiment, nodes: &[&str]) -> Result<Vec<Diagnostic>, String> {
    let mut asked: Vec<(&spec::Resources, &spec::Node)> = Vec::new();
    for name in nodes {
        if let Some(n) = exp.node(name)
            && !asked.iter().any(|(r, _)| **r == n.resources)
        {
            asked.push((&n.resources, n));
        }
    }
    let mut diags = Vec::new();
    for (r, n) in asked {
        let e = match exec::slurm::test_resources(r) {
            Ok(()) => continue,
            Err(exec::slurm::Refusal::Unavailable(e)) => return Err(e),
            Err(exec::slurm::Refusal::Refused(e)) => e,
        };
        let path = if has_own_resources(exp, n) || exp.locate("defaults.resources").is_none() {
            format!("nodes.{}.resources", n.base)
        } else {
            "defaults.resources".to_string()
        };
        let flags = exec::slurm::resource_flags(
            r,
            r.memory_mib().ok().flatten(),
            r.time_seconds().ok().flatten(),
            &[],
        );
        let shown = if flags.is_empty() { "no flags".to_string() } else { flags.join(" ") };
        diags.push(
            Diagnostic::new(diag::Code::Resources, &path, format!("the cluster cannot run this request ({shown}): {e}"))
                .with_node(n.name.clone())
                .with_help("ask for what a partition has (`sinfo -o \"%P %c %m %G %l\"` lists them); nothing was submitted")
                .at(exp.locate(&path)),
        );
    }
    Ok(diags)
}

/// Whether the node's declaration has its own `resources:` (else they come from the defaults).
fn has_own_resources(exp: &Experiment, n: &spec::Node) -> bool {
    exp.locate(&format!("nodes.{}.resources", n.base)).is_some_and(|l| {
        exp.locate(&format!("nodes.{}", n.base)).is_none_or(|node| l.line != node.line || l.col != node.col)
    })
}

#[allow(clippy::too_many_arguments)]
fn run_experiment(
    exp: &Experiment,
    g: &Graph,
    store_dir: &Path,
    sel: &plan::Selection,
    opts: RunOptions,
    placed: &Placement,
    tracking: Option<&str>,
    mode: Mode,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    crate::engine::tune_allocator();
    let store = Store::open(store_dir).map_err(store_failure)?;
    // `run` executes exactly what `plan` shows for the same flags.
    let entries = plan::plan(g, &store.scoped(&exp.name), sel);
    // Before any submission: Ctrl-C while submitting cancels what was submitted.
    let cancel = stop_on_signals();
    let slurm = match mode {
        Mode::Local => None,
        Mode::Slurm { .. } | Mode::Attach => {
            Some(slurm_launcher(exp, g, &store, &entries, mode, &cancel, out)?)
        }
    };
    if mode == (Mode::Slurm { detach: true }) {
        return Ok(());
    }
    let mut entries = entries;
    if let (Some(s), Mode::Attach) = (&slurm, mode) {
        // Finished while nobody watched (`--detach`): report it as a run of this watch does.
        for e in entries.iter_mut().filter(|e| e.status == Status::Cached) {
            if let Some(ix) = g.get(&e.node)
                && s.unreported(&g.job(ix).key)
            {
                e.status = Status::Run { reasons: vec![plan::Reason::Unreported] };
            }
        }
    }
    let uri = track::resolve_tracking_uri(tracking);
    let mut config = track::TrackerConfig::new(store_dir, uri);
    // A cached node's record (three requests, nothing computed) goes to the server after the run
    // returns, from a background `sync`: a fully cached run returns as fast as an untracked one.
    config.defer_cached_at_finish = true;
    let tracker = track::Tracker::open(config).map_err(track_failure)?;
    let parent = tracker
        .start_invocation(
            &exp.name,
            Some(&exp.path),
            &[("distillery.version".into(), env!("CARGO_PKG_VERSION").into())],
        )
        .map_err(track_failure)?;
    let terminal = exec::sinks::Terminal::new(std::time::Duration::from_secs(2));
    let tracking_sink = exec::sinks::Tracking::new(&tracker, &store, exp, g, parent.clone())
        .with_device_names(placed.names.clone());
    let sink = exec::sinks::Fanout(vec![&terminal, &tracking_sink]);
    let fingerprints = std::sync::Arc::new(
        FingerprintCache::open(&store_dir.join("fingerprints.json")).map_err(data_failure)?,
    );
    let runner = crate::nodes::Runner::new(fingerprints);
    let n = g.node_order().count();
    let on = match placed.devices.as_slice() {
        [cpu] if cpu == "cpu" => String::new(),
        gpus => format!(" on {}", gpus.join(", ")),
    };
    let on = if slurm.is_some() { " on Slurm".to_string() } else { on };
    let doing = if mode == Mode::Attach { "watching" } else { "running" };
    note!("{doing} `{}`: {n} nodes{on}, store {}", exp.name, store_dir.display());
    let t0 = std::time::Instant::now();
    let local = exec::Local { store: &store, runner: &runner };
    let launcher: &dyn exec::Launcher = match &slurm {
        Some(s) => s,
        None => &local,
    };
    let summary = exec::run(g, &entries, &store, launcher, &opts, &sink, &cancel);
    if let Some(s) = &slurm
        && summary.cancelled()
    {
        {
            if mode == Mode::Attach {
                note!(
                    "  stopped watching; the jobs go on (`distillery status {}` watches again)",
                    exp.path.display()
                );
            } else {
                match s.cancel_mine() {
                    Ok(c) if c.is_empty() => note!("  no Slurm job of this run was still queued or running"),
                    Ok(c) => note!(
                        "  cancelled the {} Slurm job(s) this run submitted that had not ended ({}); jobs of other runs are left alone",
                        c.len(),
                        c.iter().map(|(n, id)| format!("{id} {n}")).collect::<Vec<_>>().join(", ")
                    ),
                    Err(e) => note!("  could not cancel this run's Slurm jobs: {e}; `scancel` them by hand"),
                }
            }
        }
    }
    let status = if summary.cancelled() {
        track::RunStatus::Killed
    } else if summary.ok() {
        track::RunStatus::Finished
    } else {
        track::RunStatus::Failed
    };
    let _ = tracker.end_run(&parent, status);
    if let Some(report) = tracker.finish() {
        if report.is_complete_but_deferred() && !report.deferred.is_empty() {
            match background_sync(store_dir, &report.uri, &parent) {
                Ok(log) => note!(
                    "  tracking: {} cached node run(s) go to the server in the background (log: {})",
                    report.deferred.len(),
                    log.display()
                ),
                Err(e) => note!(
                    "  tracking: {} cached node run(s) not pushed yet ({e}); `distillery sync --to {}` pushes them",
                    report.deferred.len(),
                    report.uri
                ),
            }
        } else if !report.is_complete() {
            note!(
                "  tracking: not everything reached the server yet; `distillery sync --to URI` pushes the rest"
            );
        }
        // Where to look, once: the invocation's page, its node runs nested under it.
        let url = track::LocalStore::open_existing(store_dir)
            .ok()
            .and_then(|s| track::run_url(&s, &report.uri, &parent));
        if let Some(url) = url {
            note!("  tracking: {url}");
        }
    }
    // Tables of the report nodes that finished.
    for (name, outcome) in &summary.outcomes {
        let Some(ix) = g.get(name) else { continue };
        if !matches!(outcome, exec::Outcome::Done { .. } | exec::Outcome::Cached) {
            continue;
        }
        if g.job(ix).kind == "report" {
            if let Ok(crate::store::Lookup::Hit(e)) = store.get(g.key(ix)) {
                if let Some(t) = e.manifest.metrics.get("table").and_then(|v| v.as_str()) {
                    writeln!(out, "\n{t}")?;
                }
            }
        }
    }
    let count = |f: fn(&exec::Outcome) -> bool| summary.outcomes.iter().filter(|(_, o)| f(o)).count();
    note!(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::device::{CudaReport, Gpu};

    fn machine(gpus: u32) -> CudaReport {
        CudaReport {
            built: true,
            api_version: Some("13.0".into()),
            driver: Ok("13.0".into()),
            nvrtc: Ok("13.0".into()),
            headers: Ok("/usr/local/cuda/include".into()),
            gpus: (0..gpus)
                .map(|index| Gpu {
                    index,
                    name: format!("GPU {index}"),
                    memory_bytes: 80 << 30,
                    compute_capability: "9.0".into(),
                })
                .collect(),
        }
    }

    fn err(r: Result<Placement, Failure>) -> String {
        match r {
            Err(Failure::Invalid(t)) => t,
            other => panic!("expected an invalid-input failure, got {other:?}"),
        }
    }

    /// `device:` and `--gpus` against a machine: which devices nodes are spread over, and every
    /// combination that cannot be honoured is an error naming the fix.
    #[test]
    fn placement_spreads_over_the_gpus_asked_for() {
        use spec::Device::*;
        let four = machine(4);
        let devices = |d, g: &[u32]| placement(d, g, &four).unwrap().devices;
        assert_eq!(devices(Cpu, &[]), ["cpu"]);
        assert_eq!(devices(Cuda(None), &[]), ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]);
        assert_eq!(devices(Cuda(None), &[3, 1]), ["cuda:3", "cuda:1"]);
        assert_eq!(devices(Auto, &[2]), ["cuda:2"]);
        assert_eq!(devices(Cuda(Some(2)), &[]), ["cuda:2"]);
        assert_eq!(devices(Cuda(Some(2)), &[2]), ["cuda:2"]);
        let p = placement(Cuda(None), &[1], &four).unwrap();
        assert_eq!(p.names.get("cuda:1").map(String::as_str), Some("GPU 1"));
        assert!(err(placement(Cpu, &[0], &four)).contains("set `device: cuda`"));
        assert!(err(placement(Cuda(Some(1)), &[0, 1], &four)).contains("write `device: cuda`"));
        assert!(err(placement(Cuda(None), &[0, 0], &four)).contains("listed twice"));
        assert!(err(placement(Cuda(None), &[7], &four)).contains("no GPU cuda:7"));
    }

    /// `auto` without CUDA runs on the CPU and says why, once; `--gpus` then is an error.
    #[test]
    fn auto_falls_back_to_the_cpu_and_says_so() {
        let none = CudaReport { gpus: vec![], ..machine(0) };
        let p = placement(spec::Device::Auto, &[], &none).unwrap();
        assert_eq!(p.devices, ["cpu"]);
        let note = p.note.unwrap();
        assert!(note.contains("device: auto: running on the CPU") && note.contains("lists no GPU"), "{note}");
        assert!(err(placement(spec::Device::Auto, &[0], &none)).contains("no GPU can be used"));
        let cpu_build = CudaReport { built: false, ..machine(2) };
        let note = placement(spec::Device::Auto, &[], &cpu_build).unwrap().note.unwrap();
        assert!(note.contains("built without CUDA"), "{note}");
    }

    #[test]
    fn run_options_default_to_one_node_per_gpu() {
        let gpus: Vec<String> = (0..3).map(|i| format!("cuda:{i}")).collect();
        let o = run_options(&gpus, None, None);
        assert_eq!((o.jobs, o.device_slots), (3, 1));
        let o = run_options(&gpus, None, Some(2));
        assert_eq!((o.jobs, o.device_slots), (6, 2));
        let o = run_options(&gpus, Some(1), None);
        assert_eq!((o.jobs, o.device_slots), (1, 1));
        let cpu = vec!["cpu".to_string()];
        let o = run_options(&cpu, None, None);
        assert_eq!((o.jobs, o.device_slots, o.devices), (1, 1, cpu.clone()));
        let o = run_options(&cpu, Some(4), None);
        assert_eq!((o.jobs, o.device_slots), (4, 4));
    }

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn environment_faults_are_the_users_and_the_rest_are_ours() {
        // ENOSPC, EROFS, EACCES, EPERM, ENOTDIR, EEXIST, EDQUOT, ENOENT, ENAMETOOLONG, EXDEV, EIO
        for code in [28, 30, 13, 1, 20, 17, 122, 2, 36, 18, 5] {
            let (reason, help) = environment_fault(&os(code)).unwrap_or_else(|| panic!("errno {code}"));
            assert!(reason.chars().next().is_some_and(char::is_lowercase), "{reason}");
            assert!(!reason.ends_with('.') && !help.ends_with('.') && !help.is_empty(), "{reason}; {help}");
        }
        for kind in [io::ErrorKind::InvalidData, io::ErrorKind::UnexpectedEof, io::ErrorKind::Other] {
            assert_eq!(environment_fault(&io::Error::from(kind)), None, "{kind:?} is a bug of ours");
        }
    }

    #[test]
    fn output_errors_a_closed_pipe_is_quiet_a_full_disk_is_exit_1() {
        assert!(matches!(Failure::from(io::Error::from(io::ErrorKind::BrokenPipe)), Failure::OutputClosed));
        let Failure::Invalid(text) = Failure::from(os(28)) else { panic!("ENOSPC is the user's") };
        assert!(
            text.starts_with("error: cannot write output: no space left on the device\n  = help: "),
            "{text}"
        );
        assert!(matches!(Failure::from(io::Error::other("bug")), Failure::Internal(_)));
    }

    #[test]
    fn plan_of_a_100000_character_node_name_does_not_panic() {
        let (exp, _) = spec::load_partial(Path::new("experiments/quickstart.yaml"));
        let entry = |node: String, key: &str| plan::PlanEntry {
            node,
            kind: "train",
            key: key.to_string(),
            status: Status::Cached,
            notes: Vec::new(),
        };
        let long = "n".repeat(100_000);
        let text = render_plan(
            &exp.expect("the quickstart loads"),
            &[entry(long.clone(), &"a".repeat(64)), entry("short".into(), "abc")],
        );
        assert!(
            text.contains(&format!("  cached  {long}  train     aaaaaaaaaaaa  \n")),
            "long name unpadded"
        );
        assert!(text.contains(&format!("  cached  {:<40}  train     abc  \n", "short")), "{text}");
    }

    #[test]
    fn store_io_errors_name_the_path_and_what_to_do() {
        let e = StoreError::Io { path: PathBuf::from("/data/.distillery/objects"), source: os(30) };
        let Failure::Invalid(text) = store_failure(e) else { panic!("EROFS is the user's") };
        assert_eq!(
            text,
            "error: store /data/.distillery/objects: the file system is read-only\n  = help: use a folder on a \
             writable file system; or choose another store with --store DIR\n"
        );
        let e = TrackError::Io { path: PathBuf::from("/x/runs"), source: os(122) };
        let Failure::Invalid(text) = track_failure(e) else { panic!("EDQUOT is the user's") };
        assert!(text.starts_with("error: run store /x/runs: disk quota exceeded\n"), "{text}");
        let e =
            StoreError::Io { path: PathBuf::from("/x"), source: io::Error::from(io::ErrorKind::InvalidData) };
        assert!(matches!(store_failure(e), Failure::Internal(_)));
    }
}

/// A report of the experiment as the store has it.
struct ReportTable {
    name: String,
    work: crate::job::ReportWork,
    rows: Vec<crate::report::RowData>,
    /// Whether the report node's own result is stored (its rows' evaluation on `eval`).
    ran: bool,
    table: crate::report::Table,
    /// What is missing, for people.
    note: Option<String>,
}

/// Every report node's table, from the stored results: the report's own entry when it ran
/// (its rows as it evaluated them), else each row instance's entry, or missing.
fn report_tables(g: &Graph, store: Option<&Store>) -> Result<Vec<ReportTable>, StoreError> {
    use crate::report::{self, Instance, RowData};
    let hit = |ix| -> Result<Option<crate::store::Entry>, StoreError> {
        match store {
            Some(st) => Ok(match st.get(g.key(ix))? {
                crate::store::Lookup::Hit(e) => Some(e),
                _ => None,
            }),
            None => Ok(None),
        }
    };
    let mut out = Vec::new();
    for ix in g.node_order() {
        let Some(job) = g.jobs.get(&ix) else { continue };
        let crate::job::Work::Report(r) = &job.work else { continue };
        let own = hit(ix)?;
        let stored: Option<Vec<RowData>> = own
            .as_ref()
            .and_then(|e| std::fs::read(e.file(report::ROWS_FILE)).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        let ran = stored.is_some();
        let (rows, note) = match stored {
            Some(rows) => (rows, None),
            None => {
                let mut missing = 0;
                let mut rows = Vec::new();
                for row in &r.rows {
                    let mut instances = Vec::new();
                    for i in report::row_inputs(&job.inputs, &row.role) {
                        let crate::job::InputSource::Entry { dims, seed, model } = &i.source else {
                            continue;
                        };
                        let metrics = match g.get(&i.name) {
                            Some(t) => hit(t)?.map(|e| {
                                let mut m = e.manifest.metrics;
                                // A model's own metrics are not its evaluation on `eval`.
                                if r.eval.is_some() && *model {
                                    if let Some(o) = m.as_object_mut() {
                                        for k in ["accuracy", "top5", "loss"] {
                                            o.remove(k);
                                        }
                                    }
                                }
                                m
                            }),
                            None => None,
                        };
                        missing += usize::from(metrics.is_none());
                        instances.push(Instance {
                            name: i.name.clone(),
                            key: i.key.clone(),
                            dims: dims.clone(),
                            seed: *seed,
                            metrics,
                        });
                    }
                    rows.push(RowData { label: row.label.clone(), instances });
                }
                let mut why = Vec::new();
                if missing > 0 {
                    why.push(format!("{missing} row instance(s) have no stored result"));
                }
                if let Some(e) = &r.eval {
                    why.push(format!("the report has not run, so its rows are not evaluated on `{e}` yet"));
                }
                let note =
                    (!why.is_empty()).then(|| format!("{} (`distillery run` fills them in)", why.join("; ")));
                (rows, note)
            }
        };
        out.push(ReportTable {
            name: job.name.clone(),
            work: r.clone(),
            table: report::build(r, &rows),
            rows,
            ran,
            note,
        });
    }
    Ok(out)
}

/// A node name as a file name: `table[seed=0]` -> `table_seed=0_`.
fn file_stem(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_=.".contains(c) { c } else { '_' }).collect()
}

/// The experiment's page (`crate::page`): its reports with their plots, the graph, and every
/// node's settings, key, stored result and MLflow runs (from the local run store's ledgers).
fn experiment_page(
    exp: &Experiment,
    g: &Graph,
    store: Option<&Store>,
    store_dir: &Path,
    tables: &[ReportTable],
) -> String {
    let reports: Vec<crate::page::PageReport> = tables
        .iter()
        .map(|t| {
            let (plots, problem) = match crate::report::plots(&t.work, &t.rows) {
                Ok(p) => (p, None),
                Err(e) => (Vec::new(), Some(format!("plots not drawn: {e}"))),
            };
            let note = match (&t.note, problem) {
                (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                (a, b) => a.clone().or(b),
            };
            crate::page::PageReport { name: t.name.clone(), note, table: t.table.clone(), plots }
        })
        .collect();
    let urls = track::LocalStore::open_existing(store_dir)
        .ok()
        .and_then(|s| track::node_run_urls(&s).ok())
        .unwrap_or_default();
    let nodes: Vec<crate::page::PageNode> = g
        .node_order()
        .filter_map(|ix| {
            let job = g.jobs.get(&ix)?;
            let names: Vec<(String, String)> =
                job.inputs.iter().map(|i| (i.role.clone(), i.name.clone())).collect();
            let stored =
                store.is_some_and(|st| matches!(st.get(g.key(ix)), Ok(crate::store::Lookup::Hit(_))));
            Some(crate::page::PageNode {
                name: job.name.clone(),
                kind: job.kind.clone(),
                key: job.key.clone(),
                stored,
                params: track::flatten_params(&track::readable(&g.canonical[&ix], &names)),
                runs: urls.get(&job.key).cloned().unwrap_or_default(),
            })
        })
        .collect();
    crate::page::experiment_page(&exp.name, &reports, &crate::graph::to_svg(g, 400), &nodes)
}
