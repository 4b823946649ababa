#!/bin/bash
# Real experiment for issue 7: prune the CamVid B0 to 50% MACs, distil it from the unpruned model, prune to 30%.
# State lives in /work/runs/prune-b0 and /work/runs/distill-b0-50 (resumable: rerun the same commands).
set -e
cd /work/main && . .venv/bin/activate
SRC=${SRC:-models/camvid-b0.safetensors}
END=${END:-"04:32"}          # distillation must stop by this UTC time
DATA=/work/shared/data/camvid
mkdir -p /work/runs/prune-b0
echo "source: $SRC sha256 $(sha256sum $SRC | cut -c1-16) at $(date -u +%H:%M:%S)" | tee -a /work/runs/prune-b0/source.txt
segrt prune $SRC --flops 0.5 --data $DATA -o /work/runs/prune-b0/b0-50.safetensors --threads 2 --rounds 2 --steps 16
BUDGET=$(( $(date -d "$END" +%s) - $(date +%s) - 90 ))
echo "distill budget ${BUDGET}s from $(date -u +%H:%M:%S)"
segrt distill --teacher $SRC --student /work/runs/prune-b0/b0-50.safetensors --data $DATA -o /work/runs/distill-b0-50 \
  --iterations 300 --stage1 0.3 --lr 3e-4 --val-every 100 --time-budget $BUDGET --threads 2
segrt prune $SRC --flops 0.3 --data $DATA -o /work/runs/prune-b0/b0-30.safetensors --threads 1 --rounds 2 --steps 8
# session 2: distil the 30% model (600 iterations took 55 min on 1 thread), bundle it, the unpruned control, the table
END30=${END30:-"07:03"}
BUDGET=$(( $(date -d "$END30" +%s) - $(date +%s) ))
segrt distill --teacher $SRC --student /work/runs/prune-b0/b0-30.safetensors --data $DATA -o /work/runs/distill-b0-30 \
  --iterations 600 --stage1 0.3 --lr 3e-4 --val-every 100 --time-budget $BUDGET --threads 1
python models/bundle_pruned.py /work/runs/distill-b0-30 --name camvid-b0-p30 --data $DATA
python benchmarks/pruning_control.py --run /work/runs/distill-b0-50 -o /work/runs/control-b0 --threads 1
python benchmarks/pruning.py --pruned50 /work/runs/prune-b0/b0-50.safetensors --distilled /work/runs/distill-b0-50/best.safetensors \
  --pruned30 /work/runs/prune-b0/b0-30.safetensors --distilled30 models/camvid-b0-p30.safetensors \
  --control /work/runs/control-b0/best.safetensors --distilled-variants fold fold+merge \
  --cache /work/runs/prune-b0/onnx-v2 --torch-threads 1 --rounds 60
echo "done at $(date -u +%H:%M:%S)"
