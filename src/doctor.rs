//! `virnucpro doctor`: checks that this build can use the GPU, that the fused attention kernel
//! computes what the materialized path computes, and how much faster it is.
//!
//! Checks, in order; the first failure stops the run with what to do:
//! - ENV-01 build: version, features, the compute capability the kernels were built for;
//! - ENV-02 device: a CUDA device opens; name, compute capability, memory, driver;
//! - ENV-03 models: the user's models and classifier resolve, load, embed and fit each other;
//!   models of real shape (random weights) run on the device with fused == naive attention;
//! - ENV-04 fused attention == materialized on fresh random inputs (f16 and bf16, padded rows,
//!   ALiBi and none, both layouts, packed varlen);
//! - ENV-05 speed-up of the fused attention op over the materialized one, measured on the
//!   FastESM2_650 attention shape (20 heads of 64) at several batch x length.
//!
//! [`run`] returns the report; the lines and tables go to a [`Progress`] as each check ends, for
//! the command line to print.

use std::fmt::{self, Write as _};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use virnucpro_assets::hub::{resolve_model, verify_cache_hashes};
use virnucpro_kernels::{
    self as kernels, selftest, AttentionImpl, FaVariant, KernelOptions, Knobs,
};
use virnucpro_models::classifier::Classifier;
use virnucpro_models::config::ModelFamily;
use virnucpro_models::device::DTypeSpec;
use virnucpro_models::embed::{embed_sequences, load_from_files, LoadOptions};
use virnucpro_models::options::ModelOptions;

use crate::bench;
use crate::progress::Progress;
use crate::timing::{self, Timing};

/// ENV-01 of a CUDA build: where it cannot start (the loader's error is in `doctor --help`).
const CUDA_BUILD_NOTE: &str = "This build starts only where the NVIDIA driver (libcuda.so.1) is: \
                               use a CPU build on other nodes (doctor --help)";

/// What `doctor` should do.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// The kernel choices of the models checked (`--attention` and the environment; the
    /// fused-vs-naive comparisons build a model with each attention implementation).
    pub kernels: KernelOptions,
    /// CUDA device ordinal.
    pub ordinal: usize,
    /// (batch, length) shapes for the attention timing.
    pub shapes: Vec<(usize, usize)>,
    pub heads: usize,
    /// Timed repeats per measurement (median reported).
    pub repeats: usize,
    /// Skip the timings (ENV-05).
    pub skip_bench: bool,
    /// Skip the model checks (ENV-03) and whole-model timings.
    pub skip_models: bool,
    /// Whole-model timing shapes for the FastESM2_650-shape model (batch, length).
    pub esm_shapes: Vec<(usize, usize)>,
    /// Whole-model timing shapes for the DNABERT-S-shape model.
    pub dnabert_shapes: Vec<(usize, usize)>,
    /// Check the environment on the CPU only (no GPU checks, no timings).
    pub cpu: bool,
    /// The user's models and classifier to resolve, load and check against each other.
    pub esm: Option<String>,
    pub dnabert: Option<String>,
    pub classifier: Option<PathBuf>,
    pub chunk_len: Option<usize>,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        Self {
            kernels: KernelOptions::default(),
            ordinal: 0,
            shapes: vec![(1, 502), (64, 168), (8, 1026), (4, 2048)],
            heads: 20,
            repeats: 30,
            skip_bench: false,
            skip_models: false,
            esm_shapes: vec![(512, 168), (2, 1024), (1, 2048)],
            dnabert_shapes: vec![(256, 128)],
            cpu: false,
            esm: None,
            dnabert: None,
            classifier: None,
            chunk_len: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckLine {
    pub id: &'static str,
    pub status: &'static str,
    pub summary: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_mib: usize,
    pub free_mib: usize,
    pub driver: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseLine {
    pub name: String,
    pub variant: &'static str,
    pub rel_err: f64,
    pub limit: f64,
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttnRow {
    pub batch: usize,
    pub len: usize,
    pub heads: usize,
    /// The default tile variant (what the models use).
    pub variant: &'static str,
    pub fused: Timing,
    pub fused_alibi: Timing,
    /// Every compiled tile variant, no ALiBi.
    pub variants: Vec<(&'static str, Timing)>,
    pub materialized: Timing,
    /// materialized / fused.
    pub speedup: f64,
    /// Attention FLOPs (4·B·H·T²·64) per second of the fused op.
    pub fused_tflops: f64,
}

/// Everything `doctor` found (also written as JSON with `--json`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct DoctorReport {
    pub version: String,
    pub features: Vec<&'static str>,
    pub kernels_compute_cap: Option<&'static str>,
    pub device: Option<DeviceInfo>,
    pub checks: Vec<CheckLine>,
    pub cases: Vec<CaseLine>,
    pub attention: Vec<AttnRow>,
    pub models: Vec<ModelCheck>,
    pub model_timings: Vec<bench::BenchReport>,
    pub ok: bool,
}

/// ENV-03: one model of real shape (random weights) on the device.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCheck {
    pub model: String,
    pub dtype: String,
    pub hidden: usize,
    /// ‖fused − naive‖ / ‖naive‖ of the pooled embeddings of a ragged batch.
    pub fused_vs_naive: f64,
    pub limit: f64,
}

impl fmt::Display for CheckLine {
    /// `[PASS] ENV-02 cuda:0 ...`: the line `doctor` prints for a check.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {} {}", self.status, self.id, self.summary)
    }
}

/// One run of the checks: the report so far and where its lines go as they are found.
struct Checkup<'a> {
    rep: DoctorReport,
    progress: &'a mut dyn Progress,
}

