#!/usr/bin/env bash
# gpu_runs.sh: the real-data runs a 2-core CPU cannot afford, in one go on a GPU machine that can neither
# install nor download (a companion of gpu_check.sh, which proves the GPU path; this one uses it):
#   - the block probe on SST-2, the paper's Figure 1 task (blocks 1..6 and none, full ft and pt);
#   - LoRA at its preset epochs (CoLA 80, MRPC 30, STS-B 40; ft and pt), which the CPU runs cut to 6;
#     CoLA's 80 epochs (about 43k steps a run) ran on the CPU instead, about an hour a run on one
#     core (RESULTS.md); here they likely need --resume invocations and may outlast a short time budget
#     (the work dir keeps the checkpoints for as long as the machine keeps it);
#   - SAM on MRPC (ft and pt), the sparse path's first runs on a GPU;
#   - SST-2 for the methods whose preset is 3 epochs (adapter, bitfit, sam, random, magnitude; ft and pt).
# One seed each (--seeds), MiniLM weights rounded to fp16 (what travels), run.py's CUDA defaults
# (torch.compile + bf16 autocast). MiniLM's steps are small and launch-bound, so the jobs run side by
# side on the one GPU (--parallel); each ends by the --budget, so the records always come back.
#
#   bash gpu_runs.sh --prepare               # CPU machine: gpu_check's carry + GLUE SST-2, STS-B, CoLA
#   bash gpu_runs.sh --out DIR               # GPU machine, with .gpu_carry/ carried along
#   bash gpu_runs.sh --dry-run --out DIR     # every job on the CPU at toy sizes (flags and records)
#   bash gpu_runs.sh --out DIR2 --resume WORK --only NAME   # go on with a job the budget cut, on the
#                                            # same machine (WORK: the log's "work dir" line)
#
# DIR receives gpu_runs.log (everything printed), jobs.tsv (job, exit code, seconds) and runs.tar.gz
# (each job's output folder without checkpoints, and its log); unpack with `tar xzf runs.tar.gz -C runs/gpu`
# and read with report.py.
set -uo pipefail
cd "$(dirname "$0")"

usage="usage: bash gpu_runs.sh --out DIR [--dry-run] [--carry DIR] [--budget SECONDS] [--parallel N] [--seeds LIST] [--only REGEX] [--resume WORK] | --prepare [--carry DIR]"
OUT="" CARRY=".gpu_carry" DRY=0 PREPARE=0 BUDGET="" PARALLEL=16 SEEDS=1 ONLY="" RESUME=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out|--carry|--budget|--parallel|--seeds|--only|--resume)
            [ $# -ge 2 ] || { echo "error: $1 needs a value; $usage" >&2; exit 2; }
            case "$1" in
                --out) OUT=$2 ;; --carry) CARRY=$2 ;; --budget) BUDGET=$2 ;; --parallel) PARALLEL=$2 ;;
                --seeds) SEEDS=$2 ;; --only) ONLY=$2 ;; --resume) RESUME=$2 ;;
            esac
            shift 2 ;;
        --dry-run) DRY=1; shift ;;
        --prepare) PREPARE=1; shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) echo "error: unknown option $1; $usage" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
EXTRA_TASKS="SST-2 STS-B CoLA"

if [ "$PREPARE" = 1 ]; then
    exec "$PY" gpu_check.py prepare --carry "$CARRY" --add-tasks "${EXTRA_TASKS// /,}"
fi
[ -n "$OUT" ] || { echo "error: --out DIR is required (where the results go); $usage" >&2; exit 2; }
for value in "$PARALLEL" "${BUDGET:-1}"; do
    case "$value" in ''|*[!0-9]*) echo "error: --parallel and --budget take whole numbers, got $value" >&2; exit 2 ;; esac
done
case "$SEEDS" in ''|*[!0-9,]*) echo "error: --seeds takes a list such as 1,2,3, got $SEEDS" >&2; exit 2 ;; esac
if [ -n "$RESUME" ] && [ ! -d "$RESUME/runs" ]; then
    echo "error: --resume $RESUME has no runs/ folder; pass the work dir an earlier gpu_runs.log names" >&2
    exit 2
fi
if [ ! -f "$CARRY/minilm-fp16/model.safetensors" ]; then
    echo "error: $CARRY lacks minilm-fp16/; run 'bash gpu_runs.sh --prepare' on the CPU machine first" >&2
    exit 2
fi
for task in $EXTRA_TASKS MRPC; do
    [ -f "$CARRY/glue/$task/train.tsv" ] || { echo "error: $CARRY/glue/$task is missing; run 'bash gpu_runs.sh --prepare'" >&2; exit 2; }
