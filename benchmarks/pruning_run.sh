#!/bin/bash
# Real experiment for issue 7: prune the CamVid B0 to 50% MACs, distil it from the unpruned model, prune to 30%.
# State lives in $RUNS/prune-b0, $RUNS/distill-b0-50, ... (resumable: rerun the same commands); RUNS defaults to
# ../runs next to the repository, CamVid to $SEGRT_SHARED (default ../shared).
set -e
cd "$(dirname "$0")/.." && . .venv/bin/activate
RUNS=${RUNS:-../runs}
SRC=${SRC:-models/camvid-b0.safetensors}
END=${END:-"04:32"}          # distillation must stop by this UTC time
DATA=${SEGRT_SHARED:-../shared}/data/camvid
mkdir -p $RUNS/prune-b0
echo "source: $SRC sha256 $(sha256sum $SRC | cut -c1-16) at $(date -u +%H:%M:%S)" | tee -a $RUNS/prune-b0/source.txt
segrt prune $SRC --flops 0.5 --data $DATA -o $RUNS/prune-b0/b0-50.safetensors --threads 2 --rounds 2 --steps 16
BUDGET=$(( $(date -d "$END" +%s) - $(date +%s) - 90 ))
echo "distill budget ${BUDGET}s from $(date -u +%H:%M:%S)"
segrt distill --teacher $SRC --student $RUNS/prune-b0/b0-50.safetensors --data $DATA -o $RUNS/distill-b0-50 \
  --iterations 300 --stage1 0.3 --lr 3e-4 --val-every 100 --time-budget $BUDGET --threads 2
segrt prune $SRC --flops 0.3 --data $DATA -o $RUNS/prune-b0/b0-30.safetensors --threads 1 --rounds 2 --steps 8
# session 2: distil the 30% model (600 iterations took 55 min on 1 thread), bundle it, the unpruned control, the table
END30=${END30:-"07:03"}
BUDGET=$(( $(date -d "$END30" +%s) - $(date +%s) ))
segrt distill --teacher $SRC --student $RUNS/prune-b0/b0-30.safetensors --data $DATA -o $RUNS/distill-b0-30 \
  --iterations 600 --stage1 0.3 --lr 3e-4 --val-every 100 --time-budget $BUDGET --threads 1
python models/bundle_pruned.py $RUNS/distill-b0-30 --name camvid-b0-p30 --data $DATA
python benchmarks/pruning_control.py --run $RUNS/distill-b0-50 -o $RUNS/control-b0 --threads 1
python benchmarks/pruning.py --pruned50 $RUNS/prune-b0/b0-50.safetensors --distilled $RUNS/distill-b0-50/best.safetensors \
  --pruned30 $RUNS/prune-b0/b0-30.safetensors --distilled30 models/camvid-b0-p30.safetensors \
  --control $RUNS/control-b0/best.safetensors --distilled-variants fold fold+merge \
  --cache $RUNS/prune-b0/onnx-v2 --torch-threads 1 --rounds 60
echo "done at $(date -u +%H:%M:%S)"
