//! The report's SVG charts, drawn with plotters' SVG backend. Every function returns the
//! SVG text; the caller writes it. Axes and lines are drawn in data coordinates; markers,
//! arrowheads and legends in pixels, so that they look the same on every chart.

use std::collections::BTreeMap;

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::data::{DeploySummary, Evaluation, Run, SppSummary, GIB, MIB};

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Px = (i32, i32);

const FONT: &str = "sans-serif";
/// Sizes as plotters takes them; its SVG backend writes `size / 1.24` px.
const TITLE: u32 = 25;
const SUBTITLE: u32 = 21;
const LABEL: u32 = 17;
const DESC: u32 = 18;
const LEGEND: u32 = 17;
const MARKER: i32 = 5;

/// Tableau 10: one colour per pipeline, in the order of `--runs`.
const PIPELINE_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// ColorBrewer Dark2: one colour per client tier (deployment chart).
const TIER_COLORS: [RGBColor; 8] = [
    RGBColor(27, 158, 119),
    RGBColor(217, 95, 2),
    RGBColor(117, 112, 179),
    RGBColor(231, 41, 138),
    RGBColor(102, 166, 30),
    RGBColor(230, 171, 2),
    RGBColor(166, 118, 29),
    RGBColor(102, 102, 102),
];

const GREY: RGBColor = RGBColor(90, 90, 90);
const SPP_COLOR: RGBColor = RGBColor(31, 119, 180);
const NO_SPP_COLOR: RGBColor = RGBColor(214, 39, 40);

#[derive(Clone, Copy)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
}

const SHAPES: [Shape; 4] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Diamond,
];

/// The colour and marker of the i-th pipeline, the same on every chart.
pub fn pipeline_style(i: usize) -> (RGBColor, Shape) {
    (
        PIPELINE_COLORS[i % PIPELINE_COLORS.len()],
        SHAPES[i % SHAPES.len()],
    )
}

fn draw_marker(
    root: &Area,
    shape: Shape,
    (x, y): Px,
    r: i32,
    color: RGBColor,
    filled: bool,
) -> anyhow::Result<()> {
    let style = if filled {
        color.filled()
    } else {
        color.stroke_width(2)
    };
    let polygon = |points: Vec<Px>| -> anyhow::Result<()> {
        if filled {
            root.draw(&Polygon::new(points, style))?;
        } else {
            let mut closed = points.clone();
            closed.push(points[0]);
            root.draw(&PathElement::new(closed, style))?;
        }
        Ok(())
    };
    match shape {
        Shape::Circle => root.draw(&Circle::new((x, y), r, style))?,
        Shape::Square => {
            let s = r - 1;
            root.draw(&Rectangle::new([(x - s, y - s), (x + s, y + s)], style))?
        }
        Shape::Triangle => {
            let s = r + 1;
            polygon(vec![(x, y - s), (x + s, y + s - 1), (x - s, y + s - 1)])?
        }
        Shape::Diamond => {
            let s = r + 1;
            polygon(vec![(x, y - s), (x + s, y), (x, y + s), (x - s, y)])?
        }
    }
    Ok(())
}

fn dashed(root: &Area, from: Px, to: Px, style: ShapeStyle) -> anyhow::Result<()> {
    let (dx, dy) = ((to.0 - from.0) as f64, (to.1 - from.1) as f64);
    let len = (dx * dx + dy * dy).sqrt();
    let (dash, gap) = (7.0, 5.0);
    let mut t = 0.0;
    while t < len {
        let e = (t + dash).min(len);
        let p = |s: f64| {
            (
                from.0 + (dx * s / len).round() as i32,
                from.1 + (dy * s / len).round() as i32,
            )
        };
        root.draw(&PathElement::new(vec![p(t), p(e)], style))?;
        t = e + gap;
    }
    Ok(())
}

/// What a legend entry shows before its label.
pub enum Glyph {
    Line(RGBColor, bool),
    Marker(Shape, RGBColor, bool),
    LineMarker(Shape, RGBColor),
    Mean,
}

pub struct Entry {
    label: String,
    glyph: Glyph,
}

