//! The plugin host: runs a plugin through protocol 1 (docs/plugins.md) and checks everything it
//! says and leaves behind.
//!
//! The plugin starts in its own folder (a PATH plugin: in a scratch folder) with
//! `DISTILLERY_PROTOCOL=1`. It writes a `hello` line on stdout; the host answers with the request,
//! one JSON document on stdin, then closes stdin. The plugin writes JSON lines on stdout
//! (`progress`, `metric`, `log`, then one `result`) and exits 0. stderr is kept (its tail is in
//! every error). Each line is validated as it arrives; the first bad one stops the plugin.
//!
//! A node fails, with the plugin's stderr tail, when the plugin exits non-zero or by a signal,
//! runs past its timeout (its whole process group is killed), writes a line that is not a
//! message, exits without a result, names an output that is missing or outside its output
//! folder, produces nothing, leaves a link in its output, or writes outside its output and
//! scratch folders (into the entry being written, or its own folder: checked by its files'
//! hash). It is a check, not a sandbox: a plugin that writes elsewhere by absolute path is not
//! seen.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::failed;
use crate::exec::{Event, NodeError, Task};
use crate::job::PluginRef;

/// Bytes of stderr kept for errors and the entry's `stderr.txt`.
const STDERR_TAIL: usize = 16 * 1024;
/// Characters of stderr quoted in an error.
const QUOTED: usize = 2000;
/// Longest stdout line accepted.
const MAX_LINE: usize = 1 << 20;

/// What a plugin run left: its result message, and the folder its outputs are in.
pub(crate) struct Ran {
    pub result: Value,
    pub out: PathBuf,
    pub seconds: f64,
}

/// Runs `plugin` for `task` with the request's kind-specific part `body` (merged into the
/// request), and checks it. `setting` names where the plugin is set (for errors). Writes
/// `plugin/messages.jsonl` and `plugin/stderr.txt` into the entry.
pub(crate) fn run(
    task: &Task<'_>,
    plugin: &PluginRef,
    setting: &str,
    body: Value,
    timeout: Duration,
) -> Result<Ran, NodeError> {
    // Absolute: the plugin runs in its own folder, and the store may be named relatively.
    let out = absolute(&task.out_dir.join("out"));
    let scratch = absolute(&task.out_dir.join("scratch"));
    for d in [&out, &scratch] {
        std::fs::create_dir_all(d).map_err(|e| failed(format!("{}: {e}", d.display())))?;
    }
    let own_dir = plugin.file_path.is_dir().then(|| plugin.file_path.clone());
    let before = match &own_dir {
        Some(d) => Some(crate::plugins::files_digest(d).map_err(failed)?),
        None => None,
    };
    let mut request = json!({
        "type": "request",
        "protocol": plugin.protocol,
        "node": task.job.name,
        "key": task.job.key,
        "seed": task.job.seed,
        "device": task.job.device,
        "out_dir": out,
        "scratch_dir": scratch,
    });
    if let (Value::Object(r), Value::Object(b)) = (&mut request, body) {
        r.extend(b);
    }
    let t0 = Instant::now();
    let (messages, stderr, outcome) = converse(task, plugin, &request, &scratch, own_dir.as_deref(), timeout);
    let seconds = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&scratch);
    // Kept in the entry whatever happened (a failed entry is not committed, but the files say
    // what happened to whoever reads the tmp folder, and a good one keeps them).
    let log = task.out_dir.join("plugin");
    let _ = std::fs::create_dir_all(&log);
    let lines: String = messages.iter().map(|m| format!("{m}\n")).collect();
    let _ = std::fs::write(log.join("messages.jsonl"), lines);
    let _ = std::fs::write(log.join("stderr.txt"), &stderr);
    let name = &plugin.name;
    let fail = |what: String| {
        let tail = quoted_tail(&stderr);
        let msg = if tail.is_empty() {
            format!("plugin `{name}` {what} (it wrote nothing on stderr)")
        } else {
            format!("plugin `{name}` {what}; the end of its stderr:\n{tail}")
        };
        task.fail_at(setting, msg)
    };
    let result = match outcome {
        Ok(r) => r,
        Err(Stop::Cancelled) => return Err(NodeError::Cancelled),
        Err(Stop::Failed(what)) => return Err(fail(what)),
    };
    // What it left behind.
    if let (Some(d), Some(before)) = (&own_dir, before) {
        let after = crate::plugins::files_digest(d).map_err(failed)?;
        if after != before {
            return Err(fail(format!(
                "changed the files of its own folder {} (write only under the request's out_dir or scratch_dir)",
                d.display()
            )));
        }
    }
    let stray: Vec<String> = std::fs::read_dir(&task.out_dir)
        .map_err(failed)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "out" && n != "plugin")
        .collect();
    if !stray.is_empty() {
        return Err(fail(format!("wrote outside its output folder: {}", stray.join(", "))));
    }
    let files = walk(&out).map_err(&fail)?;
    if files.is_empty() {
        return Err(fail("produced nothing: its out_dir is empty".to_string()));
    }
    if let Some(Value::Object(outputs)) = result.get("outputs") {
        for (k, v) in outputs {
            let Some(rel) = v.as_str() else {
                return Err(fail(format!("named output `{k}` as {v}, not a path in out_dir")));
            };
            let p = Path::new(rel);
            if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(fail(format!("named output `{k}` as `{rel}`, outside its out_dir")));
            }
            if !out.join(p).exists() {
                return Err(fail(format!("named output `{k}` as `{rel}`, which it did not write")));
            }
        }
    }
    Ok(Ran { result, out, seconds })
}

