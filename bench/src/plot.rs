//! The cost curves as PNG (plotters, bitmap backend): setup latency and proxy RSS against
//! concurrent connections, decision time against allowlist size.
//!
//! Text needs a font. plotters' `ab_glyph` backend renders a TTF given as bytes, so the
//! bench loads DejaVu Sans from the usual places (Debian's `fonts-dejavu-core`, which
//! `cargo xtask bench` installs) and links no font library. Without one the curves are
//! drawn with no text at all (the report says so) rather than failing.

use std::{
    path::Path,
    sync::{Once, atomic::AtomicBool, atomic::Ordering},
};

use anyhow::{Result, anyhow};
use plotters::{prelude::*, style::FontStyle};

use crate::run::{CurvePoint, RunResult};

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
];

static FONT: Once = Once::new();
static HAVE_FONT: AtomicBool = AtomicBool::new(false);

/// Registers a font once; whether text can be drawn.
pub fn text_available() -> bool {
    FONT.call_once(|| {
        for path in FONTS {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    HAVE_FONT.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    });
    HAVE_FONT.load(Ordering::Relaxed)
}

/// One line of a chart.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// What a chart shows besides its lines: file name, caption, axis names and an optional
/// horizontal reference line.
struct Figure {
    file: &'static str,
    title: &'static str,
    x_desc: &'static str,
    y_desc: &'static str,
    reference: Option<(&'static str, f64)>,
}

/// Setup latency against idle connections held.
const CONNECTIONS: Figure = Figure {
    file: "connections.png",
    title: "New connection setup latency (p50) vs. idle connections held",
    x_desc: "concurrent idle connections",
    y_desc: "setup latency, ms",
    reference: None,
};

/// Proxy RSS against idle connections held.
const RSS: Figure = Figure {
    file: "rss.png",
    title: "Proxy RSS vs. idle connections held",
    x_desc: "concurrent idle connections",
    y_desc: "RSS, MiB",
    reference: None,
};

/// Decision time against allowlist size.
const POLICY: Figure = Figure {
    file: "policy.png",
    title: "Policy::decide time vs. allowlist entries",
    x_desc: "allowlist entries",
    y_desc: "ns per decision",
    reference: Some(("1 µs target", 1000.0)),
};

/// Draws every curve the run has data for into `out`; returns the file names written.
///
/// # Errors
///
/// A PNG could not be drawn or written.
pub fn all(run: &RunResult, out: &Path) -> Result<Vec<String>> {
    let figures = [
        (CONNECTIONS, curve_series(run, |p| Some(p.setup_p50_ms))),
        (
            RSS,
            curve_series(run, |p| p.rss_kib.map(|k| to_f64(k) / 1024.0)),
        ),
        (POLICY, policy_series(run)),
    ];
    let mut written = Vec::new();
    for (figure, series) in figures {
        if !series.is_empty() {
            chart(&out.join(figure.file), &figure, &series)?;
            written.push(figure.file.to_owned());
        }
    }
    Ok(written)
}

/// One line per measured target over its connection curve: `y` at each level that was
/// fully held, for the targets where `y` was measured at all.
fn curve_series(run: &RunResult, y: impl Fn(&CurvePoint) -> Option<f64>) -> Vec<Series> {
    run.targets
        .iter()
        .filter(|t| t.status == "ok" && t.curve.iter().any(|p| y(p).is_some()))
        .map(|t| Series {
            name: t.id.clone(),
            points: t
                .curve
                .iter()
                .filter(|p| p.held == p.level)
                .filter_map(|p| Some((to_f64(p.level), y(p)?)))
                .collect(),
        })
        .collect()
}

/// Decision time against entries, one line per wildcard share that was measured.
fn policy_series(run: &RunResult) -> Vec<Series> {
    [(0.0, "plain domains"), (0.01, "1% wildcards")]
        .into_iter()
        .map(|(share, name)| Series {
            name: name.to_owned(),
            points: run
                .policy
                .iter()
                .filter(|p| (p.wildcard_share - share).abs() < 1e-9)
                .map(|p| (to_f64(p.entries), p.decide_ns))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// `1.5`, `20`, `3000`: as few digits as the magnitude needs.
fn compact(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A log-log chart of `series` as `figure` describes it, written to `path`.
fn chart(path: &Path, figure: &Figure, series: &[Series]) -> Result<()> {
    let Figure {
        title,
        x_desc,
        y_desc,
        reference,
        ..
    } = *figure;
    let text = text_available();
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x_max = xs.fold(10.0_f64, f64::max);
    let ys = || {
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(reference.map(|r| r.1))
            .filter(|y| *y > 0.0)
    };
    // Log scale on both axes: the targets differ by orders of magnitude.
    let y_max = ys().fold(f64::MIN_POSITIVE, f64::max) * 2.0;
    let y_min = ys().fold(f64::MAX, f64::min).min(y_max / 4.0) / 2.0;

    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(title, ("sans-serif", 24))
            .x_label_area_size(50)
            .y_label_area_size(70);
    }
    let mut chart = builder
        .build_cartesian_2d(
            (1.0_f64..x_max * 1.2).log_scale(),
            (y_min..y_max).log_scale(),
        )
        .map_err(draw_err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| compact(*y))
            .label_style(("sans-serif", 15));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(draw_err)?;

    for (i, s) in series.iter().enumerate() {
        let color = color_of(&s.name, i);
        let line = chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(3)))
            .map_err(draw_err)?;
        if text {
            line.label(s.name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        }
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(draw_err)?;
    }
    if let Some((name, y)) = reference {
        let red = RED.mix(0.7);
        let line = chart
            .draw_series(LineSeries::new(
                vec![(1.0, y), (x_max * 1.2, y)],
                red.stroke_width(2),
            ))
            .map_err(draw_err)?;
        if text {
            line.label(name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], red.stroke_width(2))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

/// One colour per target in every chart, dark enough on white.
fn color_of(name: &str, index: usize) -> RGBAColor {
    let rgb = match name {
        "direct" => RGBColor(0, 0, 0),
        "haproxy" => RGBColor(34, 139, 34),
        "nginx" => RGBColor(0, 139, 139),
        "squid" => RGBColor(30, 80, 200),
        "mitmproxy" => RGBColor(140, 60, 170),
        "egressd-pass" => RGBColor(230, 110, 0),
        "egressd-intercept" => RGBColor(200, 0, 40),
        "egressd-strict" => RGBColor(140, 90, 40),
        _ => [
            RGBColor(30, 80, 200),
            RGBColor(230, 110, 0),
            RGBColor(34, 139, 34),
        ][index % 3],
    };
    rgb.to_rgba()
}

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e:?}")
}

#[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn to_f64<T: TryInto<u64>>(v: T) -> f64 {
    v.try_into().map_or(f64::NAN, |v: u64| v as f64)
}
