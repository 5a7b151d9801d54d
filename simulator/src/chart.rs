//! One SVG per run: each agent's cumulative spend of the primary budget's dimension over
//! simulated time, the whole budget's committed + held, the budget's amount, and marks for
//! the faults injected, each trip and limit cutoff, and each soft threshold crossed. Axes
//! have round ticks (1, 2 or 5 x 10^n; time in s, min or h as fits).
//!
//! Hand-written SVG rather than a plotting crate: the chart is a few paths, lines and
//! labels, its text stays readable and testable (every mark and series is an element with a
//! class), and the simulator gains no dependency or font handling for it.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::evaluate::{fmt_amount, Metrics, Point, ScenarioResult};

const WIDTH: f64 = 920.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
/// Room for the legend, right of the plot.
const RIGHT: f64 = 210.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 50.0;
/// Agents drawn as their own series; the others are summed into one.
pub const SERIES_MAX: usize = 10;
/// Marks of each kind drawn (a burst may deny dozens of agents at once: those are grouped).
const MARKS_MAX: usize = 12;
/// Ticks aimed for on each axis.
const TICKS_TARGET: f64 = 5.0;
const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The smallest step of 1, 2 or 5 x 10^n that cuts `range` into at most about
/// `TICKS_TARGET` intervals.
pub fn nice_step(range: f64) -> f64 {
    let raw = (range / TICKS_TARGET).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}

/// A time axis: the unit that fits the span, and its round step in that unit.
struct TimeAxis {
    unit_ms: f64,
    unit: &'static str,
    step: f64,
    /// End of the axis, in ms: a whole number of steps.
    end_ms: f64,
}

impl TimeAxis {
    fn of(span_ms: f64) -> Self {
        let (unit_ms, unit) = match span_ms {
            s if s < 1_000.0 => (1.0, "ms"),
            s if s < 300_000.0 => (1_000.0, "s"),
            s if s < 7_200_000.0 => (60_000.0, "min"),
            _ => (3_600_000.0, "h"),
        };
        let span = (span_ms / unit_ms).max(1e-3);
        let step = nice_step(span);
        TimeAxis {
            unit_ms,
            unit,
            step,
            end_ms: (span / step).ceil().max(1.0) * step * unit_ms,
        }
    }

    fn label(&self, ms: f64) -> String {
        format!(
            "{} {}",
            round_label(ms / self.unit_ms, self.step),
            self.unit
        )
    }
}

/// A tick value with no more decimals than its step needs.
fn round_label(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{value:.decimals$}")
}

/// Simulated time and spend mapped onto the plot area.
struct Plot {
    time: TimeAxis,
    y_step: f64,
    y_top: f64,
}

impl Plot {
    fn of(m: &Metrics, span_ms: u64) -> Self {
        let t_max = m
            .timeline
            .iter()
            .map(|p| p.t_ms)
            .chain(m.faults.iter().map(|f| f.t_ms))
            .chain([span_ms, 1])
            .max()
            .unwrap_or(1);
        let v_max = m.spend_peak.max(m.budget_amount).max(1) as f64;
        let y_step = nice_step(v_max).max(1.0);
        Plot {
            time: TimeAxis::of(t_max as f64),
            y_step,
            y_top: (v_max / y_step).floor() * y_step + y_step,
        }
    }

    fn x(&self, t_ms: u64) -> f64 {
        LEFT + (t_ms as f64 / self.time.end_ms).min(1.0) * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, v: u64) -> f64 {
        let plot_h = HEIGHT - TOP - BOTTOM;
        TOP + plot_h - (v as f64 / self.y_top).min(1.0) * plot_h
    }
}

/// The chart of one run as an SVG document; the time axis covers `span_ms` and every point.
pub fn svg(result: &ScenarioResult, span_ms: u64) -> String {
    let m = &result.metrics;
    let plot = Plot::of(m, span_ms);
    let mut s = String::new();
    title(&mut s, result);
    axes(&mut s, &plot, &m.budget_dimension);
    budget_line(&mut s, &plot, m);
    total_line(&mut s, &plot, &m.timeline);
    let series = agent_series(&m.agent_spend);
    for (index, (name, points)) in series.iter().enumerate() {
        agent_path(&mut s, &plot, name, points, PALETTE[index % PALETTE.len()]);
    }
    marks(&mut s, &plot, m);
    legend(&mut s, &series);
    s.push_str("</svg>\n");
    s
}

