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

/// The graph drawn as SVG for a web page: columns by depth (inputs left of their readers), a
/// box a vertex (datasets rounded, nodes square, labelled with the kind and short key), an
/// arrow an edge. Past `max` vertices it is a note instead (a page must stay readable).
pub fn to_svg(g: &Graph, max: usize) -> String {
    let esc =
        |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let n = g.order.len();
    if n > max {
        return format!(
            "<p class=\"note\">The graph has {n} vertices, more than a page draws ({max}): `distillery graph FILE --format dot` prints it.</p>\n"
        );
    }
    // Depth: the longest path from an input-less vertex (the order puts inputs first).
    let mut depth: std::collections::HashMap<petgraph::graph::NodeIndex, usize> = Default::default();
    for &ix in &g.order {
        let d = g
            .dag
            .neighbors_directed(ix, petgraph::Direction::Incoming)
            .filter_map(|p| depth.get(&p).map(|d| d + 1))
            .max()
            .unwrap_or(0);
        depth.insert(ix, d);
    }
    let (bw, bh, gx, gy) = (190.0, 38.0, 60.0, 14.0);
    let mut rows_in: Vec<usize> = Vec::new();
    let mut pos = std::collections::HashMap::new();
    for &ix in &g.order {
        let d = depth[&ix];
        if rows_in.len() <= d {
            rows_in.resize(d + 1, 0);
        }
        let (x, y) = (10.0 + d as f64 * (bw + gx), 10.0 + rows_in[d] as f64 * (bh + gy));
        rows_in[d] += 1;
        pos.insert(ix, (x, y));
    }
    let width = 20.0 + rows_in.len() as f64 * (bw + gx);
    let height = 20.0 + rows_in.iter().copied().max().unwrap_or(0) as f64 * (bh + gy);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"graph\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"6\" markerHeight=\"6\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#888\"/></marker></defs>\n"
    );
    for e in g.dag.edge_indices() {
        let (a, b) = g.dag.edge_endpoints(e).expect("an edge has ends");
        let ((ax, ay), (bx, by)) = (pos[&a], pos[&b]);
        let _ = writeln!(
            s,
            "<line x1=\"{:.0}\" y1=\"{:.0}\" x2=\"{:.0}\" y2=\"{:.0}\" stroke=\"#888\" marker-end=\"url(#arrow)\"/>",
            ax + bw,
            ay + bh / 2.0,
            bx,
            by + bh / 2.0
        );
    }
    for &ix in &g.order {
        let (x, y) = pos[&ix];
        let (name, kind, rx, fill) = match &g.dag[ix] {
            Vertex::Dataset { name } => (name.as_str(), "dataset", 12, "#eef3fb"),
            Vertex::Node { name, kind } => (name.as_str(), *kind, 2, "#f7f7f2"),
        };
        let shown: String = if name.chars().count() > 28 {
            name.chars().take(27).chain(['…']).collect()
        } else {
            name.to_string()
        };
        let _ = writeln!(
            s,
            "<g><title>{}</title><rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{bw:.0}\" height=\"{bh:.0}\" rx=\"{rx}\" fill=\"{fill}\" stroke=\"#555\"/><text x=\"{:.0}\" y=\"{:.0}\">{}</text><text x=\"{:.0}\" y=\"{:.0}\" fill=\"#777\">{} {}</text></g>",
            esc(name),
            x + 6.0,
            y + 15.0,
            esc(&shown),
            x + 6.0,
            y + 30.0,
            kind,
            g.key(ix).short()
        );
    }
    s.push_str("</svg>\n");
    s
}
