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
# session 5 (issue 20): p30's widths aligned to 16 channels (a second pruning of the distilled p30 to 90% of its
# MACs), distilled again from camvid-b0 (500 iterations took 16 min on 1 thread), bundled as camvid-b0-p27
segrt prune models/camvid-b0-p30.safetensors --flops 0.9 --align 16 --data $DATA -o $RUNS/prune-b0/p30-aligned.safetensors \
  --threads 1 --rounds 1 --steps 8
segrt distill --teacher $SRC --student $RUNS/prune-b0/p30-aligned.safetensors --data $DATA -o $RUNS/distill-p30-aligned \
  --iterations 500 --stage1 0.2 --lr 1e-4 --val-every 100 --threads 1
python models/bundle_pruned.py $RUNS/distill-p30-aligned --name camvid-b0-p27 --source camvid-b0-p30 --data $DATA
# then once more with random aspect-ratio stretch (a 4:3 student that also runs at 512x512), 400 iterations, 5 min
segrt distill --teacher $SRC --student models/camvid-b0-p27.safetensors --data $DATA -o $RUNS/distill-p27-aspect \
  --iterations 400 --stage1 0.1 --lr 1e-4 --val-every 100 --aspect 0.75:1.5 --threads 2
python models/bundle_pruned.py $RUNS/distill-p27-aspect --name camvid-b0-p27 --source camvid-b0-p30 --data $DATA
echo "done at $(date -u +%H:%M:%S)"
