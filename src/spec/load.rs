//! Reading experiment files: includes, defaults, shorthands, typed deserialisation, diagnostics.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::matrix::{self, Dim, RawNode};
use super::types::*;
use super::validate::{Check, NodeContext};
use super::yaml_index::{NULL_KEY, Scan, SpanIndex};
use super::{Device, Experiment, LoadResult, join};
use crate::diag::{Code, Diagnostic, Location, SourceFile, clip, did_you_mean};

const TOP_KEYS: [&str; 11] = [
    "experiment",
    "launcher",
    "description",
    "include",
    "seed",
    "device",
    "defaults",
    "datasets",
    "models",
    "nodes",
    "matrix",
];
const NODE_EXTRAS: [&str; 4] = ["seed", "matrix", "description", "resources"];

/// Reads an experiment file and everything it includes.
pub fn load(path: &Path) -> LoadResult {
    load_inner(path, None)
}

/// Reads what it can: the experiment with every valid part (declared names that failed are in
/// [`Experiment::invalid`]) and every problem found. `None` when the file itself cannot be read
/// or parsed. Lets the graph layer check references too, so one run reports as much as it can.
pub fn load_partial(path: &Path) -> (Option<Experiment>, Vec<Diagnostic>) {
    let mut l = Loader::default();
    let Some((map, spans)) = l.read_file(path, None, None) else {
        return (None, l.diags);
    };
    l.spans = spans;
    let exp = l.experiment(path, map);
    (Some(exp), dedupe(l.diags))
}

/// Like [`load`], but the root file's text is given (includes are still read from disk,
/// relative to `path`'s folder).
pub fn load_str(path: &Path, text: &str) -> LoadResult {
    load_inner(path, Some(text.to_string()))
}

fn load_inner(path: &Path, text: Option<String>) -> LoadResult {
    let mut l = Loader::default();
    let Some((map, spans)) = l.read_file(path, text, None) else {
        return Err(l.diags);
    };
    l.spans = spans;
    let exp = l.experiment(path, map);
    if l.diags.is_empty() { Ok(exp) } else { Err(dedupe(l.diags)) }
}

fn dedupe(diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut seen = HashSet::new();
    diags.into_iter().filter(|d| seen.insert((d.code, d.path.clone(), d.message.clone()))).collect()
}

#[derive(Default)]
pub(super) struct Loader {
    pub(super) diags: Vec<Diagnostic>,
    pub(super) spans: SpanIndex,
    files: Vec<PathBuf>,
    /// Bytes of all files read so far.
    bytes: usize,
    /// The experiment file (for problems with it as a whole).
    root: Option<Arc<SourceFile>>,
    /// Files being read, innermost last, as written and canonical (for include cycles).
    stack: Vec<(PathBuf, Option<PathBuf>)>,
    /// Declared names whose settings are invalid (reported already).
    pub(super) invalid: HashSet<String>,
    /// `defaults:` by node kind.
    kind_defaults: IndexMap<String, Value>,
    /// `defaults.resources`: under every node's own `resources:`.
    default_resources: super::Resources,
    /// Declared models with a `pretrained:` file (they start from weights, like an `init:`).
    pretrained_models: HashSet<String>,
    /// Settings of `defaults:` (by kind, relative to the kind body) that failed to type in one
    /// node: reported there once, at the defaults, and left out of every later node that takes
    /// them, so a bad default costs its diagnostic once, not once per node (a 64 KB value in the
    /// defaults of 40,000 instances took seconds to re-report).
    bad_defaults: HashMap<String, Vec<String>>,
    /// The keys the last typed node body lost to errors (`typed_lenient`'s removals).
    last_removed: Vec<String>,
}

/// What a spec may ask for (docs/spec.md, "Limits"): the process must never abort on an
/// allocation, hang or take quadratic time because of what a file says.
pub(super) mod limits {
    /// Bytes of one file (the experiment file or an include).
    pub const MAX_FILE_BYTES: usize = 16 << 20;
    /// Bytes of all files of one experiment together.
    pub const MAX_TOTAL_BYTES: usize = 64 << 20;
    /// Files of one experiment (an include graph can multiply: a includes b twice ...).
    pub const MAX_FILES: usize = 256;
    /// Depth of `include:` chains.
    pub const MAX_INCLUDE_DEPTH: usize = 32;
    /// Levels of nested mappings and lists (serde_yaml's own limit).
    pub const MAX_NESTING: usize = 128;
    /// Characters of a dataset, model or node name.
    pub const MAX_NAME_CHARS: usize = 128;
    /// Characters of the experiment's name.
    pub const MAX_EXPERIMENT_CHARS: usize = 256;
    /// Instances one declared node expands into (its own and inherited matrix values).
    pub const MAX_NODE_INSTANCES: u64 = 10_000;
    /// Node instances after matrix expansion, all nodes together (100,000 plain nodes are fine).
    pub const MAX_INSTANCES: u64 = 200_000;
    /// Values that `*alias` references add to one file once expanded (each alias counts its
    /// anchor's whole value). serde_yaml expands them one value at a time and stops only after
    /// 100 alias jumps per event of the file: a 188 KB file of nested aliases took it 18 s.
    pub const MAX_ALIAS_NODES: u64 = 1_000_000;
    /// What the nodes' settings weigh once `defaults:` are copied into every node and every
    /// matrix instance has its own copy ([`super::settings_weight`]: bytes of strings, plus 32 a
    /// value). A 64 KB default in 40,000 instances is 2.6 GB of copies; a real spec of 100,000
    /// nodes weighs tens of MB.
    pub const MAX_SETTINGS_WEIGHT: u64 = 128 << 20;
}

/// What a value weighs when copied: its strings' bytes, plus 32 for each value (scalar, list,
/// mapping). Iterative: a value's nesting is bounded, but no walk here uses the stack for it.
pub(super) fn settings_weight(v: &Value) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total = total.saturating_add(32);
        match v {
            Value::String(s) => total = total.saturating_add(s.len() as u64),
            Value::Sequence(items) => stack.extend(items.iter()),
            Value::Mapping(m) => {
                for (k, v) in m {
                    stack.push(k);
                    stack.push(v);
                }
            }
            Value::Tagged(t) => {
                total = total.saturating_add(t.tag.to_string().len() as u64);
                stack.push(&t.value);
            }
            _ => {}
        }
    }
    total
}

/// The settings-weight error (see [`limits::MAX_SETTINGS_WEIGHT`]), at `path`.
pub(super) fn too_heavy(what: &str) -> String {
    format!("the nodes' settings come to more than {} MiB once {what}", limits::MAX_SETTINGS_WEIGHT >> 20)
}

fn too_large(n: u64) -> String {
    format!("{n} bytes, more than the {} MiB a file may have", limits::MAX_FILE_BYTES >> 20)
}

fn too_deep(loc: Option<Location>) -> Diagnostic {
    Diagnostic::new(
        Code::Syntax,
        "",
        format!("invalid YAML: nested deeper than {} levels", limits::MAX_NESTING),
    )
    .with_help("experiment files need a few levels of nesting; flatten this value")
    .at(loc)
}

/// Where a text first nests deeper than [`limits::MAX_NESTING`] levels, found by a linear scan
/// of its characters before any parser sees it: flow collections (`[`, `{`, outside quotes and
/// comments) and compact block nesting (`- - - x`, `? ? x` on one line). Both parsers need it:
/// yaml-rust2 recurses once a block level (25,000 compact levels overflow the stack) and libyaml
/// takes time quadratic in the flow depth. Nesting by indentation alone is bounded by the file
/// size limit (n levels need n^2/2 bytes of indentation) and is left to the parsers.
fn too_deep_at(text: &str) -> Option<(usize, usize)> {
    let max = limits::MAX_NESTING;
    let (mut flow, mut line, mut col) = (0usize, 1usize, 0usize);
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    let mut prev = '\n';
    let mut at_line_start = true;
    let mut compact = 0usize;
    while let Some(c) = chars.next() {
        col += 1;
        if c == '\n' {
            (line, col, at_line_start, compact, prev) = (line + 1, 0, true, 0, c);
            continue;
        }
        // A lone `\r` is a line break to the parsers too (the location stays on the line as
        // editors count it).
        if c == '\r' {
            (at_line_start, compact, prev) = (true, 0, '\n');
            continue;
        }
        if let Some(q) = quote {
            match c {
                '\\' if q == '"' => {
                    chars.next();
                    col += 1;
                }
                '\'' if q == '\'' && chars.peek() == Some(&'\'') => {
                    chars.next();
                    col += 1;
                }
                _ if c == q => quote = None,
                _ => {}
            }
            prev = c;
            continue;
        }
        if at_line_start && flow == 0 {
            if c == ' ' || c == '\t' {
                prev = c;
                continue;
            }
            // `- ` / `? ` open one more level each, on the same line.
            if (c == '-' || c == '?') && matches!(chars.peek(), Some(' ' | '\t')) {
                compact += 1;
                if compact > max {
                    return Some((line, col));
                }
                chars.next();
                col += 1;
                prev = ' ';
                continue;
            }
            at_line_start = false;
        }
        let boundary = matches!(prev, ' ' | '\t' | '\n' | '[' | '{' | ',' | ':');
        match c {
            '#' if matches!(prev, ' ' | '\t' | '\n') => {
                // A comment: skip to the end of the line.
                while chars.peek().is_some_and(|&n| n != '\n' && n != '\r') {
                    chars.next();
                    col += 1;
                }
            }
            '\'' | '"' if boundary => quote = Some(c),
            '[' | '{' => {
                flow += 1;
                if flow + compact > max {
                    return Some((line, col));
                }
            }
            ']' | '}' => flow = flow.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    None
}

/// A regular file's text, refusing devices, FIFOs and folders (`/dev/zero` never ends, a FIFO
/// blocks) and files over the size limit, without reading more than the limit.
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    if meta.len() > limits::MAX_FILE_BYTES as u64 {
        return Err(too_large(meta.len()));
    }
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limits::MAX_FILE_BYTES as u64 + 1).read_to_end(&mut buf))
        .map_err(|e| e.to_string())?;
    if buf.len() > limits::MAX_FILE_BYTES {
        return Err(format!("more than the {} MiB a file may have", limits::MAX_FILE_BYTES >> 20));
    }
    String::from_utf8(buf).map_err(|e| format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

fn key_str(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Null => NULL_KEY.to_string(),
        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
    }
}