fn title(s: &mut String, result: &ScenarioResult) {
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let outcome = if result.passed { "PASS" } else { "FAIL" };
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="15" font-weight="bold">{} (seed {}, proves {}): {outcome}</text>"#,
        escape(&result.scenario),
        result.seed,
        escape(&result.proves)
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="37" fill="dimgray">spend of budget {} ({}) per agent over simulated time</text>"#,
        escape(&result.metrics.budget_id),
        result.metrics.budget_dimension
    );
}

/// Round ticks with gridlines on both axes.
fn axes(s: &mut String, plot: &Plot, dim: &str) {
    let ticks = (plot.y_top / plot.y_step).round() as u64;
    for i in 0..=ticks {
        let v = (i as f64 * plot.y_step) as u64;
        let y = plot.y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text class="tick y" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            escape(&fmt_tick_amount(dim, v, plot.y_step))
        );
    }
    let steps = (plot.time.end_ms / plot.time.unit_ms / plot.time.step).round() as u64;
    for i in 0..=steps {
        let ms = i as f64 * plot.time.step * plot.time.unit_ms;
        let x = plot.x(ms as u64);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{:.1}" stroke="#f4f4f4"/><text class="tick x" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 16.0,
            plot.time.label(ms)
        );
    }
    let b = HEIGHT - BOTTOM;
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{b}" stroke="black"/><line x1="{LEFT}" x2="{:.1}" y1="{b}" y2="{b}" stroke="black"/>"#,
        WIDTH - RIGHT
    );
}

/// A y tick: dollars with the cents the step needs, tokens and calls as whole numbers.
fn fmt_tick_amount(dim: &str, v: u64, step: f64) -> String {
    match dim {
        "cost" => format!("${}", round_label(v as f64 / 1e6, step / 1e6)),
        "tokens" if step >= 1_000.0 => format!("{}k", round_label(v as f64 / 1e3, step / 1e3)),
        _ => v.to_string(),
    }
}

fn budget_line(s: &mut String, plot: &Plot, m: &Metrics) {
    let y = plot.y(m.budget_amount);
    let _ = writeln!(
        s,
        r#"<line class="budget" x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="crimson" stroke-width="2"/><text x="{:.1}" y="{:.1}" fill="crimson" text-anchor="end">budget {}</text>"#,
        WIDTH - RIGHT,
        WIDTH - RIGHT - 4.0,
        y - 5.0,
        escape(&fmt_amount(&m.budget_dimension, m.budget_amount)),
    );
}

/// The whole budget's committed + held (all agents, in its current window).
fn total_line(s: &mut String, plot: &Plot, timeline: &[Point]) {
    let points: Vec<(u64, u64)> = timeline
        .iter()
        .map(|p| (p.t_ms, p.committed + p.held))
        .collect();
    let _ = writeln!(
        s,
        r#"<path class="total" fill="none" stroke="gray" stroke-width="1.2" stroke-dasharray="5,3" d="{}"/>"#,
        step_path(plot, &points)
    );
}

/// The agents to draw: up to `SERIES_MAX`, the largest spenders first, and the rest summed
/// into one series named after how many they are.
fn agent_series(spend: &BTreeMap<String, Vec<(u64, u64)>>) -> Vec<(String, Vec<(u64, u64)>)> {
    let mut agents: Vec<(&String, &Vec<(u64, u64)>)> = spend.iter().collect();
    if agents.len() <= SERIES_MAX {
        return agents
            .into_iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
    }
    let last = |p: &Vec<(u64, u64)>| p.last().map_or(0, |x| x.1);
    agents.sort_by(|a, b| last(b.1).cmp(&last(a.1)).then(a.0.cmp(b.0)));
    let rest = agents.split_off(SERIES_MAX - 1);
    let mut out: Vec<(String, Vec<(u64, u64)>)> = agents
        .into_iter()
        .map(|(n, p)| (n.clone(), p.clone()))
        .collect();
    out.push((
        format!("{} other agents", rest.len()),
        sum_series(rest.iter().map(|(_, p)| p.as_slice())),
    ));
    out
}

