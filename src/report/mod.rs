//! Report tables: rows from nodes (grouped by their matrix values), columns from metrics (and
//! from a matrix key, `pivot`), cells mean ± std over seeds, the best per column marked, costs
//! with what they need upstream, and a comparison with a reference row.
//!
//! [`build`] makes a [`Table`] from a report's work and what its rows' instances recorded; the
//! report node calls it with what it evaluated, and `distillery report` with what the store
//! holds (an instance that has not run is missing, never made up). [`render`] writes it as
//! Markdown, CSV, LaTeX, JSON or an HTML table.
//!
//! Architecture invariant: a pure function of its inputs (no store, no files), so both callers
//! print the same table for the same results.

pub mod cost;
pub mod plot;
mod render;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use render::{Format, escape_html, render};

/// The style of report tables on an HTML page.
pub const TABLE_CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table.report{border-collapse:collapse;margin:1em 0}table.report th,table.report td{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:right}table.report th[scope=row]{text-align:left}table.report caption{caption-side:bottom;text-align:left;font-size:.85em;color:#555;padding-top:.5em}td.best{background:#eef6ee}.note{color:#a60}";

use crate::job::{Column, JobInput, ReportWork, TableFormat, TeacherCostMode};
use cost::{Cost, Lineage};

/// One instance of a row's node: what the report reads of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub name: String,
    pub key: String,
    /// Its matrix values other than the seed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dims: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Its metrics (with `eval`'s merged in); `None`: it has no stored result.
    pub metrics: Option<Value>,
}

/// A report row as declared: its label and the instances of its node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowData {
    pub label: String,
    pub instances: Vec<Instance>,
}

/// A rendered table: what every format writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub title: Option<String>,
    /// The columns' headings, the row label's first (empty).
    pub header: Vec<String>,
    pub rows: Vec<TableRow>,
    /// What the cells are: statistics, weights, how costs are counted.
    pub caption: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableRow {
    pub label: String,
    pub cells: Vec<Cell>,
}

/// One cell: its text and the numbers behind it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    /// Seeds with a value.
    pub n: usize,
    /// Instances without a stored result.
    #[serde(skip_serializing_if = "is_zero")]
    pub missing: usize,
    /// The best value of its column.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub best: bool,
    /// A comparison's 95% interval of the accuracy difference (points), paired by seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<(f64, f64)>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The heading of a metric column.
pub fn column_name(c: Column, best_weights: bool) -> String {
    let name = match c {
        Column::Accuracy => "accuracy (%)",
        Column::Top5 => "top-5 (%)",
        Column::Loss => "loss",
        Column::TrainSeconds => "train s",
        Column::ImagesPerSecond => "images/s",
        Column::Flops => "GFLOPs",
        Column::Params => "params",
        Column::CostSeconds => "cost s",
        Column::CostFlops => "cost GFLOPs",
        Column::CpuHours => "CPU-h",
        Column::GpuHours => "GPU-h",
        Column::TeacherSeconds => "teacher s",
        Column::TeacherFlops => "teacher GFLOPs",
    };
    match c {
        Column::Accuracy | Column::Top5 | Column::Loss if best_weights => format!("{name}, best on val"),
        _ => name.to_string(),
    }
}

/// Whether larger is better (`Some(true)`), smaller (`Some(false)`), or neither (`None`).
fn better_larger(c: Column) -> Option<bool> {
    match c {
        Column::Accuracy | Column::Top5 | Column::ImagesPerSecond => Some(true),
        Column::Loss
        | Column::TrainSeconds
        | Column::Flops
        | Column::CostSeconds
        | Column::CostFlops
        | Column::CpuHours
        | Column::GpuHours => Some(false),
        // A smaller model is not a better one, nor a cheaper teacher a better row.
        Column::Params | Column::TeacherSeconds | Column::TeacherFlops => None,
    }
}