/// Deep merge: mappings merge key by key, anything else in `over` replaces `base`.
fn merge(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Mapping(mut b), Value::Mapping(o)) => {
            for (k, v) in o {
                let merged = match b.remove(&k) {
                    Some(old) => merge(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Mapping(b)
        }
        (_, o) => o,
    }
}

impl Loader {
    pub(super) fn diags_push(&mut self, code: Code, path: &str, msg: impl Into<String>) -> &mut Diagnostic {
        self.err(code, path, msg)
    }

    fn err(&mut self, code: Code, path: &str, msg: impl Into<String>) -> &mut Diagnostic {
        let loc = if matches!(code, Code::UnknownKey | Code::MissingKey | Code::Conflict) {
            self.spans.key(path)
        } else {
            self.spans.value(path)
        };
        self.diags.push(Diagnostic::new(code, path, msg).at(loc));
        self.diags.last_mut().expect("just pushed")
    }

    /// Reads one file and its includes, merged (the file's own keys win).
    fn read_file(
        &mut self,
        path: &Path,
        text: Option<String>,
        included_at: Option<Location>,
    ) -> Option<(Mapping, SpanIndex)> {
        let (code, what) = match included_at {
            Some(_) => (Code::Include, "cannot read included file"),
            None => (Code::Io, "cannot read experiment file"),
        };
        if self.files.len() >= limits::MAX_FILES {
            self.diags.push(
                Diagnostic::new(code, "", format!("more than {} files in one experiment", limits::MAX_FILES))
                    .with_help("include each part once; includes that include each other multiply")
                    .at(included_at),
            );
            return None;
        }
        let text = match text {
            Some(t) if t.len() > limits::MAX_FILE_BYTES => Err(too_large(t.len() as u64)),
            Some(t) => Ok(t),
            None => read_bounded(path),
        };
        let text = match text {
            Ok(t) if self.bytes + t.len() > limits::MAX_TOTAL_BYTES => {
                Err(format!("the experiment's files together exceed {} MiB", limits::MAX_TOTAL_BYTES >> 20))
            }
            other => other,
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                self.diags.push(
                    Diagnostic::new(code, "", format!("{what} {}: {e}", path.display()))
                        .with_help("check the path; relative includes are relative to the including file")
                        .at(included_at),
                );
                return None;
            }
        };
        self.bytes += text.len();
        self.files.push(path.to_path_buf());
        let file = SourceFile::new(path, text);
        if self.root.is_none() {
            self.root = Some(file.clone());
        }
        if let Some((line, col)) = too_deep_at(&file.text) {
            self.diags.push(too_deep(Some(Location { file: file.clone(), line, col, len: 1 })));
            return None;
        }
        // yaml-rust2 first: linear in the text, it stops at 255 levels of flow nesting, where
        // serde_yaml (libyaml) would spend quadratic time before its own limit of 128.
        let scan = Scan::run(&file);
        if let Some((msg, loc)) = &scan.error {
            if msg.contains("recursion limit") {
                self.diags.push(too_deep(Some(loc.clone())));
                return None;
            }
        }
        // Counted in the same linear pass, so serde_yaml never starts an expansion this large.
        if let Some(loc) = scan.too_many_alias_nodes {
            self.diags.push(
                Diagnostic::new(Code::Syntax, "", "invalid YAML: aliases expand to too many values")
                    .with_help("write the values out, or use fewer nested `*alias` references")
                    .at(Some(loc)),
            );
            return None;
        }
        // Where yaml-rust2 stops early its alias count is partial, and serde_yaml (libyaml, more
        // lenient) would expand what follows bounded only by time and memory: a file with
        // aliases that yaml-rust2 cannot read is reported with yaml-rust2's error instead.
        if let Some((msg, loc)) = &scan.error {
            if file.text.contains('*') {
                self.diags.push(self.syntax_diag(msg, loc.clone(), &scan.index, &scan.duplicates));
                return None;
            }
        }
        let mut spans = scan.index;
        let value: Value = match serde_yaml::from_str(&file.text) {
            Ok(v) => v,
            Err(e) => {
                let loc = match e.location() {
                    Some(l) => Location { file: file.clone(), line: l.line(), col: l.column(), len: 1 },
                    // serde_yaml gives no position for some errors (aliases that expand too much).
                    None => Location::start(file.clone()),
                };
                self.diags.push(self.syntax_diag(&e.to_string(), loc, &spans, &scan.duplicates));
                return None;
            }
        };
        let mut map = match value {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            _ => {
                self.diags.push(
                    Diagnostic::new(Code::WrongType, "", "an experiment file must be a mapping of keys")
                        .with_help("start with `experiment: <name>` and `nodes:`")
                        .at(spans.value("").or_else(|| Some(Location::start(file.clone())))),
                );
                return None;
            }
        };
        let Some(includes) = map.remove("include") else {
            return Some((map, spans));
        };
        let list: Vec<(usize, String)> = match includes {
            Value::String(s) => vec![(usize::MAX, s)],
            Value::Sequence(items) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    Value::String(s) => Some((i, s)),
                    _ => {
                        self.diags.push(
                            Diagnostic::new(Code::WrongType, format!("include.{i}"), "expected a file path")
                                .at(spans.value(&format!("include.{i}"))),
                        );
                        None
                    }
                })
                .collect(),
            _ => {
                self.diags.push(
                    Diagnostic::new(Code::WrongType, "include", "expected a file path or a list of them")
                        .at(spans.value("include")),
                );
                return None;
            }
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        self.stack.push((tidy(path), path.canonicalize().ok()));
        let mut base = Value::Mapping(Mapping::new());
        let mut base_spans = SpanIndex::default();
        for (i, rel) in list {
            let at = if i == usize::MAX { "include".to_string() } else { format!("include.{i}") };
            let loc = spans.value(&at);
            let inc = tidy(&dir.join(&rel));
            let inc_canon = inc.canonicalize().ok();
            let same = |(p, canon): &(PathBuf, Option<PathBuf>)| {
                p == &inc || (canon.is_some() && canon == &inc_canon)
            };
            if self.stack.iter().any(same) {
                let chain: Vec<String> = self
                    .stack
                    .iter()
                    .map(|(p, _)| p.display().to_string())
                    .chain([inc.display().to_string()])
                    .collect();
                self.diags.push(
                    Diagnostic::new(Code::Include, at, format!("include cycle: {}", chain.join(" -> ")))
                        .with_help("remove one of these includes")
                        .at(loc),
                );
                continue;
            }
            if self.stack.len() >= limits::MAX_INCLUDE_DEPTH {
                self.diags.push(
                    Diagnostic::new(
                        Code::Include,
                        at,
                        format!("includes nested more than {} deep", limits::MAX_INCLUDE_DEPTH),
                    )
                    .with_help("include the parts from fewer levels of files")
                    .at(loc),
                );
                continue;
            }
            if let Some((m, s)) = self.read_file(&inc, None, loc) {
                base = merge(base, Value::Mapping(m));
                base_spans.overlay(s);
            }
        }
        self.stack.pop();
        base_spans.overlay(std::mem::take(&mut spans));
        let Value::Mapping(merged) = merge(base, Value::Mapping(map)) else {
            unreachable!("merging mappings gives a mapping")
        };
        Some((merged, base_spans))
    }

    /// A serde_yaml error as a diagnostic, at the offending key or value where we can tell.
    fn syntax_diag(
        &self,
        msg: &str,
        loc: Location,
        spans: &SpanIndex,
        dups: &[(String, Location)],
    ) -> Diagnostic {
        let msg = msg.split(" at line ").next().unwrap_or(msg);
        if msg.contains("duplicate entry") {
            // serde_yaml points at the mapping; the repeated key is where the problem is.
            let key = msg.split('"').nth(1).unwrap_or_default();
            let found =
                dups.iter().find(|(p, _)| p == key || p.ends_with(&format!(".{key}"))).or(dups.first());
            let (path, at) = match found {
                Some((p, l)) => (p.clone(), l.clone()),
                None => (String::new(), loc),
            };
            let name = path.rsplit('.').next().unwrap_or_default().to_string();
            return Diagnostic::new(Code::Syntax, path, format!("duplicate key `{}`", clip(&name, 60)))
                .with_help("a key may appear once in a mapping: merge the two or rename one")
                .at(Some(at));
        }
        if msg.contains("recursion limit exceeded") {
            return too_deep(Some(loc));
        }
        if msg.contains("repetition limit exceeded") {
            return Diagnostic::new(Code::Syntax, "", "invalid YAML: aliases expand to too many values")
                .with_help("write the values out, or use fewer nested `*alias` references")
                .at(Some(loc));
        }
        // `invalid type: integer `99999999999999999999` as u128`: a number no setting can hold.
        if let Some(rest) = msg.split("invalid type: integer `").nth(1) {
            if rest.contains("as u128") || rest.contains("as i128") {
                let n = rest.split('`').next().unwrap_or_default();
                let path = spans.path_at(loc.line, loc.col).unwrap_or_default().to_string();
                let len = n.chars().count();
                return Diagnostic::new(
                    Code::OutOfRange,
                    path,
                    format!("expected a number that fits in 64 bits, got {}", clip(n, 40)),
                )
                .with_help("use a smaller number (docs/spec.md gives each key's range)")
                .at(Some(Location { len, ..loc }));
            }
        }
        Diagnostic::new(Code::Syntax, "", format!("invalid YAML: {msg}"))
            .with_help("fix the YAML syntax at this position (indentation, brackets, quotes, duplicate keys)")
            .at(Some(loc))
    }

    /// Deserialises `v` into `T`, reporting failures with their key path; `None` if anything
    /// in `v` is wrong (every problem is reported, see [`Loader::typed_lenient`]).
    pub(super) fn typed<T: DeserializeOwned>(
        &mut self,
        v: &Value,
        path: &str,
        node: Option<&str>,
        rename: &dyn Fn(&str) -> String,
    ) -> Option<T> {
        self.typed_lenient(v, path, node, rename).filter(|(_, clean)| *clean).map(|(t, _)| t)
    }

    /// Like [`Loader::typed`], but serde stops at the first problem, so after each one the
    /// offending key is reported and removed and `v` is read again: every unknown key and
    /// wrong value of one node is reported, and what remains (bad keys at their defaults) is
    /// returned with `false`, so the node's references can still be checked. `None` when a
    /// required key is what is wrong.
    pub(super) fn typed_lenient<T: DeserializeOwned>(
        &mut self,
        v: &Value,
        path: &str,
        node: Option<&str>,
        rename: &dyn Fn(&str) -> String,
    ) -> Option<(T, bool)> {
        self.typed_lenient_from(v, path, node, rename, Vec::new())
    }

    /// [`Loader::typed_lenient`] of a value from which `removed` (already reported) were taken
    /// out: they count as removed (the result is not clean, and a required one missing is not
    /// news). What was removed in the end is left in `last_removed`.
    fn typed_lenient_from<T: DeserializeOwned>(
        &mut self,
        v: &Value,
        path: &str,
        node: Option<&str>,
        rename: &dyn Fn(&str) -> String,
        removed: Vec<String>,
    ) -> Option<(T, bool)> {
        let mut removed = removed;
        let r = self.typed_lenient_inner(v, path, node, rename, &mut removed);
        self.last_removed = removed;
        r
    }

    fn typed_lenient_inner<T: DeserializeOwned>(
        &mut self,
        v: &Value,
        path: &str,
        node: Option<&str>,
        rename: &dyn Fn(&str) -> String,
        removed: &mut Vec<String>,
    ) -> Option<(T, bool)> {
        let mut v = std::borrow::Cow::Borrowed(v);
        // Keys an unknown key was taken for (`dpeth` -> `depth`): their absence is no news.
        let mut meant: Vec<String> = Vec::new();
        // Each round removes one key, so this ends; the bound keeps a pathological value cheap.
        for _ in 0..64 {
            let e = match serde_path_to_error::deserialize::<_, T>(&*v) {
                Ok(t) => return Some((t, removed.is_empty())),
                Err(e) => e,
            };
            let mut rel = String::new();
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Seq { index } => rel = join(&rel, &index.to_string()),
                    serde_path_to_error::Segment::Map { key } => rel = join(&rel, key),
                    _ => {}
                }
            }
            let msg = e.inner().to_string();
            if let Some(rest) = msg.strip_prefix("missing field `") {
                let field = rest.split('`').next().unwrap_or_default();
                let key = join(&rel, field);
                if removed.contains(&key) || meant.contains(&key) {
                    // We removed this required key after reporting it: nothing more to learn.
                    return None;
                }
            }
            let (d, culprit) = self.serde_diag(path, rename, &v, &rel, &msg);
            if let (Code::UnknownKey, Some(c), Some(s)) = (d.code, &culprit, d.help.as_deref()) {
                if let Some(name) = s.strip_prefix("did you mean `").and_then(|s| s.split('`').next()) {
                    let parent = c.rsplit_once('.').map_or("", |x| x.0);
                    meant.push(join(parent, name));
                }
            }
            self.diags.push(match node {
                Some(n) => d.with_node(n),
                None => d,
            });
            match culprit {
                Some(c) if !c.is_empty() && remove_at(v.to_mut(), &c) => removed.push(c),
                _ => return None,
            }
        }
        None
    }

    /// A serde error as a diagnostic, and the relative path of the key to blame (to remove it
    /// and read the rest), when there is one.
    fn serde_diag(
        &self,
        base: &str,
        rename: &dyn Fn(&str) -> String,
        root: &Value,
        rel: &str,
        msg: &str,
    ) -> (Diagnostic, Option<String>) {
        let quoted =
            |s: &str| -> Vec<String> { s.split('`').skip(1).step_by(2).map(str::to_string).collect() };
        let full_of = |rel: &str| join(base, &rename(rel));
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let field = rest.split('`').next().unwrap_or_default();
            let expected = quoted(rest.split_once("expected").map(|x| x.1).unwrap_or_default());
            let culprit = if rel == field || rel.ends_with(&format!(".{field}")) {
                rel.to_string()
            } else {
                join(rel, field)
            };
            let path = full_of(&culprit);
            let help = match did_you_mean(field, expected.iter().map(String::as_str)) {
                Some(s) => format!("did you mean `{s}`?"),
                None if expected.is_empty() => "remove this key".to_string(),
                None => format!("valid keys here: {}", expected.join(", ")),
            };
            let d =
                Diagnostic::new(Code::UnknownKey, path.clone(), format!("unknown key `{}`", clip(field, 60)))
                    .with_help(help)
                    .at(self.spans.key(&path));
            return (d, Some(culprit));
        }
        if let Some(rest) = msg.strip_prefix("unknown variant `") {
            let variant = rest.split('`').next().unwrap_or_default();
            let expected = quoted(rest.split_once("expected").map(|x| x.1).unwrap_or_default());
            // Internally tagged enums report at the enclosing map: point at the tag's value.
            let mut culprit = rel.to_string();
            if let Some(Value::Mapping(m)) = value_at(root, rel) {
                if let Some((k, _)) = m.iter().find(|(_, v)| v.as_str() == Some(variant)) {
                    culprit = join(rel, &key_str(k));
                }
            }
            let path = full_of(&culprit);
            let help = match did_you_mean(variant, expected.iter().map(String::as_str)) {
                Some(s) => format!("did you mean `{s}`? (valid: {})", expected.join(", ")),
                None => format!("valid values: {}", expected.join(", ")),
            };
            let d = Diagnostic::new(
                Code::UnknownVariant,
                path.clone(),
                format!("unknown value `{}`", clip(variant, 60)),
            )
            .with_help(help)
            .at(self.spans.value(&path));
            return (d, Some(culprit));
        }
        if let Some(rest) = msg.strip_prefix("missing field `") {
            let field = rest.split('`').next().unwrap_or_default();
            let full = full_of(rel);
            let d = Diagnostic::new(Code::MissingKey, full.clone(), format!("missing key `{field}`"))
                .with_help(format!("add `{field}:` here (see docs/spec.md)"))
                .at(self.spans.key(&full));
            return (d, None);
        }
        // Inside an internally tagged enum serde reports at the enclosing mapping: find the
        // value it describes there, so the caret sits on that value.
        let blame = |got: &str| -> String {
            match value_at(root, rel) {
                Some(Value::Mapping(m)) => m
                    .iter()
                    .find(|(_, v)| unexpected(v) == got)
                    .map(|(k, _)| join(rel, &key_str(k)))
                    .unwrap_or_else(|| rel.to_string()),
                _ => rel.to_string(),
            }
        };
        if let Some(rest) = msg.strip_prefix("invalid value: integer `") {
            let n = rest.split('`').next().unwrap_or_default();
            let culprit = blame(&format!("integer `{n}`"));
            let full = full_of(&culprit);
            let want = rest.split_once("expected ").map(|x| x.1).unwrap_or_default();
            let (msg, help) = match (n.starts_with('-'), int_max(want)) {
                (true, _) => {
                    (format!("expected >= 0, got {n}"), "use a non-negative whole number".to_string())
                }
                (false, Some(max)) => {
                    (format!("expected <= {max}, got {n}"), "use a smaller number".to_string())
                }
                (false, None) => {
                    (format!("out-of-range number {n}"), "see docs/spec.md for this key's range".to_string())
                }
            };
            let d = Diagnostic::new(Code::OutOfRange, full.clone(), msg)
                .with_help(help)
                .at(self.spans.value(&full));
            return (d, Some(culprit));
        }
        if let Some(rest) = msg.strip_prefix("invalid type: ") {
            let (got, want) = rest.split_once(", expected ").unwrap_or((rest, "another type"));
            let culprit = blame(got);
            let full = full_of(&culprit);
            let want = humanize_expected(want);
            let got = got.replace("sequence", "list").replace("map", "mapping");
            let d = Diagnostic::new(
                Code::WrongType,
                full.clone(),
                format!("expected {want}, got {}", clip(&got, 80)),
            )
            .with_help(format!("write {want} here"))
            .at(self.spans.value(&full));
            return (d, Some(culprit));
        }
        let full = full_of(rel);
        if msg.starts_with("data did not match any variant") {
            let d = Diagnostic::new(Code::WrongType, full.clone(), "value has the wrong shape")
                .with_help("see docs/spec.md for what this key accepts")
                .at(self.spans.value(&full));
            return (d, Some(rel.to_string()));
        }
        (
            Diagnostic::new(Code::WrongType, full.clone(), msg.to_string()).at(self.spans.value(&full)),
            Some(rel.to_string()),
        )
    }

    fn check_keys(&mut self, map: &Mapping, path: &str, allowed: &[&str], what: &str) {
        for k in map.keys() {
            let k = key_str(k);
            if !allowed.contains(&k.as_str()) {
                let p = join(path, &k);
                let help = match did_you_mean(&k, allowed.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("valid {what}: {}", allowed.join(", ")),
                };
                self.err(Code::UnknownKey, &p, format!("unknown key `{k}`")).help = Some(help);
            }
        }
    }

    /// Whether the entry can be used at all: a name over the length limit is reported and the
    /// entry skipped (names become folder names and instance names); other bad names are
    /// reported and the entry is still checked.
    fn check_name(&mut self, name: &str, path: &str) -> bool {
        // A name's problem is the name: point at the key, not at its settings.
        let report = |l: &mut Loader, code: Code, msg: String, help: &str| {
            l.diags.push(Diagnostic::new(code, path, msg).with_help(help).at(l.spans.key(path)));
        };
        let n = name.chars().count();
        if n > limits::MAX_NAME_CHARS {
            let msg =
                format!("name of {n} characters `{}`: at most {}", clip(name, 20), limits::MAX_NAME_CHARS);
            report(self, Code::OutOfRange, msg, "use a shorter name");
            return false;
        }
        if name == NULL_KEY {
            // `~`, `null` or an empty key: YAML's null, not a name.
            let help = "write a name here (quote it, `\"null\"`, if you mean the word)";
            report(self, Code::WrongType, "expected a name, got null".to_string(), help);
            return false;
        }
        let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            let help = "names use letters, digits, `_` and `-` only";
            report(self, Code::OutOfRange, format!("invalid name `{}`", clip(name, 60)), help);
        }
        true
    }

    fn section(&mut self, map: &Mapping, key: &str) -> Vec<(String, Value)> {
        match map.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Mapping(m)) => m.iter().map(|(k, v)| (key_str(k), v.clone())).collect(),
            Some(_) => {
                self.err(Code::WrongType, key, format!("expected a mapping of names under `{key}`"));
                Vec::new()
            }
        }
    }

    fn experiment(&mut self, path: &Path, map: Mapping) -> Experiment {
        self.check_keys(&map, "", &TOP_KEYS, "top-level keys");
        let none = |s: &str| s.to_string();
        let name = match map.get("experiment") {
            Some(v) => self.typed::<String>(v, "experiment", None, &none),
            None => path.file_stem().map(|s| s.to_string_lossy().into_owned()),
        }
        .unwrap_or_default();
        if let Some(Value::String(given)) = map.get("experiment") {
            let n = given.chars().count();
            if given.trim().is_empty() {
                self.err(Code::OutOfRange, "experiment", "empty experiment name").help = Some(
                    "name the experiment (its runs are filed under this name), or remove the key".to_string(),
                );
            } else if n > limits::MAX_EXPERIMENT_CHARS {
                let msg = format!("name of {n} characters: at most {}", limits::MAX_EXPERIMENT_CHARS);
                self.err(Code::OutOfRange, "experiment", msg).help = Some("use a shorter name".to_string());
            }
        }
        let description =
            map.get("description").and_then(|v| self.typed::<String>(v, "description", None, &none));
        let seed = map.get("seed").and_then(|v| self.typed::<u64>(v, "seed", None, &none)).unwrap_or(0);
        let device = match map.get("device") {
            None => Device::Cpu,
            Some(v) => match self.typed::<String>(v, "device", None, &none) {
                Some(s) => Device::parse(&s).unwrap_or_else(|| {
                    self.err(Code::OutOfRange, "device", format!("unknown device `{s}`")).help =
                        Some("use `cpu`, `cuda:N` or `auto`".to_string());
                    Device::Cpu
                }),
                None => Device::Cpu,
            },
        };

        let launcher = match map.get("launcher") {
            None => super::LauncherKind::Local,
            Some(v) => match self.typed::<String>(v, "launcher", None, &none) {
                Some(s) => match s.as_str() {
                    "local" => super::LauncherKind::Local,
                    "slurm" => super::LauncherKind::Slurm,
                    _ => {
                        self.err(
                            Code::OutOfRange,
                            "launcher",
                            format!("unknown launcher `{}`", clip(&s, 40)),
                        )
                        .help = Some(
                            "use `local` (this process, the default) or `slurm` (docs/cluster.md)"
                                .to_string(),
                        );
                        super::LauncherKind::Local
                    }
                },
                None => super::LauncherKind::Local,
            },
        };
        let defaults = self.defaults(&map);

        let mut datasets = IndexMap::new();
        for (name, v) in self.section(&map, "datasets") {
            let p = format!("datasets.{name}");
            if !self.check_name(&name, &p) {
                self.invalid.insert(name);
                continue;
            }
            let v = normalize_list_shorthand(v, "transforms");
            match self.typed::<DatasetSpec>(&v, &p, Some(&name), &none) {
                Some(d) => {
                    let before = self.diags.len();
                    let mut c = Check::new(&mut self.diags, &self.spans, &name);
                    c.dataset(&p, &d);
                    // Out-of-range settings are never handed on: the data layer would act on them.
                    if self.diags.len() == before {
                        datasets.insert(name, d);
                    } else {
                        self.invalid.insert(name);
                    }
                }
                None => {
                    self.invalid.insert(name);
                }
            }
        }
        let mut models = IndexMap::new();
        for (name, v) in self.section(&map, "models") {
            let p = format!("models.{name}");
            if !self.check_name(&name, &p) {
                self.invalid.insert(name);
                continue;
            }
            match self.typed::<ModelSpec>(&v, &p, Some(&name), &none) {
                Some(m) => {
                    if m.pretrained().is_some() {
                        self.pretrained_models.insert(name.clone());
                    }
                    let before = self.diags.len();
                    let mut c = Check::new(&mut self.diags, &self.spans, &name);
                    c.model(&p, &m);
                    if self.diags.len() == before {
                        models.insert(name, m);
                    } else {
                        self.invalid.insert(name);
                    }
                }
                None => {
                    self.invalid.insert(name);
                }
            }
        }

        let global_matrix = match map.get("matrix") {
            Some(v) => self.matrix_entries(v, "matrix"),
            None => Vec::new(),
        };
        let mut raws = Vec::new();
        let declared = self.section(&map, "nodes");
        let n_declared = declared.len();
        // An include that failed, or a misspelt top-level key (`node:`), explains it already.
        let explained = self
            .diags
            .iter()
            .any(|d| d.code == Code::Include || (d.code == Code::UnknownKey && !d.path.contains('.')));
        if declared.is_empty() && !explained && map.get("nodes").is_none_or(|v| v.is_null() || v.is_mapping())
        {
            let at = match map.contains_key("nodes") {
                true => self.spans.key("nodes"),
                false => self.root.clone().map(Location::start),
            };
            let empty = map.is_empty() && self.files.len() == 1;
            let what = if empty { "empty experiment file" } else { "no nodes" };
            self.diags.push(
                Diagnostic::new(Code::MissingKey, "nodes", what)
                    .with_help("declare what to compute under `nodes:` (docs/spec.md, \"Nodes\")")
                    .at(at),
            );
        }
        // Each node gets its own copy of its kind's defaults: bounded (see MAX_SETTINGS_WEIGHT).
        let mut weight = 0u64;
        for (name, v) in declared {
            let p = format!("nodes.{name}");
            if !self.check_name(&name, &p) {
                self.invalid.insert(name);
                continue;
            }
            if datasets.contains_key(&name) {
                self.err(Code::Conflict, &p, format!("`{name}` names both a dataset and a node")).help =
                    Some("rename one of them: references must be unambiguous".to_string());
            }
            match self.raw_node(&name, v, &defaults) {
                Some(raw) => {
                    weight = weight.saturating_add(settings_weight(&raw.body));
                    if weight > limits::MAX_SETTINGS_WEIGHT {
                        let at = if defaults.is_empty() { "nodes" } else { "defaults" };
                        self.err(Code::Matrix, at, too_heavy("`defaults:` are copied into each node")).help = Some(
                            "keep large values out of `defaults:` (long strings are not settings), or declare fewer nodes"
                                .to_string(),
                        );
                        raws.clear();
                        break;
                    }
                    raws.push(raw)
                }
                None => {
                    self.invalid.insert(name);
                }
            }
        }
        self.kind_defaults = defaults;
        // Whether a global matrix key fits no node can be told only if every node was read.
        let all_read = raws.len() == n_declared;
        let nodes = matrix::expand(self, raws, &global_matrix, seed, all_read);

        Experiment {
            name,
            description,
            seed,
            device,
            launcher,
            datasets,
            models,
            nodes,
            path: path.to_path_buf(),
            files: std::mem::take(&mut self.files),
            invalid: std::mem::take(&mut self.invalid),
            spans: std::mem::take(&mut self.spans),
        }
    }

    fn defaults(&mut self, map: &Mapping) -> IndexMap<String, Value> {
        let mut out = IndexMap::new();
        for (kind, v) in self.section(map, "defaults") {
            let p = format!("defaults.{kind}");
            if kind == "resources" {
                self.default_resources = self.resources(&v, &p, None).unwrap_or_default();
                continue;
            }
            if !NODE_KINDS.contains(&kind.as_str()) {
                let help = match did_you_mean(&kind, NODE_KINDS) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("defaults are given per node kind: {}", NODE_KINDS.join(", ")),
                };
                self.err(Code::UnknownKey, &p, format!("unknown node kind `{kind}`")).help = Some(help);
                continue;
            }
            if !v.is_mapping() {
                self.err(Code::WrongType, &p, "expected a mapping of keys for this node kind");
                continue;
            }
            out.insert(kind, v);
        }
        out
    }

    pub(super) fn matrix_entries(&mut self, v: &Value, path: &str) -> Vec<Dim> {
        let Value::Mapping(m) = v else {
            self.err(Code::WrongType, path, "expected a mapping of key -> list of values").help =
                Some("e.g. `matrix: { seed: [0, 1, 2] }`".to_string());
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, vals) in m {
            let k = key_str(k);
            let p = join(path, &k);
            let Value::Sequence(items) = vals else {
                self.err(Code::Matrix, &p, "expected a non-empty list of values").help =
                    Some(format!("e.g. `{}: [a, b]`", clip(&k, 40)));
                continue;
            };
            if items.is_empty() {
                self.err(Code::Matrix, &p, "expected a non-empty list of values").help =
                    Some(format!("e.g. `{}: [a, b]`", clip(&k, 40)));
                continue;
            }
            let mut ok = true;
            let mut values = Vec::with_capacity(items.len());
            let mut seen: HashMap<String, usize> = HashMap::new();
            for (i, item) in items.iter().enumerate() {
                let ip = format!("{p}.{i}");
                // `2` and `2.0`, `0.1` and `1e-1` give the same settings, and so one instance.
                if let Some(&first) = seen.get(&matrix::same_value_key(item)) {
                    let msg = format!(
                        "value `{}` repeats `{}` (item {first}): both give the same instance",
                        clip(&render_value(item), 40),
                        clip(&render_value(&items[first]), 40)
                    );
                    self.err(Code::Matrix, &ip, msg).help =
                        Some("each value gives one instance; list it once".to_string());
                    ok = false;
                    continue;
                }
                seen.insert(matrix::same_value_key(item), i);
                if k == "seed" && item.as_u64().is_none() {
                    let msg = format!(
                        "seeds must be non-negative whole numbers, got {}",
                        clip(&render_value(item), 40)
                    );
                    self.err(Code::WrongType, &ip, msg);
                    ok = false;
                    continue;
                }
                values.push(item.clone());
            }
            if ok {
                out.push(Dim { key: k, values, at: p });
            }
        }
        out
    }

    fn raw_node(&mut self, name: &str, v: Value, defaults: &IndexMap<String, Value>) -> Option<RawNode> {
        let p = format!("nodes.{name}");
        let Value::Mapping(mut m) = v else {
            self.err(Code::WrongType, &p, "a node must be a mapping with one kind key").help =
                Some(format!("e.g. `{name}: {{ train: {{ model: m, data: d }} }}`"));
            return None;
        };
        let allowed: Vec<&str> = NODE_KINDS.iter().chain(NODE_EXTRAS.iter()).copied().collect();
        let before = self.diags.len();
        self.check_keys(&m, &p, &allowed, "node keys");
        let had_unknown = self.diags.len() > before;
        let kinds: Vec<String> = m.keys().map(key_str).filter(|k| NODE_KINDS.contains(&k.as_str())).collect();
        let kind = match kinds.as_slice() {
            [k] => k.clone(),
            [] => {
                // A misspelt kind was reported as an unknown key already, with its did-you-mean.
                if !had_unknown {
                    self.err(Code::MissingKey, &p, "node has no kind").help =
                        Some(format!("add one of: {}", NODE_KINDS.join(", ")));
                }
                return None;
            }
            many => {
                self.err(
                    Code::Conflict,
                    &join(&p, &many[1]),
                    format!("node has several kinds: {}", many.join(", ")),
                )
                .help = Some("a node does one thing: split it into several nodes".to_string());
                return None;
            }
        };
        let none = |s: &str| s.to_string();
        let seed = m.get("seed").and_then(|v| self.typed::<u64>(v, &join(&p, "seed"), Some(name), &none));
        let description = m
            .get("description")
            .and_then(|v| self.typed::<String>(v, &join(&p, "description"), Some(name), &none));
        let resources = match m.get("resources") {
            Some(v) => self.resources(v, &join(&p, "resources"), Some(name)).unwrap_or_default(),
            None => super::Resources::default(),
        }
        .over(&self.default_resources);
        let node_matrix = match m.get("matrix") {
            Some(v) => self.matrix_entries(v, &join(&p, "matrix")),
            None => Vec::new(),
        };
        let body_path = join(&p, &kind);
        let mut body = m.remove(kind.as_str()).unwrap_or(Value::Null);
        if body.is_null() {
            body = Value::Mapping(Mapping::new());
        }
        if !body.is_mapping() {
            self.err(Code::WrongType, &body_path, format!("expected a mapping of `{kind}` settings"));
            return None;
        }
        let mut own = None;
        if let Some(d) = defaults.get(&kind) {
            own = Some(body.clone());
            body = merge(d.clone(), body);
            self.spans.alias(&format!("defaults.{kind}"), &body_path);
        }
        Some(RawNode {
            base: name.to_string(),
            kind,
            body,
            own,
            seed,
            matrix: node_matrix,
            description,
            resources,
        })
    }

    /// A `resources:` mapping, typed and checked (each problem at its key).
    fn resources(&mut self, v: &Value, p: &str, node: Option<&str>) -> Option<super::Resources> {
        let none = |s: &str| s.to_string();
        // Every problem at once: an unknown key is reported and the rest still checked.
        let (r, clean) = self.typed_lenient::<super::Resources>(v, p, node, &none)?;
        let problems = r.problems();
        let ok = problems.is_empty() && clean;
        for (key, msg, help) in problems {
            let d = self.err(Code::OutOfRange, &join(p, &key), msg);
            d.help = help;
            if let Some(n) = node {
                d.node = Some(n.to_string());
            }
        }
        ok.then_some(r)
    }

    /// Expands the shorthands of a kind body (`optimizer: sgd`, `losses: kd`, `kd: 1`).
    fn normalize_body(
        &mut self,
        body: Value,
        path: &str,
        node: &str,
        loss_names: &mut Vec<String>,
    ) -> Option<Value> {
        let Value::Mapping(mut m) = body else {
            return Some(body);
        };
        for key in ["optimizer", "schedule", "augment"] {
            if let Some(Value::String(s)) = m.get(key) {
                let mut t = Mapping::new();
                t.insert("type".into(), Value::String(s.clone()));
                m.insert(key.into(), Value::Mapping(t));
            }
        }
        // `ema: 0.999` is short for `ema: { decay: 0.999 }`.
        if let Some(v @ Value::Number(_)) = m.get("ema") {
            let mut t = Mapping::new();
            t.insert("decay".into(), v.clone());
            m.insert("ema".into(), Value::Mapping(t));
        }
        if let Some(losses) = m.remove("losses") {
            let lp = join(path, "losses");
            let entries = match losses {
                Value::String(preset) => match preset_losses(&preset) {
                    Some(list) => list,
                    None => {
                        let help = match did_you_mean(&preset, PRESETS) {
                            Some(s) => {
                                format!("did you mean `{s}`? presets: {}", PRESETS.join(", "))
                            }
                            None => format!(
                                "use a preset ({}) or a map of losses, e.g. `{{ ce: 1, kd: 1 }}`",
                                PRESETS.join(", ")
                            ),
                        };
                        self.err(Code::UnknownVariant, &lp, format!("unknown loss preset `{preset}`"))
                            .with_node_help(node, help);
                        return None;
                    }
                },
                Value::Mapping(lm) => {
                    let mut list = Vec::new();
                    for (k, v) in lm {
                        let k = key_str(&k);
                        let ep = join(&lp, &k);
                        if !LOSS_NAMES.contains(&k.as_str()) {
                            let help = match did_you_mean(&k, LOSS_NAMES.iter().copied()) {
                                Some(s) => format!("did you mean `{s}`?"),
                                None => format!("known losses: {}", LOSS_NAMES.join(", ")),
                            };
                            self.err(Code::UnknownKey, &ep, format!("unknown loss `{k}`"))
                                .with_node_help(node, help);
                            continue;
                        }
                        let entry = match v {
                            Value::Number(_) => {
                                let mut e = Mapping::new();
                                e.insert("weight".into(), v);
                                e
                            }
                            Value::Null => Mapping::new(),
                            Value::Mapping(e) => e,
                            _ => {
                                self.err(Code::WrongType, &ep, "expected a weight or a mapping of settings")
                                    .with_node_help(node, format!("e.g. `{k}: 1` or `{k}: {{ weight: 1 }}`"));
                                continue;
                            }
                        };
                        list.push((k, entry));
                    }
                    list
                }
                _ => {
                    self.err(Code::WrongType, &lp, "expected a preset name or a map of losses")
                        .with_node_help(node, format!("presets: {}", PRESETS.join(", ")));
                    return None;
                }
            };
            let mut seq = Vec::new();
            for (name, mut e) in entries {
                e.insert("loss".into(), Value::String(name.clone()));
                loss_names.push(name);
                seq.push(Value::Mapping(e));
            }
            m.insert("losses".into(), Value::Sequence(seq));
        }
        Some(Value::Mapping(m))
    }

    /// Typed kind body of one node instance, validated. `from_matrix` lists the settings this
    /// instance takes from a matrix (setting path, path of the matrix value): problems with them
    /// point at the matrix, and problems with settings that come from `defaults:` point there.
    pub(super) fn parse_kind(
        &mut self,
        raw: &RawNode,
        body: Value,
        instance: &str,
        from_matrix: &[(String, String)],
    ) -> Option<NodeKind> {
        let before = self.diags.len();
        self.last_removed.clear();
        let kind = self.parse_kind_here(raw, body, instance, from_matrix);
        self.relocate(raw, before, from_matrix);
        // A key that failed to type and that this node took from `defaults:` fails the same way
        // in every node that takes it: left out of those from now on (see `bad_defaults`).
        if let (Some(own), Some(dflt)) = (&raw.own, self.kind_defaults.get(&raw.kind)) {
            let bad: Vec<String> = std::mem::take(&mut self.last_removed)
                .into_iter()
                .filter(|rel| from_defaults(own, dflt, from_matrix, rel))
                .collect();
            let known = self.bad_defaults.entry(raw.kind.clone()).or_default();
            for rel in bad {
                if !known.contains(&rel) {
                    known.push(rel);
                }
            }
        }
        kind
    }

    /// Moves the diagnostics from `from` on to where the settings they blame are written.
    fn relocate(&mut self, raw: &RawNode, from: usize, from_matrix: &[(String, String)]) {
        let body_path = format!("nodes.{}.{}", raw.base, raw.kind);
        let defaults = self.kind_defaults.get(&raw.kind);
        for d in &mut self.diags[from..] {
            let Some(rel) = d.path.strip_prefix(&body_path).and_then(|r| r.strip_prefix('.')) else {
                continue;
            };
            let by_key =
                matches!(d.code, Code::UnknownKey | Code::MissingKey | Code::Conflict | Code::Unsupported);
            let set = from_matrix.iter().find(|(k, _)| rel == k || rel.starts_with(&format!("{k}.")));
            if let Some((_, value_path)) = set {
                if d.code == Code::UnknownKey {
                    // The matrix key names a setting that does not exist: blame the key, once.
                    let key_path = value_path.rsplit_once('.').map_or(value_path.as_str(), |x| x.0);
                    d.location = self.spans.key(key_path);
                    d.path = key_path.to_string();
                    d.node = Some(raw.base.clone());
                } else {
                    d.location = self.spans.value(value_path);
                }
                continue;
            }
            if let (Some(own), Some(dflt)) = (&raw.own, defaults) {
                if value_at(own, rel).is_none() && value_at(dflt, rel).is_some() {
                    // Reported once, at `defaults:`, however many nodes it reaches.
                    let p = join(&format!("defaults.{}", raw.kind), rel);
                    d.location = if by_key { self.spans.key(&p) } else { self.spans.value(&p) };
                    d.path = p;
                    d.node = None;
                }
            }
        }
    }

    fn parse_kind_here(
        &mut self,
        raw: &RawNode,
        body: Value,
        instance: &str,
        from_matrix: &[(String, String)],
    ) -> Option<NodeKind> {
        let path = format!("nodes.{}.{}", raw.base, raw.kind);
        let mut names = Vec::new();
        let body = self.normalize_body(body, &path, &raw.base, &mut names)?;
        let body = &body;
        let loss_names = names.clone();
        let rename = move |rel: &str| -> String {
            // `losses.2.temperature` -> `losses.kd.temperature`
            if let Some(rest) = rel.strip_prefix("losses.") {
                let (idx, tail) = rest.split_once('.').unwrap_or((rest, ""));
                if let Some(n) = idx.parse::<usize>().ok().and_then(|i| names.get(i)) {
                    return if tail.is_empty() {
                        format!("losses.{n}")
                    } else {
                        format!("losses.{n}.{tail}")
                    };
                }
            }
            rel.to_string()
        };
        let node = Some(instance);
        // Defaults already reported bad in another node: left out here (see `bad_defaults`).
        let mut skipped = Vec::new();
        let mut body = std::borrow::Cow::Borrowed(body);
        let dflt = self.kind_defaults.get(&raw.kind);
        if let (Some(own), Some(dflt), Some(bad)) = (&raw.own, dflt, self.bad_defaults.get(&raw.kind)) {
            for rel in bad {
                if from_defaults(own, dflt, from_matrix, rel) && remove_at(body.to_mut(), rel) {
                    skipped.push(rel.clone());
                }
            }
        }
        let body = &*body;
        macro_rules! typed {
            () => {
                self.typed_lenient_from(body, &path, node, &rename, skipped)?.0
            };
        }
        let kind = match raw.kind.as_str() {
            "train" => NodeKind::Train(typed!()),
            "finetune" => NodeKind::Finetune(typed!()),
            "distill" => NodeKind::Distill(typed!()),
            "generate" => NodeKind::Generate(typed!()),
            "generator" => NodeKind::Generator(typed!()),
            "evaluate" => NodeKind::Evaluate(typed!()),
            "report" => NodeKind::Report(typed!()),
            "plugin" => NodeKind::Plugin(typed!()),
            other => unreachable!("kind `{other}` was checked against NODE_KINDS"),
        };
        let ctx = NodeContext { loss_names: &loss_names, pretrained_models: &self.pretrained_models };
        Check::new(&mut self.diags, &self.spans, instance).node_kind(&path, &kind, &ctx);
        // Invalid values were reported; keep the node so its references are checked too.
        Some(kind)
    }
}

