#!/usr/bin/env bash
# experiments/mpnet.sh: Progtuning on the paper's shape with real weights. MPNet-base (all-mpnet-base-v2:
# 12 blocks, 768 wide, 110M parameters) at the paper's recipe (3 epochs, lr 2e-5, batch 32, max length 128),
# full fine-tuning (ft) and Progtuning (pt), on RTE, MRPC, STS-B and CoLA; on the CPU with bf16 autocast
# (--amp), one run at a time, seed round by seed round, so that a partial table covers every task.
# --peft: then Adapter, BitFit and LoRA (3 epochs each, their presets otherwise), ft and pt, on RTE and MRPC.
#
#   bash experiments/mpnet.sh [--seeds 1,2,3] [--peft] [--only REGEX] [--dry-run]
#
# Each job adds its seed to runs/mpnet/<task>-<mode>-<method>/ (--resume keeps the finished seeds, and
# continues one a signal stopped; a job whose seeds are all complete is skipped, so the queue restarts fast); python report.py runs/mpnet --baseline --paired reads them, and
# records/mpnet/ holds their results.json (cp runs/mpnet/*/results.json by folder). Checkpoints are
# deleted once a seed is complete (--no-keep-checkpoint: 1.3 GB each), except RTE pt's, which export.py
# and predict.py use. MPNET: the model folder (default ~/.cache/progtuning/all-mpnet-base-v2, from
# scripts/get-mpnet.sh); GLUE_DIR: the GLUE folder (default ../shared/data/glue).
set -uo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash experiments/mpnet.sh [--seeds 1,2,3] [--peft] [--only REGEX] [--dry-run]"
SEEDS=1,2,3 PEFT=0 ONLY="" DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds|--only) [ $# -ge 2 ] || { echo "error: $1 needs a value; $usage" >&2; exit 2; }
                        if [ "$1" = --seeds ]; then SEEDS=$2; else ONLY=$2; fi; shift 2 ;;
        --peft) PEFT=1; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) echo "error: unknown option $1; $usage" >&2; exit 2 ;;
    esac
done
case "$SEEDS" in ''|*[!0-9,]*) echo "error: --seeds takes a list such as 1,2,3, got $SEEDS" >&2; exit 2 ;; esac
MPNET=${MPNET:-$HOME/.cache/progtuning/all-mpnet-base-v2}
GLUE_DIR=${GLUE_DIR:-../shared/data/glue}
[ -f "$MPNET/model.safetensors" ] || { echo "error: no MPNet at $MPNET; run scripts/get-mpnet.sh" >&2; exit 2; }
[ -d "$GLUE_DIR/RTE" ] || { echo "error: no GLUE data at $GLUE_DIR (set GLUE_DIR)" >&2; exit 2; }

job() {  # job TASK MODE METHOD SEEDS_SO_FAR
    local name="$1-$2-$3" keep=--no-keep-checkpoint
    [[ -n "$ONLY" && ! "$name" =~ $ONLY ]] && return 0
    [ "$name" = rte-pt-full ] && keep=--keep-checkpoint
    if python -c "import json, sys; r = json.load(open(sys.argv[1])); done = {x['seed'] for x in r['runs'] if x['status'] == 'complete'}; sys.exit(0 if {int(s) for s in sys.argv[2].split(',')} <= done else 1)" \
            "runs/mpnet/$name/results.json" "$4" 2>/dev/null; then
        return 0  # every seed asked for is complete already: no need to load the model and data to learn it
    fi
    local cmd=(python run.py --task "$1" --mode "$2" --method "$3" --model "$MPNET" --data-dir "$GLUE_DIR"
               --output-dir "runs/mpnet/$name" --seeds "$4" --resume --amp --log-every 20 "$keep")
    [ "$3" != full ] && cmd+=(--epochs 3)
    if [ "$DRY" = 1 ]; then echo "${cmd[*]}"; return 0; fi
    mkdir -p runs/mpnet
    echo "$(date -u +%FT%TZ) start $name seeds $4" >> runs/mpnet/queue.log
    "${cmd[@]}" >> "runs/mpnet/$name.out" 2>&1
    local code=$?
    echo "$(date -u +%FT%TZ) end $name seeds $4 exit $code" >> runs/mpnet/queue.log
    [ $code -eq 130 ] || [ $code -eq 143 ] && exit $code  # stopped by a signal: stop the queue too
    return 0
}

so_far=""
for seed in ${SEEDS//,/ }; do
    so_far=${so_far:+$so_far,}$seed
    for task in rte mrpc stsb cola; do
        for mode in ft pt; do job "$task" "$mode" full "$so_far"; done
    done
done
if [ "$PEFT" = 1 ]; then
    for method in adapter bitfit lora; do
        for task in rte mrpc; do
            for mode in ft pt; do job "$task" "$mode" "$method" "${SEEDS%%,*}"; done
        done
    done
fi
