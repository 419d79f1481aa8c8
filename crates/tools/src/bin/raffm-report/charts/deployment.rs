//! One pipeline's deploy-time scaling: per tier, an arrow from the training-time sub-model
//! to the model deployed under the inference budget.

use plotters::prelude::*;

use super::axes::{accuracy_label, decimals, millions, padded};
use super::draw::{draw_legend, draw_marker, entry, legend_width, round_suffix, Entry, Glyph};
use super::style::{Shape, DESC, FONT, GREY, LABEL, MARKER, TIER_COLORS, TITLE};
use crate::data::DeploySummary;

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
    let round = round_suffix(deploy.round);
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