impl Checkup<'_> {
    /// Records a check's result and sends its line.
    fn line(&mut self, id: &'static str, status: &'static str, summary: String) {
        let line = CheckLine {
            id,
            status,
            summary,
        };
        self.progress.out(&format!("{line}\n"));
        self.rep.checks.push(line);
    }

    /// Sends a detail under the current check (indented, not recorded as a check).
    fn detail(&mut self, text: &str) {
        self.progress.out(text);
    }
}

/// Runs the checks, sending PASS/FAIL lines and tables to `progress` as they are found (a check
/// can take minutes). Returns the report; `report.ok` is false when a check failed (the error
/// says what to do).
pub fn run(opts: &DoctorOptions, progress: &mut dyn Progress) -> Result<DoctorReport> {
    let mut run = Checkup {
        rep: DoctorReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            features: enabled_features(),
            kernels_compute_cap: kernels::kernels_compute_cap(),
            ..Default::default()
        },
        progress,
    };
    if opts.cpu {
        check_on_cpu(&mut run, opts)?;
        run.rep.ok = true;
        return Ok(run.rep);
    }
    check_cuda_build(&mut run)?;
    let dev = open_device(&mut run, opts)?;
    check_user_models(&mut run, opts, &dev)?;
    let models = check_real_shape_models(&mut run, opts, &dev)?;
    check_fused_attention(&mut run, &dev, &opts.kernels)?;
    time_fused_attention(&mut run, opts, &dev, &models)?;
    run.rep.ok = true;
    Ok(run.rep)
}

/// The features of this build, as ENV-01 lists them.
fn features_list(rep: &DoctorReport) -> String {
    if rep.features.is_empty() {
        "none".to_string()
    } else {
        rep.features.join(", ")
    }
}

/// `--device cpu`: ENV-01 and the user's models; the GPU checks are skipped.
fn check_on_cpu(run: &mut Checkup, opts: &DoctorOptions) -> Result<()> {
    let feats = features_list(&run.rep);
    let isa = kernels::cpu_int8_isa();
    let int8 = if isa.simd {
        format!(
            "{}{}",
            isa.kernel,
            if isa.seven_bit_weights {
                " (7-bit weights)"
            } else {
                ""
            }
        )
    } else {
        format!("none ({}: --dtype int8 keeps f32)", isa.kernel)
    };
    let bf16 = kernels::cpu_bf16_isa();
    let others: Vec<&str> = kernels::cpu_bf16_kernels().into_iter().skip(1).collect();
    let others = if others.is_empty() {
        String::new()
    } else {
        format!(", also runs {} (bench --ops times each)", others.join(", "))
    };
    let bf16 = if bf16.default {
        format!("{} (the CPU default, --dtype auto)", bf16.kernel)
    } else if bf16.matrix {
        format!(
            "{} (not yet timed against f32 on this CPU kind: the CPU default is f32)",
            bf16.kernel
        )
    } else {
        "emulated (no AMX, AVX512-BF16 or Arm BF16: slower than f32; the CPU default is f32)"
            .to_string()
    };
    let summary = format!(
        "virnucpro {} built with features: {feats}; CPU int8 matrix path (--dtype int8): \
         {int8}; CPU bf16 matrix path (--dtype bf16): {bf16}{others}; element-wise and attention \
         kernels: {}; memory allocator: {}{}",
        run.rep.version,
        kernels::cpu_elementwise_isa(),
        crate::memory::freed_memory(),
        if kernels::CUDA_BUILT {
            format!(". {CUDA_BUILD_NOTE}")
        } else {
            String::new()
        }
    );
    run.line("ENV-01", "PASS", summary);
    run.line("ENV-02", "SKIP", "--device cpu: no GPU checked".to_string());
    check_user_models(run, opts, &Device::Cpu)?;
    run.line(
        "ENV-04",
        "SKIP",
        "--device cpu: the fused attention kernel needs CUDA".to_string(),
    );
    run.line("ENV-05", "SKIP", "--device cpu: no GPU timings".to_string());
    Ok(())
}

