# Top SASS lines of an `ncu --page source --print-source sass --csv` dump by warp-stall samples.
import csv, sys
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
hdr_i = next(i for i, r in enumerate(rows) if any("Source" == c or "Address" in c for c in r))
hdr = rows[hdr_i]
def col(name):
    for i, c in enumerate(hdr):
        if c.startswith(name):
            return i
    return None
src, samp = col("Source"), col("Warp Stall Sampling (All")
if samp is None:
    print("columns:", hdr[:40]); sys.exit()
body = [r for r in rows[hdr_i + 1:] if len(r) > max(src, samp)]
tot = sum(float(r[samp] or 0) for r in body)
print(f"{len(body)} SASS lines, {tot:.0f} samples")
for r in sorted(body, key=lambda r: -float(r[samp] or 0))[:40]:
    print(f"{100 * float(r[samp] or 0) / tot:5.1f}%  {r[src][:110]}")
