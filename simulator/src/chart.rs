//! One SVG per run: the primary budget's spend over simulated time against its amount,
//! with the cutoff marked. Hand-written SVG: a few lines and labels need no plotting crate.

use std::fmt::Write;

use crate::evaluate::{fmt_amount, fmt_ms, ScenarioResult};

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

/// The chart of one run as an SVG document.
pub fn svg(result: &ScenarioResult, span_ms: u64) -> String {
    let m = &result.metrics;
    let dim = m.budget_dimension.as_str();
    let t_max = m
        .timeline
        .iter()
        .map(|p| p.t_ms)
        .chain([span_ms, 1])
        .max()
        .unwrap_or(1) as f64;
    let y_max = (m.spend_peak.max(m.budget_amount) as f64 * 1.15).max(1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: u64| LEFT + t as f64 / t_max * plot_w;
    let y = |v: u64| TOP + plot_h - v as f64 / y_max * plot_h;

    let mut s = String::new();
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
        r#"<text x="{LEFT}" y="40" fill="dimgray">spend of budget {} ({dim}) over simulated time</text>"#,
        escape(&m.budget_id)
    );
    // Axes and gridlines with labels.
    for i in 0..=4 {
        let v = (y_max / 1.15 * i as f64 / 4.0) as u64;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            escape(&fmt_amount(dim, v)),
            y = y(v)
        );
    }
    for i in 0..=4 {
        let t = (t_max * i as f64 / 4.0) as u64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(t),
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
    // The budget line.
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" x2="{}" y1="{b:.1}" y2="{b:.1}" stroke="crimson" stroke-width="2"/><text x="{}" y="{:.1}" fill="crimson" text-anchor="end">budget {}</text>"#,
        WIDTH - RIGHT,
        WIDTH - RIGHT - 4.0,
        y(m.budget_amount) - 6.0,
        escape(&fmt_amount(dim, m.budget_amount)),
        b = y(m.budget_amount)
    );
    // Committed and committed + held, as steps.
    let steps = |value: &dyn Fn(&crate::evaluate::Point) -> u64| {
        let mut points = format!("{LEFT:.1},{:.1}", y(0));
        let mut last = 0;
        for p in &m.timeline {
            let _ = write!(
                points,
                " {:.1},{:.1} {:.1},{:.1}",
                x(p.t_ms),
                y(last),
                x(p.t_ms),
                y(value(p))
            );
            last = value(p);
        }
        let _ = write!(points, " {:.1},{:.1}", x(t_max as u64), y(last));
        points
    };
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="darkorange" stroke-width="1.5" stroke-dasharray="5,3" points="{}"/>"#,
        steps(&|p| p.committed + p.held)
    );
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="steelblue" stroke-width="2" points="{}"/>"#,
        steps(&|p| p.committed)
    );
    if let Some(c) = &m.cutoff {
        let cx = x(c.t_ms);
        let _ = writeln!(
            s,
            r#"<line x1="{cx:.1}" x2="{cx:.1}" y1="{TOP}" y2="{}" stroke="black" stroke-dasharray="2,2"/><circle cx="{cx:.1}" cy="{:.1}" r="4" fill="black"/><text x="{:.1}" y="{}" >cutoff: {} at {} ({})</text>"#,
            HEIGHT - BOTTOM,
            y(c.spend),
            (cx + 6.0).min(WIDTH - 260.0),
            TOP + 14.0,
            escape(&c.reason),
            fmt_ms(c.t_ms),
            escape(&fmt_amount(dim, c.spend))
        );
    }
    // Legend.
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
    s.push_str("</svg>\n");
    s
}
