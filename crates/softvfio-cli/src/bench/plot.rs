//! SVG charts, written by hand (no plotting dependency): a line chart of
//! map+unmap time against size per backing, and bar charts of translation
//! latency, 1 TiB simulated mapping and every ratio against its baseline.

use std::fmt::Write;

use super::{PlotData, Row};

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(title: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>
"#,
        W / 2.0,
        esc(title)
    );
    s
}

/// A "nice" upper bound for an axis whose data reaches `max`.
fn nice_max(max: f64) -> f64 {
    if max.is_nan() || max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= max {
            return m * mag;
        }
    }
    10.0 * mag
}

/// A y axis: linear from 0, or logarithmic over whole decades (for data
/// spanning several orders of magnitude).
#[derive(Debug, Clone, Copy)]
enum Scale {
    Linear { max: f64 },
    Log { lo: i32, hi: i32 },
}

impl Scale {
    fn for_values(values: impl Iterator<Item = f64> + Clone) -> Scale {
        let pos = values.filter(|v| v.is_finite() && *v > 0.0);
        let max = pos.clone().fold(0.0, f64::max);
        let min = pos.fold(f64::INFINITY, f64::min);
        if max > 0.0 && min.is_finite() && max / min > 30.0 {
            let lo = min.log10().floor() as i32;
            let hi = (max.log10().ceil() as i32).max(lo + 1);
            Scale::Log { lo, hi }
        } else {
            Scale::Linear { max: nice_max(max) }
        }
    }

    /// Where `v` falls, from 0 (axis) to 1 (top).
    fn frac(self, v: f64) -> f64 {
        match self {
            Scale::Linear { max } => (v / max).clamp(0.0, 1.0),
            Scale::Log { lo, hi } => {
                if v <= 0.0 || !v.is_finite() {
                    0.0
                } else {
                    ((v.log10() - f64::from(lo)) / f64::from(hi - lo)).clamp(0.0, 1.0)
                }
            }
        }
    }

    fn ticks(self) -> Vec<f64> {
        match self {
            Scale::Linear { max } => (0..=5).map(|i| max * f64::from(i) / 5.0).collect(),
            Scale::Log { lo, hi } => (lo..=hi).map(|e| 10f64.powi(e)).collect(),
        }
    }
}

fn axes(s: &mut String, x_label: &str, y_label: &str, scale: Scale) {
    let (x0, y0, x1, y1) = (LEFT, H - BOTTOM, W - RIGHT, TOP);
    let _ = writeln!(
        s,
        r#"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>"#
    );
    for v in scale.ticks() {
        let y = y0 - (y0 - y1) * scale.frac(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        H - 15.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{}" text-anchor="middle" transform="rotate(-90 20 {})">{}</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        esc(y_label)
    );
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else if v.abs() < 0.001 {
        format!("{v:.0e}")
    } else {
        format!("{v:.3}")
    }
}

/// Lines through the points of each series, with a legend.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let mut s = header(title);
    let x_max = nice_max(
        series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|q| q.0))
            .fold(0.0, f64::max),
    );
    let scale = Scale::for_values(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)));
    axes(&mut s, x_label, y_label, scale);
    let (x0, y0, x1, y1) = (LEFT, H - BOTTOM, W - RIGHT, TOP);
    for i in 0..=4 {
        let v = x_max * i as f64 / 4.0;
        let x = x0 + (x1 - x0) * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#,
            y0 + 18.0,
            fmt_num(v)
        );
    }
    let px = |x: f64| x0 + (x1 - x0) * x / x_max;
    let py = |y: f64| y0 - (y0 - y1) * scale.frac(y);
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let dash = if name.starts_with("floor") {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
        for &(x, y) in pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                px(x),
                py(y)
            );
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            x1 + 15.0,
            x1 + 40.0,
            x1 + 46.0,
            ly + 4.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One bar per (label, value).
pub fn bar_chart(title: &str, y_label: &str, bars: &[(String, f64)]) -> String {
    let mut s = header(title);
    let scale = Scale::for_values(bars.iter().map(|b| b.1));
    axes(&mut s, "", y_label, scale);
    let (x0, y0, x1, y1) = (LEFT, H - BOTTOM, W - RIGHT, TOP);
    let n = bars.len().max(1) as f64;
    let slot = (x1 - x0) / n;
    for (i, (label, v)) in bars.iter().enumerate() {
        let v = if v.is_finite() { *v } else { 0.0 };
        let h = (y0 - y1) * scale.frac(v);
        let x = x0 + slot * i as f64 + slot * 0.15;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            y0 - h,
            slot * 0.7,
            x + slot * 0.35,
            y0 - h - 4.0,
            fmt_num(v)
        );
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            x1 + 15.0,
            ly - 6.0,
            x1 + 32.0,
            ly + 4.0,
            esc(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Every chart the data allows: (file name, SVG).
pub fn charts(p: &PlotData, rows: &[Row]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !p.map_vs_size.is_empty() {
        out.push((
            "map-vs-size.svg",
            line_chart(
                "map+unmap through the engine vs the populate+mlock+munlock floor (populated memory)",
                "size (GiB)",
                "time (ms)",
                &p.map_vs_size,
            ),
        ));
    }
    if !p.translate.is_empty() {
        out.push((
            "translate.svg",
            bar_chart(
                "device translation latency: IOTLB hit vs miss, vs vm-memory Iotlb",
                "ns per translation",
                &p.translate,
            ),
        ));
    }
    if !p.sim_1t.is_empty() {
        out.push((
            "map-1t-sim.svg",
            bar_chart(
                "map+unmap of 1 TiB simulated memory (target < 10 ms for 1G pages)",
                "ms",
                &p.sim_1t,
            ),
        ));
    }
    if !p.vm_start.is_empty() {
        let bars: Vec<(String, f64)> = p
            .vm_start
            .iter()
            .flat_map(|(label, without, with)| {
                [
                    (format!("{label} no device"), *without),
                    (format!("{label} edu"), *with),
                ]
            })
            .collect();
        out.push((
            "vm-start.svg",
            bar_chart(
                "QEMU (TCG) start to the guest's first line: with edu passed through vs no device",
                "ms",
                &bars,
            ),
        ));
    }
    if !rows.is_empty() {
        let bars: Vec<(String, f64)> = rows
            .iter()
            .filter(|r| r.unit != "bytes")
            .map(|r| {
                // Shown as "times the baseline's cost": below 1 is better.
                let cost = match r.better {
                    super::Better::Lower => r.ratio(),
                    super::Better::Higher => 1.0 / r.ratio(),
                };
                (r.bench.clone(), cost)
            })
            .collect();
        out.push((
            "ratios.svg",
            bar_chart(
                "cost relative to the baseline of the same run (below 1: faster)",
                "cost / baseline cost",
                &bars,
            ),
        ));
    }
    out
}
