#!/usr/bin/env python3
"""Summarises a ktrace file (scripts/ktrace/ktrace.c): over the last --last-ms of GPU activity,
the wall time, the time some kernel/copy was running, the idle gaps between them, and time per
kernel name. Usage: summary.py trace.tsv [--last-ms 300] [--top 25]"""
import argparse
import collections
import re


def short(name: str) -> str:
    # cuBLASLt / CUTLASS names are long templates: keep the part that tells the tile shape.
    name = re.sub(r"\(.*", "", name)
    return name if len(name) <= 90 else name[:87] + "..."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--last-ms", type=float, default=300.0)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    recs = []
    with open(a.trace) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 4:
                continue
            recs.append((int(p[1]), int(p[2]), p[0], p[3], p[4] if len(p) > 4 else ""))
    if not recs:
        print("no records")
        return
    recs.sort()
    end = max(r[1] for r in recs)
    t0 = end - int(a.last_ms * 1e6)
    win = [r for r in recs if r[0] >= t0]
    start = win[0][0]
    busy = 0
    gaps = []
    cur_s, cur_e = win[0][0], win[0][1]
    prev = win[0]
    for r in win[1:]:
        if r[0] > cur_e:
            busy += cur_e - cur_s
            gaps.append((r[0] - cur_e, prev[3], r[3]))
            cur_s, cur_e = r[0], r[1]
        else:
            cur_e = max(cur_e, r[1])
        prev = r
    busy += cur_e - cur_s
    span = end - start
    gap_total = sum(g[0] for g in gaps)
    print(f"window: last {a.last_ms:.0f} ms of activity, {len(win)} records")
    print(f"span {span / 1e6:.3f} ms, busy {busy / 1e6:.3f} ms ({100 * busy / span:.1f}%), "
          f"idle {gap_total / 1e6:.3f} ms in {len(gaps)} gaps "
          f"(> 5 us: {sum(1 for g in gaps if g[0] > 5000)}, > 50 us: {sum(1 for g in gaps if g[0] > 50000)})")
    per = collections.defaultdict(lambda: [0, 0])
    for r in win:
        k = f"{r[2]} {short(r[3])}"
        per[k][0] += r[1] - r[0]
        per[k][1] += 1
    print(f"{'ms total':>10} {'%busy':>6} {'calls':>7} {'us/call':>9}  name")
    for k, (ns, n) in sorted(per.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"{ns / 1e6:>10.3f} {100 * ns / busy:>6.1f} {n:>7} {ns / n / 1e3:>9.1f}  {k}")
    by_pair = collections.defaultdict(lambda: [0, 0])
    for g, before, after in gaps:
        key = f"{short(before)[:40]} -> {short(after)[:40]}"
        by_pair[key][0] += g
        by_pair[key][1] += 1
    print("largest idle time by (kernel before -> kernel after):")
    for k, (ns, n) in sorted(by_pair.items(), key=lambda kv: -kv[1][0])[:10]:
        print(f"{ns / 1e6:>10.3f} ms {n:>6} gaps {ns / n / 1e3:>8.1f} us/gap  {k}")


if __name__ == "__main__":
    main()