/// ENV-01 of a GPU check: this binary has CUDA support and kernels for some GPU.
fn check_cuda_build(run: &mut Checkup) -> Result<()> {
    let feats = features_list(&run.rep);
    if !kernels::CUDA_BUILT {
        let version = run.rep.version.clone();
        run.line(
            "ENV-01",
            "FAIL",
            format!("virnucpro {version} built with features: {feats}"),
        );
        bail!(
            "this binary was built without CUDA support; rebuild with `cargo build --release \
             --features cuda` (see docs/GPU.md; on a machine without a CUDA toolkit `source \
             scripts/cuda-toolkit.sh` first)"
        );
    }
    let summary = format!(
        "virnucpro {} built with features: {feats}; kernels: machine code for sm_{} plus its \
         PTX (JIT-compiled by the driver for newer GPUs), and sm_90a (wgmma attention, used \
         on H100/H200); candle 0.11. {CUDA_BUILD_NOTE}",
        run.rep.version,
        run.rep.kernels_compute_cap.unwrap_or("?")
    );
    run.line("ENV-01", "PASS", summary);
    Ok(())
}

/// ENV-02: the CUDA device opens and is new enough for the fused kernels; its random generator
/// gets a fresh seed, so that every run checks new inputs.
fn open_device(run: &mut Checkup, opts: &DoctorOptions) -> Result<Device> {
    let dev = match virnucpro_kernels::open_cuda(opts.ordinal, &opts.kernels) {
        Ok(d) => d,
        Err(e) => {
            run.line(
                "ENV-02",
                "FAIL",
                format!("cannot open CUDA device {}", opts.ordinal),
            );
            bail!(
                "cannot open CUDA device {}: {e}. Check that `nvidia-smi` sees a GPU, that the \
                 driver is CUDA 13 or newer, and that the CUDA runtime libraries (libcublas, \
                 libcurand, libnvrtc) are on LD_LIBRARY_PATH (docs/GPU.md)",
                opts.ordinal
            );
        }
    };
    let info = device_info(&dev)?;
    run.line(
        "ENV-02",
        "PASS",
        format!(
            "cuda:{} {} (compute capability {}.{}), {:.1} GiB total, {:.1} GiB free, driver {}",
            opts.ordinal,
            info.name,
            info.compute_capability.0,
            info.compute_capability.1,
            info.total_mib as f64 / 1024.0,
            info.free_mib as f64 / 1024.0,
            info.driver
        ),
    );
    if info.compute_capability.0 < 8 {
        run.line(
            "ENV-02",
            "FAIL",
            "the fused attention kernel needs compute capability 8.0 or newer (bf16 tensor cores)"
                .to_string(),
        );
        run.rep.device = Some(info);
        bail!("this GPU is too old for the fused kernels; use `--attention naive`");
    }
    run.rep.device = Some(info);
    // Fresh random inputs on every run.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    dev.set_seed(seed)?;
    Ok(dev)
}