fn digits(c: Column) -> usize {
    match c {
        Column::Params | Column::ImagesPerSecond => 0,
        Column::Flops | Column::CostFlops | Column::TeacherFlops => 2,
        Column::Loss | Column::CpuHours | Column::GpuHours => 3,
        _ => 1,
    }
}

pub use crate::job::Sharing;
use crate::job::students_of;

/// Row `ri`'s teachers' cost: its own setting, else the report's.
fn row_mode(r: &ReportWork, ri: usize) -> TeacherCostMode {
    r.rows.get(ri).and_then(|row| row.teacher_cost).unwrap_or(r.teacher_cost)
}

/// The value of column `c` for one instance's metrics.
fn value(c: Column, m: &Value, mode: TeacherCostMode, sharing: &Sharing) -> Option<f64> {
    let get = |k: &str| m.get(k).and_then(Value::as_f64);
    let lineage = || Lineage::from_metrics(m);
    // The row's cost: the model's own and its history's, and with `amortised` its share of each
    // teacher's.
    let cost = || {
        let l = lineage()?;
        let mut c = l.student();
        if mode == TeacherCostMode::Amortised {
            for t in &l.teachers {
                c.add(&t.cost.share(students_of(sharing, &t.key)));
            }
        }
        Some(c)
    };
    let teachers = || lineage().map(|l| l.teachers_total());
    match c {
        Column::Accuracy => get("accuracy").map(|a| a * 100.0),
        Column::Top5 => get("top5").map(|a| a * 100.0),
        Column::Loss => get("loss"),
        Column::TrainSeconds => get("train_seconds"),
        Column::ImagesPerSecond => get("images_per_second"),
        Column::Flops => get("flops").map(|f| f / 1e9),
        Column::Params => get("params"),
        Column::CostSeconds => cost().map(|c| c.seconds),
        Column::CostFlops => cost().map(|c| c.flops / 1e9),
        Column::CpuHours => cost().map(|c| c.cpu_hours),
        Column::GpuHours => cost().map(|c| c.gpu_hours),
        Column::TeacherSeconds => teachers().map(|c: Cost| c.seconds),
        Column::TeacherFlops => teachers().map(|c| c.flops / 1e9),
    }
}

/// Mean and sample standard deviation.
fn mean_std(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, None);
    }
    (mean, Some((xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()))
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (a 95% two-sided interval).
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        // Cornish-Fisher expansion around the normal quantile: within 1e-3 past 30.
        _ => {
            let (z, v) = (1.959_963_985_f64, df as f64);
            z + (z.powi(3) + z) / (4.0 * v) + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
        }
    }
}

/// One group of a row: instances with the same matrix values (but seed and the pivot key).
struct Group {
    label: String,
    /// The non-pivot matrix values, to pair with a reference row's group.
    dims: Vec<(String, String)>,
    /// Instances by pivot value (one `None` column without a pivot).
    by_pivot: Vec<(Option<String>, Vec<Instance>)>,
}

fn groups(row: &RowData, pivot: Option<&str>) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for inst in &row.instances {
        let dims: Vec<(String, String)> =
            inst.dims.iter().filter(|(k, _)| Some(k.as_str()) != pivot).cloned().collect();
        let p = pivot.and_then(|p| inst.dims.iter().find(|(k, _)| k == p).map(|(_, v)| v.clone()));
        let g = match out.iter_mut().position(|g| g.dims == dims) {
            Some(i) => &mut out[i],
            None => {
                let label = if dims.is_empty() {
                    row.label.clone()
                } else {
                    let d: Vec<String> = dims.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("{} [{}]", row.label, d.join(", "))
                };
                out.push(Group { label, dims: dims.clone(), by_pivot: Vec::new() });
                out.last_mut().expect("pushed")
            }
        };
        match g.by_pivot.iter_mut().find(|(v, _)| *v == p) {
            Some((_, v)) => v.push(inst.clone()),
            None => g.by_pivot.push((p, vec![inst.clone()])),
        }
    }
    out
}

