//! Batching and scheduling of the commands: `frames`, `embed`, `predict`, `prepare`, `train`.

pub mod doctor;
pub mod timing;
