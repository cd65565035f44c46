//! Matrix expansion: one declared node -> one instance per combination of matrix values.
//!
//! Rules (docs/spec.md, "Matrix"):
//! - a node's own dimensions are its `matrix:` keys, then the global `matrix:` keys that apply to
//!   it: `seed` for nodes that train (unless the node fixes `seed:`), any other key whose first
//!   segment is a field of the node's kind;
//! - a node that references expanded nodes inherits their dimensions and references the
//!   instance with the same values (so `kd[seed=1]` distils from `teacher[seed=1]`);
//! - report nodes do not expand: a row names every instance of a node, and the report shows
//!   mean ± std over seeds.

use std::collections::{HashMap, HashSet};

use serde_yaml::{Mapping, Value};

use super::Node;
use super::load::{Loader, kind_fields, render_value};
use super::types::{NodeKind, Target};
use crate::diag::Code;

pub(super) struct RawNode {
    pub base: String,
    pub kind: String,
    /// The kind body, shorthands expanded, defaults merged.
    pub body: Value,
    pub seed: Option<u64>,
    pub matrix: Vec<(String, Vec<Value>)>,
    pub description: Option<String>,
}

type Assignment = Vec<(String, Value)>;

struct Instance {
    assignment: Assignment,
    kind: NodeKind,
}

pub(super) fn expand(
    l: &mut Loader,
    raws: Vec<RawNode>,
    global: &[(String, Vec<Value>)],
    default_seed: u64,
) -> Vec<crate::spec::Node> {
    // 1. Own instances of every node.
    let mut own: Vec<Vec<Instance>> = Vec::with_capacity(raws.len());
    let mut dims: Vec<Vec<String>> = Vec::with_capacity(raws.len());
    for raw in &raws {
        let d = own_dims(l, raw, global);
        dims.push(d.iter().map(|(k, _)| k.clone()).collect());
        let mut instances = Vec::new();
        for assignment in cartesian(&d) {
            let mut body = raw.body.clone();
            for (k, v) in &assignment {
                if k != "seed" {
                    set_path(&mut body, k, v.clone());
                }
            }
            let name = instance_name(&raw.base, &assignment);
            match l.parse_kind(raw, body, &name) {
                Some(kind) => instances.push(Instance { assignment, kind }),
                None => {
                    l.invalid.insert(raw.base.clone());
                }
            }
        }
        own.push(instances);
    }

    // 2. Order declared nodes so that references come first; nodes in a cycle keep their own
    // instances (the graph layer reports the cycle with its whole path).
    let index: HashMap<&str, usize> = raws.iter().enumerate().map(|(i, r)| (r.base.as_str(), i)).collect();
    let deps: Vec<Vec<usize>> = own
        .iter()
        .map(|insts| {
            let mut d: Vec<usize> = Vec::new();
            for inst in insts {
                for r in inst.kind.refs() {
                    if let Target::Node(_) | Target::NodeOrDataset = r.target {
                        if let Some(&j) = index.get(r.name.as_str()) {
                            if !d.contains(&j) {
                                d.push(j);
                            }
                        }
                    }
                }
            }
            d
        })
        .collect();
    let order = topo_order(&deps);

    // 3. Inherit the dimensions of referenced nodes, in dependency order.
    let mut finals: Vec<Option<Vec<Instance>>> = (0..raws.len()).map(|_| None).collect();
    let mut final_dims: Vec<Vec<String>> = dims.clone();
    for &i in &order {
        let raw = &raws[i];
        let insts = std::mem::take(&mut own[i]);
        if raw.kind == "report" || deps[i].iter().all(|&j| finals[j].is_none()) {
            finals[i] = Some(insts);
            continue;
        }
        // Values of inherited dimensions, in order of first appearance.
        let mut inherited: Vec<(String, Vec<Value>)> = Vec::new();
        for &j in &deps[i] {
            for d in &final_dims[j] {
                if final_dims[i].contains(d) || inherited.iter().any(|(k, _)| k == d) {
                    continue;
                }
                let mut vals: Vec<Value> = Vec::new();
                for inst in finals[j].iter().flatten() {
                    if let Some((_, v)) = inst.assignment.iter().find(|(k, _)| k == d) {
                        if !vals.contains(v) {
                            vals.push(v.clone());
                        }
                    }
                }
                inherited.push((d.clone(), vals));
            }
        }
        let mut out = Vec::new();
        let mut reported = HashSet::new();
        for inst in insts {
            for extra in cartesian(&inherited) {
                let mut assignment = inst.assignment.clone();
                assignment.extend(extra);
                sort_seed_last(&mut assignment);
                let name = instance_name(&raw.base, &assignment);
                let mut kind = inst.kind.clone();
                let mut missing: Option<(String, String)> = None;
                kind.rename_node_refs(&mut |r| {
                    let j = *index.get(r)?;
                    let candidates = finals[j].as_ref().filter(|c| !c.is_empty())?; // empty: invalid, reported
                    let found = candidates.iter().find(|c| {
                        c.assignment.iter().all(|(k, v)| assignment.iter().any(|(k2, v2)| k == k2 && v == v2))
                    });
                    match found {
                        Some(c) => Some(instance_name(&raws[j].base, &c.assignment)),
                        None => {
                            missing.get_or_insert((r.to_string(), name.clone()));
                            None
                        }
                    }
                });
                if let Some((target, inst_name)) = missing {
                    if reported.insert(target.clone()) {
                        let p = format!("nodes.{}", raw.base);
                        let d = l
                            .diags_push(Code::Matrix, &p, format!("`{inst_name}` needs an instance of `{target}` with the same matrix values, and there is none"));
                        d.node = Some(raw.base.clone());
                        d.help = Some(format!("give `{}` and `{target}` the same matrix values", raw.base));
                    }
                    continue;
                }
                out.push(Instance { assignment, kind });
            }
        }
        for (k, _) in inherited {
            final_dims[i].push(k);
        }
        finals[i] = Some(out);
    }

    // 4. Nodes, in declaration order.
    let mut nodes = Vec::new();
    for (raw, insts) in raws.iter().zip(finals) {
        for inst in insts.unwrap_or_default() {
            let seed = inst
                .assignment
                .iter()
                .find(|(k, _)| k == "seed")
                .and_then(|(_, v)| v.as_u64())
                .or(raw.seed)
                .unwrap_or(default_seed);
            nodes.push(Node {
                name: instance_name(&raw.base, &inst.assignment),
                base: raw.base.clone(),
                assignment: inst.assignment.iter().map(|(k, v)| (k.clone(), render_value(v))).collect(),
                seed,
                kind: inst.kind,
                description: raw.description.clone(),
            });
        }
    }
    nodes
}