done
if [ "$DRY" = 0 ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA device visible to $PY's torch; on a machine without a GPU use --dry-run" >&2
    exit 2
fi
BUDGET=${BUDGET:-$([ "$DRY" = 1 ] && echo 1800 || echo 480)}
mkdir -p "$OUT" || { echo "error: cannot create --out $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
if [ -n "$RESUME" ]; then  # the cut-off jobs' checkpoints are in the earlier invocation's work dir
    WORK=$(cd "$RESUME" && pwd)
else
    WORK=$(mktemp -d)
fi
CARRY=$(cd "$CARRY" && pwd)
mkdir -p "$WORK/runs" "$WORK/logs"
: > "$OUT/jobs.tsv"

export PROGTUNING_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor-cache" TRITON_CACHE_DIR="$WORK/inductor-cache/triton"
export TORCHINDUCTOR_COMPILE_THREADS=2  # many runs compile at once; each gets a share of the cores
COMMON=(--model "$CARRY/minilm-fp16" --data-dir "$CARRY/glue" --seeds "$SEEDS" --no-keep-checkpoint
        --log-every 500 $([ -n "$RESUME" ] && echo --resume || echo --overwrite))
[ "$DRY" = 1 ] && COMMON+=(--device cpu --no-compile --limit-train 16 --limit-eval 8 --epochs 2 --batch-size 8)

# name, then run.py's task options; the longest first, so they start while the cores are free
JOBS=(
    "cola-lora-ft --task cola --mode ft --method lora"
    "cola-lora-pt --task cola --mode pt --method lora"
    "stsb-lora-ft --task stsb --mode ft --method lora"
    "stsb-lora-pt --task stsb --mode pt --method lora"
    "mrpc-lora-ft --task mrpc --mode ft --method lora"
    "mrpc-lora-pt --task mrpc --mode pt --method lora"
    "sst2-full-ft --task sst2 --mode ft"
    "sst2-full-pt --task sst2 --mode pt"
)
for k in 1 2 3 4 5 6 none; do
    JOBS+=("sst2-blocks-$k --task sst2 --train-blocks $k")
done
JOBS+=("mrpc-sam-ft --task mrpc --mode ft --method sam" "mrpc-sam-pt --task mrpc --mode pt --method sam")
for m in sam adapter bitfit random magnitude; do  # LoRA's SST-2 preset, 60 epochs, is beyond one time budget
    JOBS+=("sst2-$m-ft --task sst2 --mode ft --method $m" "sst2-$m-pt --task sst2 --mode pt --method $m")
done

STARTED=$SECONDS
job() {  # job NAME ARGS...: one run.py under what the budget has left; its exit code and seconds to jobs.tsv
    local name=$1 start=$SECONDS rc limit
    shift
    limit=$((BUDGET - (SECONDS - STARTED) - 30))  # 30 s stay for packing the records
    if [ "$limit" -lt 10 ]; then
        printf '%s\tskipped\t0\n' "$name" >> "$OUT/jobs.tsv"
        return
    fi
    timeout -k 10 "$limit" "$PY" run.py "$@" "${COMMON[@]}" --output-dir "$WORK/runs/$name" \
        >> "$WORK/logs/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$OUT/jobs.tsv"
    echo "=== $name: exit $rc after $((SECONDS - start)) s$([ "$rc" = 124 ] && echo ' (budget spent)'): $(tail -n 1 "$WORK/logs/$name.log")"
}

main() {
    echo "=== gpu_runs $([ "$DRY" = 1 ] && echo '--dry-run (CPU, toy sizes)' || echo '(GPU)'), $(date -u), budget $BUDGET s, $PARALLEL at a time, seeds $SEEDS"
    echo "=== work dir: $WORK$([ -n "$RESUME" ] && echo ' (resumed)')"
    echo "=== git: $(git rev-parse --short HEAD 2>/dev/null || echo 'no git') $(git status --porcelain 2>/dev/null | grep -q . && echo '(uncommitted changes)')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -c "import platform, torch; print('python', platform.python_version(), '| torch', torch.__version__, \
'| cuda', torch.version.cuda, '| gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
    for spec in "${JOBS[@]}"; do
        read -r -a words <<< "$spec"
        [ -z "$ONLY" ] || [[ "${words[0]}" =~ $ONLY ]] || continue
        while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
        echo "=== start ${words[0]} at $((SECONDS - STARTED)) s: run.py ${words[*]:1}"
        job "${words[@]}" &
    done
    wait
    echo "=== all jobs ended after $((SECONDS - STARTED)) s; GPU memory at the end:"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=memory.used --format=csv
    tar czf "$OUT/runs.tar.gz" --exclude='*.safetensors' -C "$WORK" runs logs
    echo "=== $OUT/runs.tar.gz: $(du -k "$OUT/runs.tar.gz" | cut -f1) KiB"
    ! grep -qv $'\t0\t' "$OUT/jobs.tsv"
}

main 2>&1 | tee "$OUT/gpu_runs.log"
exit "${PIPESTATUS[0]}"