fn entry(label: impl Into<String>, glyph: Glyph) -> Entry {
    Entry {
        label: label.into(),
        glyph,
    }
}

/// Pixel width of a legend, from its longest label.
fn legend_width(entries: &[Entry], title: &str) -> u32 {
    let chars = entries
        .iter()
        .map(|e| e.label.chars().count())
        .chain([title.chars().count()])
        .max()
        .unwrap_or(0);
    (60.0 + chars as f64 * 0.58 * LEGEND as f64 / 1.24) as u32
}

/// A legend in a box, its top-left corner at `at` (pixels of the whole picture).
fn draw_legend(
    root: &Area,
    at: Px,
    width: u32,
    title: &str,
    entries: &[Entry],
) -> anyhow::Result<()> {
    let line_h = 26;
    let top_pad = if title.is_empty() { 8 } else { 34 };
    let height = top_pad + line_h * entries.len() as i32 + 6;
    let (x0, y0) = at;
    let x1 = x0 + width as i32 - 12;
    root.draw(&Rectangle::new(
        [(x0, y0), (x1, y0 + height)],
        ShapeStyle::from(&WHITE).filled(),
    ))?;
    root.draw(&Rectangle::new(
        [(x0, y0), (x1, y0 + height)],
        RGBColor(190, 190, 190).stroke_width(1),
    ))?;
    let text = (FONT, LEGEND)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    if !title.is_empty() {
        root.draw(&Text::new(
            title.to_string(),
            (x0 + 10, y0 + 18),
            (FONT, LEGEND)
                .into_font()
                .style(FontStyle::Bold)
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    for (i, e) in entries.iter().enumerate() {
        let y = y0 + top_pad + line_h * i as i32 + line_h / 2;
        let (gx0, gx1) = (x0 + 10, x0 + 42);
        let mid = (gx0 + gx1) / 2;
        match e.glyph {
            Glyph::Line(c, false) => root.draw(&PathElement::new(
                vec![(gx0, y), (gx1, y)],
                c.stroke_width(3),
            ))?,
            Glyph::Line(c, true) => dashed(root, (gx0, y), (gx1, y), c.stroke_width(2))?,
            Glyph::Marker(shape, c, filled) => {
                draw_marker(root, shape, (mid, y), MARKER, c, filled)?
            }
            Glyph::LineMarker(shape, c) => {
                root.draw(&PathElement::new(
                    vec![(gx0, y), (gx1, y)],
                    c.stroke_width(3),
                ))?;
                draw_marker(root, shape, (mid, y), MARKER, c, true)?;
            }
            Glyph::Mean => root.draw(&Polygon::new(
                vec![(mid, y + 5), (mid - 7, y - 6), (mid + 7, y - 6)],
                BLACK.filled(),
            ))?,
        }
        root.draw(&Text::new(e.label.clone(), (x0 + 52, y), text.clone()))?;
    }
    Ok(())
}

/// An axis range around `values`, padded by a tenth of their span (at least `min_pad`),
/// kept within `[floor, ceil]`.
fn padded(values: &[f64], floor: f64, ceil: f64, min_pad: f64) -> (f64, f64) {
    let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (floor, ceil);
    }
    let pad = ((hi - lo) * 0.1).max(min_pad);
    ((lo - pad).max(floor), (hi + pad).min(ceil))
}

/// A linear axis with the ticks given (rounds, budget fractions, one row per pipeline).
struct Ticked {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(range: Range<f64>, ticks: Vec<f64>) -> Self {
        Self {
            lo: range.start,
            hi: range.end,
            ticks,
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        if self.hi == self.lo {
            return (limit.0 + limit.1) / 2;
        }
        let t = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (t * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// At most about 12 integer ticks from `lo` to `hi`.
fn integer_ticks(lo: u32, hi: u32) -> Vec<f64> {
    let step = ((hi - lo + 1) as f64 / 12.0).ceil().max(1.0) as u32;
    (lo..=hi).step_by(step as usize).map(f64::from).collect()
}

/// Decimals for tick labels of an axis spanning `span`.
fn decimals(span: f64) -> usize {
    if span < 0.05 {
        3
    } else if span < 0.5 {
        2
    } else if span < 5.0 {
        1
    } else {
        0
    }
}

/// The accuracy axis label: which split, how many examples.
fn accuracy_label(evaluation: &Evaluation) -> String {
    let split = evaluation.split.as_deref().unwrap_or("validation");
    match evaluation.examples {
        Some(n) => format!("{split} accuracy ({n} examples)"),
        None => format!("{split} accuracy"),
    }
}

fn millions(p: f64) -> f64 {
    p / 1e6
}

/// Validation accuracy per round, every pipeline on one chart.
pub fn accuracy(runs: &[Run]) -> anyhow::Result<String> {
    let entries: Vec<Entry> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (c, s) = pipeline_style(i);
            entry(&r.name, Glyph::LineMarker(s, c))
        })
        .collect();
    let lw = legend_width(&entries, "pipeline");
    let (w, h) = (820 + lw, 500);
    let max_round = runs.iter().map(|r| r.last_round()).max().unwrap_or(0);
    let values: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.rows.iter().filter_map(|x| x.accuracy))
        .collect();
    let (lo, hi) = padded(&values, 0.0, 1.0, 0.02);
    let dec = decimals(hi - lo);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, _) = root.split_horizontally(w - lw);
        let mut chart = ChartBuilder::on(&plot)
            .caption("Validation accuracy per round", (FONT, TITLE))
            .margin(16)
            .x_label_area_size(58)
            .y_label_area_size(78)
            .build_cartesian_2d(
                Ticked::new(-0.3..max_round as f64 + 0.3, integer_ticks(0, max_round)),
                lo..hi,
            )?;
        chart
            .configure_mesh()
            .x_desc("federated round (0 = pre-trained model with a fresh head)")
            .y_desc("validation accuracy")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.dec$}"))
            .label_style((FONT, LABEL))
            .axis_desc_style((FONT, DESC))
            .light_line_style(TRANSPARENT)
            .draw()?;
        for (i, run) in runs.iter().enumerate() {
            let (color, shape) = pipeline_style(i);
            let points: Vec<(f64, f64)> = run
                .rows
                .iter()
                .filter_map(|r| r.accuracy.map(|a| (r.round as f64, a)))
                .collect();
            chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))?;
            for p in &points {
                draw_marker(&root, shape, chart.backend_coord(p), MARKER, color, true)?;
            }
        }
        draw_legend(&root, ((w - lw) as i32, 60), lw, "pipeline", &entries)?;
        root.present()?;
    }
    Ok(svg)
}