fn own_dims(l: &mut Loader, raw: &RawNode, global: &[(String, Vec<Value>)]) -> Vec<(String, Vec<Value>)> {
    let fields = kind_fields(&raw.kind);
    let seeded = matches!(raw.kind.as_str(), "train" | "finetune" | "distill" | "generate");
    let mut d: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, vals) in &raw.matrix {
        let first = k.split('.').next().unwrap_or_default();
        if k != "seed" && !fields.iter().any(|f| f == first) {
            let p = format!("nodes.{}.matrix.{k}", raw.base);
            let help = match crate::diag::did_you_mean(first, fields.iter().map(String::as_str)) {
                Some(s) => {
                    format!("did you mean `{s}`? matrix keys are paths into the `{}` settings", raw.kind)
                }
                None => {
                    format!("matrix keys are paths into the `{}` settings: {}", raw.kind, fields.join(", "))
                }
            };
            let diag = l.diags_push(Code::UnknownKey, &p, format!("`{k}` is not a `{}` setting", raw.kind));
            diag.node = Some(raw.base.clone());
            diag.help = Some(help);
            continue;
        }
        d.push((k.clone(), vals.clone()));
    }
    for (k, vals) in global {
        if d.iter().any(|(k2, _)| k2 == k) {
            continue;
        }
        let applies = if k == "seed" {
            seeded && raw.seed.is_none()
        } else {
            let first = k.split('.').next().unwrap_or_default();
            let parent_exists = match k.rsplit_once('.') {
                Some((parent, _)) => get_path(&raw.body, parent).is_some(),
                None => true,
            };
            fields.iter().any(|f| f == first) && parent_exists
        };
        if applies {
            d.push((k.clone(), vals.clone()));
        }
    }
    let mut d2 = d;
    d2.sort_by_key(|(k, _)| k == "seed");
    d2
}

fn sort_seed_last(a: &mut Assignment) {
    a.sort_by_key(|(k, _)| k == "seed");
}

fn cartesian(dims: &[(String, Vec<Value>)]) -> Vec<Assignment> {
    let mut out: Vec<Assignment> = vec![Vec::new()];
    for (k, vals) in dims {
        let mut next = Vec::with_capacity(out.len() * vals.len());
        for prefix in &out {
            for v in vals {
                let mut a = prefix.clone();
                a.push((k.clone(), v.clone()));
                next.push(a);
            }
        }
        out = next;
    }
    out
}

pub(super) fn instance_name(base: &str, assignment: &Assignment) -> String {
    if assignment.is_empty() {
        return base.to_string();
    }
    let parts: Vec<String> = assignment.iter().map(|(k, v)| format!("{k}={}", render_value(v))).collect();
    format!("{base}[{}]", parts.join(","))
}

/// Kahn's algorithm; nodes left in cycles are appended in declaration order.
fn topo_order(deps: &[Vec<usize>]) -> Vec<usize> {
    let n = deps.len();
    let mut indegree: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, d) in deps.iter().enumerate() {
        for &j in d {
            users[j].push(i);
        }
    }
    let mut ready: std::collections::VecDeque<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    let mut done = vec![false; n];
    while let Some(i) = ready.pop_front() {
        order.push(i);
        done[i] = true;
        for &u in &users[i] {
            indegree[u] -= 1;
            if indegree[u] == 0 {
                ready.push_back(u);
            }
        }
    }
    order.extend((0..n).filter(|&i| !done[i]));
    order
}

fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path.split('.') {
        cur = cur.as_mapping()?.get(seg)?;
    }
    Some(cur)
}

/// Sets a dotted path in a mapping, creating (or replacing non-mapping) parents as needed:
/// `losses.kd.temperature` turns `kd: 1` into `kd: { temperature: .. }` (weight defaults to 1).
fn set_path(v: &mut Value, path: &str, new: Value) {
    let mut cur = v;
    let segs: Vec<&str> = path.split('.').collect();
    for (i, seg) in segs.iter().enumerate() {
        if let Value::Number(_) = cur {
            // A loss given by its weight alone (`kd: 2`) keeps that weight.
            let mut m = Mapping::new();
            m.insert("weight".into(), cur.clone());
            *cur = Value::Mapping(m);
        } else if !cur.is_mapping() {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = cur else { unreachable!("just made a mapping") };
        let key = Value::String(seg.to_string());
        if i + 1 == segs.len() {
            m.insert(key, new);
            return;
        }
        cur = m.entry(key).or_insert_with(|| Value::Mapping(Mapping::new()));
    }
}
