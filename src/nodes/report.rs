//! report: a table of the rows' metrics; instances that differ only in seed are one row,
//! shown as mean ± std over seeds.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{Runner, dataset, device, eval_model, failed, load_weights, write_json};
use crate::exec::{NodeError, NodeOutput, Task};
use crate::job::{Column, InputSource, ReportWork, TableFormat};

struct Row {
    label: String,
    /// One metrics object per seed.
    samples: Vec<Value>,
}

fn column_name(c: Column) -> &'static str {
    match c {
        Column::Accuracy => "accuracy (%)",
        Column::Top5 => "top-5 (%)",
        Column::Loss => "loss",
        Column::TrainSeconds => "train s",
        Column::ImagesPerSecond => "images/s",
        Column::Flops => "GFLOPs",
        Column::Params => "params",
    }
}

fn value(c: Column, m: &Value) -> Option<f64> {
    let get = |k: &str| m.get(k).and_then(Value::as_f64);
    match c {
        Column::Accuracy => get("accuracy").map(|a| a * 100.0),
        Column::Top5 => get("top5").map(|a| a * 100.0),
        Column::Loss => get("loss"),
        Column::TrainSeconds => get("train_seconds"),
        Column::ImagesPerSecond => get("images_per_second"),
        Column::Flops => get("flops").map(|f| f / 1e9),
        Column::Params => get("params"),
    }
}

/// `mean ± std` (sample std) over seeds, or the value alone.
fn cell(c: Column, samples: &[Value]) -> (String, Value) {
    let xs: Vec<f64> = samples.iter().filter_map(|m| value(c, m)).collect();
    if xs.is_empty() {
        return ("–".into(), Value::Null);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let digits = match c {
        Column::Params | Column::ImagesPerSecond => 0,
        Column::Flops => 2,
        Column::Loss => 3,
        _ => 1,
    };
    if xs.len() == 1 {
        return (format!("{mean:.digits$}"), json!({ "mean": mean, "n": 1 }));
    }
    let std = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    (format!("{mean:.digits$} ± {std:.digits$}"), json!({ "mean": mean, "std": std, "n": xs.len() }))
}

pub(super) fn run(runner: &Runner, task: &Task<'_>, r: &ReportWork) -> Result<NodeOutput, NodeError> {
    let device = device(task)?;
    let eval = match &r.eval {
        Some(_) => Some(dataset(runner, task, "eval")?.1),
        None => None,
    };
    let mut rows: Vec<Row> = Vec::new();
    for spec_row in &r.rows {
        let prefix = &spec_row.role;
        let base_label = spec_row.label.clone();
        // Instances of this row, grouped by their matrix values other than the seed.
        let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
        for input in &task.job.inputs {
            let InputSource::Entry { dims, model: yields_model } = &input.source else { continue };
            let role = &input.role;
            if role != prefix && !role.starts_with(&format!("{prefix}/")) {
                continue;
            }
            // A row's instances share its role: their entries are told apart by key.
            let entry = task
                .entries
                .iter()
                .map(|(_, e)| e)
                .find(|e| e.manifest.key == input.key)
                .ok_or_else(|| failed(format!("no stored result for row input `{}`", input.name)))?;
            let mut metrics = entry.manifest.metrics.clone();
            if let (Some(ds), true) = (&eval, *yields_model) {
                let (info, model) = load_weights(&entry.dir, r.weights, &device)?;
                let m = eval_model(&model, &info, ds, 256, &device)?;
                for k in ["accuracy", "top5", "loss"] {
                    metrics[k] = m[k].clone();
                }
            }
            let dims: Vec<String> = dims.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let label = if dims.is_empty() {
                base_label.clone()
            } else {
                format!("{base_label} [{}]", dims.join(", "))
            };
            match groups.iter_mut().find(|(l, _)| *l == label) {
                Some(g) => g.1.push(metrics),
                None => groups.push((label, vec![metrics])),
            }
        }
        rows.extend(groups.into_iter().map(|(label, samples)| Row { label, samples }));
    }

    let mut header: Vec<String> = vec!["".into()];
    // Best-on-validation weights are said in the columns they change, never silently.
    let best = r.weights == crate::job::Weights::Best;
    header.extend(r.columns.iter().map(|c| match c {
        Column::Accuracy | Column::Top5 | Column::Loss if best => format!("{}, best on val", column_name(*c)),
        _ => column_name(*c).to_string(),
    }));
    header.push("seeds".into());
    let mut cells: Vec<Vec<String>> = Vec::new();
    let mut data = Vec::new();
    for row in &rows {
        let mut line = vec![row.label.clone()];
        let mut obj = serde_json::Map::new();
        for c in &r.columns {
            let (text, v) = cell(*c, &row.samples);
            line.push(text);
            obj.insert(column_name(*c).into(), v);
        }
        line.push(row.samples.len().to_string());
        cells.push(line);
        data.push(json!({ "row": row.label, "values": obj }));
    }
    let md = markdown(r.title.as_deref(), &header, &cells);
    std::fs::write(task.out_dir.join("table.md"), &md).map_err(failed)?;
    std::fs::write(task.out_dir.join("table.csv"), csv(&header, &cells)).map_err(failed)?;
    std::fs::write(task.out_dir.join("table.tex"), latex(r.title.as_deref(), &header, &cells))
        .map_err(failed)?;
    let rendered = match r.format {
        TableFormat::Md => md,
        TableFormat::Csv => csv(&header, &cells),
        TableFormat::Latex => latex(r.title.as_deref(), &header, &cells),
    };
    let metrics = json!({ "rows": data, "table": rendered });
    write_json(&task.out_dir.join("table.json"), &metrics)?;
    Ok(NodeOutput { metrics })
}

fn markdown(title: Option<&str>, header: &[String], cells: &[Vec<String>]) -> String {
    let mut s = String::new();
    if let Some(t) = title {
        let _ = writeln!(s, "### {t}\n");
    }
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
    for r in cells {
        let _ = writeln!(s, "{}", line(r));
    }
    s
}

fn csv(header: &[String], cells: &[Vec<String>]) -> String {
    let q = |c: &str| {
        if c.contains([',', '"']) { format!("\"{}\"", c.replace('"', "\"\"")) } else { c.to_string() }
    };
    let mut s = String::new();
    for r in std::iter::once(header).chain(cells.iter().map(Vec::as_slice)) {
        let _ = writeln!(s, "{}", r.iter().map(|c| q(c)).collect::<Vec<_>>().join(","));
    }
    s
}

fn latex(title: Option<&str>, header: &[String], cells: &[Vec<String>]) -> String {
    let esc = |c: &str| c.replace('%', "\\%").replace('±', "$\\pm$").replace('_', "\\_");
    let mut s = String::new();
    let _ = writeln!(s, "\\begin{{table}}\n\\centering");
    if let Some(t) = title {
        let _ = writeln!(s, "\\caption{{{}}}", esc(t));
    }
    let _ = writeln!(s, "\\begin{{tabular}}{{l{}}}\n\\toprule", "r".repeat(header.len() - 1));
    let _ = writeln!(s, "{} \\\\\n\\midrule", header.iter().map(|h| esc(h)).collect::<Vec<_>>().join(" & "));
    for r in cells {
        let _ = writeln!(s, "{} \\\\", r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" & "));
    }
    let _ = writeln!(s, "\\bottomrule\n\\end{{tabular}}\n\\end{{table}}");
    s
}