/// What MLflow accepts as a metric name (prefixed `plugin.`).
fn metric_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ' '))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

enum Stop {
    Cancelled,
    Failed(String),
}

/// Starts the plugin, holds the conversation, and returns every message it sent, its stderr
/// tail, and its result or why there is none. The process is gone when this returns.
fn converse(
    task: &Task<'_>,
    plugin: &PluginRef,
    request: &Value,
    scratch: &Path,
    own_dir: Option<&Path>,
    timeout: Duration,
) -> (Vec<Value>, Vec<u8>, Result<Value, Stop>) {
    let mut cmd = Command::new(&plugin.command[0]);
    cmd.args(&plugin.command[1..])
        .current_dir(own_dir.unwrap_or(scratch))
        .env("DISTILLERY_PROTOCOL", plugin.protocol.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let what = format!("could not be started ({}: {e})", plugin.command[0]);
            return (Vec::new(), Vec::new(), Err(Stop::Failed(what)));
        }
    };
    let stderr = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || tail_of(stderr));
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut buf = Vec::new();
            match (&mut r).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) if buf.len() > MAX_LINE => {
                    let _ = tx.send(Err("a stdout line longer than 1 MiB".to_string()));
                    break;
                }
                Ok(_) => {
                    if tx.send(Ok(buf)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("reading its stdout: {e}")));
                    break;
                }
            }
        }
    });
    let mut stdin = child.stdin.take();
    let mut messages = Vec::new();
    let outcome = talk(task, plugin, request, &rx, &mut stdin, &mut messages, &mut child, timeout);
    drop(stdin);
    if outcome.is_err() {
        kill_group(&mut child);
    }
    let status = child.wait();
    // Whatever the plugin left running (a background process still holding its stderr) goes
    // with it: the host must not wait on it.
    kill_group(&mut child);
    let stderr = err_thread.join().unwrap_or_default();
    let outcome = match (outcome, status) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(Stop::Failed(format!("could not be waited for ({e})"))),
        (Ok(r), Ok(st)) if st.success() => Ok(r),
        (Ok(_), Ok(st)) => Err(Stop::Failed(format!("sent its result but then {}", exit_words(st)))),
    };
    (messages, stderr, outcome)
}