/// ENV-03: models of real shape build on the device, give embeddings of the right size, and
/// the fused and materialized attention paths agree on them. Returns the models, for ENV-05.
fn check_real_shape_models(
    run: &mut Checkup,
    opts: &DoctorOptions,
    dev: &Device,
) -> Result<Vec<(Vec<bench::BenchModel>, DTypeSpec)>> {
    let mut models = Vec::new();
    if opts.skip_models {
        run.line(
            "ENV-03",
            "SKIP",
            "model checks skipped (--skip-models)".to_string(),
        );
        return Ok(models);
    }
    for (spec, dtype, b, t) in [
        ("esm2-650m", DTypeSpec::F16, 4, 168),
        ("dnabert-s", DTypeSpec::Auto, 8, 128),
    ] {
        let model_options = ModelOptions {
            kernels: opts.kernels,
            ..ModelOptions::default()
        };
        let model = bench::build_models(
            spec,
            dev,
            dtype,
            &model_options,
            &[AttentionImpl::Fused, AttentionImpl::Naive],
        )
        .with_context(|| format!("building {spec} with random weights"))?;
        match check_model(&model, b, t) {
            Ok(c) if c.fused_vs_naive <= c.limit => {
                run.detail(&format!(
                    "       {:<26} {:<5} hidden {:>4}: fused vs naive embeddings rel err {:.2e} \
                     (limit {:.0e}) ok\n",
                    c.model, c.dtype, c.hidden, c.fused_vs_naive, c.limit
                ));
                run.rep.models.push(c);
            }
            Ok(c) => {
                run.line(
                    "ENV-03",
                    "FAIL",
                    format!(
                        "{}: fused and naive attention give different embeddings (rel err \
                         {:.2e} > {:.0e})",
                        c.model, c.fused_vs_naive, c.limit
                    ),
                );
                bail!(
                    "the model's fused attention path disagrees with the materialized one; use \
                     `--attention naive` and report the doctor output as a bug"
                );
            }
            Err(e) => {
                run.line("ENV-03", "FAIL", format!("{spec}: {e:#}"));
                return Err(e.context(format!(
                    "the {spec} model does not run on this device (out of memory? see the \
                     error above; `--skip-models` skips this check)"
                )));
            }
        }
        models.push((model, dtype));
    }
    let summary = format!(
        "{} models of real shape (random weights) build on the device; embedding sizes \
         right; fused == naive attention on their embeddings",
        run.rep.models.len()
    );
    run.line("ENV-03", "PASS", summary);
    Ok(models)
}

/// ENV-04: the fused attention kernel, every case with every compiled tile variant, and the
/// fused ops (epilogues, cuBLASLt, LayerNorm, rotary, gated GELU) against candle's.
fn check_fused_attention(run: &mut Checkup, dev: &Device, options: &KernelOptions) -> Result<()> {
    let mut worst = 0f64;
    let mut failed = None;
    let hopper = kernels::hopper_attention(dev);
    let variants = FaVariant::available(hopper);
    for &variant in &variants {
        for case in selftest::cases() {
            let r = selftest::run_case(&case, dev, Some(variant)).with_context(|| {
                format!("fused attention case `{}` ({})", case.name, variant.name())
            })?;
            if variant == FaVariant::default_for_run(hopper) || !r.pass {
                run.detail(&format!(
                    "       {:<28} {} rel err {:>9.2e} (limit {:.0e}) {}\n",
                    case.name,
                    variant.name(),
                    r.rel_err,
                    r.limit,
                    if r.pass { "ok" } else { "FAILED" }
                ));
            }
            worst = worst.max(r.rel_err);
            run.rep.cases.push(CaseLine {
                name: case.name.clone(),
                variant: variant.name(),
                rel_err: r.rel_err,
                limit: r.limit,
                pass: r.pass,
            });
            if !r.pass && failed.is_none() {
                failed = Some((format!("{} ({})", case.name, variant.name()), r.detail));
            }
        }
    }
    check_fused_ops(run, dev, options)?;
    if let Some((name, detail)) = failed {
        run.line(
            "ENV-04",
            "FAIL",
            format!("fused attention differs on `{name}`: {detail}"),
        );
        bail!(
            "the fused attention kernel does not match the materialized path on this GPU; run \
             with `--attention naive` and report the doctor output (GPU name and case) as a bug"
        );
    }
    run.line(
        "ENV-04",
        "PASS",
        format!(
            "fused attention == materialized on {} random cases x {} tile variants (worst \
             ‖out−ref‖/‖ref‖ {worst:.2e}); this GPU runs the {} kernel",
            selftest::cases().len(),
            variants.len(),
            if hopper { "wgmma (Hopper)" } else { "mma.sync" }
        ),
    );
    Ok(())
}

