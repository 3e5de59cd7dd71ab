#!/usr/bin/env bash
# Run 37: Nsight Compute profiles of our Hopper attention kernels and of PyTorch's SDPA kernel on
# the doctor shapes (binaries of commit 5738df7 = b3ee73f).
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
unxz $D/virnucpro.xz /tmp/virnucpro; chmod +x /tmp/virnucpro
V=/tmp/virnucpro
NCU="/usr/local/cuda/bin/ncu --clock-control none --set full --page details"
date -u; nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
cat > /tmp/sdpa.py <<'PY'
import sys, torch, torch.nn.functional as F
b, t = int(sys.argv[1]), int(sys.argv[2])
q, k, v = (torch.randn(b, 20, t, 64, device="cuda", dtype=torch.float16) for _ in range(3))
for _ in range(5):
    o = F.scaled_dot_product_attention(q, k, v, scale=0.125)
torch.cuda.synchronize()
PY
for s in "4 2048" "8 1026"; do
  echo "=== torch SDPA $s"
  timeout 120 $NCU --launch-skip 3 --launch-count 1 -k regex:'(flash|fmha|attn|sdpa|cudnn|Kernel)' python3 /tmp/sdpa.py $s 2>&1 | grep -v "^==PROF==" | head -150
done
for s in 4x2048 8x1026; do
  echo "=== ours s3n128 $s"
  timeout 150 $NCU --launch-skip 20 --launch-count 1 -k regex:f16_s3n128 $V doctor --device cuda --skip-models --shapes $s --repeats 3 2>&1 | grep -v "^==PROF==" | sed -n '/virnucpro_flash/,$p' | head -150
done
echo "=== ours h2n64 64x168"
timeout 150 $NCU --launch-skip 20 --launch-count 1 -k regex:f16_h2n64 $V doctor --device cuda --skip-models --shapes 64x168 --repeats 3 2>&1 | grep -v "^==PROF==" | sed -n '/virnucpro_flash/,$p' | head -150
date -u