#[allow(clippy::too_many_arguments)]
fn talk(
    task: &Task<'_>,
    plugin: &PluginRef,
    request: &Value,
    rx: &mpsc::Receiver<Result<Vec<u8>, String>>,
    stdin: &mut Option<std::process::ChildStdin>,
    messages: &mut Vec<Value>,
    child: &mut Child,
    timeout: Duration,
) -> Result<Value, Stop> {
    let deadline = Instant::now() + timeout;
    let mut said_hello = false;
    let mut line_no = 0usize;
    loop {
        if task.cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Stop::Failed(format!(
                "did not finish within its timeout of {} s and was stopped",
                timeout.as_secs()
            )));
        }
        let line = match rx.recv_timeout((deadline - now).min(Duration::from_millis(100))) {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return Err(Stop::Failed(e)),
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed: it exited (or closed it) without a result.
                let st = wait_until(child, deadline);
                let how = match st {
                    Some(st) => exit_words(st),
                    None => "closed its stdout".to_string(),
                };
                let what = if said_hello { "without a result" } else { "before its hello" };
                return Err(Stop::Failed(format!("{how} {what}")));
            }
        };
        line_no += 1;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let msg: Value = serde_json::from_str(text).map_err(|e| {
            Stop::Failed(format!("wrote stdout line {line_no} that is not JSON ({e}): {}", clip(text, 200)))
        })?;
        let bad =
            |why: String| Stop::Failed(format!("sent an invalid message on stdout line {line_no}: {why}"));
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or("").to_string();
        if !said_hello {
            if kind != "hello" {
                return Err(bad(format!("the first message must be `hello`, got {}", clip(text, 200))));
            }
            let v = msg.get("protocol").and_then(Value::as_u64);
            if v != Some(plugin.protocol as u64) {
                return Err(bad(format!(
                    "it speaks protocol {}, its manifest and this host {}",
                    v.map_or("(none)".into(), |v| v.to_string()),
                    plugin.protocol
                )));
            }
            // What it says it produces must be what its manifest says (a PATH plugin has none:
            // its hello is the only word), and what the node needs.
            let says = msg.get("produces").and_then(Value::as_str);
            let wanted = if request.get("kind").and_then(Value::as_str) == Some("generate") {
                "images"
            } else {
                "files"
            };
            let declared = if plugin.produces == "any" { says } else { Some(plugin.produces.as_str()) };
            if let Some(s) = says
                && plugin.produces != "any"
                && s != plugin.produces
            {
                return Err(bad(format!("it says it produces `{s}`, its manifest `{}`", plugin.produces)));
            }
            if declared.unwrap_or("files") != wanted {
                return Err(bad(format!(
                    "this node needs a plugin that produces `{wanted}`; it produces `{}`",
                    declared.unwrap_or("files")
                )));
            }
            said_hello = true;
            messages.push(msg);
            let mut text = serde_json::to_vec(request).expect("request serialises");
            text.push(b'\n');
            // From a thread: a plugin that never reads its stdin must not block the host past
            // the timeout (a large request fills the pipe). A plugin that exits without reading
            // it is told by the missing result.
            if let Some(mut w) = stdin.take() {
                std::thread::spawn(move || {
                    let _ = w.write_all(&text).and_then(|_| w.flush());
                });
            }
            continue;
        }
        let node = task.job.name.clone();
        match kind.as_str() {
            "progress" => {
                let done = msg.get("done").and_then(Value::as_u64);
                let total = msg.get("total").and_then(Value::as_u64);
                let (Some(done), Some(total)) = (done, total) else {
                    return Err(bad("`progress` needs integer `done` and `total`".into()));
                };
                if done > total {
                    return Err(bad(format!("`progress` done {done} > total {total}")));
                }
                let message = msg.get("message").and_then(Value::as_str).unwrap_or("").to_string();
                task.events.event(Event::Status { node, done, total, message });
            }
            "metric" => {
                let name = msg.get("name").and_then(Value::as_str);
                let value = msg.get("value").and_then(Value::as_f64);
                let (Some(name), Some(value)) = (name, value) else {
                    return Err(bad("`metric` needs a string `name` and a number `value`".into()));
                };
                if !metric_name(name) {
                    return Err(bad(format!(
                        "metric name `{}`: use 1 to 200 letters, digits, `_`, `-`, `.`, `/` or spaces",
                        clip(name, 80)
                    )));
                }
                let step = msg.get("step").and_then(Value::as_u64).unwrap_or(0);
                task.events.event(Event::Metric { node, name: format!("plugin.{name}"), value, step });
            }
            "log" => {
                let level = msg.get("level").and_then(Value::as_str).unwrap_or("info");
                let Some(text) = msg.get("message").and_then(Value::as_str) else {
                    return Err(bad("`log` needs a string `message`".into()));
                };
                match level {
                    "info" | "debug" => {}
                    "warning" | "error" => {
                        task.events.event(Event::Warning { node, message: format!("plugin: {text}") })
                    }
                    other => {
                        return Err(bad(format!("`log` level `{other}`; expected info, warning or error")));
                    }
                }
            }
            "result" => {
                if let Some(m) = msg.get("metrics") {
                    let ok = m.as_object().is_some_and(|m| m.values().all(|v| v.is_number()));
                    if !ok {
                        return Err(bad("`result.metrics` must map names to numbers".into()));
                    }
                }
                if let Some(o) = msg.get("outputs")
                    && !o.is_object()
                {
                    return Err(bad("`result.outputs` must map names to paths in out_dir".into()));
                }
                messages.push(msg.clone());
                // Nothing may follow the result but the end of stdout.
                loop {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Stop::Failed(
                            "sent its result but did not exit within its timeout".into(),
                        ));
                    }
                    match rx.recv_timeout(deadline - now) {
                        Ok(Ok(l)) if String::from_utf8_lossy(&l).trim().is_empty() => continue,
                        Ok(Ok(l)) => {
                            return Err(bad(format!(
                                "a line after its result: {}",
                                clip(String::from_utf8_lossy(&l).trim(), 200)
                            )));
                        }
                        Ok(Err(e)) => return Err(Stop::Failed(e)),
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(msg),
                    }
                }
            }
            "hello" => return Err(bad("a second `hello`".into())),
            other => {
                return Err(bad(format!(
                    "unknown message type `{}` (expected progress, metric, log or result)",
                    clip(other, 40)
                )));
            }
        }
        messages.push(msg);
    }
}

