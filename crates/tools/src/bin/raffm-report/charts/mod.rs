//! The report's SVG charts, drawn with plotters' SVG backend. Every function returns the
//! SVG text; the caller writes it. Axes and lines are drawn in data coordinates; markers,
//! arrowheads and legends in pixels, so that they look the same on every chart.

mod accuracy;
mod axes;
mod client_sizes;
mod communication;
mod deployment;
mod draw;
mod spp;
mod style;

pub use accuracy::accuracy;
pub use client_sizes::sizes;
pub use communication::communication;
pub use deployment::deployment;
pub use spp::spp;
