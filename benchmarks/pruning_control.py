"""Control for the pruning table: the *unpruned* model given the same extra training as a pruned student.

    python benchmarks/pruning_control.py --run ../runs/distill-b0-50 -o ../runs/control-b0 --threads 1

Reads the pruned run's config (iterations, lr, stage1, ...) and how many iterations it actually got, then
runs the same `segrt distill` with the bundled model as both teacher and student and stops after exactly
that many iterations, on the same learning-rate schedule. A pruned+distilled model that beats this
control gains from more than just extra training iterations.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import segrt.export.training.distill as distill_module
from segrt.export.loading import load_model
from segrt.export.training.distill import DistillConfig, distill


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="the pruned student's distill run folder")
    p.add_argument("--teacher", default="camvid-b0")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--iterations", type=int, default=None, help="stop after N (default: as many as --run got)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    ref = json.loads((args.run / "config.json").read_text())
    done = json.loads((args.run / "history.json").read_text())[-1]["iteration"]
    stop = args.iterations or done
    fields = set(DistillConfig.__dataclass_fields__)
    cfg = DistillConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in ref.items() if k in fields})
    cfg.out, cfg.threads, cfg.time_budget = str(args.out), args.threads or cfg.threads, None
    cfg.val_every = min(cfg.val_every, stop)

    # stop on the reference schedule: the time-budget check after iteration `stop` ends the run with a
    # validated, resumable checkpoint, exactly as the budget ended the pruned run
    weights = distill_module.stage_weights

    def stage_weights(it: int, c: DistillConfig) -> dict[str, float]:
        if it + 1 >= stop:
            c.time_budget = 0.0
        return weights(it, c)

    distill_module.stage_weights = stage_weights
    teacher = load_model(args.teacher)
    result = distill(teacher, load_model(args.teacher), cfg)
    print(f"control: {result['iteration']} iterations (reference run got {done}); "
          f"best val mIoU {result['best_miou']:.4f}")
    return result


if __name__ == "__main__":
    main()
