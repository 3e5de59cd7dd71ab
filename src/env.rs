//! The environment variables of docs/GPU.md, read here, in the binary's package, and nowhere in
//! the library crates: they become fields of the options and requests the commands build, so
//! that a library's behaviour depends only on what its caller passed.

use std::sync::Arc;

use virnucpro_core::predict::TestHooks;
use virnucpro_kernels::{AttentionImpl, KernelOptions};
use virnucpro_models::options::ModelOptions;
use virnucpro_models::profile::Profiler;

/// `VIRNUCPRO_FUSED_OPS=0`: candle's ops instead of the fused kernels and cuBLASLt.
pub const FUSED_OPS: &str = "VIRNUCPRO_FUSED_OPS";
/// `VIRNUCPRO_GELU_EPILOGUE=0`: ESM's feed-forward GELU as the exact GELU in its own pass.
pub const GELU_EPILOGUE: &str = "VIRNUCPRO_GELU_EPILOGUE";
/// `VIRNUCPRO_EVENT_TRACKING=1`: keep cudarc's per-buffer CUDA events.
pub const EVENT_TRACKING: &str = "VIRNUCPRO_EVENT_TRACKING";
/// `VIRNUCPRO_SUB_BATCH_MIB=N`: the activation memory of one padded sub-batch (0 or unset: whole
/// batches, the default), to measure sub-batches
/// ([`virnucpro_models::options::SUGGESTED_SUB_BATCH_BYTES`]) against whole batches.
pub const SUB_BATCH_MIB: &str = "VIRNUCPRO_SUB_BATCH_MIB";
/// `VIRNUCPRO_DNA_SUB_BATCH_MIB=N`: DNABERT-S's own sub-batch budget in `predict` (0: whole
/// batches), in place of `VIRNUCPRO_SUB_BATCH_MIB`'s.
pub const DNA_SUB_BATCH_MIB: &str = "VIRNUCPRO_DNA_SUB_BATCH_MIB";
/// `VIRNUCPRO_PROTEIN_FIRST=1`: `predict` runs the protein model before DNABERT-S in a group.
pub const PROTEIN_FIRST: &str = "VIRNUCPRO_PROTEIN_FIRST";
/// `VIRNUCPRO_PROFILE=1`: `bench` times each section of a layer.
pub const PROFILE: &str = "VIRNUCPRO_PROFILE";
/// `VIRNUCPRO_TEST_OOM_TOKENS=T`: a linear layer on more than T tokens fails as out of memory.
pub const TEST_OOM_TOKENS: &str = "VIRNUCPRO_TEST_OOM_TOKENS";
/// `VIRNUCPRO_TEST_FAIL_DEVICE=K:N`: `predict`'s device K fails on its N-th work unit.
pub const TEST_FAIL_DEVICE: &str = "VIRNUCPRO_TEST_FAIL_DEVICE";
/// `VIRNUCPRO_TEST_GROUP_UNITS=1`: `predict` groups units on the CPU as on a GPU.
pub const TEST_GROUP_UNITS: &str = "VIRNUCPRO_TEST_GROUP_UNITS";
/// `VIRNUCPRO_TEST_STALL_AFTER=N`: `predict` stops working after journaling N units.
pub const TEST_STALL_AFTER: &str = "VIRNUCPRO_TEST_STALL_AFTER";

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string())
}

/// An on-by-default comparison switch: on unless set to "0".
fn on_unless_zero(name: &str) -> bool {
    var(name).is_none_or(|v| v != "0")
}

/// An off-by-default switch: on when set to "1".
fn on_if_one(name: &str) -> bool {
    var(name).is_some_and(|v| v == "1")
}

/// The kernel options of a command: `--attention` and the variables above.
pub fn kernel_options(attention: AttentionImpl) -> KernelOptions {
    KernelOptions {
        attention,
        fused_ops: on_unless_zero(FUSED_OPS),
        gelu_epilogue: on_unless_zero(GELU_EPILOGUE),
        event_tracking: on_if_one(EVENT_TRACKING),
        ..KernelOptions::default()
    }
}

/// The model options of a command (no profiler: only `bench` keeps one, [`profiler`]).
pub fn model_options(attention: AttentionImpl) -> ModelOptions {
    ModelOptions {
        kernels: kernel_options(attention),
        inject_oom_above_rows: oom_tokens(),
        profiler: None,
        sub_batch_bytes: sub_batch_bytes(),
    }
}

/// `VIRNUCPRO_SUB_BATCH_MIB` in bytes (`None` for 0), else the default.
pub fn sub_batch_bytes() -> Option<usize> {
    match var(SUB_BATCH_MIB).and_then(|v| v.parse::<usize>().ok()) {
        Some(0) => None,
        Some(mib) => Some(mib << 20),
        None => ModelOptions::default().sub_batch_bytes,
    }
}

/// `predict`'s GPU memory-pool policy from `VIRNUCPRO_DNA_SUB_BATCH_MIB` and
/// `VIRNUCPRO_PROTEIN_FIRST` (unset: the defaults).
pub fn pool_policy() -> virnucpro_core::predict::PoolPolicy {
    let mib = |name| {
        var(name)
            .and_then(|v| v.parse::<usize>().ok())
            .map(|m| m << 20)
    };
    virnucpro_core::predict::PoolPolicy {
        dna_sub_batch_bytes: mib(DNA_SUB_BATCH_MIB),
        protein_first: on_if_one(PROTEIN_FIRST),
    }
}

/// `VIRNUCPRO_TEST_OOM_TOKENS` as a number of tokens.
fn oom_tokens() -> Option<usize> {
    var(TEST_OOM_TOKENS)?.parse().ok()
}

/// A profiler for the models when `VIRNUCPRO_PROFILE` is set (and not 0).
pub fn profiler() -> Option<Arc<Profiler>> {
    var(PROFILE)
        .is_some_and(|v| v != "0")
        .then(|| Arc::new(Profiler::new()))
}

/// `predict`'s test hooks from the `VIRNUCPRO_TEST_*` variables.
pub fn predict_test_hooks() -> TestHooks {
    TestHooks {
        fail_device: var(TEST_FAIL_DEVICE).and_then(|spec| parse_fail_device(&spec)),
        group_units: on_if_one(TEST_GROUP_UNITS),
        stall_after: var(TEST_STALL_AFTER).and_then(|n| n.parse().ok()),
        oom_above_tokens: oom_tokens(),
    }
}

/// `K:N` -> (K, N).
fn parse_fail_device(spec: &str) -> Option<(usize, usize)> {
    let (device, unit) = spec.split_once(':')?;
    Some((device.trim().parse().ok()?, unit.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_device_specs_parse_or_are_ignored() {
        assert_eq!(parse_fail_device("1:3"), Some((1, 3)));
        assert_eq!(parse_fail_device("1"), None);
        assert_eq!(parse_fail_device("a:3"), None);
    }
}
