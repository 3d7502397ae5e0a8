//! Draws one chart as SVG with plotters: per bucket a min/max band (so a one-step spike stays
//! visible at any zoom) and a line through each bucket's last value, optional EMA smoothing of
//! that line, a log y axis, and vertical markers for signals and the kept step.

use plotters::coord::Shift;
use plotters::prelude::*;
use redline_core::series::Bucket;

/// Okabe–Ito: distinguishable with the common colour-vision deficiencies.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];
const STOP: RGBColor = RGBColor(213, 94, 0);
const SIGNAL: RGBColor = RGBColor(120, 120, 120);
const BEST: RGBColor = RGBColor(0, 158, 115);
const NAN: RGBColor = RGBColor(213, 94, 0);

/// One series on a chart.
#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    Stop,
    Signal,
    /// The step the trainer kept as best.
    Best,
}

/// A vertical line at a step.
#[derive(Debug, Clone)]
pub struct Marker {
    pub step: i64,
    pub kind: MarkerKind,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub lines: Vec<Line>,
    pub markers: Vec<Marker>,
    /// The step range drawn, inclusive.
    pub steps: (i64, i64),
    pub log_y: bool,
    /// EMA weight of the previous value (0 = no smoothing), as TensorBoard's slider.
    pub smoothing: f64,
    pub size: (u32, u32),
    /// Whether to draw the legend (always when lines are told apart only by colour).
    pub legend: bool,
}

/// The chart as an SVG document (scalable: it carries a viewBox and no fixed size).
pub fn render(chart: &Chart) -> String {
    let mut svg = String::new();
    let drawn = {
        let root = SVGBackend::with_string(&mut svg, chart.size).into_drawing_area();
        draw(chart, &root)
    };
    if let Err(e) = drawn {
        tracing::warn!(error = %e, title = %chart.title, "chart could not be drawn");
    }
    // plotters draws at a fixed size; an outer document with the same viewBox and no size of its
    // own lets the page scale it, and carries the accessible name.
    let (w, h) = chart.size;
    let title = askama::filters::escape(&chart.title, askama::filters::Html)
        .map_or_else(|e| match e {}, |t| t.to_string());
    format!(
        r#"<svg role="img" aria-label="{title}" viewBox="0 0 {w} {h}" preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">{svg}</svg>"#
    )
}

/// The y coordinate of a value: log10 on a log axis (dropping values ≤ 0), None when not finite.
fn y_of(v: f64, log: bool) -> Option<f64> {
    let y = if log {
        (v > 0.0).then(|| v.log10())?
    } else {
        v
    };
    y.is_finite().then_some(y)
}

/// The lines' plotted values: each bucket's last value, EMA-smoothed with bias correction.
fn smoothed(buckets: &[Bucket], weight: f64) -> Vec<(i64, f64)> {
    let mut out = Vec::with_capacity(buckets.len());
    let (mut acc, mut norm) = (0.0, 0.0);
    for b in buckets {
        if !b.last.is_finite() {
            continue;
        }
        if weight <= 0.0 {
            out.push((b.last_step, b.last));
            continue;
        }
        acc = weight * acc + (1.0 - weight) * b.last;
        norm = weight * norm + (1.0 - weight);
        out.push((b.last_step, acc / norm));
    }
    out
}

fn y_range(chart: &Chart) -> Option<(f64, f64)> {
    let log = chart.log_y;
    let values = chart.lines.iter().flat_map(|l| {
        l.buckets
            .iter()
            .flat_map(|b| [b.min, b.max, Some(b.last)])
            .flatten()
            .filter_map(move |v| y_of(v, log))
    });
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return None;
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        // A flat series: a tenth of its value either side (a learning rate of 6e-5 must not
        // sit on a ±0.1 axis that reads as 0), or ±0.1 around 0.
        if lo == 0.0 { 0.1 } else { lo.abs() * 0.1 }
    };
    Some((lo - pad, hi + pad))
}

/// Short tick labels: three significant digits, exponent form for very large or small values.
pub fn format_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else {
        let decimals = (2 - a.log10().floor() as i32).clamp(0, 4) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    }
}

/// A tick label precise enough that ticks `span / 5` apart read differently.
fn format_tick(v: f64, span: f64) -> String {
    let step = span / 5.0;
    if step <= 0.0 || v == 0.0 || !(1e-3..1e5).contains(&v.abs()) {
        return format_value(v);
    }
    let decimals = (-step.log10().floor() as i32).clamp(0, 8) as usize;
    format!("{v:.decimals$}")
}

