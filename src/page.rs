//! One self-contained HTML page per experiment (`distillery report FILE --format html`): every
//! report table with its plots inline (SVG), the graph drawn, each node's settings and cache key,
//! whether its result is stored, and links to its MLflow runs. No scripts, no network: it opens
//! from a file, offline.

use std::fmt::Write as _;

use crate::report::{self, Format, Table, escape_html as esc, plot::Plot};

/// A report as the page shows it.
pub struct PageReport {
    pub name: String,
    pub note: Option<String>,
    pub table: Table,
    pub plots: Vec<(&'static str, Plot)>,
}

/// A node as the page lists it.
pub struct PageNode {
    pub name: String,
    pub kind: String,
    pub key: String,
    pub stored: bool,
    /// Its settings as its MLflow params are (dotted keys).
    pub params: Vec<(String, String)>,
    /// Pages of its MLflow runs.
    pub runs: Vec<String>,
}

const CSS: &str = "nav a{margin-right:1em}section{margin-bottom:2.5em}figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}details{margin:.2em 0}summary{cursor:pointer}code{font-size:.9em}table.params td,table.params th{padding:.1em .6em;text-align:left;border-bottom:1px solid #eee;font-size:.85em}.graph-wrap{overflow-x:auto;border:1px solid #ddd;padding:.5em}.stored{color:#2a2}.missing{color:#a60}";

pub fn experiment_page(
    experiment: &str,
    reports: &[PageReport],
    graph_svg: &str,
    nodes: &[PageNode],
) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{} — distillery</title>\n<style>{}{}</style>\n</head>\n<body>\n<h1>{}</h1>\n<nav><a href=\"#reports\">Reports</a><a href=\"#graph\">Graph</a><a href=\"#nodes\">Nodes</a></nav>\n",
        esc(experiment),
        report::TABLE_CSS,
        CSS,
        esc(experiment)
    );
    let _ = writeln!(s, "<section id=\"reports\">\n<h2>Reports</h2>");
    if reports.is_empty() {
        let _ = writeln!(s, "<p>This experiment declares no report node.</p>");
    }
    for r in reports {
        let _ = writeln!(s, "<article id=\"report-{}\">\n<h3>{}</h3>", esc(&r.name), esc(&r.name));
        if let Some(n) = &r.note {
            let _ = writeln!(s, "<p class=\"note\">{}</p>", esc(n));
        }
        s.push_str(&report::render(&r.table, Format::Html));
        for (stem, p) in &r.plots {
            let _ = writeln!(
                s,
                "<figure class=\"plot\" id=\"{}-{stem}\">{}</figure>",
                esc(&r.name),
                strip_xml_header(&p.svg)
            );
        }
        let _ = writeln!(s, "</article>");
    }
    let _ = writeln!(
        s,
        "</section>\n<section id=\"graph\">\n<h2>Graph</h2>\n<div class=\"graph-wrap\">\n{graph_svg}</div>\n</section>"
    );
    let _ = writeln!(s, "<section id=\"nodes\">\n<h2>Nodes</h2>");
    for n in nodes {
        let state = if n.stored {
            "<span class=\"stored\">stored</span>"
        } else {
            "<span class=\"missing\">not stored</span>"
        };
        let _ = write!(
            s,
            "<details id=\"node-{}\"><summary><b>{}</b> · {} · key <code>{}</code> · {state}",
            esc(&n.name),
            esc(&n.name),
            esc(&n.kind),
            esc(&n.key[..n.key.len().min(12)])
        );
        for (i, u) in n.runs.iter().enumerate() {
            let _ = write!(
                s,
                " · <a href=\"{}\">MLflow run{}</a>",
                esc(u),
                if n.runs.len() > 1 { format!(" {}", i + 1) } else { String::new() }
            );
        }
        let _ = writeln!(
            s,
            "</summary>\n<p>cache key <code>{}</code></p>\n<table class=\"params\">",
            esc(&n.key)
        );
        for (k, v) in &n.params {
            let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
        }
        let _ = writeln!(s, "</table></details>");
    }
    s.push_str("</section>\n</body>\n</html>\n");
    s
}

/// An SVG document's body for inlining (no `<?xml ...?>` line).
fn strip_xml_header(svg: &str) -> &str {
    match svg.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map_or(svg, |(_, body)| body.trim_start()),
        None => svg,
    }
}
