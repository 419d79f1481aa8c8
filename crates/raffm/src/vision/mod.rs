//! Images for the vision family: datasets and preprocessing ([`data`]), local training and
//! accuracy of a classifier ([`train`]), and a k-nearest-neighbour probe of a backbone's
//! CLS features ([`probe`]), the quickest check that a backbone and the data path work
//! together.

pub mod data;
pub mod probe;
pub mod train;

pub use data::{cifar10_bigbench, decode, image_folder, LabeledImages, Preprocess};