/// Client sub-model sizes: one dot per client and round, one row per pipeline, the mean
/// marked, the full model as a dashed line.
pub fn sizes(runs: &[Run]) -> anyhow::Result<String> {
    let full = runs.iter().find_map(|r| r.full_parameters);
    let mut entries = vec![
        entry(
            "one client in one round",
            Glyph::Marker(Shape::Circle, GREY, true),
        ),
        entry("mean over them", Glyph::Mean),
    ];
    if let Some(f) = full {
        entries.push(entry(
            format!("full model ({:.2}M)", millions(f as f64)),
            Glyph::Line(GREY, true),
        ));
    }
    let lw = legend_width(&entries, "");
    let n = runs.len();
    let name_chars = runs
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(4);
    let ylab = (name_chars as f64 * 0.6 * LABEL as f64 / 1.24) as u32 + 30;
    let (w, h) = (820 + lw, (170 + 120 * n as u32).max(380));
    let mut values: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.client_parameters.iter().map(|&p| millions(p as f64)))
        .collect();
    values.extend(full.map(|f| millions(f as f64)));
    let (lo, hi) = padded(&values, 0.0, f64::INFINITY, 0.4);
    let dec = decimals(hi - lo);
    let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    // Pipeline i sits at y = n - 1 - i, so that the first is on top.
    let row_of = |i: usize| (n - 1 - i) as f64;
    let label_of = move |v: &f64| {
        let k = v.round();
        if (v - k).abs() > 1e-6 || k < 0.0 || k as usize >= n {
            return String::new();
        }
        names[n - 1 - k as usize].clone()
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, _) = root.split_horizontally(w - lw);
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                "Client sub-model sizes (every client of every round)",
                (FONT, TITLE),
            )
            .margin(16)
            .x_label_area_size(58)
            .y_label_area_size(ylab)
            .build_cartesian_2d(
                lo..hi,
                Ticked::new(-0.6..n as f64 - 0.35, (0..n).map(|k| k as f64).collect()),
            )?;
        chart
            .configure_mesh()
            .x_desc("client sub-model parameters (millions)")
            .x_label_formatter(&|v| format!("{v:.dec$}"))
            .y_label_formatter(&label_of)
            .label_style((FONT, LABEL))
            .axis_desc_style((FONT, DESC))
            .light_line_style(TRANSPARENT)
            .draw()?;
        if let Some(f) = full {
            let x = millions(f as f64);
            dashed(
                &root,
                chart.backend_coord(&(x, -0.6)),
                chart.backend_coord(&(x, n as f64 - 0.35)),
                GREY.stroke_width(2),
            )?;
        }
        for (i, run) in runs.iter().enumerate() {
            let (color, _) = pipeline_style(i);
            let y = row_of(i);
            let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
            for &p in &run.client_parameters {
                *counts.entry(p).or_default() += 1;
            }
            // Equal sizes form a block of dots: columns of as many as fit in the band.
            let step = 2 * MARKER + 3;
            let band = (chart.backend_coord(&(0.0, y - 0.3)).1
                - chart.backend_coord(&(0.0, y + 0.3)).1)
                .abs();
            let per_column = (band / step + 1).max(1) as usize;
            for (&params, &m) in &counts {
                let (cx, cy) = chart.backend_coord(&(millions(params as f64), y));
                let columns = m.div_ceil(per_column);
                for k in 0..m {
                    let (column, row) = (k / per_column, k % per_column);
                    let in_column = per_column.min(m - column * per_column);
                    let px = (
                        cx + ((2 * column) as i32 - (columns as i32 - 1)) * step / 2,
                        cy + ((2 * row) as i32 - (in_column as i32 - 1)) * step / 2,
                    );
                    root.draw(&Circle::new(px, MARKER, color.mix(0.75).filled()))?;
                    root.draw(&Circle::new(px, MARKER, color.stroke_width(1)))?;
                }
            }
            if run.client_parameters.is_empty() {
                continue;
            }
            let mean = run
                .client_parameters
                .iter()
                .map(|&p| millions(p as f64))
                .sum::<f64>()
                / run.client_parameters.len() as f64;
            // The mean: a black triangle pointing down at it, above the dots, labelled.
            let (tx, ty) = chart.backend_coord(&(mean, y + 0.36));
            root.draw(&Polygon::new(
                vec![(tx, ty), (tx - 7, ty - 11), (tx + 7, ty - 11)],
                BLACK.filled(),
            ))?;
            let label = format!("mean {mean:.2}M");
            let font_px = LABEL as f64 / 1.24;
            let half = (label.chars().count() as f64 * 0.3 * font_px) as i32 + 4;
            let (bottom, top) = (ty - 14, ty - 14 - font_px as i32 - 4);
            root.draw(&Rectangle::new(
                [(tx - half, top), (tx + half, bottom)],
                WHITE.mix(0.85).filled(),
            ))?;
            root.draw(&Text::new(
                label,
                (tx, bottom - 2),
                (FONT, LABEL)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            ))?;
        }
        draw_legend(&root, ((w - lw) as i32, 60), lw, "", &entries)?;
        root.present()?;
    }
    Ok(svg)
}

