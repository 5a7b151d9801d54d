//! One SVG per run: the primary budget's spend over simulated time against its amount,
//! with the cutoff marked. Hand-written SVG: a few lines and labels need no plotting crate.

use std::fmt::Write;

use crate::evaluate::{fmt_amount, fmt_ms, Cutoff, Metrics, Point, ScenarioResult};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 380.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 50.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Simulated time and spend mapped onto the plot area.
struct Plot {
    t_max: f64,
    y_max: f64,
}

impl Plot {
    fn of(result: &ScenarioResult, span_ms: u64) -> Self {
        let m = &result.metrics;
        let t_max = m
            .timeline
            .iter()
            .map(|p| p.t_ms)
            .chain([span_ms, 1])
            .max()
            .unwrap_or(1) as f64;
        let y_max = (m.spend_peak.max(m.budget_amount) as f64 * 1.15).max(1.0);
        Plot { t_max, y_max }
    }

    fn x(&self, t: u64) -> f64 {
        let plot_w = WIDTH - LEFT - RIGHT;
        LEFT + t as f64 / self.t_max * plot_w
    }

    fn y(&self, v: u64) -> f64 {
        let plot_h = HEIGHT - TOP - BOTTOM;
        TOP + plot_h - v as f64 / self.y_max * plot_h
    }
}

/// The chart of one run as an SVG document.
pub fn svg(result: &ScenarioResult, span_ms: u64) -> String {
    let plot = Plot::of(result, span_ms);
    let mut s = String::new();
    title(&mut s, result);
    axes(&mut s, &plot, &result.metrics.budget_dimension);
    budget_line(&mut s, &plot, &result.metrics);
    spend_lines(&mut s, &plot, &result.metrics);
    if let Some(c) = &result.metrics.cutoff {
        cutoff_marker(&mut s, &plot, c, &result.metrics.budget_dimension);
    }
    legend(&mut s);
    s.push_str("</svg>\n");
    s
}

fn title(s: &mut String, result: &ScenarioResult) {
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let outcome = if result.passed { "PASS" } else { "FAIL" };
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{} (seed {}): {outcome}</text>"#,
        escape(&result.scenario),
        result.seed
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="40" fill="dimgray">spend of budget {} ({}) over simulated time</text>"#,
        escape(&result.metrics.budget_id),
        result.metrics.budget_dimension
    );
}

/// Axes and gridlines with labels.
fn axes(s: &mut String, plot: &Plot, dim: &str) {
    for i in 0..=4 {
        let v = (plot.y_max / 1.15 * i as f64 / 4.0) as u64;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            plot.y(v) + 4.0,
            escape(&fmt_amount(dim, v)),
            y = plot.y(v)
        );
    }
    for i in 0..=4 {
        let t = (plot.t_max * i as f64 / 4.0) as u64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            plot.x(t),
            HEIGHT - BOTTOM + 18.0,
            fmt_ms(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" stroke="black"/><line x1="{LEFT}" x2="{}" y1="{b}" y2="{b}" stroke="black"/>"#,
        HEIGHT - BOTTOM,
        WIDTH - RIGHT,
        b = HEIGHT - BOTTOM
    );
}

fn budget_line(s: &mut String, plot: &Plot, m: &Metrics) {
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" x2="{}" y1="{b:.1}" y2="{b:.1}" stroke="crimson" stroke-width="2"/><text x="{}" y="{:.1}" fill="crimson" text-anchor="end">budget {}</text>"#,
        WIDTH - RIGHT,
        WIDTH - RIGHT - 4.0,
        plot.y(m.budget_amount) - 6.0,
        escape(&fmt_amount(&m.budget_dimension, m.budget_amount)),
        b = plot.y(m.budget_amount)
    );
}

/// Committed and committed + held, as steps.
fn spend_lines(s: &mut String, plot: &Plot, m: &Metrics) {
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="darkorange" stroke-width="1.5" stroke-dasharray="5,3" points="{}"/>"#,
        steps(plot, &m.timeline, |p| p.committed + p.held)
    );
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="steelblue" stroke-width="2" points="{}"/>"#,
        steps(plot, &m.timeline, |p| p.committed)
    );
}

/// A polyline's points: a step at each timeline point, held to the end of the plot.
fn steps(plot: &Plot, timeline: &[Point], value: impl Fn(&Point) -> u64) -> String {
    let mut points = format!("{LEFT:.1},{:.1}", plot.y(0));
    let mut last = 0;
    for p in timeline {
        let _ = write!(
            points,
            " {:.1},{:.1} {:.1},{:.1}",
            plot.x(p.t_ms),
            plot.y(last),
            plot.x(p.t_ms),
            plot.y(value(p))
        );
        last = value(p);
    }
    let _ = write!(
        points,
        " {:.1},{:.1}",
        plot.x(plot.t_max as u64),
        plot.y(last)
    );
    points
}

fn cutoff_marker(s: &mut String, plot: &Plot, c: &Cutoff, dim: &str) {
    let cx = plot.x(c.t_ms);
    let _ = writeln!(
        s,
        r#"<line x1="{cx:.1}" x2="{cx:.1}" y1="{TOP}" y2="{}" stroke="black" stroke-dasharray="2,2"/><circle cx="{cx:.1}" cy="{:.1}" r="4" fill="black"/><text x="{:.1}" y="{}" >cutoff: {} at {} ({})</text>"#,
        HEIGHT - BOTTOM,
        plot.y(c.spend),
        (cx + 6.0).min(WIDTH - 260.0),
        TOP + 14.0,
        escape(&c.reason),
        fmt_ms(c.t_ms),
        escape(&fmt_amount(dim, c.spend))
    );
}

fn legend(s: &mut String) {
    let ly = HEIGHT - 12.0;
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" x2="{}" y1="{ly}" y2="{ly}" stroke="steelblue" stroke-width="2"/><text x="{}" y="{}">committed</text><line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="darkorange" stroke-dasharray="5,3"/><text x="{}" y="{}">committed + held</text>"#,
        LEFT + 20.0,
        LEFT + 24.0,
        ly + 4.0,
        LEFT + 110.0,
        LEFT + 130.0,
        LEFT + 134.0,
        ly + 4.0
    );
}
