//! Training a VirNucPro classifier and evaluating it.
//!
//! - [`prepare`]: labelled genomes -> chunked, translated frames with a train/test split;
//! - [`extract`]: frames -> embedding features ([`features`]: the feature shard files);
//! - [`train`]: features -> classifier (the MLP), with its preset;
//! - [`evaluate`]: a classifier on test features ([`metrics`]: AUROC, confusion, ROC);
//! - [`plots`]: ROC curves, score histograms and the plots of `predict`'s outputs.

pub mod evaluate;
pub mod extract;
pub mod features;
pub mod metrics;
pub mod plots;
pub mod prepare;
pub mod train;