fn draw(
    chart: &Chart,
    root: &DrawingArea<SVGBackend<'_>, Shift>,
) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let (x0, x1) = chart.steps;
    let Some((y0, y1)) = y_range(chart) else {
        root.draw(&Text::new(
            format!("{}: no data in this range", chart.title),
            (12, 20),
            ("sans-serif", 16),
        ))?;
        return root.present().map_err(Into::into);
    };
    let log = chart.log_y;
    let title = if log {
        format!("{} (log)", chart.title)
    } else {
        chart.title.clone()
    };
    let mut ctx = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 17))
        .margin(6)
        .x_label_area_size(30)
        .y_label_area_size(52)
        .build_cartesian_2d(x0..x1.max(x0 + 1), y0..y1)?;
    let span = if log { 0.0 } else { y1 - y0 };
    let y_label = |v: &f64| format_tick(if log { 10f64.powf(*v) } else { *v }, span);
    ctx.configure_mesh()
        .x_labels(6)
        .y_labels(5)
        .light_line_style(RGBColor(244, 245, 247))
        .bold_line_style(RGBColor(225, 228, 233))
        .label_style(("sans-serif", 14))
        .x_label_formatter(&|s: &i64| s.to_string())
        .y_label_formatter(&y_label)
        .draw()?;

    let clamp = |v: f64| {
        y_of(v, log)
            .unwrap_or(if v > 0.0 { y1 } else { y0 })
            .clamp(y0, y1)
    };
    for (i, line) in chart.lines.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let band: Vec<&Bucket> = line
            .buckets
            .iter()
            .filter(|b| b.min.is_some() && b.max.is_some())
            .collect();
        if band.iter().any(|b| b.count > 1) {
            let upper = band.iter().map(|b| (b.start, clamp(b.max.unwrap_or(y1))));
            let lower = band
                .iter()
                .rev()
                .map(|b| (b.end, clamp(b.min.unwrap_or(y0))));
            let points: Vec<(i64, f64)> = upper.chain(lower).collect();
            ctx.draw_series(std::iter::once(Polygon::new(
                points,
                colour.mix(0.22).filled(),
            )))?;
        }
        let points = smoothed(&line.buckets, chart.smoothing)
            .into_iter()
            .filter_map(|(s, v)| Some((s, y_of(v, log)?)));
        ctx.draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2)));
        let nan = line.buckets.iter().filter(|b| b.nan_count > 0);
        ctx.draw_series(nan.map(|b| TriangleMarker::new((b.last_step, y0), 4, NAN.filled())))?;
    }
    for m in &chart.markers {
        if !(x0..=x1).contains(&m.step) {
            continue;
        }
        let style = match m.kind {
            MarkerKind::Stop => STOP.stroke_width(2),
            MarkerKind::Best => BEST.stroke_width(2),
            MarkerKind::Signal => SIGNAL.stroke_width(1),
        };
        ctx.draw_series(std::iter::once(PathElement::new(
            [(m.step, y0), (m.step, y1)],
            style,
        )))?;
    }
    if chart.legend {
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(RGBColor(200, 200, 200))
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(points: &[(i64, f64)]) -> Line {
        Line {
            label: "loss <b>".into(),
            buckets: points
                .iter()
                .map(|&(s, v)| Bucket::of_point(s, v))
                .collect(),
        }
    }

    fn chart(lines: Vec<Line>) -> Chart {
        Chart {
            title: "a <title> & \"quotes\"".into(),
            lines,
            markers: vec![Marker {
                step: 5,
                kind: MarkerKind::Stop,
            }],
            steps: (0, 10),
            log_y: false,
            smoothing: 0.0,
            size: (400, 200),
            legend: true,
        }
    }

    #[test]
    fn charts_are_scalable_svg_with_escaped_text() {
        let svg = render(&chart(vec![
            line(&[(0, 1.0), (5, f64::NAN), (10, 2.0)]),
            line(&[(3, 0.5)]),
        ]));
        assert!(svg.starts_with("<svg role=\"img\""), "{}", &svg[..80]);
        assert!(svg.contains("viewBox=\"0 0 400 200\""));
        assert!(!svg.contains("<title>") && !svg.contains("<b>"));
        assert!(svg.contains("loss &lt;b&gt;"), "legend text is escaped");
        assert!(svg.contains("polyline") || svg.contains("<path"));
    }

    #[test]
    fn a_flat_series_gets_an_axis_on_its_own_scale() {
        let (lo, hi) = y_range(&chart(vec![line(&[(0, 6e-5), (10, 6e-5)])])).unwrap();
        assert!(
            (lo - 5.4e-5).abs() < 1e-12 && (hi - 6.6e-5).abs() < 1e-12,
            "{lo} {hi}"
        );
        let (lo, hi) = y_range(&chart(vec![line(&[(0, 0.0), (10, 0.0)])])).unwrap();
        assert_eq!((lo, hi), (-0.1, 0.1));
    }

    #[test]
    fn an_empty_chart_says_so() {
        assert!(render(&chart(vec![line(&[(1, f64::NAN)])])).contains("no data in this range"));
    }

    #[test]
    fn log_axes_drop_non_positive_values_and_smoothing_is_bias_corrected() {
        assert_eq!(y_of(-1.0, true), None);
        assert_eq!(y_of(100.0, true), Some(2.0));
        let b: Vec<Bucket> = [(0, 1.0), (1, 1.0), (2, 1.0)]
            .iter()
            .map(|&(s, v)| Bucket::of_point(s, v))
            .collect();
        assert!(
            smoothed(&b, 0.9)
                .iter()
                .all(|&(_, v)| (v - 1.0).abs() < 1e-12)
        );
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(format_value(0.123_456), "0.123");
        assert_eq!(format_value(12.5), "12.5");
        assert_eq!(format_value(1234.0), "1234");
        assert_eq!(format_value(2e-5), "2.0e-5");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_tick(3.3215, 0.002), "3.3215");
        assert_eq!(format_tick(40.0, 50.0), "40");
        assert_eq!(format_tick(0.3, 0.5), "0.3");
        assert_eq!(format_tick(0.25, 0.2), "0.25");
    }
}
