//! Plots, as SVG and PNG (plotters; text in an embedded DejaVu Sans, so no system fonts):
//! a training node's learning curves, and a report's accuracy against cost and cost breakdown.
//!
//! Each chart is drawn once by a function generic over the backend and rendered twice: SVG text,
//! and PNG from the bitmap backend's pixels (encoded with `image`).

use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

/// A chart in both formats.
pub struct Plot {
    pub svg: String,
    pub png: Vec<u8>,
}

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const SANS: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The file is ours and valid; a failure would only lose the text.
        let _ = plotters::style::register_font(SANS, FontStyle::Normal, FONT);
    });
}

/// A chart drawn the same way on any backend.
trait Chart {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Renders a chart as SVG and as PNG.
fn render(chart: &impl Chart) -> Result<Plot, String> {
    register_font();
    let size = chart.size();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        chart.draw(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    let mut pixels = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        chart.draw(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    let img = image::RgbImage::from_raw(size.0, size.1, pixels).ok_or("the PNG buffer has the wrong size")?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map_err(|e| e.to_string())?;
    Ok(Plot { svg, png })
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// `lo..hi` with a margin, never empty.
fn span(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = match (hi > lo, lo == 0.0) {
        (true, _) => (hi - lo) * 0.08,
        (false, false) => lo.abs() * 0.1,
        (false, true) => 1.0,
    };
    (lo - pad)..(hi + pad)
}

/// One panel: named series of (x, y) points.
fn lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let xs = span(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)));
    let ys = span(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (SANS, 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(xs, ys)
        .map_err(e)?;
    // Bold grid lines only: the light ones add little and make the PNG several times larger.
    chart.configure_mesh().max_light_lines(0).x_desc(x_desc).label_style((SANS, 11)).draw().map_err(e)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied().filter(|p| p.1.is_finite()), c.stroke_width(2)))
            .map_err(e)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .label_font((SANS, 11))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(e)?;
    }
    Ok(())
}

/// A training node's learning curves from its `history.jsonl` rows: the loss and each of its
/// terms, train and validation accuracy, and the learning rate, against the epoch.
pub fn learning_curves(node: &str, history: &[Value]) -> Result<Plot, String> {
    let epoch = |h: &Value, i: usize| h.get("epoch").and_then(Value::as_f64).unwrap_or((i + 1) as f64);
    let series = |keys: &[String]| -> Vec<(String, Vec<(f64, f64)>)> {
        keys.iter()
            .map(|k| {
                let pts = history
                    .iter()
                    .enumerate()
                    .filter_map(|(i, h)| Some((epoch(h, i), h.get(k)?.as_f64()?)))
                    .collect();
                (k.clone(), pts)
            })
            .filter(|(_, p): &(String, Vec<(f64, f64)>)| !p.is_empty())
            .collect()
    };
    let mut loss_keys: Vec<String> = vec!["loss".into()];
    for h in history {
        for k in h.as_object().into_iter().flat_map(|o| o.keys()) {
            if k.starts_with("loss.") && !loss_keys.contains(k) {
                loss_keys.push(k.clone());
            }
        }
    }
    let acc_keys: Vec<String> =
        ["train_accuracy", "val_accuracy", "ema_val_accuracy"].iter().map(|s| s.to_string()).collect();
    let (loss, acc, lr) = (series(&loss_keys), series(&acc_keys), series(&["lr".to_string()]));
    render(&Curves { node, loss, acc, lr })
}

type Series = Vec<(String, Vec<(f64, f64)>)>;

struct Curves<'a> {
    node: &'a str,
    loss: Series,
    acc: Series,
    lr: Series,
}

impl Chart for Curves<'_> {
    fn size(&self) -> (u32, u32) {
        (720, 720)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let parts = root.split_evenly((3, 1));
        lines(&parts[0], &format!("{}: loss", self.node), "epoch", &self.loss)?;
        lines(&parts[1], "accuracy", "epoch", &self.acc)?;
        lines(&parts[2], "learning rate", "epoch", &self.lr)
    }
}

