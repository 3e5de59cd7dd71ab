//! Batching and scheduling of the commands: `frames`, `embed`, `predict`, `prepare`, `train`.

pub mod bench;
pub mod doctor;
pub mod embed;
pub mod frames;
pub mod timing;