/// A statistic cell of column `c` over `instances`.
fn stat_cell(c: Column, instances: &[Instance], mode: TeacherCostMode, sharing: &Sharing) -> Cell {
    let missing = instances.iter().filter(|i| i.metrics.is_none()).count();
    let xs: Vec<f64> =
        instances.iter().filter_map(|i| value(c, i.metrics.as_ref()?, mode, sharing)).collect();
    if xs.is_empty() {
        let text = if missing > 0 { "missing".to_string() } else { "–".to_string() };
        return Cell { text, missing, ..Default::default() };
    }
    let (mean, mut std) = mean_std(&xs);
    // Equal values (a FLOPs count the seed does not change) are one number.
    if xs.iter().all(|x| *x == xs[0]) {
        std = None;
    }
    let d = digits(c);
    let mut text = match std {
        Some(s) => format!("{mean:.d$} ± {s:.d$}"),
        None => format!("{mean:.d$}"),
    };
    if missing > 0 {
        text.push_str(&format!(" ({missing} missing)"));
    }
    Cell { text, mean: Some(mean), std, n: xs.len(), missing, ..Default::default() }
}

/// Accuracy (%) by seed of `instances`.
fn accuracy_by_seed(instances: &[Instance]) -> BTreeMap<Option<u64>, f64> {
    instances
        .iter()
        .filter_map(|i| Some((i.seed, i.metrics.as_ref()?.get("accuracy")?.as_f64()? * 100.0)))
        .collect()
}

/// "−63% compute, +1.2 pts [0.4, 2.0]": `row` against the reference `base`; compute by the cost
/// FLOPs column's rule, accuracy paired by seed.
fn compare_cell(
    row: &[Instance],
    base: &[Instance],
    (row_mode, base_mode): (TeacherCostMode, TeacherCostMode),
    sharing: &Sharing,
) -> Cell {
    let mean_of = |is: &[Instance], c: Column, mode: TeacherCostMode| {
        let xs: Vec<f64> = is.iter().filter_map(|i| value(c, i.metrics.as_ref()?, mode, sharing)).collect();
        (!xs.is_empty()).then(|| mean_std(&xs).0)
    };
    let mut parts = Vec::new();
    if let (Some(a), Some(b)) =
        (mean_of(row, Column::CostFlops, row_mode), mean_of(base, Column::CostFlops, base_mode))
        && b > 0.0
    {
        let pct = (a - b) / b * 100.0;
        parts.push(if pct <= 0.0 {
            format!("{:.0}% less compute", -pct)
        } else {
            format!("{pct:.0}% more compute")
        });
    }
    let (ra, ba) = (accuracy_by_seed(row), accuracy_by_seed(base));
    let mut cell = Cell::default();
    if !ra.is_empty() && !ba.is_empty() {
        let diffs: Vec<f64> = ra.iter().filter_map(|(s, a)| Some(a - ba.get(s)?)).collect();
        let mean = |m: &BTreeMap<Option<u64>, f64>| m.values().sum::<f64>() / m.len() as f64;
        let d = mean(&ra) - mean(&ba);
        let mut text = format!("{d:+.1} pts");
        if diffs.len() >= 3 {
            let (m, s) = mean_std(&diffs);
            let h = t975(diffs.len() - 1) * s.unwrap_or(0.0) / (diffs.len() as f64).sqrt();
            text = format!("{m:+.1} pts [{:+.1}, {:+.1}]", m - h, m + h);
            cell.interval = Some((m - h, m + h));
            cell.n = diffs.len();
            cell.mean = Some(m);
        } else {
            cell.mean = Some(d);
        }
        parts.push(text);
    }
    cell.text = if parts.is_empty() { "–".into() } else { parts.join(", ") };
    cell
}

