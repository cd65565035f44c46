//! A [`Table`] as Markdown, CSV, LaTeX, JSON or an HTML table.

use std::fmt::Write as _;

use super::{Cell, Table};

/// What `distillery report --format` and a report node's `format:` write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Md,
    Csv,
    Latex,
    Json,
    Html,
}

impl Format {
    /// The file extension of the format.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Md => "md",
            Format::Csv => "csv",
            Format::Latex => "tex",
            Format::Json => "json",
            Format::Html => "html",
        }
    }
}

pub fn render(t: &Table, f: Format) -> String {
    match f {
        Format::Md => markdown(t),
        Format::Csv => csv(t),
        Format::Latex => latex(t),
        Format::Json => serde_json::to_string_pretty(t).expect("a table serialises") + "\n",
        Format::Html => html(t),
    }
}

fn lines(t: &Table, mark: impl Fn(&Cell) -> String) -> Vec<Vec<String>> {
    t.rows
        .iter()
        .map(|r| std::iter::once(r.label.clone()).chain(r.cells.iter().map(&mark)).collect())
        .collect()
}

fn markdown(t: &Table) -> String {
    let mut s = String::new();
    if let Some(title) = &t.title {
        let _ = writeln!(s, "### {title}\n");
    }
    let cells = lines(t, |c| if c.best { format!("**{}**", c.text) } else { c.text.clone() });
    let header = &t.header;
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(1)
                .max(3)
        })
        .collect();
    let line = |r: &[String]| {
        let parts: Vec<String> =
            r.iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == 0 { format!("{c:<w$}", w = widths[i]) } else { format!("{c:>w$}", w = widths[i]) }
                })
                .collect();
        format!("| {} |", parts.join(" | "))
    };
    let _ = writeln!(s, "{}", line(header));
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| if i == 0 { "-".repeat(*w) } else { format!("{}:", "-".repeat(w - 1)) })
        .collect();
    let _ = writeln!(s, "| {} |", rule.join(" | "));
    for r in &cells {
        let _ = writeln!(s, "{}", line(r));
    }
    if !t.caption.is_empty() {
        let _ = writeln!(s);
        for c in &t.caption {
            let _ = writeln!(s, "_{c}_");
        }
    }
    s
}

fn csv(t: &Table) -> String {
    let q = |c: &str| {
        if c.contains([',', '"', '\n']) { format!("\"{}\"", c.replace('"', "\"\"")) } else { c.to_string() }
    };
    let mut s = String::new();
    for r in std::iter::once(t.header.clone()).chain(lines(t, |c| c.text.clone())) {
        let _ = writeln!(s, "{}", r.iter().map(|c| q(c)).collect::<Vec<_>>().join(","));
    }
    s
}

fn latex(t: &Table) -> String {
    let esc = |c: &str| {
        let mut o = String::new();
        for ch in c.chars() {
            match ch {
                '\\' => o.push_str("\\textbackslash{}"),
                '%' | '_' | '&' | '#' | '$' | '{' | '}' => {
                    o.push('\\');
                    o.push(ch);
                }
                '~' => o.push_str("\\textasciitilde{}"),
                '^' => o.push_str("\\textasciicircum{}"),
                '±' => o.push_str("$\\pm$"),
                '×' => o.push_str("$\\times$"),
                '–' => o.push_str("--"),
                '`' => {}
                _ => o.push(ch),
            }
        }
        o
    };
    let mut s = String::new();
    let _ = writeln!(s, "\\begin{{table}}\n\\centering");
    // The title as the caption's first sentence, then what the cells are.
    let mut caption: Vec<String> = t
        .title
        .iter()
        .map(|x| if x.ends_with(['.', '!', '?']) { x.clone() } else { format!("{x}.") })
        .collect();
    caption.extend(t.caption.iter().cloned());
    if !caption.is_empty() {
        let _ = writeln!(s, "\\caption{{{}}}", esc(&caption.join(" ")));
    }
    let _ = writeln!(s, "\\begin{{tabular}}{{l{}}}\n\\toprule", "r".repeat(t.header.len() - 1));
    let _ =
        writeln!(s, "{} \\\\\n\\midrule", t.header.iter().map(|h| esc(h)).collect::<Vec<_>>().join(" & "));
    for r in &t.rows {
        let cells = std::iter::once(esc(&r.label)).chain(
            r.cells
                .iter()
                .map(|c| if c.best { format!("\\textbf{{{}}}", esc(&c.text)) } else { esc(&c.text) }),
        );
        let _ = writeln!(s, "{} \\\\", cells.collect::<Vec<_>>().join(" & "));
    }
    let _ = writeln!(s, "\\bottomrule\n\\end{{tabular}}\n\\end{{table}}");
    s
}

/// Text for HTML: `<`, `>`, `&` and quotes escaped.
pub fn escape_html(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(ch),
        }
    }
    o
}

fn html(t: &Table) -> String {
    let mut s = String::from("<table class=\"report\">\n");
    let mut caption: Vec<String> = t.title.iter().map(|x| format!("<b>{}</b>", escape_html(x))).collect();
    caption.extend(t.caption.iter().map(|c| escape_html(c)));
    if !caption.is_empty() {
        let _ = writeln!(s, "<caption>{}</caption>", caption.join("<br>"));
    }
    let head: String = t.header.iter().map(|h| format!("<th>{}</th>", escape_html(h))).collect();
    let _ = writeln!(s, "<thead><tr>{head}</tr></thead>\n<tbody>");
    for r in &t.rows {
        let cells: String = r
            .cells
            .iter()
            .map(|c| {
                let text = escape_html(&c.text);
                if c.best {
                    format!("<td class=\"best\"><b>{text}</b></td>")
                } else {
                    format!("<td>{text}</td>")
                }
            })
            .collect();
        let _ = writeln!(s, "<tr><th scope=\"row\">{}</th>{cells}</tr>", escape_html(&r.label));
    }
    s.push_str("</tbody>\n</table>\n");
    s
}