/// The part of ENV-04 that checks the fused ops other than attention against candle's.
fn check_fused_ops(run: &mut Checkup, dev: &Device, options: &KernelOptions) -> Result<()> {
    let epilogues =
        selftest::check_bias_act(dev, options).context("fused epilogue / fused ops check")?;
    let worst_epi = epilogues.iter().map(|e| e.1).fold(0f64, f64::max);
    if let Some((name, rel, limit)) = epilogues.iter().find(|e| e.1.is_nan() || e.1 > e.2) {
        run.line(
            "ENV-04",
            "FAIL",
            format!("fused op `{name}` differs from candle ops: {rel:.2e} > {limit:.0e}"),
        );
        bail!(
            "a fused kernel (epilogue, cuBLASLt linear, LayerNorm, rotary or gated GELU) is wrong on \
             this GPU; set VIRNUCPRO_FUSED_OPS=0 to run without them and report the doctor output \
             as a bug"
        );
    }
    run.detail(&format!(
        "       fused ops (bias/GELU/residual epilogues, cuBLASLt linear, LayerNorm, rotary q/k, \
         gated GELU; f16/bf16/f32): {} checks, worst rel err {worst_epi:.2e} ok\n",
        epilogues.len()
    ));
    Ok(())
}

/// ENV-05: the attention op alone at every shape, then the whole models of ENV-03 with fused and
/// materialized attention.
fn time_fused_attention(
    run: &mut Checkup,
    opts: &DoctorOptions,
    dev: &Device,
    models: &[(Vec<bench::BenchModel>, DTypeSpec)],
) -> Result<()> {
    if opts.skip_bench {
        run.line(
            "ENV-05",
            "SKIP",
            "timings skipped (--skip-bench)".to_string(),
        );
        return Ok(());
    }
    for &(b, t) in &opts.shapes {
        let row = time_attention(dev, b, t, opts.heads, opts.repeats)
            .with_context(|| format!("timing attention at {b}x{t}"))?;
        run.rep.attention.push(row);
    }
    for row in &mut run.rep.attention {
        let (b, t) = (row.batch, row.len);
        time_variants(dev, row, opts.repeats)
            .with_context(|| format!("timing the tile variants at {b}x{t}"))?;
    }
    let table = attention_table(&run.rep.attention);
    run.detail(&table);
    for (model, _) in models {
        let shapes = if model[0].family == ModelFamily::Esm {
            &opts.esm_shapes
        } else {
            &opts.dnabert_shapes
        };
        for ragged in [false, true] {
            let sweep = bench::Sweep {
                shapes,
                ragged,
                warmup: 2,
                repeats: (opts.repeats / 3).max(3),
            };
            let r = bench::run_model(model, dev, sweep, None, &mut *run.progress)
                .with_context(|| format!("timing {}", model[0].source))?;
            run.detail(&indent(&bench::table(&r)));
            run.rep.model_timings.push(r);
        }
    }
    let summary = speedup_summary(&run.rep.attention);
    run.line("ENV-05", "PASS", summary);
    Ok(())
}

/// ENV-03 for the user's own models: each given model resolves (directory or Hub ID), is of the
/// family its flag is for, its files match the content hashes the Hugging Face cache names them
/// by (when they come from the cache; a local directory has none), it loads on the device and
/// embeds a test sequence to a finite vector of its hidden size; the classifier loads and its
/// input size fits the two models.
fn check_user_models(run: &mut Checkup, opts: &DoctorOptions, dev: &Device) -> Result<()> {
    let mut hidden = Vec::new();
    for (flag, spec, family, probe) in [
        (
            "--dnabert",
            &opts.dnabert,
            ModelFamily::DnaBert,
            &b"ATGGCGTTAGCCATTCGAGGCTAA"[..],
        ),
        (
            "--esm",
            &opts.esm,
            ModelFamily::Esm,
            &b"MKTAYIAKQRQISFVKSHFSRQ"[..],
        ),
    ] {
        let Some(spec) = spec else {
            hidden.push(None);
            continue;
        };
        let checked = (|| -> Result<(usize, String)> {
            let files = resolve_model(spec)?;
            if files.family() != family {
                bail!(
                    "{flag} {spec} is a {} model, not a {family} model",
                    files.family()
                );
            }
            // Before loading: a corrupt file should be named as such, not fail somewhere inside.
            let hashes = verify_cache_hashes(&files)?;
            let started = std::time::Instant::now();
            let load = LoadOptions {
                model: ModelOptions {
                    kernels: opts.kernels,
                    ..ModelOptions::default()
                },
                ..LoadOptions::default()
            };
            let model = load_from_files(files, dev, DTypeSpec::Auto, &load)?;
            let out = embed_sequences(&model, &[("doctor-probe", probe)], 4096)?;
            let v: Vec<f32> = out.embeddings.flatten_all()?.to_vec1()?;
            if v.len() != model.hidden_size || v.iter().any(|x| !x.is_finite()) {
                bail!(
                    "{spec}: the test embedding has {} values (expected {}) or non-finite values",
                    v.len(),
                    model.hidden_size
                );
            }
            Ok((
                model.hidden_size,
                format!(
                    "{flag} {spec}: {family}, hidden {}, {:?}, loaded and ran in {:.1}s; {hashes}",
                    model.hidden_size,
                    model.dtype,
                    started.elapsed().as_secs_f64()
                ),
            ))
        })();
        match checked {
            Ok((h, summary)) => {
                run.line("ENV-03", "PASS", summary);
                hidden.push(Some((spec.clone(), h)));
            }
            Err(e) => {
                // The outermost message only (what failed); the error below has the chain.
                run.line("ENV-03", "FAIL", format!("{flag} {spec}: {e}"));
                return Err(e.context(format!(
                    "{flag} {spec} cannot be used: give a model directory (config.json, weights, \
                     tokenizer) or a Hub ID that is cached or downloadable"
                )));
            }
        }
    }
    check_classifier(run, opts, dev, &hidden)
}

