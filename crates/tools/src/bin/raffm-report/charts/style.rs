//! The fonts, colours and markers every chart shares, so that a pipeline looks the same
//! on each.

use plotters::coord::Shift;
use plotters::prelude::*;

pub type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
pub type Px = (i32, i32);

pub const FONT: &str = "sans-serif";
/// Sizes as plotters takes them; its SVG backend writes `size / 1.24` px.
pub const TITLE: u32 = 25;
pub const SUBTITLE: u32 = 21;
pub const LABEL: u32 = 17;
pub const DESC: u32 = 18;
pub const LEGEND: u32 = 17;
pub const MARKER: i32 = 5;

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
pub const TIER_COLORS: [RGBColor; 8] = [
    RGBColor(27, 158, 119),
    RGBColor(217, 95, 2),
    RGBColor(117, 112, 179),
    RGBColor(231, 41, 138),
    RGBColor(102, 166, 30),
    RGBColor(230, 171, 2),
    RGBColor(166, 118, 29),
    RGBColor(102, 102, 102),
];

pub const GREY: RGBColor = RGBColor(90, 90, 90);
pub const SPP_COLOR: RGBColor = RGBColor(31, 119, 180);
pub const NO_SPP_COLOR: RGBColor = RGBColor(214, 39, 40);

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