/// The table of report `r` for `rows` (one per `r.rows`, in order).
pub fn build(r: &ReportWork, rows: &[RowData]) -> Table {
    let pivot = r.pivot.as_deref();
    let best_weights = r.eval.is_some() && r.weights == crate::job::Weights::Best;
    let grouped: Vec<Vec<Group>> = rows.iter().map(|row| groups(row, pivot)).collect();
    // Pivot values in the order they first appear.
    let mut values: Vec<Option<String>> = Vec::new();
    for g in grouped.iter().flatten() {
        for (v, _) in &g.by_pivot {
            if !values.contains(v) {
                values.push(v.clone());
            }
        }
    }
    if values.is_empty() {
        values.push(None);
    }
    let reference = r.compare_to.and_then(|i| Some((i, rows.get(i)?.label.clone())));
    let mut header = vec![String::new()];
    for v in &values {
        for c in &r.columns {
            let name = column_name(*c, best_weights);
            header.push(match (v, pivot) {
                (Some(v), Some(p)) if r.columns.len() == 1 => format!("{p}={v}"),
                (Some(v), Some(p)) => format!("{name}, {p}={v}"),
                _ => name,
            });
        }
        if let Some((_, label)) = &reference {
            header.push(match (v, pivot) {
                (Some(v), Some(p)) => format!("vs {label}, {p}={v}"),
                _ => format!("vs {label}"),
            });
        }
    }
    header.push("seeds".into());
    let sharing = &r.students_per_teacher;
    let mut out_rows = Vec::new();
    for (ri, gs) in grouped.iter().enumerate() {
        let mode = row_mode(r, ri);
        for g in gs {
            let mut cells = Vec::new();
            let mut counts = Vec::new();
            for v in &values {
                let inst: &[Instance] = g.by_pivot.iter().find(|(p, _)| p == v).map_or(&[], |(_, i)| i);
                counts.push(inst.len());
                for c in &r.columns {
                    cells.push(stat_cell(*c, inst, mode, sharing));
                }
                if let Some((rix, _)) = reference {
                    // The reference row's group of the same matrix values, or its only one.
                    let base = grouped[rix]
                        .iter()
                        .find(|b| b.dims == g.dims)
                        .or(if grouped[rix].len() == 1 { grouped[rix].first() } else { None })
                        .and_then(|b| b.by_pivot.iter().find(|(p, _)| p == v))
                        .map(|(_, i)| i.as_slice());
                    cells.push(match base {
                        Some(_) if ri == rix => Cell { text: "(reference)".into(), ..Default::default() },
                        Some(b) if !inst.is_empty() => {
                            compare_cell(inst, b, (mode, row_mode(r, rix)), sharing)
                        }
                        _ => Cell { text: "–".into(), ..Default::default() },
                    });
                }
            }
            let all = counts.iter().copied().max().unwrap_or(0);
            cells.push(Cell { text: all.to_string(), n: all, ..Default::default() });
            out_rows.push(TableRow { label: g.label.clone(), cells });
        }
    }
    mark_best(r, &values, reference.is_some(), &mut out_rows);
    Table { title: r.title.clone(), header, rows: out_rows, caption: caption(r, rows, best_weights) }
}

/// Marks the best mean of every metric column that has a direction (two values or more).
fn mark_best(r: &ReportWork, values: &[Option<String>], compare: bool, rows: &mut [TableRow]) {
    let per_value = r.columns.len() + usize::from(compare);
    for vi in 0..values.len() {
        for (ci, c) in r.columns.iter().enumerate() {
            let Some(larger) = better_larger(*c) else { continue };
            let col = vi * per_value + ci;
            let means: Vec<f64> = rows.iter().filter_map(|row| row.cells[col].mean).collect();
            if means.len() < 2 {
                continue;
            }
            let best = if larger {
                means.iter().copied().fold(f64::MIN, f64::max)
            } else {
                means.iter().copied().fold(f64::MAX, f64::min)
            };
            // Equal as printed is equal.
            let d = digits(*c) as i32;
            let same = |x: f64| ((x - best) * 10f64.powi(d)).abs() < 0.5;
            for row in rows.iter_mut() {
                if row.cells[col].mean.is_some_and(same) {
                    row.cells[col].best = true;
                }
            }
        }
    }
}