/// Communication (paper Figure 2): mean traffic per client per round, and cumulative
/// traffic, per pipeline.
pub fn communication(runs: &[Run]) -> anyhow::Result<String> {
    let entries: Vec<Entry> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (c, s) = pipeline_style(i);
            entry(&r.name, Glyph::LineMarker(s, c))
        })
        .collect();
    let lw = legend_width(&entries, "pipeline");
    let panel = 600;
    let (w, h) = (2 * panel + lw, 520);
    let max_round = runs
        .iter()
        .map(|r| r.last_round())
        .max()
        .unwrap_or(0)
        .max(1);
    let per_client = |run: &Run| -> Vec<(f64, f64)> {
        run.rows
            .iter()
            .filter_map(|r| match (r.bytes_down_per_client, r.bytes_up_per_client) {
                (Some(d), Some(u)) if r.round > 0 => Some((r.round as f64, (d + u) / MIB)),
                _ => None,
            })
            .collect()
    };
    let cumulative = |run: &Run| -> Vec<(f64, f64)> {
        run.rows
            .iter()
            .map(|r| (r.round as f64, r.cumulative_bytes as f64 / GIB))
            .collect()
    };
    let max_of = |f: &dyn Fn(&Run) -> Vec<(f64, f64)>| {
        runs.iter()
            .flat_map(|r| f(r).into_iter().map(|p| p.1))
            .fold(0.0f64, f64::max)
    };
    let mib_hi = (max_of(&per_client) * 1.12).max(1.0);
    let gib_hi = (max_of(&cumulative) * 1.12).max(0.01);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        root.draw(&Text::new(
            "Communication per pipeline (float32 weights, download + upload)",
            ((w / 2) as i32, 14),
            (FONT, TITLE)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
        let (_, below) = root.split_vertically(50);
        let (left, rest) = below.split_horizontally(panel);
        let (right, _) = rest.split_horizontally(panel);
        // (area, title, y label, first round, y range, series)
        type Panel<'a, 'b> = (
            &'a Area<'b>,
            &'a str,
            &'a str,
            u32,
            f64,
            &'a dyn Fn(&Run) -> Vec<(f64, f64)>,
        );
        let panels: [Panel; 2] = [
            (
                &left,
                "Mean traffic per client per round",
                "MiB per client",
                1,
                mib_hi,
                &per_client,
            ),
            (
                &right,
                "Cumulative traffic, all clients",
                "cumulative GiB",
                0,
                gib_hi,
                &cumulative,
            ),
        ];
        for (area, title, ydesc, first, hi, series) in panels {
            let dec = decimals(hi);
            let mut chart = ChartBuilder::on(area)
                .caption(title, (FONT, SUBTITLE))
                .margin(16)
                .x_label_area_size(58)
                .y_label_area_size(78)
                .build_cartesian_2d(
                    Ticked::new(
                        first as f64 - 0.3..max_round as f64 + 0.3,
                        integer_ticks(first, max_round),
                    ),
                    0.0..hi,
                )?;
            chart
                .configure_mesh()
                .x_desc("federated round")
                .y_desc(ydesc)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v:.dec$}"))
                .label_style((FONT, LABEL))
                .axis_desc_style((FONT, DESC))
                .light_line_style(TRANSPARENT)
                .draw()?;
            for (i, run) in runs.iter().enumerate() {
                let (color, shape) = pipeline_style(i);
                let points = series(run);
                chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))?;
                for p in &points {
                    draw_marker(&root, shape, chart.backend_coord(p), MARKER, color, true)?;
                }
            }
        }
        draw_legend(&root, ((w - lw) as i32, 110), lw, "pipeline", &entries)?;
        root.present()?;
    }
    Ok(svg)
}

