//! The benchmark's charts, as small self-contained SVG files (no plotting crate: a few lines of
//! SVG are cheaper than a dependency on a 2-core build machine).

use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 360.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 48.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

/// One named series of values, one per category.
pub struct Series<'a> {
    pub name: &'a str,
    pub values: Vec<f64>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round upper bound for the axis.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn frame(title: &str, y_label: &str, categories: &[String], max: f64) -> String {
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>
<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>
"#,
        W / 2.0,
        escape(title),
        H / 2.0,
        H / 2.0,
        escape(y_label)
    );
    let plot_h = H - TOP - BOTTOM;
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = TOP + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            if max >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        );
    }
    let step = (W - LEFT - RIGHT) / categories.len().max(1) as f64;
    for (i, c) in categories.iter().enumerate() {
        let x = LEFT + step * (i as f64 + 0.5);
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            H - BOTTOM + 18.0,
            escape(c)
        );
    }
    s
}

fn legend(s: &mut String, series: &[Series]) {
    for (i, se) in series.iter().enumerate() {
        let y = TOP + 8.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            W - RIGHT + 10.0,
            y - 10.0,
            COLOURS[i % COLOURS.len()],
            W - RIGHT + 28.0,
            y,
            escape(se.name)
        );
    }
}

/// Grouped bars: one group per category, one bar per series.
pub fn bars(title: &str, y_label: &str, categories: &[String], series: &[Series]) -> String {
    let max = nice_max(
        series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .fold(0.0, f64::max),
    );
    let mut s = frame(title, y_label, categories, max);
    let plot_h = H - TOP - BOTTOM;
    let step = (W - LEFT - RIGHT) / categories.len().max(1) as f64;
    let bar = step * 0.8 / series.len().max(1) as f64;
    for (j, se) in series.iter().enumerate() {
        for (i, v) in se.values.iter().enumerate() {
            let h = plot_h * v / max;
            let x = LEFT + step * i as f64 + step * 0.1 + bar * j as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {v:.1}</title></rect>"#,
                TOP + plot_h - h,
                bar * 0.95,
                COLOURS[j % COLOURS.len()],
                escape(se.name)
            );
        }
    }
    legend(&mut s, series);
    s.push_str("</svg>\n");
    s
}

/// With a target line, the axis ends at this many times the target: a rate the pipeline cannot
/// keep up with (seconds) would otherwise flatten every other point onto the axis.
const CLIP_AT_TARGETS: f64 = 5.0;

/// Lines over the categories, with an optional horizontal target line. A point above the axis
/// (see [`CLIP_AT_TARGETS`]) sits on its top edge, labelled with its value.
pub fn lines(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[Series],
    target: Option<(f64, &str)>,
) -> String {
    let top = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .chain(target.map(|t| t.0))
        .fold(0.0, f64::max);
    let top = target.map_or(top, |(t, _)| top.min(t * CLIP_AT_TARGETS));
    let max = nice_max(top);
    let mut s = frame(title, y_label, categories, max);
    let plot_h = H - TOP - BOTTOM;
    let step = (W - LEFT - RIGHT) / categories.len().max(1) as f64;
    let y_of = |v: f64| TOP + plot_h - plot_h * v.min(max) / max;
    if let Some((v, label)) = target {
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#888" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" fill="#666">{}</text>"##,
            W - RIGHT,
            LEFT + 4.0,
            y - 4.0,
            escape(label)
        );
    }
    for (j, se) in series.iter().enumerate() {
        let points: Vec<String> = se
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", LEFT + step * (i as f64 + 0.5), y_of(*v)))
            .collect();
        let colour = COLOURS[j % COLOURS.len()];
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            points.join(" ")
        );
        for (p, v) in points.iter().zip(&se.values) {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            if *v > max {
                let _ = writeln!(
                    s,
                    r#"<text x="{x}" y="{}" text-anchor="middle" fill="{colour}">↑ {v:.0}</text>"#,
                    TOP + 14.0 + 12.0 * j as f64
                );
            }
            let _ = writeln!(
                s,
                r#"<circle cx="{x}" cy="{y}" r="3" fill="{colour}"><title>{}: {v:.1}</title></circle>"#,
                escape(se.name)
            );
        }
    }
    legend(&mut s, series);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg() {
        let cats: Vec<String> = ["1", "16", "64"].iter().map(|s| s.to_string()).collect();
        let series = [
            Series {
                name: "gateway",
                values: vec![3000.0, 12000.0, 13000.0],
            },
            Series {
                name: "reference <raw>",
                values: vec![5000.0, 25000.0, 27000.0],
            },
        ];
        for svg in [
            bars("req/s", "req/s", &cats, &series),
            lines("p99", "ms", &cats, &series, Some((100.0, "target"))),
        ] {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(svg.contains("reference &lt;raw&gt;"));
            assert_eq!(svg.matches("<svg").count(), 1);
        }
        let clipped = lines("p99", "ms", &cats, &series, Some((1000.0, "target")));
        assert!(
            clipped.contains("↑ 27000") && !clipped.contains("↑ 3000"),
            "points past 5x the target are labelled on the top edge"
        );
        assert_eq!(nice_max(13000.0), 20000.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(87.0), 100.0);
    }
}