fn caption(r: &ReportWork, rows: &[RowData], best_weights: bool) -> Vec<String> {
    let mut lines = vec![
        "Mean ± sample std over seeds (`seeds`: how many); the best of each column in bold.".to_string(),
    ];
    if let Some(e) = &r.eval {
        lines.push(if best_weights {
            format!(
                "Evaluated on `{e}` with each model's weights of its epoch with the best accuracy on its own `val:` set (never chosen on `{e}`)."
            )
        } else {
            format!("Evaluated on `{e}` with each model's final weights.")
        });
    }
    let costs = r.columns.iter().any(|c| {
        matches!(
            c,
            Column::CostSeconds
                | Column::CostFlops
                | Column::CpuHours
                | Column::GpuHours
                | Column::TeacherSeconds
                | Column::TeacherFlops
        )
    }) || r.compare_to.is_some();
    if costs {
        let mut teachers: Vec<(String, String)> = Vec::new();
        let mut external: Vec<String> = Vec::new();
        for i in rows.iter().flat_map(|r| &r.instances) {
            let Some(l) = i.metrics.as_ref().and_then(Lineage::from_metrics) else { continue };
            for t in &l.teachers {
                if !teachers.iter().any(|(k, _)| *k == t.key) {
                    teachers.push((t.key.clone(), t.name.clone()));
                }
            }
            for e in &l.external {
                if !external.contains(e) {
                    external.push(e.clone());
                }
            }
        }
        let mut line = "Cost: a row's own training and the training of the weights it starts from (pre-training, recursively) and the making of any synthetic images it trained on".to_string();
        let amortised: Vec<&str> = (0..rows.len())
            .filter(|&ri| row_mode(r, ri) == TeacherCostMode::Amortised)
            .map(|ri| rows[ri].label.as_str())
            .collect();
        // Which students each teacher's cost is divided among: "teacher over 6: kd ×3, au ×3".
        let each: Vec<String> = teachers
            .iter()
            .map(|(k, n)| {
                let students = r.students_per_teacher.get(k).map(Vec::as_slice).unwrap_or_default();
                let who: Vec<String> = students.iter().map(|(s, c)| format!("{s} ×{c}")).collect();
                match who.is_empty() {
                    true => format!("{n} over 1"),
                    false => {
                        format!("{n} over {}: {}", students_of(&r.students_per_teacher, k), who.join(", "))
                    }
                }
            })
            .collect();
        let each = if each.is_empty() { "none here".to_string() } else { each.join("; ") };
        let share =
            "each teacher's whole cost divided among the distill instances of the experiment that read it";
        if amortised.is_empty() {
            line.push_str("; a teacher's whole cost is not in it (`teacher` columns).");
        } else if amortised.len() == rows.len() {
            line.push_str(&format!(", plus {share}: {each}."));
        } else {
            let rows = match amortised.len() {
                1 => format!("row {} also adds", amortised[0]),
                _ => format!("rows {} also add", amortised.join(", ")),
            };
            line.push_str(&format!(
                "; {rows} {share} ({each}); the other rows leave a teacher's whole cost to the `teacher` columns."
            ));
        }
        lines.push(line);
        lines.push("Compute is estimated FLOPs (3 forward passes an image trained).".into());
        if r.columns.iter().any(|c| matches!(c, Column::CpuHours | Column::GpuHours)) {
            lines.push(
                "CPU-h: wall hours × the CPU threads of the process; GPU-h: wall hours on one GPU.".into(),
            );
        }
        if !external.is_empty() {
            lines.push(format!(
                "Not counted: the training of starting weights read from files ({}).",
                external.join(", ")
            ));
        }
    }
    if let Some((_, label)) = r.compare_to.and_then(|i| Some((i, &rows.get(i)?.label))) {
        lines.push(format!(
            "vs {label}: compute by cost FLOPs; accuracy in points, with a 95% paired t interval over seeds where 3 or more seeds pair up."
        ));
    }
    lines
}

