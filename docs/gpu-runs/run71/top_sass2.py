# Warp-stall samples of an `ncu --page source --print-source sass --csv` dump, by opcode and
# (for the top lines) by SASS line, with the stall-reason columns that ncu gives per line.
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
hdr_i = next(i for i, r in enumerate(rows) if any("Source" == c or "Address" in c for c in r))
hdr = rows[hdr_i]
def col(name):
    for i, c in enumerate(hdr):
        if c.startswith(name):
            return i
    return None
src, samp, addr = col("Source"), col("Warp Stall Sampling (All"), col("Address")
body = [r for r in rows[hdr_i + 1:] if len(r) > max(src, samp)]
f = lambda r: float(r[samp] or 0)
tot = sum(f(r) for r in body)
print(f"{len(body)} SASS lines, {tot:.0f} samples")
by = collections.Counter()
for r in body:
    op = r[src].strip()
    if op.startswith("@"):
        op = op.split(None, 1)[1] if " " in op else op
    by[op.split()[0] if op else "?"] += f(r)
for k, v in by.most_common(25):
    print(f"{100 * v / tot:5.1f}%  {k}")
print("--- top lines")
for r in sorted(body, key=lambda r: -f(r))[:30]:
    print(f"{100 * f(r) / tot:5.1f}%  {r[addr] if addr is not None else ''}  {r[src][:90]}")
print("--- stall columns:", [c for c in hdr if "stall" in c.lower()][:30])
