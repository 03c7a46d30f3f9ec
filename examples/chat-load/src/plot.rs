//! The SVG chart of a run: three panels over the same time axis.
//!
//! 1. Connections held: the server's chat `in_use` from `/health`, the
//!    capacity line, and this tool's open chat connections.
//! 2. Connection attempts per second: admitted, rejected, unanswered.
//! 3. Latency of the chatting clients per bin: p50 and p99.
//!
//! Events (flood start, fault injected, recovery...) are vertical lines in
//! every panel, labelled in the first, so a flood and its recovery can be
//! seen at a glance.

use crate::report::Report;
use plotters::prelude::*;
use std::path::Path;

/// Plotting failed.
#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {message}")]
pub struct PlotError {
    path: String,
    message: String,
}

const IN_USE: RGBColor = RGBColor(31, 119, 180);
const CAPACITY: RGBColor = RGBColor(214, 39, 40);
const CONNECTED: RGBColor = RGBColor(44, 160, 44);
const ADMITTED: RGBColor = RGBColor(31, 119, 180);
const REJECTED: RGBColor = RGBColor(255, 127, 14);
const FAILED: RGBColor = RGBColor(214, 39, 40);
const P50: RGBColor = RGBColor(44, 160, 44);
const P99: RGBColor = RGBColor(148, 103, 189);
const EVENT: RGBColor = RGBColor(120, 120, 120);