/// A report row's point: its label, mean cost (GFLOPs), mean accuracy (%) and its std.
pub struct CostPoint {
    pub label: String,
    pub cost: f64,
    pub accuracy: f64,
    pub std: f64,
}

/// Accuracy against cost, one point a row with its seeds' ± std as error bars.
pub fn accuracy_vs_cost(title: &str, points: &[CostPoint]) -> Result<Plot, String> {
    render(&Scatter { title, points })
}

struct Scatter<'a> {
    title: &'a str,
    points: &'a [CostPoint],
}

impl Scatter<'_> {
    /// The chart on x axis `xs` (linear or log).
    fn on_axis<DB: DrawingBackend, X>(
        &self,
        root: &DrawingArea<DB, Shift>,
        xs: X,
        ys: std::ops::Range<f64>,
        x_desc: &str,
    ) -> Result<(), String>
    where
        X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
        X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
    {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (SANS, 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(xs, ys)
            .map_err(e)?;
        chart
            .configure_mesh()
            .max_light_lines(0)
            .x_desc(x_desc)
            .y_desc("accuracy (%)")
            .label_style((SANS, 11))
            .draw()
            .map_err(e)?;
        self.points_on(&mut chart).map_err(e)
    }

    /// Each point with its error bar and label, on either x axis.
    fn points_on<DB: DrawingBackend, X: plotters::coord::ranged1d::Ranged<ValueType = f64>>(
        &self,
        chart: &mut ChartContext<'_, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        for (i, p) in self.points.iter().enumerate() {
            let c = color(i);
            let (lo, hi) = (p.accuracy - p.std, p.accuracy + p.std);
            chart.draw_series(std::iter::once(ErrorBar::new_vertical(
                p.cost,
                lo,
                p.accuracy,
                hi,
                c.stroke_width(2),
                8,
            )))?;
            chart.draw_series(std::iter::once(Circle::new((p.cost, p.accuracy), 5, c.filled())))?;
            chart.draw_series(std::iter::once(Text::new(
                format!(" {}", p.label),
                (p.cost, p.accuracy),
                (SANS, 12),
            )))?;
        }
        Ok(())
    }
}

impl Chart for Scatter<'_> {
    fn size(&self) -> (u32, u32) {
        (720, 480)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let ys = span(self.points.iter().flat_map(|p| [p.accuracy - p.std, p.accuracy + p.std]));
        // Costs that span more than 20x (a teacher beside its students) on a log axis.
        let (lo, hi) =
            self.points.iter().fold((f64::INFINITY, 0.0f64), |(l, h), p| (l.min(p.cost), h.max(p.cost)));
        if lo > 0.0 && hi / lo > 20.0 {
            self.on_axis(
                root,
                (lo / 1.5..hi * 1.5).log_scale(),
                ys,
                "cost (GFLOPs, pre-training included; log scale)",
            )
        } else {
            self.on_axis(
                root,
                span(self.points.iter().map(|p| p.cost)),
                ys,
                "cost (GFLOPs, pre-training included)",
            )
        }
    }
}

/// Each row's cost split: its own training, its pre-training, and its teachers' (`teacher_label`
/// says whether whole or amortised), as stacked horizontal bars in GFLOPs.
pub fn cost_breakdown(title: &str, rows: &[(String, [f64; 3])], teacher_label: &str) -> Result<Plot, String> {
    render(&Breakdown { title, rows, names: ["own training", "pre-training", teacher_label] })
}

struct Breakdown<'a> {
    title: &'a str,
    rows: &'a [(String, [f64; 3])],
    names: [&'a str; 3],
}