/// Waits for the plugin to exit, up to `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

fn kill_group(child: &mut Child) {
    // The plugin leads its own process group: stop it and anything it started.
    let pid = child.id() as i32;
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: kill(2) with a negative pid signals the group; no memory is involved.
    unsafe {
        kill(-pid, 9);
    }
    let _ = child.kill();
}

fn exit_words(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "exited".to_string(),
    }
}

fn tail_of(mut r: impl Read) -> Vec<u8> {
    let mut tail: VecDeque<u8> = VecDeque::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        tail.extend(&buf[..n]);
        let extra = tail.len().saturating_sub(STDERR_TAIL);
        tail.drain(..extra);
    }
    tail.into()
}

fn quoted_tail(stderr: &[u8]) -> String {
    crate::diag::quoted_tail(stderr, QUOTED)
}

fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Every file under `dir` (relative paths, sorted); a link or anything not a plain file or
/// folder is an error.
fn walk(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let e = e.map_err(|e| e.to_string())?;
            let ft = e.file_type().map_err(|e| e.to_string())?;
            let rel = e.path().strip_prefix(dir).unwrap_or(&e.path()).to_path_buf();
            if ft.is_symlink() {
                return Err(format!("left a link in its output ({}); write files", rel.display()));
            } else if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(rel);
            } else {
                return Err(format!("left something that is not a file in its output ({})", rel.display()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A plugin node: the request names its inputs by role (datasets by their settings, stored
/// results by their folder), and the result's outputs and metrics are the node's.
pub(super) fn node(
    task: &Task<'_>,
    w: &crate::job::PluginWork,
) -> Result<crate::exec::NodeOutput, NodeError> {
    let mut inputs = serde_json::Map::new();
    for i in &task.job.inputs {
        let role = i.role.strip_prefix("inputs/").unwrap_or(&i.role).to_string();
        let v = match &i.source {
            crate::job::InputSource::Dataset(cfg) => json!({
                "kind": "dataset", "name": i.name, "key": i.key,
                "config": cfg, "base_dir": absolute(&task.job.base_dir),
            }),
            crate::job::InputSource::Entry { model, .. } => {
                let dir = task.entry(&i.role).map(|e| absolute(&e.dir));
                json!({
                    "kind": if *model { "model" } else { "entry" },
                    "name": i.name, "key": i.key, "path": dir,
                })
            }
        };
        inputs.insert(role, v);
    }
    let body = json!({ "kind": "plugin", "params": w.params, "inputs": inputs });
    let ran = run(task, &w.plugin, "plugin", body, Duration::from_secs(w.timeout_s))?;
    let mut metrics = ran.result.get("metrics").cloned().unwrap_or_else(|| json!({}));
    metrics["seconds"] = json!(ran.seconds);
    if let Some(o) = ran.result.get("outputs") {
        metrics["outputs"] = o.clone();
    }
    let _ = ran.out;
    Ok(crate::exec::NodeOutput { metrics })
}