/// The report's plots, by file stem: accuracy against cost (each row group's mean ± std over
/// seeds against its mean cost, pre-training included, and the teachers' share when amortised)
/// and the cost breakdown (own training, pre-training, teachers). Only what the rows recorded:
/// none without costs, no accuracy plot without accuracies.
pub fn plots(r: &ReportWork, rows: &[RowData]) -> Result<Vec<(&'static str, plot::Plot)>, String> {
    let sharing = &r.students_per_teacher;
    let mut points = Vec::new();
    let mut parts = Vec::new();
    for (ri, row) in rows.iter().enumerate() {
        let mode = row_mode(r, ri);
        for g in groups(row, r.pivot.as_deref()) {
            for (p, inst) in &g.by_pivot {
                let label = match (p, &r.pivot) {
                    (Some(v), Some(k)) => format!("{}, {k}={v}", g.label),
                    _ => g.label.clone(),
                };
                let of = |c: Column| -> Vec<f64> {
                    inst.iter().filter_map(|i| value(c, i.metrics.as_ref()?, mode, sharing)).collect()
                };
                let lineages: Vec<Lineage> =
                    inst.iter().filter_map(|i| Lineage::from_metrics(i.metrics.as_ref()?)).collect();
                if lineages.is_empty() {
                    continue;
                }
                let mean = |f: &dyn Fn(&Lineage) -> f64| {
                    lineages.iter().map(f).sum::<f64>() / lineages.len() as f64 / 1e9
                };
                let teacher = |l: &Lineage| match mode {
                    TeacherCostMode::Separate => l.teachers_total().flops,
                    TeacherCostMode::Amortised => {
                        l.teachers.iter().map(|t| t.cost.share(students_of(sharing, &t.key)).flops).sum()
                    }
                };
                parts.push((
                    label.clone(),
                    [mean(&|l| l.own.flops), mean(&|l| l.pretraining.flops), mean(&teacher)],
                ));
                let (acc, cost) = (of(Column::Accuracy), of(Column::CostFlops));
                if !acc.is_empty() && !cost.is_empty() {
                    let (a, sd) = mean_std(&acc);
                    points.push(plot::CostPoint {
                        label,
                        cost: mean_std(&cost).0,
                        accuracy: a,
                        std: sd.unwrap_or(0.0),
                    });
                }
            }
        }
    }
    let title = r.title.clone().unwrap_or_else(|| "report".into());
    let mut out = Vec::new();
    if !points.is_empty() {
        out.push((
            "accuracy_vs_cost",
            plot::accuracy_vs_cost(&format!("{title}: accuracy vs cost"), &points)?,
        ));
    }
    if !parts.is_empty() {
        let amortised = (0..rows.len()).filter(|&ri| row_mode(r, ri) == TeacherCostMode::Amortised).count();
        let teacher = match amortised {
            0 => "teachers (whole)",
            n if n == rows.len() => "teachers (amortised share)",
            _ => "teachers (whole; amortised share where a row says so)",
        };
        out.push(("cost_breakdown", plot::cost_breakdown(&format!("{title}: cost"), &parts, teacher)?));
    }
    Ok(out)
}

/// The inputs of the row whose role is `role` (`rows/0`; a labelled row's are `rows/0/node`).
pub fn row_inputs<'a>(inputs: &'a [JobInput], role: &'a str) -> impl Iterator<Item = &'a JobInput> + 'a {
    inputs
        .iter()
        .filter(move |i| i.role == role || i.role.strip_prefix(role).is_some_and(|r| r.starts_with('/')))
}

/// The file of a report entry that holds its rows' results ([`RowData`], JSON).
pub const ROWS_FILE: &str = "rows.json";

/// The report format a node's `format:` names.
pub fn format(f: TableFormat) -> Format {
    match f {
        TableFormat::Md => Format::Md,
        TableFormat::Csv => Format::Csv,
        TableFormat::Latex => Format::Latex,
    }
}

#[cfg(test)]
mod tests;
