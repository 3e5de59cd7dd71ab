//! Batching and scheduling of the commands: `frames`, `embed`, `predict`, `fetch`, `prepare`, `extract`,
//! `train`, `evaluate`.

pub mod bench;
pub mod doctor;
pub mod embed;
pub mod evaluate;
pub mod extract;
pub mod features;
pub mod fetch;
pub mod frames;
pub mod metrics;
pub mod predict;
pub mod prepare;
pub mod rng;
pub mod scheduler;
pub mod timing;
pub mod train;