/// Step series added up: the sum after every change of any of them.
fn sum_series<'a>(series: impl Iterator<Item = &'a [(u64, u64)]>) -> Vec<(u64, u64)> {
    let mut changes: Vec<(u64, usize, u64)> = Vec::new();
    for (index, points) in series.enumerate() {
        changes.extend(points.iter().map(|(t, v)| (*t, index, *v)));
    }
    changes.sort_by_key(|c| c.0);
    let mut current: BTreeMap<usize, u64> = BTreeMap::new();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (t, index, v) in changes {
        current.insert(index, v);
        let sum = current.values().fold(0u64, |a, b| a.saturating_add(*b));
        match out.last_mut() {
            Some(last) if last.0 == t => last.1 = sum,
            _ => out.push((t, sum)),
        }
    }
    out
}

/// A step line from 0: each value holds until the next, the last to the end of the axis.
fn step_path(plot: &Plot, points: &[(u64, u64)]) -> String {
    let mut d = format!("M{LEFT:.1},{:.1}", plot.y(0));
    let mut last = 0;
    for (t, v) in points.iter().filter(|(_, v)| *v != 0) {
        if *v != last {
            let _ = write!(d, " H{:.1} V{:.1}", plot.x(*t), plot.y(*v));
            last = *v;
        }
    }
    let _ = write!(d, " H{:.1}", WIDTH - RIGHT);
    d
}

fn agent_path(s: &mut String, plot: &Plot, name: &str, points: &[(u64, u64)], colour: &str) {
    let _ = writeln!(
        s,
        r#"<path class="series" data-agent="{}" fill="none" stroke="{colour}" stroke-width="2" d="{}"/>"#,
        escape(name),
        step_path(plot, points)
    );
}

/// One vertical mark across the plot, its label staggered by `row` so neighbours stay
/// readable.
fn vertical_mark(s: &mut String, plot: &Plot, t_ms: u64, class: &str, style: &str, label: &str) {
    let x = plot.x(t_ms);
    let row = s.matches("class=\"mark ").count() % 4;
    let label_x = (x + 3.0).min(WIDTH - RIGHT - 150.0);
    let _ = writeln!(
        s,
        r#"<g class="mark {class}"><line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{:.1}" {style}/><text x="{label_x:.1}" y="{:.1}">{}</text></g>"#,
        HEIGHT - BOTTOM,
        TOP + 10.0 + 12.0 * row as f64,
        escape(label)
    );
}

/// Faults, trips, limit cutoffs (grouped by reason) and threshold crossings.
fn marks(s: &mut String, plot: &Plot, m: &Metrics) {
    for fault in m.faults.iter().take(MARKS_MAX) {
        let style = r#"stroke="purple" stroke-width="1.5""#;
        vertical_mark(s, plot, fault.t_ms, "fault", style, &fault.kind);
    }
    for trip in m.trips.iter().take(MARKS_MAX) {
        let style = r#"stroke="crimson" stroke-dasharray="4,2""#;
        let label = format!("{} tripped: {}", trip.agent, trip.cause);
        vertical_mark(s, plot, trip.t_ms, "trip", style, &label);
    }
    // Trips are drawn above; a denial for another reason is grouped with the others of
    // its reason at the first of them.
    let mut by_reason: BTreeMap<&str, (u64, &str, usize)> = BTreeMap::new();
    for c in m
        .cutoffs
        .iter()
        .filter(|c| !c.reason.starts_with("tripped"))
    {
        let entry = by_reason
            .entry(c.reason.as_str())
            .or_insert((c.t_ms, &c.agent, 0));
        entry.2 += 1;
    }
    for (reason, (t_ms, agent, count)) in by_reason.into_iter().take(MARKS_MAX) {
        let who = if count == 1 {
            agent.to_owned()
        } else {
            format!("{count} agents")
        };
        let label = format!("{who} denied: {reason}");
        let style = r#"stroke="black" stroke-dasharray="2,2""#;
        vertical_mark(s, plot, t_ms, "cutoff", style, &label);
    }
    for alert in m.alerts.iter().take(MARKS_MAX) {
        let (x, y) = (plot.x(alert.t_ms), plot.y(alert.used));
        let _ = writeln!(
            s,
            r#"<g class="mark threshold"><path d="M{x:.1},{:.1} l5,5 l-5,5 l-5,-5 z" fill="goldenrod"/><text x="{:.1}" y="{:.1}" fill="darkgoldenrod">{}%</text></g>"#,
            y - 5.0,
            x + 6.0,
            y + 14.0,
            alert.threshold_percent
        );
    }
}

