//! Reading experiment files: includes, defaults, shorthands, typed deserialisation, diagnostics.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::matrix::{self, RawNode};
use super::types::*;
use super::validate::Check;
use super::yaml_index::SpanIndex;
use super::{Device, Experiment, LoadResult};
use crate::diag::{Code, Diagnostic, Location, SourceFile, did_you_mean};

const TOP_KEYS: [&str; 10] = [
    "experiment",
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
const NODE_EXTRAS: [&str; 3] = ["seed", "matrix", "description"];

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
    stack: Vec<PathBuf>,
    /// Declared names whose settings are invalid (reported already).
    pub(super) invalid: HashSet<String>,
}

fn join(path: &str, seg: &str) -> String {
    if path.is_empty() { seg.to_string() } else { format!("{path}.{seg}") }
}

fn key_str(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
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
        let text = match text {
            Some(t) => t,
            None => match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    let (code, what) = match included_at {
                        Some(_) => (Code::Include, "cannot read included file"),
                        None => (Code::Io, "cannot read experiment file"),
                    };
                    self.diags.push(
                        Diagnostic::new(code, "", format!("{what} {}: {e}", path.display()))
                            .with_help("check the path; relative includes are relative to the including file")
                            .at(included_at),
                    );
                    return None;
                }
            },
        };
        self.files.push(path.to_path_buf());
        let file = SourceFile::new(path, text);
        let value: Value = match serde_yaml::from_str(&file.text) {
            Ok(v) => v,
            Err(e) => {
                let loc = e.location().map(|l| Location {
                    file: file.clone(),
                    line: l.line(),
                    col: l.column(),
                    len: 1,
                });
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                self.diags.push(
                    Diagnostic::new(Code::Syntax, "", format!("invalid YAML: {msg}"))
                        .with_help("fix the YAML syntax at this position (indentation, brackets, quotes, duplicate keys)")
                        .at(loc),
                );
                return None;
            }
        };
        let mut spans = SpanIndex::build(&file);
        let mut map = match value {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            _ => {
                self.diags.push(
                    Diagnostic::new(Code::WrongType, "", "an experiment file must be a mapping of keys")
                        .with_help("start with `experiment: <name>` and `nodes:`")
                        .at(spans.value("")),
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
        self.stack.push(tidy(path));
        let mut base = Value::Mapping(Mapping::new());
        let mut base_spans = SpanIndex::default();
        for (i, rel) in list {
            let at = if i == usize::MAX { "include".to_string() } else { format!("include.{i}") };
            let loc = spans.value(&at);
            let inc = tidy(&dir.join(&rel));
            let same =
                |p: &PathBuf| p == &inc || (p.canonicalize().ok() == inc.canonicalize().ok() && inc.exists());
            if self.stack.iter().any(same) {
                let chain: Vec<String> = self
                    .stack
                    .iter()
                    .map(|p| p.display().to_string())
                    .chain([inc.display().to_string()])
                    .collect();
                self.diags.push(
                    Diagnostic::new(Code::Include, at, format!("include cycle: {}", chain.join(" -> ")))
                        .with_help("remove one of these includes")
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

    /// Deserialises `v` into `T`, reporting failures with their key path.
    pub(super) fn typed<T: DeserializeOwned>(
        &mut self,
        v: &Value,
        path: &str,
        node: Option<&str>,
        rename: &dyn Fn(&str) -> String,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(t) => Some(t),
            Err(e) => {
                let mut rel = String::new();
                for seg in e.path().iter() {
                    match seg {
                        serde_path_to_error::Segment::Seq { index } => rel = join(&rel, &index.to_string()),
                        serde_path_to_error::Segment::Map { key } => rel = join(&rel, key),
                        _ => {}
                    }
                }
                let full = join(path, &rename(&rel));
                let d = self.serde_diag(&full, v, &rel, &e.inner().to_string());
                self.diags.push(match node {
                    Some(n) => d.with_node(n),
                    None => d,
                });
                None
            }
        }
    }

    fn serde_diag(&self, full: &str, root: &Value, rel: &str, msg: &str) -> Diagnostic {
        let quoted =
            |s: &str| -> Vec<String> { s.split('`').skip(1).step_by(2).map(str::to_string).collect() };
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let field = rest.split('`').next().unwrap_or_default();
            let expected = quoted(rest.split_once("expected").map(|x| x.1).unwrap_or_default());
            let path = if full.ends_with(&format!(".{field}")) || full == field {
                full.to_string()
            } else {
                join(full, field)
            };
            let help = match did_you_mean(field, expected.iter().map(String::as_str)) {
                Some(s) => format!("did you mean `{s}`?"),
                None if expected.is_empty() => "remove this key".to_string(),
                None => format!("valid keys here: {}", expected.join(", ")),
            };
            return Diagnostic::new(Code::UnknownKey, path.clone(), format!("unknown key `{field}`"))
                .with_help(help)
                .at(self.spans.key(&path));
        }
        if let Some(rest) = msg.strip_prefix("unknown variant `") {
            let variant = rest.split('`').next().unwrap_or_default();
            let expected = quoted(rest.split_once("expected").map(|x| x.1).unwrap_or_default());
            // Internally tagged enums report at the enclosing map: point at the tag's value.
            let mut path = full.to_string();
            if let Some(Value::Mapping(m)) = value_at(root, rel) {
                if let Some((k, _)) = m.iter().find(|(_, v)| v.as_str() == Some(variant)) {
                    path = join(full, &key_str(k));
                }
            }
            let help = match did_you_mean(variant, expected.iter().map(String::as_str)) {
                Some(s) => format!("did you mean `{s}`? (valid: {})", expected.join(", ")),
                None => format!("valid values: {}", expected.join(", ")),
            };
            return Diagnostic::new(Code::UnknownVariant, path.clone(), format!("unknown value `{variant}`"))
                .with_help(help)
                .at(self.spans.value(&path));
        }
        if let Some(rest) = msg.strip_prefix("missing field `") {
            let field = rest.split('`').next().unwrap_or_default();
            return Diagnostic::new(Code::MissingKey, full, format!("missing key `{field}`"))
                .with_help(format!("add `{field}:` here (see docs/spec.md)"))
                .at(self.spans.key(full));
        }
        if let Some(rest) = msg.strip_prefix("invalid value: integer `-") {
            let n = rest.split('`').next().unwrap_or_default();
            return Diagnostic::new(Code::OutOfRange, full, format!("expected >= 0, got -{n}"))
                .with_help("use a non-negative whole number")
                .at(self.spans.value(full));
        }
        if let Some(rest) = msg.strip_prefix("invalid type: ") {
            let (got, want) = rest.split_once(", expected ").unwrap_or((rest, "another type"));
            let want = humanize_expected(want);
            let got = got.replace("sequence", "list").replace("map", "mapping");
            return Diagnostic::new(Code::WrongType, full, format!("expected {want}, got {got}"))
                .with_help(format!("write {want} here"))
                .at(self.spans.value(full));
        }
        if msg.starts_with("data did not match any variant") {
            return Diagnostic::new(Code::WrongType, full, "value has the wrong shape")
                .with_help("see docs/spec.md for what this key accepts")
                .at(self.spans.value(full));
        }
        Diagnostic::new(Code::WrongType, full, msg.to_string()).at(self.spans.value(full))
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

    fn check_name(&mut self, name: &str, path: &str) {
        let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            self.err(Code::OutOfRange, path, format!("invalid name `{name}`")).help =
                Some("names use letters, digits, `_` and `-` only".to_string());
        }
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

        let defaults = self.defaults(&map);

        let mut datasets = IndexMap::new();
        for (name, v) in self.section(&map, "datasets") {
            let p = format!("datasets.{name}");
            self.check_name(&name, &p);
            let v = normalize_list_shorthand(v, "transforms");
            match self.typed::<DatasetSpec>(&v, &p, Some(&name), &none) {
                Some(d) => {
                    let mut c = Check::new(&mut self.diags, &self.spans, &name);
                    c.dataset(&p, &d);
                    datasets.insert(name, d);
                }
                None => {
                    self.invalid.insert(name);
                }
            }
        }
        let mut models = IndexMap::new();
        for (name, v) in self.section(&map, "models") {
            let p = format!("models.{name}");
            self.check_name(&name, &p);
            match self.typed::<ModelSpec>(&v, &p, Some(&name), &none) {
                Some(m) => {
                    let mut c = Check::new(&mut self.diags, &self.spans, &name);
                    c.model(&p, &m);
                    models.insert(name, m);
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
        for (name, v) in self.section(&map, "nodes") {
            let p = format!("nodes.{name}");
            self.check_name(&name, &p);
            if datasets.contains_key(&name) {
                self.err(Code::Conflict, &p, format!("`{name}` names both a dataset and a node")).help =
                    Some("rename one of them: references must be unambiguous".to_string());
            }
            match self.raw_node(&name, v, &defaults) {
                Some(raw) => raws.push(raw),
                None => {
                    self.invalid.insert(name);
                }
            }
        }
        let nodes = matrix::expand(self, raws, &global_matrix, seed);

        Experiment {
            name,
            description,
            seed,
            device,
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

    pub(super) fn matrix_entries(&mut self, v: &Value, path: &str) -> Vec<(String, Vec<Value>)> {
        let Value::Mapping(m) = v else {
            self.err(Code::WrongType, path, "expected a mapping of key -> list of values").help =
                Some("e.g. `matrix: { seed: [0, 1, 2] }`".to_string());
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, vals) in m {
            let k = key_str(k);
            let p = join(path, &k);
            match vals {
                Value::Sequence(items) if !items.is_empty() => {
                    if k == "seed" && items.iter().any(|i| i.as_u64().is_none()) {
                        self.err(Code::WrongType, &p, "seeds must be non-negative whole numbers");
                        continue;
                    }
                    let mut seen = HashSet::new();
                    if items.iter().any(|i| !seen.insert(render_value(i))) {
                        self.err(Code::Matrix, &p, "repeated value in matrix list").help =
                            Some("each value gives one instance; list it once".to_string());
                        continue;
                    }
                    out.push((k, items.clone()));
                }
                _ => {
                    self.err(Code::Matrix, &p, "expected a non-empty list of values").help =
                        Some(format!("e.g. `{k}: [a, b]`"));
                }
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
        if let Some(d) = defaults.get(&kind) {
            body = merge(d.clone(), body);
            self.spans.alias_prefix(&format!("defaults.{kind}"), &body_path);
        }
        Some(RawNode { base: name.to_string(), kind, body, seed, matrix: node_matrix, description })
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
                            let help = match did_you_mean(&k, LOSS_NAMES) {
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

    /// Typed kind body of one node instance, validated.
    pub(super) fn parse_kind(&mut self, raw: &RawNode, body: Value, instance: &str) -> Option<NodeKind> {
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
        let kind = match raw.kind.as_str() {
            "train" => NodeKind::Train(self.typed(body, &path, node, &rename)?),
            "finetune" => NodeKind::Finetune(self.typed(body, &path, node, &rename)?),
            "distill" => NodeKind::Distill(self.typed(body, &path, node, &rename)?),
            "generate" => NodeKind::Generate(self.typed(body, &path, node, &rename)?),
            "evaluate" => NodeKind::Evaluate(self.typed(body, &path, node, &rename)?),
            "report" => NodeKind::Report(self.typed(body, &path, node, &rename)?),
            "plugin" => NodeKind::Plugin(self.typed(body, &path, node, &rename)?),
            other => unreachable!("kind `{other}` was checked against NODE_KINDS"),
        };
        let mut c = Check::new(&mut self.diags, &self.spans, instance);
        c.node_kind(&path, &kind, &loss_names);
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
            ("evaluate", props::<EvaluateSpec>()),
            ("report", props::<ReportSpec>()),
            ("plugin", props::<PluginSpec>()),
        ])
    });
    all.get(kind).map(Vec::as_slice).unwrap_or(&[])
}
