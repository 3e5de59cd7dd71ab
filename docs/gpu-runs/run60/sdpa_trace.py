# Run 60: kernel-level timeline of PyTorch SDPA calls back to back (torch.profiler / CUPTI):
# which kernels one call launches, their durations, and the gap (negative: overlap) between one
# kernel's end and the next one's start. Args: batch heads len.
import sys, torch
import torch.nn.functional as F
from torch.profiler import profile, ProfilerActivity
b, h, t = (int(x) for x in sys.argv[1:4])
q, k, v = (torch.randn(b, h, t, 64, device="cuda", dtype=torch.float16) for _ in range(3))
with torch.inference_mode():
    for _ in range(200):
        F.scaled_dot_product_attention(q, k, v, scale=0.125)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(60):
            F.scaled_dot_product_attention(q, k, v, scale=0.125)
        torch.cuda.synchronize()
ev = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
            key=lambda e: e.time_range.start)
names = {}
for e in ev:
    names.setdefault(e.name, []).append(e.time_range.end - e.time_range.start)
for n, d in names.items():
    d = sorted(d)
    print(f"{len(d):4d} x {d[len(d)//2]:8.1f} us  {n[:150]}")
gaps = sorted(ev[i + 1].time_range.start - ev[i].time_range.end for i in range(len(ev) - 1))
if gaps:
    print(f"gaps between consecutive kernels (us): min {gaps[0]:.1f} median {gaps[len(gaps)//2]:.1f} max {gaps[-1]:.1f}")
span = ev[-1].time_range.end - ev[20].time_range.start
print(f"calls 20..59: {span / 40:.1f} us per call on the timeline")
