//! One pipeline's SPP ablation: accuracy with and without salient parameter
//! prioritization.

use plotters::prelude::*;

use super::axes::{accuracy_label, decimals, padded, Ticked};
use super::draw::{draw_legend, draw_marker, entry, legend_width, round_suffix, Glyph};
use super::style::{Shape, DESC, FONT, LABEL, MARKER, NO_SPP_COLOR, SPP_COLOR, TITLE};
use crate::data::SppSummary;

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
    let round = round_suffix(spp.round);
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
