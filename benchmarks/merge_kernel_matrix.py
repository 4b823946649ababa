"""The TokenMerge plugin kernel against segrt's PyTorch merging and the ONNX function body (ONNX Runtime) on
every bipartite merge of B0 and B2 at 512x512 and 1024x1024 (hq, fast, and a low-ratio config that selects the
merged set instead of the kept one), plus exact ties: the part of the matrix too slow for the test suite
(Triton's interpreter on the CPU; tests/export/test_merge_plugin.py runs B0 at 512 for every strategy, B0 hq at
1024 and the ties).

    python benchmarks/merge_kernel_matrix.py [--frame IMAGE] [--name merge_kernel_matrix]

Inputs are the tokens a seeded random model really merges on a CamVid val frame. Writes
benchmarks/results/NAME.{json,md}; exits 1 if a decision differs without being a tie to float32 rounding, or a
merged token differs by more than 1e-5 where the decisions agree (kernel_check.Comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = [f"{v}:{s}:{m}" for v in ("b0", "b2") for s in (512, 1024) for m in ("hq", "fast", "low")] + ["ties"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("SEGRT_SHARED", REPO.parent / "shared"))
    frames = sorted((shared / "data" / "camvid" / "val").glob("*.png"))
    parser.add_argument("--frame", type=Path, default=frames[0] if frames else None)
    parser.add_argument("--name", default="merge_kernel_matrix")
    args = parser.parse_args()
    if args.frame is None:
        raise SystemExit("no CamVid val frame found: pass --frame IMAGE or set SEGRT_SHARED")
    run = subprocess.run([sys.executable, "-m", "segrt.export.methods.merging.kernel_check", str(args.frame), *CASES],
                         capture_output=True, text=True, check=False)
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    if not rows:
        raise SystemExit(f"the comparison produced nothing:\n{run.stderr[-2000:]}")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"frame": args.frame.name, "rows": rows}, indent=2) + "\n")
    lines = ["| case | tokens | channels | sources | merged away | differing decisions (triton / ORT) | "
             "of which near-ties | max merged error on agreeing rows (triton / ORT) | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n, c, ns, k = r["shape"]
        t, o = r["triton"], r["onnxruntime"]
        lines.append(f"| {r['case']} | {n} | {c} | {ns} | {k} | "
                     f"{t['decisions_differing']} / {o['decisions_differing']} | "
                     f"{t['near_ties']} / {o['near_ties']} | {t['merged_error']:.2e} / {o['merged_error']:.2e} | "
                     f"{r['seconds']} |")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return run.returncode


if __name__ == "__main__":
    raise SystemExit(main())
