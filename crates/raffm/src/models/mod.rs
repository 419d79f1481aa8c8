//! The models and how they learn: the families ([`families`]: BERT-family encoders, the
//! LLaMA decoder, ViT / DINOv2), the fused kernels they run on ([`fused`]), the one local
//! training loop ([`fit`]) with each family's task ([`train`], [`vision`], [`llm`]), and
//! the metrics of a trained model ([`evaluate`]). Nothing here knows about clients or
//! rounds.

pub mod evaluate;
pub mod families;
pub mod fit;
pub mod fused;
pub mod llm;
pub mod train;
pub mod vision;