fn legend(s: &mut String, series: &[(String, Vec<(u64, u64)>)]) {
    let x = WIDTH - RIGHT + 16.0;
    let mut y = TOP + 4.0;
    let mut entry = |s: &mut String, line: &str, label: &str| {
        let _ = writeln!(
            s,
            r#"<g class="legend"><line x1="{x}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" {line}/><text x="{:.1}" y="{:.1}">{}</text></g>"#,
            x + 22.0,
            x + 27.0,
            y + 4.0,
            escape(label)
        );
        y += 16.0;
    };
    for (index, (name, _)) in series.iter().enumerate() {
        let line = format!(
            r#"stroke="{}" stroke-width="2""#,
            PALETTE[index % PALETTE.len()]
        );
        entry(s, &line, name);
    }
    entry(
        s,
        r#"stroke="gray" stroke-dasharray="5,3""#,
        "all agents, committed + held",
    );
    entry(s, r#"stroke="crimson" stroke-width="2""#, "budget");
    entry(s, r#"stroke="purple""#, "fault");
    entry(s, r#"stroke="crimson" stroke-dasharray="4,2""#, "trip");
    entry(
        s,
        r#"stroke="black" stroke-dasharray="2,2""#,
        "denied by a limit",
    );
    entry(
        s,
        r#"stroke="goldenrod" stroke-width="6""#,
        "soft threshold crossed",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::{Alert, Cutoff, FaultMark, TripMark};
    use crate::history::CheckReport;

    fn result() -> ScenarioResult {
        let cutoff = |agent: &str, reason: &str, t_ms| Cutoff {
            t_ms,
            seq: 0,
            agent: agent.into(),
            reason: reason.into(),
            spend: 0,
        };
        let metrics = Metrics {
            budget_id: "team-cost".into(),
            budget_dimension: "cost".into(),
            budget_amount: 10_000_000,
            cutoff: Some(cutoff("looper", "tripped:repetition", 17_300)),
            cutoffs: vec![
                cutoff("looper", "tripped:repetition", 17_300),
                cutoff("pinger", "tripped:velocity", 19_100),
                cutoff("burst-1", "limit team-cost", 20_000),
                cutoff("burst-2", "limit team-cost", 20_000),
            ],
            time_to_cutoff_ms: Some(17_300),
            calls_after_first_repeat: Some(3),
            calls_after_first_repeat_by_agent: BTreeMap::new(),
            runaway_calls: 0,
            runaway_grants: 0,
            well_behaved_calls: 0,
            well_behaved_grants: 0,
            expired_charged: 0,
            spend_peak: 7_000_000,
            spend_final: 7_000_000,
            timeline: vec![Point {
                t_ms: 1_000,
                committed: 7_000_000,
                held: 0,
            }],
            agent_spend: BTreeMap::from([
                ("looper".into(), vec![(0, 100_000), (16_000, 400_000)]),
                ("pinger".into(), vec![(2_000, 6_000_000)]),
                ("monitor".into(), vec![(1_000, 500_000)]),
            ]),
            alerts: vec![Alert {
                t_ms: 2_000,
                seq: 0,
                threshold_percent: 50,
                used: 5_000_000,
            }],
            trips: vec![
                TripMark {
                    t_ms: 17_300,
                    agent: "looper".into(),
                    cause: "repetition".into(),
                },
                TripMark {
                    t_ms: 19_100,
                    agent: "pinger".into(),
                    cause: "velocity".into(),
                },
            ],
            faults: vec![FaultMark {
                t_ms: 5_200,
                kind: "kill-leader".into(),
            }],
        };
        ScenarioResult {
            scenario: "chart-test".into(),
            proves: "detection".into(),
            path: String::new(),
            seed: 1,
            passed: true,
            wall_ms: 0,
            metrics,
            checks: Vec::new(),
            history: CheckReport::default(),
        }
    }

    /// The texts of the elements whose opening tag contains `class`.
    fn texts(svg: &str, class: &str) -> Vec<String> {
        svg.lines()
            .filter(|l| l.contains(class))
            .filter_map(|l| {
                let start = l.find("<text")?;
                let open = l[start..].find('>')? + start + 1;
                let close = l[open..].find("</text>")? + open;
                Some(l[open..close].to_string())
            })
            .collect()
    }

    #[test]
    fn ticks_are_round_in_units_that_fit_the_span() {
        let svg = svg(&result(), 36_000);
        assert_eq!(
            texts(&svg, r#"class="tick x""#),
            ["0 s", "10 s", "20 s", "30 s", "40 s"]
        );
        assert_eq!(
            texts(&svg, r#"class="tick y""#),
            ["$0", "$2", "$4", "$6", "$8", "$10", "$12"]
        );
        assert_eq!(
            TimeAxis::of(23.0 * 3_600_000.0).label(5.0 * 3_600_000.0),
            "5 h"
        );
        let minutes = TimeAxis::of(12.0 * 60_000.0);
        assert_eq!((minutes.unit, minutes.step), ("min", 5.0));
        let burst = TimeAxis::of(170.0);
        assert_eq!(burst.label(150.0), "150 ms");
    }

    #[test]
    fn a_round_step_is_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(10.0), 2.0);
        assert_eq!(nice_step(36.0), 10.0);
        assert_eq!(nice_step(150_000_000.0), 50_000_000.0);
        assert_eq!(nice_step(95_000.0), 20_000.0);
        assert_eq!(nice_step(0.7), 0.2);
    }

    #[test]
    fn every_agent_has_one_series_with_a_legend_entry() {
        let svg = svg(&result(), 36_000);
        for agent in ["looper", "pinger", "monitor"] {
            let tag = format!(r#"class="series" data-agent="{agent}""#);
            assert_eq!(svg.matches(&tag).count(), 1, "{agent}");
            assert!(texts(&svg, r#"class="legend""#).contains(&agent.to_string()));
        }
        assert_eq!(svg.matches(r#"class="series""#).count(), 3);
    }

    #[test]
    fn faults_trips_limit_cutoffs_and_thresholds_are_marked_and_labelled() {
        let svg = svg(&result(), 36_000);
        assert_eq!(texts(&svg, r#"class="mark fault""#), ["kill-leader"]);
        assert_eq!(
            texts(&svg, r#"class="mark trip""#),
            ["looper tripped: repetition", "pinger tripped: velocity"]
        );
        // Two agents denied by the same limit at once: one mark that says so.
        assert_eq!(
            texts(&svg, r#"class="mark cutoff""#),
            ["2 agents denied: limit team-cost"]
        );
        assert_eq!(texts(&svg, r#"class="mark threshold""#), ["50%"]);
    }

    #[test]
    fn agents_beyond_the_series_limit_are_summed_into_one() {
        let spend: BTreeMap<String, Vec<(u64, u64)>> = (0..SERIES_MAX as u64 + 5)
            .map(|i| (format!("agent-{i:02}"), vec![(i * 10, i * 100)]))
            .collect();
        let series = agent_series(&spend);
        assert_eq!(series.len(), SERIES_MAX);
        let (name, points) = series.last().unwrap();
        assert_eq!(name, "6 other agents");
        // agents 00..=05 spent 0 + 100 + ... + 500.
        assert_eq!(points.last().unwrap().1, 1_500);
    }
}