/// The part of ENV-03 for `--classifier`: it loads, and its input size is the two models'
/// hidden sizes (`hidden`: DNABERT's then the protein model's, where given).
fn check_classifier(
    run: &mut Checkup,
    opts: &DoctorOptions,
    dev: &Device,
    hidden: &[Option<(String, usize)>],
) -> Result<()> {
    let Some(path) = &opts.classifier else {
        return Ok(());
    };
    let clf = Classifier::load(path, dev)
        .with_context(|| format!("cannot load the classifier {}", path.display()));
    let clf = match clf {
        Ok(c) => c,
        Err(e) => {
            run.line("ENV-03", "FAIL", format!("--classifier {}", path.display()));
            return Err(e);
        }
    };
    match (&hidden[0], &hidden[1]) {
        (Some((dna, dh)), Some((esm, eh))) => {
            let chunk = opts.chunk_len.or(clf.meta().chunk_len).unwrap_or(0);
            match clf.check_dimensions((dna, *dh), (esm, *eh), chunk, false) {
                Ok(warnings) => {
                    for w in &warnings {
                        run.detail(&format!("       warning: {w}\n"));
                    }
                    run.line(
                        "ENV-03",
                        "PASS",
                        format!(
                            "--classifier {}: {} inputs = {dh} + {eh}",
                            path.display(),
                            clf.input_dim()
                        ),
                    );
                }
                Err(e) => {
                    run.line("ENV-03", "FAIL", format!("--classifier {}", path.display()));
                    return Err(e);
                }
            }
        }
        _ => run.line(
            "ENV-03",
            "PASS",
            format!(
                "--classifier {}: loads, {} inputs (give --dnabert and --esm to check it \
                 against the models)",
                path.display(),
                clf.input_dim()
            ),
        ),
    }
    Ok(())
}

/// Runs a ragged batch through the model built with the fused and with the materialized
/// attention (`pair`, in that order, the same weights) and compares the pooled embeddings.
pub fn check_model(pair: &[bench::BenchModel], b: usize, t: usize) -> Result<ModelCheck> {
    let [fused_model, naive_model] = pair else {
        bail!("check_model needs the model built with fused and with naive attention");
    };
    let model = fused_model;
    let batch = bench::synthetic_batch(model, b, t, true, 17);
    let fused = fused_model.encoder.forward_pooled(&batch)?;
    let naive = naive_model.encoder.forward_pooled(&batch)?;
    let hidden = model.encoder.hidden_size();
    if fused.dims() != [b, hidden] || naive.dims() != [b, hidden] {
        bail!(
            "{}: pooled embeddings are {:?} / {:?}, expected [{b}, {hidden}]",
            model.source,
            fused.dims(),
            naive.dims()
        );
    }
    let norm = |x: &Tensor| -> Result<f64> {
        Ok(x.to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?
            .sqrt())
    };
    let err = norm(&(&fused - &naive)?)?;
    let base = norm(&naive)?;
    if !err.is_finite() || !base.is_finite() {
        bail!("{}: embeddings contain NaN or inf", model.source);
    }
    // Half-precision activations through every layer: both paths round differently.
    let limit = if model.dtype == DType::BF16 {
        5e-2
    } else {
        2e-2
    };
    Ok(ModelCheck {
        model: model.source.clone(),
        dtype: format!("{:?}", model.dtype).to_lowercase(),
        hidden,
        fused_vs_naive: if base > 0.0 { err / base } else { err },
        limit,
    })
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("       {l}\n")).collect()
}

