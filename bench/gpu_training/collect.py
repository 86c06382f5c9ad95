"""After the runs of gpu_train.py: pick the `keep` best candidates by one-view val accuracy (then
ten-crop), write their float16 weights to OUT in parts under the tool's 16 MiB file limit, with
summary.json (every run's record) and train.log (every run's log).

    python collect.py WORK OUT [keep]
"""

import glob
import json
import os
import sys

PART = 15 * 1024 * 1024


def main(work, out, keep=2):
    records = {}
    for path in sorted(glob.glob(os.path.join(work, "*.json"))):
        with open(path) as f:
            rec = json.load(f)
        records[rec["run"]] = rec
    ranked = []
    for run, rec in records.items():
        for name, res in rec.get("candidates", {}).items():
            ranked.append((res["val_accuracy"], res["val_accuracy_ten_crop"], run, name))
    ranked.sort(reverse=True)
    if not ranked:  # no run reached its end phase: the interim copies, unjudged
        ranked = [(0.0, 0.0, run, "latest") for run in records
                  if os.path.exists(os.path.join(work, f"{run}-latest.f16"))]
    chosen = ranked[:keep]
    summary = {"ranking": [list(r) for r in ranked], "returned": [], "records": records}
    for k, (_, _, run, name) in enumerate(chosen):
        with open(os.path.join(work, f"{run}-{name}.f16"), "rb") as f:
            blob = f.read()
        parts = [blob[i:i + PART] for i in range(0, len(blob), PART)]
        for j, part in enumerate(parts):
            with open(os.path.join(out, f"c{k}-{run}-{name}.part{j}"), "wb") as f:
                f.write(part)
        summary["returned"].append({"run": run, "candidate": name, "parts": len(parts), "bytes": len(blob)})
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out, "train.log"), "w") as log:
        for path in sorted(glob.glob(os.path.join(work, "*.log"))):
            log.write(f"===== {os.path.basename(path)}\n")
            with open(path, errors="replace") as f:
                log.write(f.read()[-200_000:])
    for r in ranked:
        print("candidate", r)
    print("returned", summary["returned"])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 2)
