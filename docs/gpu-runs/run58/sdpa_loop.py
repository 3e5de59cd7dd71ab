# Run 58: PyTorch SDPA (cuDNN on an H100) at 4x2048x20 heads, fp16, in a sustained loop of
# `seconds`, printing the median time per call of each ~0.5 s window (to set against the SM clock
# and power that nvidia-smi samples meanwhile).
import os, sys, time, torch
import torch.nn.functional as F
secs = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
b, h, t, d = (int(x) for x in (sys.argv[2:6] if len(sys.argv) > 5 else (4, 20, 2048, 64)))
q, k, v = (torch.randn(b, h, t, d, device="cuda", dtype=torch.float16) for _ in range(3))
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
with torch.inference_mode():
    for _ in range(20):
        F.scaled_dot_product_attention(q, k, v, scale=0.125)
    torch.cuda.synchronize()
    t0 = time.time()
    if os.environ.get("PHASES"):  # run59.sh: the loop starts now (after Python's start-up)
        with open(os.environ["PHASES"], "a") as f:
            f.write(time.strftime("%Y/%m/%d %H:%M:%S.", time.localtime(t0)) + f"{int(t0 % 1 * 1000):03d}|{os.environ.get('PHASE', 'torch')}\n")
    win = []
    while time.time() - t0 < secs:
        s.record()
        for _ in range(25):
            F.scaled_dot_product_attention(q, k, v, scale=0.125)
        e.record(); e.synchronize()
        win.append(s.elapsed_time(e) / 25)
        if sum(win) * 25 > 500:
            win.sort()
            print(f"{time.time():.2f} sdpa {b}x{t}: median {win[len(win)//2]:.4f} ms over {len(win)*25} calls", flush=True)
            win = []
