"""Run 5 parity checks: predict outputs vs the oracle's e2e references, embeddings vs expected/.

python3 compare5.py pred OUR_prediction_results.txt REF_prediction_results.txt LABEL
python3 compare5.py emb OUR.safetensors REF.safetensors LABEL
Prints one line per check starting with PASS or FAIL.
"""
import sys

TOL_SCORE = 5e-3
MIN_COS = 0.999


def read_pred(path):
    rows = []
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        assert header == ["Sequence_ID", "Prediction", "score1", "score2"], header
        for line in f:
            if not line.strip():
                continue
            sid, pred, s1, s2 = line.rstrip("\n").split("\t")
            rows.append((sid, pred, float(s1), float(s2)))
    return rows


def pred(ours, ref, label):
    a, b = read_pred(ours), read_pred(ref)
    ids_ok = [r[0] for r in a] == [r[0] for r in b]
    if not ids_ok:
        print(f"FAIL {label}: IDs/order differ ({len(a)} vs {len(b)} rows)")
        return
    maxd = 0.0
    flips, bad_flips = 0, 0
    for (_, pa, a1, a2), (_, pb, b1, b2) in zip(a, b):
        d = max(abs(a1 - b1), abs(a2 - b2))
        maxd = max(maxd, d)
        if pa != pb:
            flips += 1
            # A flip is acceptable only when the reference is within the difference of 0.5.
            if abs(b2 - 0.5) > max(d, 1e-12):
                bad_flips += 1
    ok = maxd <= TOL_SCORE and bad_flips == 0
    print(f"{'PASS' if ok else 'FAIL'} {label}: rows {len(a)}, max |score diff| {maxd:.3e}, "
          f"prediction flips {flips} (unjustified {bad_flips})")


def emb(ours, ref, label):
    import numpy as np
    from safetensors.numpy import load_file
    a = load_file(ours)["embeddings"].astype(np.float64)
    b = load_file(ref)["embeddings"].astype(np.float64)
    if a.shape != b.shape:
        print(f"FAIL {label}: shape {a.shape} vs {b.shape}")
        return
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    rel = np.linalg.norm(a - b) / np.linalg.norm(b)
    ok = bool(cos.min() >= MIN_COS)
    print(f"{'PASS' if ok else 'FAIL'} {label}: rows {a.shape[0]}, min cosine {cos.min():.6f}, "
          f"rel err {rel:.3e}, max abs {np.abs(a - b).max():.3e}")


if __name__ == "__main__":
    kind, ours, ref, label = sys.argv[1:5]
    try:
        {"pred": pred, "emb": emb}[kind](ours, ref, label)
    except Exception as e:  # noqa: BLE001
        print(f"FAIL {label}: {type(e).__name__}: {e}")
