#!/usr/bin/env bash
# gpu_check.sh: the one prepared check of the GPU path (torch.compile with CUDA autocast), made to run in
# a single go on a bare GPU machine that cannot install anything or reach the internet:
#   1. the GPU, the driver and the versions;
#   2. pytest -m cuda: compile + autocast across stage switches, frozen parameters, graphs per stage,
#      fp16 + GradScaler, checkpoints that resume on the CPU (test_cuda.py);
#   3. bench.py on a BERT-base shape, batch 32 x 128, bf16 + compile: ft and each pt stage, with E training
#      and with E frozen, the transformers reference, peak memory, model FLOPs utilisation (MFU);
#   4. real MiniLM fine-tuning on the full RTE and MRPC training sets and 4,000 SST-2 rows, ft and pt, 3 epochs,
#      compile + bf16: ms per step, epoch time and compile seconds per stage;
#   5. the summary table, printed last (gpu_check.py summary).
#
#   bash gpu_check.sh --prepare              # on the CPU machine, first: MiniLM (fp16) + RTE, MRPC, SST-2 -> .gpu_carry/
#   bash gpu_check.sh --out DIR              # on the GPU machine, with .gpu_carry/ carried along
#   bash gpu_check.sh --dry-run --out DIR    # the same phases on the CPU at toy sizes (CI runs this)
#
# DIR receives six files: gpu_check.log (everything printed), pytest-cuda.xml, bench.json,
# bench-frozen.json, runs.json and summary.md. Bulky things (checkpoints, compile caches) go to --work
# (default: a temporary folder). Each phase runs under its own time limit, cut to what is left of --budget
# seconds, so one slow phase cannot take the others' time and the summary always comes; a phase that fails
# is recorded and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")"

usage="usage: bash gpu_check.sh --out DIR [--dry-run] [--carry DIR] [--work DIR] [--budget SECONDS] | --prepare [--carry DIR]"
OUT="" WORK="" CARRY=".gpu_carry" DRY=0 PREPARE=0 BUDGET=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out|--carry|--work|--budget)
            [ $# -ge 2 ] || { echo "error: $1 needs a value; $usage" >&2; exit 2; }
            case "$1" in --out) OUT=$2 ;; --carry) CARRY=$2 ;; --work) WORK=$2 ;; --budget) BUDGET=$2 ;; esac
            shift 2 ;;
        --dry-run) DRY=1; shift ;;
        --prepare) PREPARE=1; shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) echo "error: unknown option $1; $usage" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}

if [ "$PREPARE" = 1 ]; then
    exec "$PY" gpu_check.py prepare --carry "$CARRY"
fi
[ -n "$OUT" ] || { echo "error: --out DIR is required (where the results go); $usage" >&2; exit 2; }
case "$BUDGET" in  # checked before anything is written
    "") BUDGET=$([ "$DRY" = 1 ] && echo 2400 || echo 560) ;;
    *[!0-9]*) echo "error: --budget must be whole seconds, got $BUDGET" >&2; exit 2 ;;
esac
if [ "$DRY" = 1 ] && [ ! -f "$CARRY/minilm-fp16/model.safetensors" ]; then
    "$PY" gpu_check.py prepare --carry "$CARRY" || exit 2
fi
if [ ! -f "$CARRY/minilm-fp16/model.safetensors" ] || [ ! -d "$CARRY/glue/RTE" ] || [ ! -d "$CARRY/glue/MRPC" ] \
        || { [ "$DRY" = 0 ] && [ ! -d "$CARRY/glue/SST-2" ]; }; then
    echo "error: $CARRY lacks minilm-fp16/ or glue/RTE, MRPC, SST-2; run 'bash gpu_check.sh --prepare' on the" \
         "CPU machine first and carry that folder along" >&2
    exit 2