impl Chart for Breakdown<'_> {
    fn size(&self) -> (u32, u32) {
        (720, 120 + 36 * self.rows.len() as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let rows = self.rows;
        let max = rows.iter().map(|(_, c)| c.iter().sum::<f64>()).fold(0.0, f64::max).max(1e-9) * 1.05;
        let n = rows.len().max(1) as i32;
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (SANS, 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(140)
            .build_cartesian_2d(0.0..max, (0..(n - 1).max(1)).into_segmented())
            .map_err(e)?;
        let label = |y: &SegmentValue<i32>| match y {
            SegmentValue::CenterOf(i) => rows.get(*i as usize).map(|r| r.0.clone()).unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .max_light_lines(0)
            .disable_y_mesh()
            .x_desc("GFLOPs")
            .y_labels(rows.len().max(1))
            .y_label_formatter(&label)
            .label_style((SANS, 11))
            .draw()
            .map_err(e)?;
        for (k, name) in self.names.iter().enumerate() {
            let c = color(k);
            chart
                .draw_series(rows.iter().enumerate().map(|(i, (_, parts))| {
                    let start: f64 = parts[..k].iter().sum();
                    let (a, b) = (SegmentValue::Exact(i as i32), SegmentValue::Exact(i as i32 + 1));
                    let mut r = Rectangle::new([(start, a), (start + parts[k], b)], c.mix(0.85).filled());
                    r.set_margin(4, 4, 0, 0);
                    r
                }))
                .map_err(e)?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .label_font((SANS, 11))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Width, height and the share of pixels that are not white.
    fn inspect(png: &[u8]) -> (u32, u32, f64) {
        let img = image::load_from_memory(png).unwrap().to_rgb8();
        let ink = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        (img.width(), img.height(), ink as f64 / (img.width() * img.height()) as f64)
    }

    #[test]
    fn every_plot_has_its_size_and_is_not_blank() {
        let history: Vec<Value> = (1..=10)
            .map(|e| {
                json!({ "epoch": e, "loss": 2.0 / e as f64, "loss.kd": 1.0 / e as f64, "train_accuracy": 0.1 * e as f64,
                        "val_accuracy": 0.08 * e as f64, "lr": 0.1 * (1.0 - e as f64 / 10.0) })
            })
            .collect();
        let p = learning_curves("kd[seed=0]", &history).unwrap();
        let (w, h, ink) = inspect(&p.png);
        assert_eq!((w, h), (720, 720));
        assert!(ink > 0.01 && ink < 0.5, "{ink}");
        assert!(
            p.svg.contains("<svg") && p.svg.contains("loss.kd") && p.svg.contains("val_accuracy"),
            "{}",
            &p.svg[..300]
        );

        let pts = [
            CostPoint { label: "scratch".into(), cost: 0.4, accuracy: 86.0, std: 3.9 },
            CostPoint { label: "pt+ft".into(), cost: 6.4, accuracy: 86.8, std: 4.7 },
            CostPoint { label: "kd".into(), cost: 1.1, accuracy: 90.1, std: 0.9 },
        ];
        let p = accuracy_vs_cost("accuracy vs cost", &pts).unwrap();
        let (w, h, ink) = inspect(&p.png);
        assert_eq!((w, h), (720, 480));
        assert!(ink > 0.01, "{ink}");
        assert!(p.svg.contains("pt+ft"));

        let rows = vec![
            ("scratch".to_string(), [0.4, 0.0, 0.0]),
            ("pt+ft".to_string(), [0.4, 6.0, 0.0]),
            ("kd".to_string(), [1.1, 0.0, 112.0]),
        ];
        let p = cost_breakdown("cost", &rows, "teacher (whole)").unwrap();
        let (w, h, ink) = inspect(&p.png);
        assert_eq!((w, h), (720, 120 + 36 * 3));
        assert!(ink > 0.05, "{ink}");
        assert!(p.svg.contains("pre-training"));
    }

    #[test]
    fn empty_and_flat_data_still_draw() {
        assert!(learning_curves("x", &[]).is_ok());
        let one = [CostPoint { label: "a".into(), cost: 1.0, accuracy: 50.0, std: 0.0 }];
        assert!(accuracy_vs_cost("t", &one).is_ok());
        assert!(cost_breakdown("t", &[], "teacher").is_ok());
    }
}
