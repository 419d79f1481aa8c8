//! Client sub-model sizes: a row of dots per pipeline.

use std::collections::BTreeMap;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axes::{decimals, millions, padded, Ticked};
use super::draw::{dashed, draw_legend, entry, legend_width, Glyph};
use super::style::{pipeline_style, Shape, DESC, FONT, GREY, LABEL, MARKER, TITLE};
use crate::data::Run;

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