/// Draws `report`'s time line to `path` as SVG.
pub fn draw(report: &Report, path: &Path) -> Result<(), PlotError> {
    draw_inner(report, path).map_err(|e| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw_inner(report: &Report, path: &Path) -> DrawResult {
    let tl = &report.timeline;
    let bin_s = match tl.as_slice() {
        [a, b, ..] => (b.t_s - a.t_s).max(1e-3),
        _ => 1.0,
    };
    let t_last = tl.last().map(|s| s.t_s + bin_s).unwrap_or(1.0).max(1.0);
    // A little room on the right so the last event's label fits.
    let t_end = t_last * 1.06;
    let mid = |t: f64| t + bin_s / 2.0;
    // Counters and gauges are drawn as steps over their bin, so a rise
    // shows where it happened rather than interpolated from the bin before.
    let steps = |points: Vec<(f64, f64)>| -> Vec<(f64, f64)> {
        points
            .into_iter()
            .flat_map(|(t, v)| [(t, v), (t + bin_s, v)])
            .collect()
    };

    let root = SVGBackend::new(path, (1100, 960)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    title.titled(
        &format!("chat-load {}", report.scenario),
        ("sans-serif", 24).into_font(),
    )?;
    let panels = body.split_evenly((3, 1));

    // Panel 1: connections held.
    let cap = report.capacity.unwrap_or(0) as f64;
    let y1 = tl
        .iter()
        .flat_map(|s| [s.in_use, s.connected])
        .flatten()
        .map(|v| v as f64)
        .fold(cap, f64::max)
        .max(1.0)
        * 1.15;
    let mut c1 = ChartBuilder::on(&panels[0])
        .caption("connections held", ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_end, 0f64..y1)?;
    c1.configure_mesh()
        .x_desc("seconds")
        .y_desc("connections")
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    c1.draw_series(LineSeries::new(
        steps(
            tl.iter()
                .filter_map(|s| s.in_use.map(|v| (s.t_s, v as f64)))
                .collect(),
        ),
        IN_USE.stroke_width(2),
    ))?
    .label("server in_use (/health)")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], IN_USE.stroke_width(2)));
    c1.draw_series(LineSeries::new(
        steps(
            tl.iter()
                .filter_map(|s| s.connected.map(|v| (s.t_s, v as f64)))
                .collect(),
        ),
        CONNECTED.stroke_width(1),
    ))?
    .label("client connections open")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], CONNECTED));
    if cap > 0.0 {
        c1.draw_series(LineSeries::new(
            [(0.0, cap), (t_end, cap)],
            CAPACITY.stroke_width(1),
        ))?
        .label("capacity")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], CAPACITY));
    }
    for (i, e) in report.events.iter().enumerate() {
        c1.draw_series(LineSeries::new(
            [(e.t_s, 0.0), (e.t_s, y1)],
            EVENT.stroke_width(1),
        ))?;
        // Labels on three staggered rows so close events stay readable.
        c1.draw_series(std::iter::once(Text::new(
            e.what.clone(),
            (e.t_s, y1 * (0.98 - 0.06 * (i % 3) as f64)),
            ("sans-serif", 12).into_font().color(&EVENT),
        )))?;
    }
    c1.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    // Panel 2: attempts per second.
    let rate = |n: u64| n as f64 / bin_s;
    let y2 = tl
        .iter()
        .map(|s| rate(s.admitted.max(s.rejected).max(s.failed)))
        .fold(1.0, f64::max)
        * 1.15;
    let mut c2 = ChartBuilder::on(&panels[1])
        .caption("connection attempts per second", ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_end, 0f64..y2)?;
    c2.configure_mesh()
        .x_desc("seconds")
        .y_desc("per second")
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (label, color, get) in [
        (
            "admitted",
            ADMITTED,
            (|s: &crate::metrics::Sample| s.admitted) as fn(&_) -> u64,
        ),
        ("rejected (503 / BUSY)", REJECTED, |s| s.rejected),
        ("unanswered", FAILED, |s| s.failed),
    ] {
        c2.draw_series(LineSeries::new(
            steps(tl.iter().map(|s| (s.t_s, rate(get(s)))).collect()),
            color.stroke_width(2),
        ))?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    for e in &report.events {
        c2.draw_series(LineSeries::new(
            [(e.t_s, 0.0), (e.t_s, y2)],
            EVENT.stroke_width(1),
        ))?;
    }
    c2.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    // Panel 3: latency.
    let y3 = tl.iter().filter_map(|s| s.p99_ms).fold(1.0, f64::max) * 1.15;
    let mut c3 = ChartBuilder::on(&panels[2])
        .caption(
            format!("{} per bin", report.latency_label),
            ("sans-serif", 16),
        )
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_end, 0f64..y3)?;
    c3.configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (label, color, get) in [
        (
            "p50",
            P50,
            (|s: &crate::metrics::Sample| s.p50_ms) as fn(&_) -> Option<f64>,
        ),
        ("p99", P99, |s| s.p99_ms),
    ] {
        // Bins without samples break the line rather than dropping to 0.
        let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for s in tl {
            match get(s) {
                Some(v) => segments
                    .last_mut()
                    .map(|seg| seg.push((mid(s.t_s), v)))
                    .unwrap_or(()),
                None => segments.push(Vec::new()),
            }
        }
        let mut first = true;
        for seg in segments.into_iter().filter(|s| !s.is_empty()) {
            let series = c3.draw_series(LineSeries::new(seg, color.stroke_width(2)))?;
            if first {
                series.label(label).legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
                first = false;
            }
        }
    }
    for e in &report.events {
        c3.draw_series(LineSeries::new(
            [(e.t_s, 0.0), (e.t_s, y3)],
            EVENT.stroke_width(1),
        ))?;
    }
    let has_latency = tl.iter().any(|s| s.p50_ms.is_some());
    if has_latency {
        c3.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }

    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Sample;

    #[test]
    fn draws_an_svg_with_the_series() {
        let mut r = Report::new("flood");
        r.capacity = Some(50);
        r.event(1.0, "flood starts");
        r.timeline = (0..8)
            .map(|i| Sample {
                t_s: i as f64 * 0.5,
                admitted: i,
                rejected: 2 * i,
                failed: 0,
                in_use: Some(10 * i),
                connected: Some(10 * i),
                p50_ms: (i != 3).then_some(1.0),
                p99_ms: (i != 3).then_some(2.0 + i as f64),
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("chat-load-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.svg");
        draw(&r, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("flood starts"));
        assert!(svg.contains("server in_use"));
        assert!(svg.contains("rejected (503 / BUSY)"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
