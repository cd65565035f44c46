//! Tables from a fixed set of recorded results, in every format (insta snapshots), and the
//! rules behind them: costs with their upstream, pivots, missing rows, the best marked, the
//! paired comparison.

use serde_json::json;

use super::cost::{Cost, Lineage};
use super::*;
use crate::job::{ReportRow, Weights};

fn work(columns: Vec<Column>) -> ReportWork {
    ReportWork {
        title: Some("Students on the task".into()),
        rows: ["scratch", "pt+ft", "kd", "teacher"]
            .iter()
            .enumerate()
            .map(|(i, l)| ReportRow { label: l.to_string(), role: format!("rows/{i}"), teacher_cost: None })
            .collect(),
        columns,
        format: TableFormat::Md,
        eval: Some("test".into()),
        weights: Weights::Final,
        pivot: None,
        teacher_cost: TeacherCostMode::Separate,
        students_per_teacher: Default::default(),
        compare_to: None,
    }
}

fn node(name: &str, seconds: f64, gflops: f64) -> Cost {
    Cost::of_node(name, seconds, gflops * 1e9, "cpu", 2)
}

/// Recorded results: a teacher pre-trained (100 s) and fine-tuned (10 s); a student from
/// scratch (2 s), pre-trained (30 s) then fine-tuned (3 s), and distilled (5 s), over 3 seeds.
fn recorded() -> Vec<RowData> {
    let teacher_pt = Lineage::of(node("teacher_pt", 100.0, 500.0), None, None);
    let teacher = Lineage::of(node("teacher", 10.0, 50.0), Some(&teacher_pt), None);
    let student_pt = Lineage::of(node("student_pt", 30.0, 60.0), None, None);
    let inst = |row: &str, seed: u64, acc: f64, cost: &Lineage| Instance {
        name: format!("{row}[seed={seed}]"),
        key: format!("{row}{seed}"),
        dims: vec![],
        seed: Some(seed),
        metrics: Some(json!({ "accuracy": acc, "train_seconds": cost.own.seconds, "cost": cost })),
    };
    let rows = |label: &str, accs: [f64; 3], cost: &dyn Fn(u64) -> Lineage| RowData {
        label: label.into(),
        instances: accs.iter().enumerate().map(|(s, a)| inst(label, s as u64, *a, &cost(s as u64))).collect(),
    };
    vec![
        rows("scratch", [0.80, 0.82, 0.81], &|s| {
            Lineage::of(node("scratch", 2.0 + s as f64 * 0.1, 4.0), None, None)
        }),
        rows("pt+ft", [0.85, 0.86, 0.88], &|_| {
            Lineage::of(node("student_ft", 3.0, 6.0), Some(&student_pt), None)
        }),
        rows("kd", [0.87, 0.89, 0.90], &|_| {
            Lineage::of(node("kd", 5.0, 12.0), None, Some(("teacher", "tkey", &teacher)))
        }),
        RowData {
            label: "teacher".into(),
            instances: vec![Instance {
                name: "teacher".into(),
                key: "tkey".into(),
                dims: vec![],
                seed: Some(0),
                metrics: Some(json!({ "accuracy": 0.91, "cost": teacher })),
            }],
        },
    ]
}

fn cells(t: &Table, row: usize) -> Vec<&str> {
    t.rows[row].cells.iter().map(|c| c.text.as_str()).collect()
}

#[test]
fn pt_ft_cost_includes_its_pretraining_and_a_teacher_is_apart_or_amortised() {
    let mut r = work(vec![Column::CostSeconds, Column::CostFlops, Column::TeacherFlops]);
    let t = build(&r, &recorded());
    // pt+ft: 30 s of pre-training + 3 s of fine-tuning; kd its own 5 s, its teacher's 550 GFLOPs apart.
    assert_eq!(cells(&t, 1), ["33.0", "66.00", "0.00", "3"]);
    assert_eq!(cells(&t, 2), ["5.0", "12.00", "550.00", "3"]);
    assert_eq!(cells(&t, 3)[..2], ["110.0", "550.00"]);
    // Amortised over the 5 students that read the teacher: 110 s / 5 = 22 s more a kd row.
    r.teacher_cost = TeacherCostMode::Amortised;
    r.students_per_teacher.insert("tkey".into(), vec![("kd".into(), 3), ("au".into(), 2)]);
    let t = build(&r, &recorded());
    assert_eq!(cells(&t, 2)[..2], ["27.0", "122.00"]);
    // The caption says over which students.
    assert!(t.caption.iter().any(|c| c.contains("teacher over 5: kd ×3, au ×2")), "{:?}", t.caption);

    // One row asks for it, the report does not: only that row's cost changes, and the caption
    // names it.
    r.teacher_cost = TeacherCostMode::Separate;
    r.rows[2].teacher_cost = Some(TeacherCostMode::Amortised);
    let t = build(&r, &recorded());
    assert_eq!(cells(&t, 1), ["33.0", "66.00", "0.00", "3"]);
    assert_eq!(cells(&t, 2)[..2], ["27.0", "122.00"]);
    let caption = t.caption.join(" ");
    assert!(caption.contains(&format!("row {} also adds", r.rows[2].label)), "{caption}");
    assert!(caption.contains("the other rows leave a teacher's whole cost"), "{caption}");
    // ... and a row may keep it apart in an amortised report.
    r.teacher_cost = TeacherCostMode::Amortised;
    r.rows[2].teacher_cost = Some(TeacherCostMode::Separate);
    let t = build(&r, &recorded());
    assert_eq!(cells(&t, 2)[..2], ["5.0", "12.00"]);
}

