//! Hand-written CUDA kernels (fused attention, fused epilogues), compiled by `build.rs` with nvcc
//! when the `cuda` feature is on.