trait WithNodeHelp {
    fn with_node_help(&mut self, node: &str, help: String);
}

impl WithNodeHelp for Diagnostic {
    fn with_node_help(&mut self, node: &str, help: String) {
        self.node = Some(node.to_string());
        self.help = Some(help);
    }
}

/// serde's names for types, in the words of a YAML file.
fn humanize_expected(want: &str) -> String {
    match want {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number >= 0".to_string(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a sequence" => "a list".to_string(),
        "a boolean" | "a string" => want.to_string(),
        w if w.starts_with("struct ") || w.starts_with("a map") => "a mapping of keys".to_string(),
        w if w.starts_with("internally tagged enum") => "a mapping with a `type` key".to_string(),
        w => w.to_string(),
    }
}

/// The largest value of serde's unsigned integer type names.
fn int_max(want: &str) -> Option<u64> {
    match want {
        "u8" => Some(u8::MAX.into()),
        "u16" => Some(u16::MAX.into()),
        "u32" => Some(u32::MAX.into()),
        "u64" => Some(u64::MAX),
        _ => None,
    }
}

/// How serde describes a value in "invalid type" messages (`string "x"`, `integer `5``).
fn unexpected(v: &Value) -> String {
    use serde::de::Unexpected as U;
    match v {
        Value::Null => U::Unit.to_string(),
        Value::Bool(b) => U::Bool(*b).to_string(),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), ..) => U::Unsigned(u).to_string(),
            (_, Some(i), _) => U::Signed(i).to_string(),
            (.., Some(f)) => U::Float(f).to_string(),
            _ => String::new(),
        },
        Value::String(s) => U::Str(s).to_string(),
        Value::Sequence(_) => U::Seq.to_string(),
        Value::Mapping(_) => U::Map.to_string(),
        Value::Tagged(_) => U::Enum.to_string(),
    }
}