/// Deployment (paper Figure 4): accuracy against size, per tier, the training-time
/// sub-model joined by an arrow to the model deployed under the inference budget.
pub fn deployment(name: &str, deploy: &DeploySummary) -> anyhow::Result<String> {
    let mut tiers: Vec<_> = deploy.tiers.iter().collect();
    tiers.sort_by(|a, b| a.train_parameters.total_cmp(&b.train_parameters));
    let mut entries: Vec<Entry> = tiers
        .iter()
        .enumerate()
        .map(|(j, t)| {
            let label = match t.clients {
                Some(n) => format!("{} ({n} client{})", t.tier, if n == 1 { "" } else { "s" }),
                None => t.tier.clone(),
            };
            entry(
                label,
                Glyph::Line(TIER_COLORS[j % TIER_COLORS.len()], false),
            )
        })
        .collect();
    entries.push(entry(
        "training-time sub-model",
        Glyph::Marker(Shape::Circle, GREY, false),
    ));
    entries.push(entry(
        "deployed model",
        Glyph::Marker(Shape::Circle, GREY, true),
    ));
    let lw = legend_width(&entries, "tier");
    let (w, h) = (820 + lw, 520);
    let xs: Vec<f64> = tiers
        .iter()
        .flat_map(|t| {
            [
                millions(t.train_parameters),
                millions(t.deployed_parameters),
            ]
        })
        .collect();
    let ys: Vec<f64> = tiers
        .iter()
        .flat_map(|t| [t.train_accuracy, t.deployed_accuracy])
        .flatten()
        .collect();
    let (x_lo, x_hi) = padded(&xs, 0.0, f64::INFINITY, 0.5);
    let (y_lo, y_hi) = padded(&ys, 0.0, 1.0, 0.02);
    let (xdec, ydec) = (decimals(x_hi - x_lo), decimals(y_hi - y_lo));
    let round = deploy
        .round
        .map(|r| format!(", round {r}"))
        .unwrap_or_default();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, _) = root.split_horizontally(w - lw);
        let mut chart = ChartBuilder::on(&plot)
            .caption(format!("{name}: deploy-time scaling{round}"), (FONT, TITLE))
            .margin(16)
            .x_label_area_size(58)
            .y_label_area_size(78)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)?;
        let ydesc = accuracy_label(&deploy.evaluation);
        chart
            .configure_mesh()
            .x_desc("model parameters (millions)")
            .y_desc(ydesc)
            .x_label_formatter(&|v| format!("{v:.xdec$}"))
            .y_label_formatter(&|v| format!("{v:.ydec$}"))
            .label_style((FONT, LABEL))
            .axis_desc_style((FONT, DESC))
            .light_line_style(TRANSPARENT)
            .draw()?;
        let r = MARKER + 3;
        for (j, t) in tiers.iter().enumerate() {
            let color = TIER_COLORS[j % TIER_COLORS.len()];
            let a = t
                .train_accuracy
                .map(|acc| chart.backend_coord(&(millions(t.train_parameters), acc)));
            let b = t
                .deployed_accuracy
                .map(|acc| chart.backend_coord(&(millions(t.deployed_parameters), acc)));
            if let (Some(a), Some(b)) = (a, b) {
                let (dx, dy) = ((b.0 - a.0) as f64, (b.1 - a.1) as f64);
                let len = (dx * dx + dy * dy).sqrt();
                if len > 2.0 * r as f64 + 12.0 {
                    let (ux, uy) = (dx / len, dy / len);
                    let at = |s: f64, off: f64| {
                        (
                            (a.0 as f64 + ux * s - uy * off).round() as i32,
                            (a.1 as f64 + uy * s + ux * off).round() as i32,
                        )
                    };
                    let tip = len - r as f64 - 1.0;
                    root.draw(&PathElement::new(
                        vec![at(r as f64, 0.0), at(tip - 8.0, 0.0)],
                        color.stroke_width(3),
                    ))?;
                    root.draw(&Polygon::new(
                        vec![at(tip, 0.0), at(tip - 13.0, 6.0), at(tip - 13.0, -6.0)],
                        color.filled(),
                    ))?;
                }
            }
            if let Some(a) = a {
                root.draw(&Circle::new(a, r, WHITE.filled()))?;
                draw_marker(&root, Shape::Circle, a, r, color, false)?;
            }
            if let Some(b) = b {
                // Smaller than the ring, so a tier whose model does not grow shows both.
                draw_marker(&root, Shape::Circle, b, r - 2, color, true)?;
            }
        }
        draw_legend(&root, ((w - lw) as i32, 60), lw, "tier", &entries)?;
        root.present()?;
    }
    Ok(svg)
}