fn enabled_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    if cfg!(feature = "cuda") {
        f.push("cuda");
    }
    if cfg!(feature = "metal") {
        f.push("metal");
    }
    f
}

#[cfg(feature = "cuda")]
fn device_info(dev: &Device) -> Result<DeviceInfo> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let cuda = dev.as_cuda_device()?;
    let stream = cuda.cuda_stream();
    let ctx = stream.context();
    let name = ctx.name().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let cc = ctx
        .compute_capability()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (free, total) = ctx.mem_get_info().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut v: std::ffi::c_int = 0;
    // SAFETY: plain query of the loaded driver.
    let driver = match unsafe { sys::cuDriverGetVersion(&mut v) } {
        sys::CUresult::CUDA_SUCCESS => format!("CUDA {}.{}", v / 1000, (v % 1000) / 10),
        e => format!("unknown ({e:?})"),
    };
    Ok(DeviceInfo {
        name,
        compute_capability: cc,
        total_mib: total >> 20,
        free_mib: free >> 20,
        driver,
    })
}

#[cfg(not(feature = "cuda"))]
fn device_info(_dev: &Device) -> Result<DeviceInfo> {
    bail!("this binary was built without CUDA support")
}

/// Random f16 inputs of one attention shape (all keys real; the key-padding mask is still
/// applied by every path).
struct AttnInputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lens: Tensor,
    slopes: Tensor,
    key_mask: Tensor,
}

impl AttnInputs {
    const D: usize = 64;

    fn new(dev: &Device, b: usize, t: usize, heads: usize) -> Result<Self> {
        let r = || -> candle_core::Result<Tensor> {
            Tensor::randn(0f32, 1.0, (b, heads, t, Self::D), dev)?.to_dtype(DType::F16)
        };
        let lens = vec![t as u32; b];
        Ok(Self {
            q: r()?,
            k: r()?,
            v: r()?,
            lens: Tensor::from_slice(&lens, b, dev)?,
            slopes: Tensor::from_slice(&kernels::alibi_slopes(heads), heads, dev)?,
            key_mask: kernels::key_padding_mask(&lens, t, DType::F16, dev)?,
        })
    }

    fn scale() -> f64 {
        1.0 / (Self::D as f64).sqrt()
    }

    fn fused(&self, var: FaVariant) -> candle_core::Result<()> {
        let scale = Self::scale() as f32;
        kernels::fused_padded(
            &self.q,
            &self.k,
            &self.v,
            &self.lens,
            None,
            scale,
            Knobs::variant(var),
        )
        .map(drop)
    }
}

/// Times the attention op alone at one shape, in the order `scripts/bench_torch.py` times PyTorch's
/// (SDPA, SDPA with a mask, materialized): the fused kernel the models use, the fused kernel
/// with ALiBi, the materialized path. The other tile variant is timed by `time_variants`, after
/// every shape's headline numbers: at 1-2k tokens a second of attention holds the board at its
/// power cap and lowers the clock, so timing more variants between two shapes would give the next
/// shape the numbers of a hotter board than the one PyTorch is timed on (docs/GPU.md, "The power
/// cap").
pub fn time_attention(
    dev: &Device,
    b: usize,
    t: usize,
    heads: usize,
    repeats: usize,
) -> Result<AttnRow> {
    let x = AttnInputs::new(dev, b, t, heads)?;
    let target_ms = 5.0;
    let default = FaVariant::for_len(t, kernels::hopper_attention(dev));
    let fused = timing::measure(dev, 3, repeats, target_ms, || x.fused(default))?;
    let fused_alibi = timing::measure(dev, 3, repeats, target_ms, || {
        kernels::fused_attention(
            &x.q,
            &x.k,
            &x.v,
            &x.lens,
            Some(&x.slopes),
            AttnInputs::scale() as f32,
            &KernelOptions::default(),
        )
        .map(drop)
    })?;
    let materialized = timing::measure(dev, 3, repeats, target_ms, || {
        kernels::materialized_attention(
            &x.q,
            &x.k,
            &x.v,
            &x.key_mask,
            None,
            None,
            AttnInputs::scale(),
        )
        .map(drop)
    })?;
    let flops = 4.0 * (b * heads * t * t * AttnInputs::D) as f64;
    Ok(AttnRow {
        batch: b,
        len: t,
        heads,
        variant: default.name(),
        variants: Vec::new(),
        speedup: materialized.median_ms / fused.median_ms,
        fused_tflops: flops / (fused.median_ms * 1e-3) / 1e12,
        fused,
        fused_alibi,
        materialized,
    })
}