fi
if [ "$DRY" = 0 ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA device visible to $PY's torch; on a machine without a GPU use --dry-run" >&2
    exit 2
fi
mkdir -p "$OUT" || { echo "error: cannot create --out $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK" || { echo "error: cannot create --work $WORK" >&2; exit 2; }
WORK=$(cd "$WORK" && pwd)
CARRY=$(cd "$CARRY" && pwd)
: > "$WORK/phases.tsv"

# Offline, unbuffered, the carried model and data, and one compile cache for every phase: each stage switch
# compiles, and a graph already built (RTE's reappears in MRPC's runs) is then read back, not rebuilt.
export PROGTUNING_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PROGTUNING_DATA="$CARRY" PROGTUNING_MINILM_DIR="$CARRY/minilm-fp16"
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor-cache" TRITON_CACHE_DIR="$WORK/inductor-cache/triton"

SLOW=1  # the per-phase limits below are sized for a GPU; a shared 2-core CPU gets four times as long
if [ "$DRY" = 1 ]; then
    SLOW=4
    # Toy sizes on the CPU; aot_eager traces the same graphs as inductor without generating code.
    BENCH=(--device cpu --smoke)
    RUN=(--device cpu --compile --compile-backend aot_eager --amp --limit-train 32 --limit-eval 16 --batch-size 16)
    TASKS="rte"  # MRPC's runs take the same path with another metric; the CI suite's time is better spent elsewhere
else
    # 5 + 30 steps: a 2 + 10 median moved by up to 80% between two machines; 25 more steps cost about 1 s a case
    BENCH=(--device cuda --config bert-base --batch-size 32 --seq-len 128 --warmup 5 --steps 30)
    RUN=()  # run.py's CUDA defaults: torch.compile (inductor) and bf16 autocast
    TASKS="rte mrpc sst2"
fi
CASES="ft,pt stage 1,pt stage 2,pt stage 3"
STARTED=$SECONDS

phase() {  # phase NAME LIMIT COMMAND...: run it under min(LIMIT, what the budget has left), record how it ended
    local name=$1 limit=$(($2 * SLOW)) left start rc
    shift 2
    left=$((BUDGET - (SECONDS - STARTED) - 20))  # 20 s stay for the summary
    [ "$limit" -le "$left" ] || limit=$left
    if [ "$limit" -lt 5 ]; then
        echo "=== $name: skipped, the budget of $BUDGET s is spent"
        printf '%s\tskipped\t0\t0\n' "$name" >> "$WORK/phases.tsv"
        return
    fi
    echo "=== $name (at most $limit s): $*"
    start=$SECONDS
    timeout -k 10 "$limit" "$@"
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >> "$WORK/phases.tsv"
    echo "=== $name: exit $rc after $((SECONDS - start)) s$([ "$rc" = 124 ] && echo ' (time limit)')"
}

main() {
    echo "=== gpu_check $([ "$DRY" = 1 ] && echo '--dry-run (CPU, toy sizes)' || echo '(GPU)'), $(date -u), budget $BUDGET s"
    echo "=== git: $(git rev-parse --short HEAD 2>/dev/null || echo 'no git') $(git status --porcelain 2>/dev/null | grep -q . && echo '(uncommitted changes)')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    "$PY" -c "import platform, torch, transformers, safetensors, tokenizers, numpy, scipy; \
print('python', platform.python_version(), '| torch', torch.__version__, '| cuda', torch.version.cuda, \
'| gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None, '| transformers', \
transformers.__version__, '| safetensors', safetensors.__version__, '| tokenizers', tokenizers.__version__, \
'| numpy', numpy.__version__, '| scipy', scipy.__version__)"

    phase pytest-cuda 150 "$PY" -m pytest -q -m cuda -p no:cacheprovider test_cuda.py \
        --junitxml="$OUT/pytest-cuda.xml" -o junit_family=xunit1
    phase bench 180 "$PY" bench.py "${BENCH[@]}" --methods full --cases "$CASES,ft reference" \
        --json-out "$OUT/bench.json"
    phase bench-frozen 120 "$PY" bench.py "${BENCH[@]}" --methods full --cases "$CASES" --no-reference \
        --freeze-embeddings --json-out "$OUT/bench-frozen.json"
    for task in $TASKS; do
        # SST-2: its first 4,000 training rows (125 steps of 32 an epoch), where MiniLM's step time shows
        limit=(); [ "$task" = sst2 ] && limit=(--limit-train 4000)
        for mode in ft pt; do
            phase "run-$task-$mode" 120 "$PY" run.py --task "$task" --mode "$mode" --model "$CARRY/minilm-fp16" \
                --data-dir "$CARRY/glue" --lr 5e-5 --seeds 1 --log-every 1000 --overwrite \
                --output-dir "$WORK/runs/$task-$mode" "${limit[@]}" "${RUN[@]}"
        done
    done
    echo "=== summary (after $((SECONDS - STARTED)) s)"
    "$PY" gpu_check.py summary --out "$OUT" --runs "$WORK/runs" --phases "$WORK/phases.tsv"
}

main 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
