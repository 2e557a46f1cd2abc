//! Metric charts as SVG, drawn with plotters: one metric against the optimizer step for one job
//! or several (overlaid, with a legend), training records as a line and evaluation records
//! (`eval_<metric>`) as dots. `GET /v1/jobs/{id}/charts/{metric}.svg` and `orpoctl chart` serve
//! them.
//!
//! The SVG's text is left to the viewer's sans-serif font (plotters' SVG backend writes `<text>`
//! elements), so no font file is compiled in or read.

use orpo_api::MetricRecord;
use plotters::prelude::*;

/// Width and height of a chart, in pixels.
pub const SIZE: (u32, u32) = (720, 400);

/// The metrics a chart can show besides the names in the records' `metrics`.
pub const FIELDS: [&str; 2] = ["learning_rate", "grad_norm"];

/// One job's points of a metric: `(step, value)`, finite values only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub label: String,
    pub train: Vec<(f64, f64)>,
    pub eval: Vec<(f64, f64)>,
}

impl Series {
    /// The points of `metric` in `records`; `eval_<metric>` are the evaluation points.
    pub fn of(label: String, metric: &str, records: &[MetricRecord]) -> Series {
        let mut s = Series {
            label,
            ..Series::default()
        };
        let eval_name = format!("eval_{metric}");
        for r in records {
            let x = r.step as f64;
            let train = match metric {
                "learning_rate" => r.learning_rate,
                "grad_norm" => r.grad_norm,
                name => r.metrics.get(name).copied(),
            };
            if let Some(y) = train.filter(|y| y.is_finite()) {
                s.train.push((x, y));
            }
            if let Some(&y) = r.metrics.get(&eval_name).filter(|y| y.is_finite()) {
                s.eval.push((x, y));
            }
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.train.is_empty() && self.eval.is_empty()
    }
}

/// The metric names `records` can be charted by: TRL's names of the training records, the
/// evaluation names without their `eval_` prefix, `learning_rate` and `grad_norm`.
pub fn metric_names(records: &[MetricRecord]) -> Vec<String> {
    let mut names: Vec<String> = records
        .iter()
        .flat_map(|r| r.metrics.keys())
        .map(|k| k.strip_prefix("eval_").unwrap_or(k).to_string())
        .chain(FIELDS.iter().map(|f| f.to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The chart of `metric` for `series`, titled `title`, as an SVG document.
pub fn svg(title: &str, metric: &str, series: &[Series]) -> Result<String, String> {
    let points = || series.iter().flat_map(|s| s.train.iter().chain(&s.eval));
    let (mut x0, mut x1, mut y0, mut y1) = points().fold(
        (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
        |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
    );
    if x0 > x1 {
        return Err(format!("there are no points of {metric} to draw"));
    }
    // A flat or single-point series still gets axes with some extent.
    if x1 - x0 < 1.0 {
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    let pad = match y1 - y0 {
        d if d > 0.0 => d * 0.05,
        _ => y0.abs().max(1.0) * 0.05,
    };
    (y0, y1) = (y0 - pad, y1 + pad);
    let mut out = String::new();
    draw(&mut out, title, metric, series, (x0..x1, y0..y1))?;
    Ok(out)
}

fn draw(
    out: &mut String,
    title: &str,
    metric: &str,
    series: &[Series],
    (x, y): (std::ops::Range<f64>, std::ops::Range<f64>),
) -> Result<(), String> {
    draw_on(out, title, metric, series, (x, y)).map_err(|e| e.to_string())
}

fn draw_on<'a>(
    out: &'a mut String,
    title: &str,
    metric: &str,
    series: &[Series],
    (x, y): (std::ops::Range<f64>, std::ops::Range<f64>),
) -> Result<(), Box<dyn std::error::Error + 'a>> {
    let (x0, x1) = (x.start, x.end);
    let y_span = y.end - y.start;
    let root = SVGBackend::with_string(out, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(metric)
        .light_line_style(RGBAColor(0, 0, 0, 0.03))
        // Steps are whole: a few steps get a tick each, never a label between two.
        .x_labels(((x1 - x0).ceil() as usize + 1).min(10))
        .x_label_formatter(&|v| match (v - v.round()).abs() < 1e-6 {
            true => format!("{}", v.round()),
            false => String::new(),
        })
        .y_label_formatter(&|v| short(*v, y_span))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                s.train.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(s.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart.draw_series(s.eval.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// An axis label with the digits that tell ticks `span` apart: at most a few more than the
/// span's own; scientific outside 1e-3..1e5.
fn short(v: f64, span: f64) -> String {
    let a = v.abs();
    // Digits below the span's leading one, so neighbouring ticks differ.
    let below = |scale: f64| {
        let step = (span / 10.0).max(f64::MIN_POSITIVE);
        ((scale / step).log10().ceil() as i64).clamp(1, 8)
    };
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.*e}", below(a) as usize)
    } else {
        let decimals = (1 - span.max(f64::MIN_POSITIVE).log10().floor() as i64).clamp(0, 8);
        let text = format!("{v:.*}", decimals as usize);
        let text = match text.contains('.') {
            true => text.trim_end_matches('0').trim_end_matches('.'),
            false => &text,
        };
        if text == "-0" {
            "0".into()
        } else {
            text.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(step: usize, metrics: &[(&str, f64)], lr: Option<f64>) -> MetricRecord {
        MetricRecord {
            step,
            learning_rate: lr,
            metrics: metrics
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>(),
            ..MetricRecord::default()
        }
    }

    fn records() -> Vec<MetricRecord> {
        vec![
            record(1, &[("loss", 2.0), ("rewards/accuracies", 0.5)], Some(1e-4)),
            record(
                2,
                &[("loss", 1.5), ("rewards/accuracies", 0.75)],
                Some(5e-5),
            ),
            record(2, &[("eval_loss", 1.8)], None),
            record(3, &[("loss", f64::NAN)], Some(0.0)),
        ]
    }

    #[test]
    fn series_take_train_and_eval_points_and_skip_what_is_not_finite() {
        let s = Series::of("job 1".into(), "loss", &records());
        assert_eq!(s.train, [(1.0, 2.0), (2.0, 1.5)]);
        assert_eq!(s.eval, [(2.0, 1.8)]);
        let lr = Series::of("job 1".into(), "learning_rate", &records());
        assert_eq!(lr.train, [(1.0, 1e-4), (2.0, 5e-5), (3.0, 0.0)]);
        assert!(Series::of("x".into(), "nll_loss", &records()).is_empty());
        assert_eq!(
            metric_names(&records()),
            ["grad_norm", "learning_rate", "loss", "rewards/accuracies"]
        );
    }

    #[test]
    fn a_chart_is_an_svg_with_a_line_dots_and_escaped_text() {
        let s = Series::of("<b>run</b>".into(), "loss", &records());
        let text = svg(
            "job 1 <script>alert(1)</script>: loss",
            "loss",
            std::slice::from_ref(&s),
        )
        .unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..80]);
        assert!(text.contains("<polyline"), "the training line");
        assert_eq!(text.matches("<circle").count(), 1, "one eval point");
        assert!(!text.contains("<script>") && text.contains("&lt;script&gt;"));
        // Overlaid: a legend names each series, escaped.
        let two = svg(
            "loss",
            "loss",
            &[
                s.clone(),
                Series {
                    label: "job 2".into(),
                    ..s
                },
            ],
        )
        .unwrap();
        assert!(two.contains("&lt;b&gt;run&lt;/b&gt;") && two.contains("job 2"));
        assert!(!two.contains("<b>"));
        let none = svg("t", "nll_loss", &[Series::default()]).unwrap_err();
        assert_eq!(none, "there are no points of nll_loss to draw");
    }

    #[test]
    fn axis_labels_have_the_digits_their_span_needs() {
        assert_eq!(short(0.5, 1.0), "0.5");
        assert_eq!(short(1.23456, 1.0), "1.2");
        assert_eq!(short(1.23456, 0.001), "1.2346");
        assert_eq!(short(150.0, 400.0), "150");
        assert_eq!(short(0.0, 1.0), "0");
        assert_eq!(short(2e-5, 1e-5), "2.00e-5");
        // A learning rate decaying from 2e-4 by 1e-7: the ticks must differ.
        assert_eq!(short(1.9998e-4, 2e-7), "1.9998e-4");
        assert_eq!(short(-0.00001, 1e-5), "-1.0e-5");
    }
}
