//! Validation accuracy per round: one line per pipeline.

use plotters::prelude::*;

use super::axes::{decimals, integer_ticks, padded, Ticked};
use super::draw::{draw_legend, draw_marker, legend_width, pipeline_entries};
use super::style::{pipeline_style, DESC, FONT, LABEL, MARKER, TITLE};
use crate::data::Run;

/// Validation accuracy per round, every pipeline on one chart.
pub fn accuracy(runs: &[Run]) -> anyhow::Result<String> {
    let entries = pipeline_entries(runs);
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
