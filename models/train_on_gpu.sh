#!/usr/bin/env bash
# One rerunnable training command for a GPU machine (issue 9, "train to target"): fine-tunes the shipped model with
# the precision recipe (segmentation branch with its input-grid fine stage for box refinement, IoU-quality head,
# rare organs oversampled; DQM lambda 0.2 as always), mixed precision (bf16 where supported), a larger batch.
# Further options go last, so they override these (e.g. --batch-size 32 --lr 4e-4). Recalibrate the refinement on
# training cases afterwards (benchmarks/refinement_calibration.py --write-config), then the presence rule
# (benchmarks/presence_calibration.py).
# Run it again with the same folder and it resumes from last/; every call stops cleanly after MINUTES of training
# (default 8, to fit a short lease), keeping last/ and best/ (best by validation mAP). Validate what it produces on
# the CPU with `organdetr evaluate --model RUN/best --device cpu ...`.
#
#   models/train_on_gpu.sh RUN_FOLDER [MINUTES [FURTHER TRAIN OPTIONS...]]
#   ORGANDETR_DATA=dataset.json  ORGANDETR_CACHE=cache/  ORGANDETR_DEVICE=cuda|cpu  ORGANDETR_EPOCHS=400
#   ORGANDETR_VAL_EVERY=5  ORGANDETR_WARMUP_STEPS=200  ORGANDETR_WORKERS=8
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:?usage: models/train_on_gpu.sh RUN_FOLDER [MINUTES [FURTHER TRAIN OPTIONS...]]}"
minutes="${2:-8}"
shift $(($# < 2 ? $# : 2))
data="${ORGANDETR_DATA:-../shared/data/openkbp/dataset.json}"
cache="${ORGANDETR_CACHE:-$run.cache}"
common=(--data "$data" --output "$run" --cache-dir "$cache" --time-limit-minutes "$minutes" --workers "${ORGANDETR_WORKERS:-8}")
if [ -f "$run/last/config.json" ]; then
    exec python -m organdetr_backend.cli train "${common[@]}" --resume "$@"
fi
exec python -m organdetr_backend.cli train "${common[@]}" --init-weights default \
    --segmentation-stride 1 --quality-head --oversample-rare-organs 0.5 \
    --device "${ORGANDETR_DEVICE:-cuda}" --batch-size 8 --lr 2e-4 --warmup-steps "${ORGANDETR_WARMUP_STEPS:-200}" \
    --epochs "${ORGANDETR_EPOCHS:-400}" --val-every "${ORGANDETR_VAL_EVERY:-5}" "$@"