/// Removes the key (or list item) at a dotted relative path; false when there is none.
fn remove_at(root: &mut Value, rel: &str) -> bool {
    let (parent, last) = match rel.rsplit_once('.') {
        Some((p, l)) => (p, l),
        None => ("", rel),
    };
    let mut v = root;
    for seg in parent.split('.').filter(|s| !s.is_empty()) {
        v = match v {
            Value::Mapping(m) => match m.get_mut(seg) {
                Some(x) => x,
                None => return false,
            },
            Value::Sequence(s) => match seg.parse::<usize>().ok().and_then(|i| s.get_mut(i)) {
                Some(x) => x,
                None => return false,
            },
            _ => return false,
        };
    }
    // List items stay: removing one would renumber the paths of the items after it.
    match v {
        Value::Mapping(m) => m.remove(last).is_some(),
        _ => false,
    }
}

/// `a/b/../c` -> `a/c`, without touching the file system (for messages).
pub(super) fn tidy(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Whether setting `rel` of a node instance comes from `defaults:` (`dflt`): not its own
/// (`own`), not a matrix value.
fn from_defaults(own: &Value, dflt: &Value, from_matrix: &[(String, String)], rel: &str) -> bool {
    let by_matrix = from_matrix.iter().any(|(k, _)| rel == k || rel.starts_with(&format!("{k}.")));
    !by_matrix && value_at(own, rel).is_none() && value_at(dflt, rel).is_some()
}

fn value_at<'a>(root: &'a Value, rel: &str) -> Option<&'a Value> {
    let mut v = root;
    for seg in rel.split('.').filter(|s| !s.is_empty()) {
        v = match v {
            Value::Mapping(m) => m.get(seg)?,
            Value::Sequence(s) => s.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// `- flip` is short for `- { type: flip }` in lists of tagged items.
fn normalize_list_shorthand(v: Value, key: &str) -> Value {
    let Value::Mapping(mut m) = v else { return v };
    if let Some(Value::Sequence(items)) = m.get_mut(key) {
        for item in items.iter_mut() {
            if let Value::String(s) = item {
                let mut t = Mapping::new();
                t.insert("type".into(), Value::String(s.clone()));
                *item = Value::Mapping(t);
            }
        }
    }
    Value::Mapping(m)
}

/// The paper's presets: total = l1*CE + l2*L_embed + l3*KD + l4*SRRL.
fn preset_losses(name: &str) -> Option<Vec<(String, Mapping)>> {
    let names: &[&str] = match name {
        "kd" => &["ce", "kd"],
        "crd" => &["ce", "crd", "kd"],
        "srrl" => &["ce", "srrl"],
        "align_uniform" => &["ce", "align_uniform", "kd"],
        _ => return None,
    };
    Some(names.iter().map(|n| (n.to_string(), Mapping::new())).collect())
}

/// How a matrix value appears in an instance name: scalars as written, others as compact JSON.
pub(super) fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_string(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// Field names of each node kind's body, from the JSON Schema (so they never drift from the types).
pub(super) fn kind_fields(kind: &str) -> &'static [String] {
    static FIELDS: OnceLock<IndexMap<&'static str, Vec<String>>> = OnceLock::new();
    let all = FIELDS.get_or_init(|| {
        fn props<T: schemars::JsonSchema>() -> Vec<String> {
            let s = schemars::schema_for!(T);
            s.as_object()
                .and_then(|o| o.get("properties"))
                .and_then(|p| p.as_object())
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default()
        }
        IndexMap::from([
            ("train", props::<TrainSpec>()),
            ("finetune", props::<FinetuneSpec>()),
            ("distill", props::<DistillSpec>()),
            ("generate", props::<GenerateSpec>()),
            ("generator", props::<GeneratorSpec>()),
            ("evaluate", props::<EvaluateSpec>()),
            ("report", props::<ReportSpec>()),
            ("plugin", props::<PluginSpec>()),
        ])
    });
    all.get(kind).map(Vec::as_slice).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn codes(r: LoadResult) -> Vec<(Code, String, String)> {
        r.err().expect("an error").into_iter().map(|d| (d.code, d.path, d.message)).collect()
    }

    const NODES: &str = "datasets: { d: { source: builtin/digits } }\nmodels: { m: { arch: mlp, hidden: [8] } }\nnodes: { t: { train: { model: m, data: d } } }\n";

    /// Generous: each case takes milliseconds; before the fix they took seconds to hours.
    const FAST: Duration = Duration::from_secs(3);

    /// Regressions found by the fuzzer (tests/fuzz/crashes/): 25,000 compact block levels
    /// overflowed yaml-rust2's stack; 131,072 `[` after a two-line flow mapping took libyaml 43 s.
    #[test]
    fn nesting_is_bounded_before_any_parser_runs() {
        let deep_block = format!("{NODES}x:\n{}1\n", "- ".repeat(100_000));
        let deep_flow = format!("{NODES}a: {{ b:\nc, d: 8 }}\ne: {}\n", "[".repeat(131_072));
        for text in [deep_block, deep_flow] {
            let t = Instant::now();
            let got = codes(load_str(Path::new("x.yaml"), &text));
            assert_eq!(got[0].2, "invalid YAML: nested deeper than 128 levels", "{got:?}");
            assert!(t.elapsed() < FAST, "{:?}", t.elapsed());
        }
        // The scan counts only structure: brackets and dashes in quotes, comments and plain
        // scalars do not nest; 128 levels are fine, 129 are not.
        let fine =
            format!("{NODES}description: 'it''s [[[ {{ - - '\nprompt: \"a \\\" [[[[\" # [[[[ - -\nk: a[b\n");
        assert_eq!(too_deep_at(&fine), None);
        assert_eq!(too_deep_at(&format!("x: {}{}", "[".repeat(128), "]".repeat(128))), None);
        assert_eq!(too_deep_at(&format!("x: {}", "[".repeat(129))), Some((1, 132)));
        assert_eq!(too_deep_at(&format!("{}1", "- ".repeat(129))), Some((1, 257)));
        // A `\r` inside a comment ends it: what follows is a line of its own to the parsers.
        assert_eq!(too_deep_at(&format!("# x\r{}1", "- ".repeat(129))), Some((1, 261)));
        assert_eq!(too_deep_at(&format!("# x\r\n{}1", "- ".repeat(129))), Some((2, 257)));
        assert_eq!(too_deep_at(&format!("{}1", "- ".repeat(128))), None);
    }

    /// The fuzzer's hang (seed 1): a 64 KB string in `defaults.distill` reached 14,856 distill
    /// nodes x 3 seeds; each instance copied it and re-reported it, 8 s and 1.2 GB for a 1.9 MB
    /// file. A bad default is now typed once (`bad_defaults`), and copies are bounded
    /// (`MAX_SETTINGS_WEIGHT`): one `matrix` error, at once.
    #[test]
    fn a_large_default_copied_into_many_instances_is_bounded() {
        // `nodes` distill nodes whose defaults set `epochs` to a string of `len` bytes.
        let spec = |len: usize, nodes: usize, more: &str| {
            let mut s = format!(
                "datasets: {{ d: {{ source: builtin/digits }} }}\nmodels: {{ m: {{ arch: mlp, hidden: [8] }} }}\n\
                 defaults: {{ distill: {{ epochs: {} }} }}\nnodes:\n  t: {{ train: {{ model: m, data: d }} }}\n",
                "a".repeat(len)
            );
            for i in 0..nodes {
                s += &format!("  n{i}: {{ distill: {{ student: m, teacher: t, data: d, losses: kd }} }}\n");
            }
            s + more + "matrix: { seed: [0, 1, 2] }\n"
        };
        let spec_big = spec(65_000, 3000, "");
        let t0 = Instant::now();
        let got = codes(load_str(Path::new("t.yaml"), &spec_big));
        assert!(t0.elapsed() < FAST, "{:?}", t0.elapsed());
        assert!(got.iter().any(|(c, _, m)| *c == Code::Matrix && m.contains("MiB")), "{got:?}");
        // Below the bound, a bad default is reported once, at the defaults, whatever its size.
        let own = "  own: { distill: { student: m, teacher: t, data: d, losses: kd, epochs: x } }\n";
        let got = codes(load_str(Path::new("t.yaml"), &spec(10_000, 200, own)));
        let at = |p: &str| got.iter().filter(|(_, path, _)| path == p).count();
        assert_eq!(at("defaults.distill.epochs"), 1, "{got:?}");
        assert_eq!(at("nodes.own.distill.epochs"), 1, "a node's own bad value is its own: {got:?}");
        assert_eq!(got.len(), 2, "{got:?}");
    }

    #[test]
    fn experiment_file_that_is_a_device_is_refused() {
        let t = Instant::now();
        let c = codes(load(Path::new("/dev/zero")));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, Code::Io);
        assert!(c[0].2.ends_with("/dev/zero: not a regular file"), "{c:?}");
        assert!(t.elapsed() < FAST);
    }

    #[test]
    fn oversized_file_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        // Sparse: 17 MiB of nothing on disk.
        std::fs::File::create(&big).unwrap().set_len(17 << 20).unwrap();
        let c = codes(load(&big));
        assert!(c[0].2.contains("17825792 bytes, more than the 16 MiB a file may have"), "{c:?}");
        let root = dir.path().join("x.yaml");
        std::fs::write(&root, format!("include: big.yaml\n{NODES}")).unwrap();
        let c = codes(load(&root));
        assert_eq!((c[0].0, c[0].1.as_str()), (Code::Include, ""), "{c:?}");
        assert!(c[0].2.contains("more than the 16 MiB"), "{c:?}");
    }

    #[test]
    fn deep_flow_nesting_is_rejected_in_linear_time() {
        for depth in [200, 100_000, 4_000_000] {
            let text = format!("{NODES}description: {}{}\n", "[".repeat(depth), "]".repeat(depth));
            let t = Instant::now();
            let c = codes(load_str(Path::new("x.yaml"), &text));
            assert_eq!(
                c,
                [(Code::Syntax, String::new(), "invalid YAML: nested deeper than 128 levels".into())]
            );
            assert!(t.elapsed() < FAST, "depth {depth}: {:?}", t.elapsed());
        }
    }

    #[test]
    fn long_include_chain_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let n = 1_000;
        for i in 0..n {
            std::fs::write(dir.path().join(format!("p{i}.yaml")), format!("include: p{}.yaml\n", i + 1))
                .unwrap();
        }
        std::fs::write(dir.path().join(format!("p{n}.yaml")), NODES).unwrap();
        let t = Instant::now();
        let c = codes(load(&dir.path().join("p0.yaml")));
        assert!(t.elapsed() < FAST, "{:?}", t.elapsed());
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].0, c[0].2.as_str()), (Code::Include, "includes nested more than 32 deep"));
        // 32 levels are fine.
        let c = load(&dir.path().join(format!("p{}.yaml", n - 31)));
        assert!(c.is_ok(), "{:?}", c.err());
    }

    #[test]
    fn include_diamonds_are_bounded() {
        // Each file includes the next twice: 2^20 reads without a bound on the number of files.
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20 {
            let next = format!("p{}.yaml", i + 1);
            std::fs::write(dir.path().join(format!("p{i}.yaml")), format!("include: [{next}, {next}]\n"))
                .unwrap();
        }
        std::fs::write(dir.path().join("p20.yaml"), NODES).unwrap();
        let t = Instant::now();
        let c = codes(load(&dir.path().join("p0.yaml")));
        assert!(t.elapsed() < FAST, "{:?}", t.elapsed());
        assert!(
            c.iter()
                .all(|(code, _, m)| *code == Code::Include && m == "more than 256 files in one experiment"),
            "{c:?}"
        );
    }

    #[test]
    fn node_name_of_100000_characters_is_an_error_not_a_panic() {
        let name = "n".repeat(100_000);
        // A plain key is at most 1024 characters in YAML: this one is a syntax error, located.
        let text = format!("nodes:\n  {name}: {{ train: {{ model: m, data: d }} }}\n");
        let d = load_str(Path::new("x.yaml"), &text).err().unwrap();
        assert_eq!((d.len(), d[0].code), (1, Code::Syntax), "{d:?}");
        assert!(d[0].location.is_some());
        // An explicit key may be longer: the name's length is the error.
        let text = format!("{NODES}  ? {name}\n  : {{ train: {{ model: m, data: d }} }}\n").replace(
            "nodes: { t: { train: { model: m, data: d } } }\n",
            "nodes:\n  t: { train: { model: m, data: d } }\n",
        );
        let d = load_str(Path::new("x.yaml"), &text).err().unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].code, Code::OutOfRange);
        assert!(
            d[0].message.starts_with("name of 100000 characters `nnnnnnnnnnnnnnnnnnnn…`: at most 128"),
            "{}",
            d[0].message
        );
        assert_eq!(d[0].location.as_ref().map(|l| (l.line, l.col)), Some((5, 5)));
        let shown = crate::diag::render(&d, None);
        assert!(shown.len() < 2_000, "{shown}");
    }

    #[test]
    fn matrix_of_10_to_the_8_instances_is_refused_before_expanding() {
        let ten = "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]";
        let keys =
            ["seed", "epochs", "batch_size", "warmup_epochs", "label_smoothing", "grad_clip", "val", "init"];
        let m: Vec<String> = keys.iter().map(|k| format!("{k}: {ten}")).collect();
        let text = format!("{NODES}matrix: {{ {} }}\n", m.join(", "));
        let t = Instant::now();
        let c = codes(load_str(Path::new("x.yaml"), &text));
        assert!(t.elapsed() < FAST, "{:?}", t.elapsed());
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].0, c[0].1.as_str()), (Code::Matrix, "matrix"));
        assert!(
            c[0].2.contains("`t` would expand into 100000000 instances, more than the 10000 a node may have"),
            "{}",
            c[0].2
        );
    }

    /// `mse` was listed as a loss name without a variant: it passed the name check and failed
    /// in serde with a message about the `loss` tag, which the file never writes.
    #[test]
    fn a_loss_without_a_variant_is_an_unknown_loss_listing_the_real_ones() {
        let text = NODES.replace(
            "nodes: { t: { train: { model: m, data: d } } }",
            "nodes:\n  t: { train: { model: m, data: d } }\n  k: { distill: { teacher: t, student: m, data: d, losses: { ce: 1, mse: 1, kdd: 1 } } }",
        );
        let d = load_str(Path::new("x.yaml"), &text).expect_err("an error");
        let got: Vec<(Code, &str, &str, &str)> = d
            .iter()
            .map(|d| (d.code, d.path.as_str(), d.message.as_str(), d.help.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    Code::UnknownKey,
                    "nodes.k.distill.losses.mse",
                    "unknown loss `mse`",
                    "known losses: ce, kd, align_uniform, crd, srrl, fitnet, cosine"
                ),
                (Code::UnknownKey, "nodes.k.distill.losses.kdd", "unknown loss `kdd`", "did you mean `kd`?"),
            ]
        );
    }

    #[test]
    fn matrix_values_that_are_equal_numbers_repeat() {
        for (a, b) in [("2", "2.0"), ("0.1", "1e-1"), ("a", "'a'"), ("{ x: 1, y: 2 }", "{ y: 2, x: 1.0 }")] {
            let v = |s: &str| serde_yaml::from_str::<Value>(s).unwrap();
            assert_eq!(matrix::same_value_key(&v(a)), matrix::same_value_key(&v(b)), "{a} vs {b}");
        }
        let v = |s: &str| serde_yaml::from_str::<Value>(s).unwrap();
        assert_ne!(matrix::same_value_key(&v("2")), matrix::same_value_key(&v("'2'")));
        assert_ne!(matrix::same_value_key(&v("2")), matrix::same_value_key(&v("2.5")));
    }
}
