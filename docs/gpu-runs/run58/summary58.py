# Mean SM clock, power and the set of clock-event reasons per phase of run58.sh.
import sys, datetime
P = "%Y/%m/%d %H:%M:%S.%f"  # both files in the machine's local time
phases = [l.split("|", 1) for l in open(sys.argv[1]).read().splitlines()]
phases = [(datetime.datetime.strptime(t, P).timestamp(), n) for t, n in phases]
rows = []
for line in open(sys.argv[2]).read().splitlines()[1:]:
    f = [x.strip() for x in line.split(",")]
    try:
        ts = datetime.datetime.strptime(f[0], P).timestamp()
        rows.append((ts, float(f[1].split()[0]), float(f[3].split()[0]), float(f[4]), f[5]))
    except (ValueError, IndexError):
        pass
for i, (t0, name) in enumerate(phases):
    t1 = phases[i + 1][0] if i + 1 < len(phases) else 1e20
    sel = [r for r in rows if t0 + 0.7 <= r[0] < t1]  # skip the start-up
    if not sel or name == "idle" or name.startswith("start"):
        continue
    clk = sorted(r[1] for r in sel); pw = sorted(r[2] for r in sel)
    reasons = sorted(set(r[4] for r in sel))
    print(f"{name:14s} n={len(sel):3d}  SM clock median {clk[len(clk)//2]:.0f} MHz (min {clk[0]:.0f})  "
          f"power median {pw[len(pw)//2]:.0f} W (max {pw[-1]:.0f})  temp {sel[-1][3]:.0f} C  reasons {reasons}")
