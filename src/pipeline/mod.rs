//! Batching and scheduling of the commands: `frames`, `embed`, `predict`, `prepare`, `train`.

pub mod embed;
pub mod frames;