#[test]
fn the_best_of_each_column_is_marked_and_params_never() {
    let t = build(&work(vec![Column::Accuracy, Column::CostSeconds, Column::Params]), &recorded());
    let mut best = Vec::new();
    for (r, row) in t.rows.iter().enumerate() {
        best.extend((0..3).filter(|c| row.cells[*c].best).map(|c| (r, c)));
    }
    // The teacher's 91.0 (a single seed), the scratch student's 2.1 s.
    assert_eq!(best, [(0, 1), (3, 0)]);
}

#[test]
fn comparison_pairs_seeds_and_gives_a_t_interval() {
    let mut r = work(vec![Column::Accuracy]);
    r.compare_to = Some(1);
    let t = build(&r, &recorded());
    assert_eq!(cells(&t, 1)[1], "(reference)");
    // kd - pt+ft by seed: +2, +3, +2 points; mean 2.33, sd 0.577, t(2) = 4.303: ± 1.43.
    let c = &t.rows[2].cells[1];
    assert_eq!(c.text, "82% less compute, +2.3 pts [+0.9, +3.8]");
    let (lo, hi) = c.interval.unwrap();
    assert!((lo - (7.0 / 3.0 - 4.303 * (1.0f64 / 3.0).sqrt() / 3f64.sqrt())).abs() < 1e-9, "{lo}");
    assert!((hi - (7.0 / 3.0 + 4.303 * (1.0f64 / 3.0).sqrt() / 3f64.sqrt())).abs() < 1e-9, "{hi}");
    // One seed of the teacher: a difference, no interval.
    assert_eq!(t.rows[3].cells[1].text, "733% more compute, +4.7 pts");
    assert_eq!(t.rows[3].cells[1].interval, None);
}

#[test]
fn a_row_that_has_not_run_is_missing_not_made_up() {
    let mut rows = recorded();
    rows[2].instances[1].metrics = None;
    rows[3].instances[0].metrics = None;
    let t = build(&work(vec![Column::Accuracy]), &rows);
    assert_eq!(cells(&t, 2), ["88.5 ± 2.1 (1 missing)", "3"]);
    assert_eq!(cells(&t, 3), ["missing", "1"]);
    assert_eq!(t.rows[3].cells[0].missing, 1);
}

#[test]
fn a_pivot_makes_columns_of_a_matrix_key() {
    let mut r = work(vec![Column::Accuracy]);
    r.pivot = Some("data".into());
    r.rows.truncate(2);
    let mk = |row: &str, data: &str, seed: u64, acc: f64| Instance {
        name: format!("{row}[data={data},seed={seed}]"),
        key: format!("{row}{data}{seed}"),
        dims: vec![("data".into(), data.into()), ("loss".into(), "kd".into())],
        seed: Some(seed),
        metrics: Some(json!({ "accuracy": acc })),
    };
    let rows = vec![
        RowData {
            label: "scratch".into(),
            instances: vec![
                mk("scratch", "cifar", 0, 0.5),
                mk("scratch", "cifar", 1, 0.6),
                mk("scratch", "svhn", 0, 0.9),
            ],
        },
        RowData { label: "kd".into(), instances: vec![mk("kd", "svhn", 0, 0.95), mk("kd", "cifar", 0, 0.7)] },
    ];
    let t = build(&r, &rows);
    assert_eq!(t.header, ["", "data=cifar", "data=svhn", "seeds"]);
    assert_eq!(t.rows[0].label, "scratch [loss=kd]");
    assert_eq!(cells(&t, 0), ["55.0 ± 7.1", "90.0", "2"]);
    assert_eq!(cells(&t, 1), ["70.0", "95.0", "1"]);
    assert!(t.rows[1].cells[0].best && t.rows[1].cells[1].best);
}

#[test]
fn t_quantiles_match_the_tables() {
    // scipy.stats.t.ppf(0.975, df)
    for (df, t) in [(1, 12.706), (2, 4.303), (9, 2.262), (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980)]
    {
        assert!((t975(df) - t).abs() < 1.5e-3, "df {df}: {} vs {t}", t975(df));
    }
}

#[test]
fn every_format_of_a_fixed_table() {
    let mut r = work(vec![
        Column::Accuracy,
        Column::CostSeconds,
        Column::CostFlops,
        Column::CpuHours,
        Column::TeacherFlops,
    ]);
    r.compare_to = Some(1);
    r.weights = Weights::Best;
    let t = build(&r, &recorded());
    for f in [Format::Md, Format::Csv, Format::Latex, Format::Json, Format::Html] {
        insta::assert_snapshot!(format!("report_{}", f.extension()), render(&t, f));
    }
}

#[test]
fn html_and_latex_escape_what_they_must() {
    let mut r = work(vec![Column::Accuracy]);
    r.title = Some("<script>alert(1)</script> & 50% _x_ {y}".into());
    let mut rows = recorded();
    rows[0].label = "<b>a&b</b>".into();
    let t = build(&r, &rows);
    let h = render(&t, Format::Html);
    assert!(!h.contains("<script>") && h.contains("&lt;script&gt;") && h.contains("&lt;b&gt;a&amp;b"), "{h}");
    let l = render(&t, Format::Latex);
    assert!(l.contains("50\\% \\_x\\_ \\{y\\}") && l.contains("\\&"), "{l}");
}
