//! report: the rows' results (evaluated on `eval` when asked), tabled by `crate::report`.

use serde_json::json;

use super::{Runner, dataset, device, eval_model, failed, load_weights, write_json};
use crate::exec::{NodeError, NodeOutput, Task};
use crate::job::{InputSource, ReportWork};
use crate::report::{self, Format, Instance, RowData};

/// The rows' instances with what they recorded, `eval`'s metrics merged in when the report
/// evaluates (every instance has a result: exec runs a report after its rows).
fn rows(runner: &Runner, task: &Task<'_>, r: &ReportWork) -> Result<Vec<RowData>, NodeError> {
    let device = device(task)?;
    let eval = match &r.eval {
        Some(_) => Some(dataset(runner, task, "eval")?.1),
        None => None,
    };
    let mut out = Vec::new();
    for spec_row in &r.rows {
        let mut instances = Vec::new();
        for input in report::row_inputs(&task.job.inputs, &spec_row.role) {
            let InputSource::Entry { dims, seed, model: yields_model } = &input.source else { continue };
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
            instances.push(Instance {
                name: input.name.clone(),
                key: input.key.clone(),
                dims: dims.clone(),
                seed: *seed,
                metrics: Some(metrics),
            });
        }
        out.push(RowData { label: spec_row.label.clone(), instances });
    }
    Ok(out)
}

pub(super) fn run(runner: &Runner, task: &Task<'_>, r: &ReportWork) -> Result<NodeOutput, NodeError> {
    let data = rows(runner, task, r)?;
    let table = report::build(r, &data);
    for f in [Format::Md, Format::Csv, Format::Latex, Format::Json, Format::Html] {
        let text = report::render(&table, f);
        std::fs::write(task.out_dir.join(format!("table.{}", f.extension())), text).map_err(failed)?;
    }
    write_json(&task.out_dir.join(report::ROWS_FILE), &serde_json::to_value(&data).expect("rows serialise"))?;
    for (stem, p) in report::plots(r, &data).map_err(|e| failed(format!("plot: {e}")))? {
        std::fs::write(task.out_dir.join(format!("{stem}.svg")), &p.svg).map_err(failed)?;
        std::fs::write(task.out_dir.join(format!("{stem}.png")), &p.png).map_err(failed)?;
    }
    let rendered = report::render(&table, report::format(r.format));
    let mut metrics = json!({ "table": rendered });
    // What the report evaluated, by instance: metrics of its MLflow run.
    if r.eval.is_some() {
        let mut evaluated = serde_json::Map::new();
        for i in data.iter().flat_map(|row| &row.instances) {
            let Some(m) = &i.metrics else { continue };
            let picked: serde_json::Map<String, serde_json::Value> = ["accuracy", "top5", "loss"]
                .iter()
                .filter_map(|k| Some((k.to_string(), m.get(*k)?.clone())))
                .collect();
            evaluated.insert(i.name.clone(), serde_json::Value::Object(picked));
        }
        metrics["evaluated"] = serde_json::Value::Object(evaluated);
    }
    Ok(NodeOutput { metrics })
}
