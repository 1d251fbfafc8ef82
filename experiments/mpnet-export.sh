#!/usr/bin/env bash
# experiments/mpnet-export.sh: the real MPNet run end to end after training. It exports RTE Progtuning's
# seed 1 (runs/mpnet/rte-pt-full, the one job of experiments/mpnet.sh that keeps its checkpoint) to the
# Hugging Face layout, loads the export in transformers (a dev requirement) and compares its logits with
# ours on all 277 RTE dev pairs in fp32, then predicts the dev file with predict.py from the export and
# scores it. Prints one summary; records/mpnet/export-check.txt is its output.
#
#   bash experiments/mpnet-export.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/mpnet/rte-pt-full}
GLUE_DIR=${GLUE_DIR:-../shared/data/glue}
OUT=$RUN-export
[ -f "$RUN/seed-1/checkpoint.safetensors" ] ||
    { echo "error: no seed-1 checkpoint in $RUN; run experiments/mpnet.sh first" >&2; exit 2; }

python export.py "$RUN" --seed 1 --to "$OUT" --overwrite
python predict.py --model "$OUT" --task rte --input "$GLUE_DIR/RTE/dev.tsv" --output "$OUT-dev.tsv"
python - "$RUN" "$OUT" "$GLUE_DIR" <<'EOF'
import sys
from pathlib import Path

import torch
import transformers

import data
import export
import glue_eval
import model as M

run, out, glue = map(Path, sys.argv[1:])
ours_model, _, _ = export.load_run_model(run, 1)
ours_model.eval()
theirs_model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
tokenizer = M.load_tokenizer(out)
examples = data.read_glue("rte", "dev", glue)
encoded = data.encode_glue(examples, tokenizer, 128, regression=False)
worst, ours_all = 0.0, []
with torch.no_grad():
    for batch in data.batches(encoded, 32, tokenizer.pad_token_id):
        ours = ours_model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        theirs = theirs_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        worst = max(worst, (ours - theirs).abs().max().item())
        ours_all.append(ours)
# class ids throughout: predict.py's label column (its file adds probabilities, so read_predictions, which
# reads the run's own index<TAB>prediction file, does not take it), our argmax, the run's bf16 evaluation
label_names = data.glue_task("rte").label_names
predict_file = out.parent / f"{out.name}-dev.tsv"
predicted = [label_names.index(line.split("\t")[1]) for line in predict_file.read_text().splitlines()[1:]]
ours_ids = torch.cat(ours_all).argmax(-1).tolist()
run_ids = glue_eval.read_predictions(run / "seed-1" / "predictions-rte.tsv", label_names, len(examples))
accuracy = glue_eval.compute_metrics("rte", predicted, [e.label for e in examples])["accuracy"]
print(f"export of {run} seed 1: {len(examples)} RTE dev pairs, "
      f"max |our logits - transformers' logits| = {worst:.2e} (fp32)")
print(f"predict.py on the export: accuracy {accuracy:.2f}; same labels as our fp32 forward on "
      f"{sum(p == o for p, o in zip(predicted, ours_ids))}/{len(examples)}, as the run's bf16 evaluation on "
      f"{sum(p == r for p, r in zip(predicted, run_ids))}/{len(examples)}")
EOF
