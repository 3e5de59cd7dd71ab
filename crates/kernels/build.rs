//! Compiles the hand-written CUDA kernels (`cuda/*.cu`) with nvcc, only when the `cuda`
//! feature is on: CPU builds (and CI) never need a CUDA toolkit.
//!
//! Each source becomes a fatbin embedded in the binary: machine code (SASS) for
//! `sm_$CUDA_COMPUTE_CAP` (default 90: H100/H200) plus the PTX for `compute_$CUDA_COMPUTE_CAP`,
//! which the driver compiles at first use on any later GPU (GB10, Blackwell). With PTX alone every
//! fresh machine or container paid that compilation on the build's own GPU too (~9 s for the
//! Hopper attention file). nvcc is taken from `$NVCC`, else `$CUDA_ROOT/bin`, `$CUDA_PATH/bin`,
//! `$CUDA_HOME/bin`, else `PATH`. See docs/GPU.md.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=cuda");
    for var in [
        "CUDA_COMPUTE_CAP",
        "NVCC",
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_HOME",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let cap = compute_cap();
    let nvcc = find_nvcc();
    let mut sources: Vec<PathBuf> = std::fs::read_dir("cuda")
        .expect("cuda/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    for src in &sources {
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let fatbin = out_dir.join(format!("{stem}.fatbin"));
        // `*_sm90.cu` use Hopper-only instructions (wgmma): always compute_90a, whatever the
        // target; the launcher uses them on compute capability 9.0 only.
        let arch = if stem.ends_with("_sm90") {
            "90a".to_string()
        } else {
            cap.clone()
        };
        let status = Command::new(&nvcc)
            .args(["--fatbin", "-O3", "-std=c++17", "--expt-relaxed-constexpr"])
            .arg(format!("-gencode=arch=compute_{arch},code=sm_{arch}"))
            .arg(format!("-gencode=arch=compute_{arch},code=compute_{arch}"))
            .arg("-o")
            .arg(&fatbin)
            .arg(src)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "could not run nvcc ({}): {e}. The `cuda` feature needs the CUDA toolkit: \
                     install it, or run `source scripts/cuda-toolkit.sh` (docs/GPU.md), or set NVCC",
                    nvcc.display()
                )
            });
        if !status.success() {
            panic!("nvcc failed on {} (sm_{arch})", src.display());
        }
    }
    println!("cargo::rustc-env=VIRNUCPRO_CUDA_COMPUTE_CAP={cap}");
}

/// `CUDA_COMPUTE_CAP` as digits ("90", "9.0", "sm_90", "90a" all mean compute_90[a]); default 90.
fn compute_cap() -> String {
    let raw = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let raw = raw
        .trim()
        .trim_start_matches("sm_")
        .trim_start_matches("compute_");
    let suffix = if raw.ends_with('a') || raw.ends_with('f') {
        &raw[raw.len() - 1..]
    } else {
        ""
    };
    let digits: String = raw.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() < 2 {
        panic!("CUDA_COMPUTE_CAP={raw:?}: expected a compute capability such as 90 (H100), 89, 80, 121");
    }
    format!("{digits}{suffix}")
}

fn find_nvcc() -> PathBuf {
    if let Some(p) = env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    for var in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = env::var_os(var) {
            let p = Path::new(&root).join("bin").join("nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    let default = Path::new("/usr/local/cuda/bin/nvcc");
    if default.exists() {
        return default.to_path_buf();
    }
    PathBuf::from("nvcc")
}