/// Times every compiled tile variant at a row's shape (no ALiBi) for the table; the default's
/// entry is the row's headline timing.
pub fn time_variants(dev: &Device, row: &mut AttnRow, repeats: usize) -> Result<()> {
    let x = AttnInputs::new(dev, row.batch, row.len, row.heads)?;
    row.variants.clear();
    for var in FaVariant::available(kernels::hopper_attention(dev)) {
        let t = if var.name() == row.variant {
            row.fused
        } else {
            timing::measure(dev, 3, repeats, 5.0, || x.fused(var))?
        };
        row.variants.push((var.name(), t));
    }
    Ok(())
}

/// The timing table, one row per shape.
pub fn attention_table(rows: &[AttnRow]) -> String {
    let mut s = String::new();
    let names = rows
        .first()
        .map(|r| {
            r.variants
                .iter()
                .map(|(n, _)| format!("{n:>9}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "       attention op, f16, head 64, median ms per call (CUDA events); fused = the tile \
         variant chosen for the length; the variant columns are timed after all shapes\n       \
         {:>10} {:>5} {:>10} {:>5} {:>8} {:>12} {:>13} {:>9} | {}",
        "B x T",
        "heads",
        "fused",
        "var",
        "TFLOP/s",
        "fused+ALiBi",
        "materialized",
        "speed-up",
        names
    );
    for r in rows {
        let vars = r
            .variants
            .iter()
            .map(|(_, t)| format!("{:>9.4}", t.median_ms))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            s,
            "       {:>10} {:>5} {:>10.4} {:>5} {:>8.1} {:>12.4} {:>13.4} {:>8.2}x | {vars}",
            format!("{}x{}", r.batch, r.len),
            r.heads,
            r.fused.median_ms,
            r.variant,
            r.fused_tflops,
            r.fused_alibi.median_ms,
            r.materialized.median_ms,
            r.speedup
        );
    }
    s
}

/// Plain statement of which shapes reach 2x over the materialized path.
pub fn speedup_summary(rows: &[AttnRow]) -> String {
    let fmt = |r: &AttnRow| format!("{}x{} ({:.2}x)", r.batch, r.len, r.speedup);
    let (yes, no): (Vec<&AttnRow>, Vec<&AttnRow>) = rows.iter().partition(|r| r.speedup >= 2.0);
    let list = |v: &[&AttnRow]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter().map(|r| fmt(r)).collect::<Vec<_>>().join(", ")
        }
    };
    format!(
        "fused attention speed-up measured; reach 2x over materialized: {}; below 2x: {}",
        list(&yes),
        list(&no)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Collect;

    /// Each check's line goes out as it is recorded, and the report keeps the same lines.
    #[test]
    fn cpu_run_sends_every_check_line_and_reports_them() {
        let opts = DoctorOptions {
            cpu: true,
            ..Default::default()
        };
        let mut progress = Collect::default();
        let rep = run(&opts, &mut progress).unwrap();
        assert!(rep.ok);
        let sent: Vec<&str> = progress.out.lines().collect();
        let recorded: Vec<String> = rep.checks.iter().map(|c| c.to_string()).collect();
        assert_eq!(sent, recorded);
        assert_eq!(
            rep.checks
                .iter()
                .map(|c| (c.id, c.status))
                .collect::<Vec<_>>(),
            [
                ("ENV-01", "PASS"),
                ("ENV-02", "SKIP"),
                ("ENV-04", "SKIP"),
                ("ENV-05", "SKIP")
            ]
        );
        assert!(
            sent[1].starts_with("[SKIP] ENV-02 --device cpu"),
            "{}",
            sent[1]
        );
        assert!(sent[0].contains("CPU int8 matrix path"), "{}", sent[0]);
        assert!(sent[0].contains("CPU bf16 matrix path"), "{}", sent[0]);
        let isa = kernels::cpu_elementwise_isa();
        assert!(
            sent[0].contains(&format!("element-wise and attention kernels: {isa}")),
            "{}",
            sent[0]
        );
        assert!(progress.notes.is_empty(), "{}", progress.notes);
    }
}
