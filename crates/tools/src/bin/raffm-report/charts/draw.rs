//! What is drawn in pixels rather than data coordinates: markers, dashed lines and
//! legends.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::style::{Area, Px, Shape, FONT, LEGEND, MARKER};

pub fn draw_marker(
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

pub fn dashed(root: &Area, from: Px, to: Px, style: ShapeStyle) -> anyhow::Result<()> {
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

pub fn entry(label: impl Into<String>, glyph: Glyph) -> Entry {
    Entry {
        label: label.into(),
        glyph,
    }
}

/// Pixel width of a legend, from its longest label.
/// One legend entry per pipeline, in the line-and-marker style of its index.
pub fn pipeline_entries(runs: &[crate::data::Run]) -> Vec<Entry> {
    runs.iter()
        .enumerate()
        .map(|(i, r)| {
            let (color, shape) = super::style::pipeline_style(i);
            entry(&r.name, Glyph::LineMarker(shape, color))
        })
        .collect()
}

/// `, round R` for a chart's title, or nothing when the round is not known.
pub fn round_suffix(round: Option<u32>) -> String {
    round.map(|r| format!(", round {r}")).unwrap_or_default()
}

pub fn legend_width(entries: &[Entry], title: &str) -> u32 {
    let chars = entries
        .iter()
        .map(|e| e.label.chars().count())
        .chain([title.chars().count()])
        .max()
        .unwrap_or(0);
    (60.0 + chars as f64 * 0.58 * LEGEND as f64 / 1.24) as u32
}

/// A legend in a box, its top-left corner at `at` (pixels of the whole picture).
pub fn draw_legend(
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