/// SPP ablation (paper Appendix A.2): accuracy against the share of layer parameters
/// kept, with and without salient parameter prioritization.
pub fn spp(name: &str, spp: &SppSummary) -> anyhow::Result<String> {
    let entries = vec![
        entry(
            "with SPP, largest sub-model",
            Glyph::LineMarker(Shape::Circle, SPP_COLOR),
        ),
        entry(
            "without SPP, largest sub-model",
            Glyph::LineMarker(Shape::Square, NO_SPP_COLOR),
        ),
        entry(
            "with SPP, sampled sub-models",
            Glyph::Marker(Shape::Circle, SPP_COLOR, false),
        ),
        entry(
            "without SPP, sampled sub-models",
            Glyph::Marker(Shape::Square, NO_SPP_COLOR, false),
        ),
    ];
    let lw = legend_width(&entries, "");
    let (w, h) = (820 + lw, 520);
    let pct = |f: f64| 100.0 * f;
    let mut fractions: Vec<f64> = spp.rows.iter().map(|r| pct(r.fraction)).collect();
    fractions.sort_by(f64::total_cmp);
    fractions.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    let (x_lo, x_hi) = padded(&fractions, 0.0, 105.0, 6.0);
    let ys: Vec<f64> = spp
        .rows
        .iter()
        .flat_map(|r| [r.accuracy_spp, r.accuracy_no_spp])
        .flatten()
        .collect();
    let (y_lo, y_hi) = padded(&ys, 0.0, 1.0, 0.02);
    let ydec = decimals(y_hi - y_lo);
    let round = spp
        .round
        .map(|r| format!(", round {r}"))
        .unwrap_or_default();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, _) = root.split_horizontally(w - lw);
        let mut chart = ChartBuilder::on(&plot)
            .caption(format!("{name}: SPP ablation{round}"), (FONT, TITLE))
            .margin(16)
            .x_label_area_size(58)
            .y_label_area_size(78)
            .build_cartesian_2d(Ticked::new(x_lo..x_hi, fractions.clone()), y_lo..y_hi)?;
        let ydesc = accuracy_label(&spp.evaluation);
        chart
            .configure_mesh()
            .x_desc("layer parameters kept (%; embeddings always whole)")
            .y_desc(ydesc)
            .x_label_formatter(&|v| format!("{v:.0}%"))
            .y_label_formatter(&|v| format!("{v:.ydec$}"))
            .label_style((FONT, LABEL))
            .axis_desc_style((FONT, DESC))
            .light_line_style(TRANSPARENT)
            .draw()?;
        let mut largest: Vec<_> = spp.rows.iter().filter(|r| r.kind == "largest").collect();
        largest.sort_by(|a, b| a.fraction.total_cmp(&b.fraction));
        for (pick, color, shape, dash) in [
            (
                (|r: &crate::data::SppRow| r.accuracy_spp)
                    as fn(&crate::data::SppRow) -> Option<f64>,
                SPP_COLOR,
                Shape::Circle,
                false,
            ),
            (|r| r.accuracy_no_spp, NO_SPP_COLOR, Shape::Square, true),
        ] {
            let points: Vec<(f64, f64)> = largest
                .iter()
                .filter_map(|r| pick(r).map(|a| (pct(r.fraction), a)))
                .collect();
            if dash {
                chart.draw_series(DashedLineSeries::new(
                    points.clone(),
                    10,
                    6,
                    color.stroke_width(3),
                ))?;
            } else {
                chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))?;
            }
            for p in &points {
                draw_marker(
                    &root,
                    shape,
                    chart.backend_coord(p),
                    MARKER + 1,
                    color,
                    true,
                )?;
            }
            for r in spp.rows.iter().filter(|r| r.kind != "largest") {
                if let Some(a) = pick(r) {
                    let (x, y) = chart.backend_coord(&(pct(r.fraction), a));
                    let x = if dash { x + 7 } else { x - 7 };
                    draw_marker(&root, shape, (x, y), MARKER - 1, color, false)?;
                }
            }
        }
        draw_legend(&root, ((w - lw) as i32, 60), lw, "", &entries)?;
        root.present()?;
    }
    Ok(svg)
}
