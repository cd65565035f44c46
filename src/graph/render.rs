//! The graph as Graphviz dot or Mermaid text.

use std::fmt::Write as _;

use super::{Graph, Vertex};

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Graphviz: datasets are cylinders, nodes boxes labelled with their kind and short key.
pub fn to_dot(g: &Graph, title: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", dot_escape(title));
    let _ = writeln!(out, "  rankdir=LR;");
    let _ = writeln!(out, "  node [fontname=\"Helvetica\"];");
    for &ix in &g.order {
        let key = g.key(ix).short();
        match &g.dag[ix] {
            Vertex::Dataset { name } => {
                let _ = writeln!(
                    out,
                    "  \"{}\" [shape=cylinder, label=\"{}\\ndataset {}\"];",
                    dot_escape(name),
                    dot_escape(name),
                    key
                );
            }
            Vertex::Node { name, kind } => {
                let _ = writeln!(
                    out,
                    "  \"{}\" [shape=box, label=\"{}\\n{} {}\"];",
                    dot_escape(name),
                    dot_escape(name),
                    kind,
                    key
                );
            }
        }
    }
    for &ix in &g.order {
        let mut users: Vec<_> = g.dag.neighbors_directed(ix, petgraph::Outgoing).collect();
        users.sort();
        for u in users {
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\";",
                dot_escape(g.dag[ix].name()),
                dot_escape(g.dag[u].name())
            );
        }
    }
    out.push_str("}\n");
    out
}

fn mermaid_escape(s: &str) -> String {
    s.replace('"', "#quot;")
}

/// Mermaid flowchart (renders in GitHub Markdown): ids are positional, labels carry the names.
pub fn to_mermaid(g: &Graph) -> String {
    let mut out = String::from("flowchart LR\n");
    let id = |ix: petgraph::graph::NodeIndex| format!("v{}", ix.index());
    for &ix in &g.order {
        match &g.dag[ix] {
            Vertex::Dataset { name } => {
                let _ = writeln!(out, "  {}[(\"{}\")]", id(ix), mermaid_escape(name));
            }
            Vertex::Node { name, kind } => {
                let _ = writeln!(out, "  {}[\"{}<br/><i>{}</i>\"]", id(ix), mermaid_escape(name), kind);
            }
        }
    }
    for &ix in &g.order {
        let mut users: Vec<_> = g.dag.neighbors_directed(ix, petgraph::Outgoing).collect();
        users.sort();
        for u in users {
            let _ = writeln!(out, "  {} --> {}", id(ix), id(u));
        }
    }
    out
}
