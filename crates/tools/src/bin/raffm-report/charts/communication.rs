//! Traffic per client per round and cumulative traffic: two panels, a line per pipeline.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axes::{decimals, integer_ticks, Ticked};
use super::draw::{draw_legend, draw_marker, legend_width, pipeline_entries};
use super::style::{pipeline_style, Area, DESC, FONT, LABEL, MARKER, SUBTITLE, TITLE};
use crate::data::{Run, GIB, MIB};

/// Communication (paper Figure 2): mean traffic per client per round, and cumulative
/// traffic, per pipeline.
pub fn communication(runs: &[Run]) -> anyhow::Result<String> {
    let entries = pipeline_entries(runs);
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
