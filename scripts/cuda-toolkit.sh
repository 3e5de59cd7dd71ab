#!/usr/bin/env bash
# A CUDA 13.0 toolchain from PyPI wheels, for building `--features cuda` on a machine that has no
# GPU and no system CUDA toolkit (CI images, build hosts, containers). It provides nvcc (+ptxas,
# headers), the CUDA runtime, cuBLAS, cuRAND and NVRTC to link against, and a link-time stub of the
# driver library libcuda.so.1 (at run time the real driver of the GPU machine is used, never the
# stub). Works on x86_64 and aarch64 (e.g. GB10 / DGX Spark, Grace Hopper).
#
# Usage (source it, from the repository root):
#   cargo fetch                                # cudarc's sources are needed for the driver stub
#   source scripts/cuda-toolkit.sh             # creates $VIRNUCPRO_CUDA_VENV once, then exports
#   cargo build --release --features cuda
#
# Variables:
#   VIRNUCPRO_CUDA_VENV  where the toolchain lives (default ~/.cache/virnucpro-cuda13)
#   CUDA_COMPUTE_CAP     target GPU: 90 = H100/H200 (default), 80 = A100, 89 = L4/L40/RTX 40xx,
#                        100 = B200, 120 = RTX 50xx, 121 = GB10. Kernels are compiled to PTX for this
#                        compute capability, which also runs (JIT-compiled by the driver) on newer GPUs.
#
# Running a binary built this way needs the CUDA 13 runtime libraries on the GPU machine's loader
# path, e.g. from a PyTorch (cu13) install:
#   export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
# or from this venv copied along, or from a system CUDA 13 toolkit. See docs/GPU.md.

_virnucpro_cuda_toolkit() {
  local venv="${VIRNUCPRO_CUDA_VENV:-$HOME/.cache/virnucpro-cuda13}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "cuda-toolkit.sh: creating $venv (pip, about 1 GB)" >&2
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install -q \
      "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-runtime==13.0.*" \
      "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cublas==13.0.*" \
      "nvidia-cuda-nvrtc==13.0.*" "nvidia-curand" || { echo "cuda-toolkit.sh: pip install failed" >&2; return 1; }
  fi
  local root
  root=$("$venv/bin/python" -c 'import nvidia.cu13, os; print(nvidia.cu13.__path__[0])') || return 1
  local lib="$root/lib"
  # The linker looks for unversioned names.
  local n
  for n in cublas cublasLt cudart nvrtc; do
    [ -e "$lib/lib$n.so" ] || ln -sf "lib$n.so.13" "$lib/lib$n.so"
  done
  [ -e "$lib/libcurand.so" ] || ln -sf libcurand.so.10 "$lib/libcurand.so"
  if [ ! -e "$lib/libcuda.so" ]; then
    # Every driver entry point that cudarc declares, as an empty function: enough to link.
    local src
    src=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.*/src/driver/sys/mod.rs 2>/dev/null | tail -n 1)
    if [ -z "$src" ]; then
      echo "cuda-toolkit.sh: run 'cargo fetch' first (cudarc's sources are needed for the driver stub)" >&2
      return 1
    fi
    grep -oE "fn cu[A-Za-z0-9_]+\(" "$src" | sed 's/fn //; s/(//' | sort -u \
      | sed 's/.*/void &(void){}/' > "$venv/libcuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/libcuda.so" "$venv/libcuda_stub.c" || return 1
  fi
  export PATH="$root/bin:$PATH" CUDA_ROOT="$root" CUDA_PATH="$root" NVCC="$root/bin/nvcc"
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  export LIBRARY_PATH="$lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
  echo "cuda-toolkit.sh: nvcc $("$root/bin/nvcc" --version | grep -o 'release [0-9.]*'), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, $(uname -m)" >&2
}
_virnucpro_cuda_toolkit
unset -f _virnucpro_cuda_toolkit
