#!/usr/bin/env bash
# One rerunnable training command for a GPU machine (issue 9, "train to target"): fine-tunes the shipped model with
# the precision recipe (segmentation branch with its input-grid fine stage for box refinement, IoU-quality head,
# rare organs oversampled; DQM lambda 0.2 as always), mixed precision (bf16 where supported), a larger batch, and the
# exponential moving average of the weights validated and kept as best/ (--ema-decay 0.998: in session 15's paired CPU
# run it scored 0.003-0.013 query-box mAP above the trained weights at every validation).
# Further options go last, so they override these (e.g. --batch-size 32 --lr 4e-4). Recalibrate the refinement on
# training cases afterwards (benchmarks/refinement_calibration.py --write-config), then the presence rule
# (benchmarks/presence_calibration.py).
# Run it again with the same folder and it resumes from last/; every call stops cleanly after MINUTES of training
# (default 8, to fit a short lease), keeping last/ and best/ (best by validation mAP). Validate what it produces on
# the CPU with `organdetr evaluate --model RUN/best --device cpu ...`.
# Size ORGANDETR_EPOCHS to the lease so that the cosine schedule reaches its floor before MINUTES end: on the CPU,
# whole-network runs gained only when their schedule annealed within the run (models/checkpoints/cpu-s16/); a 2-epoch
# probe gives the time per epoch (models/checkpoints/gpu-s8/README.md).
#
# ORGANDETR_DATA may be a training pack (organdetr pack: one file, no NIfTI files or SimpleITK needed on the GPU
# machine). With ORGANDETR_EXPORT=FOLDER the run's best/ and last/ checkpoints and its curves are copied there when it
# stops (flat file names, e.g. best.model.safetensors; `f=best.config.json; cp $f RUN/${f%%.*}/${f#*.}` puts one back),
# to bring them back from a rented machine.
#
#   models/train_on_gpu.sh RUN_FOLDER [MINUTES [FURTHER TRAIN OPTIONS...]]
#   ORGANDETR_DATA=dataset.json|pack.npz  ORGANDETR_CACHE=cache/  ORGANDETR_DEVICE=cuda|cpu  ORGANDETR_EPOCHS=400
#   ORGANDETR_VAL_EVERY=5  ORGANDETR_WARMUP_STEPS=200  ORGANDETR_WORKERS=8  ORGANDETR_EXPORT=FOLDER
#   ORGANDETR_DATA_ON_DEVICE=1 (training cases held, cut and augmented on the GPU in the training process instead of
#   by CPU loader workers; `python3 benchmarks/training_pipeline.py --data ... --device cuda --batch-size 32` says
#   which keeps up with a step)
set -euo pipefail
cd "$(dirname "$0")/.."
# Runs from a checkout as well as from an installed package (a rented machine need not pip-install it), with the
# python3 on PATH (a rented machine may have no plain "python").
export PYTHONPATH="$PWD/models:$PWD/backend:$PWD/OrganDETRSlicer${PYTHONPATH:+:$PYTHONPATH}"
run="${1:?usage: models/train_on_gpu.sh RUN_FOLDER [MINUTES [FURTHER TRAIN OPTIONS...]]}"
minutes="${2:-8}"
shift $(($# < 2 ? $# : 2))
data="${ORGANDETR_DATA:-../shared/data/openkbp/dataset.json}"
cache="${ORGANDETR_CACHE:-$run.cache}"
common=(--data "$data" --output "$run" --cache-dir "$cache" --time-limit-minutes "$minutes" --workers "${ORGANDETR_WORKERS:-8}")
if [ "${ORGANDETR_DATA_ON_DEVICE:-0}" = 1 ]; then common+=(--data-on-device); fi
export_run() {
    local code=$? folder="${ORGANDETR_EXPORT:-}"
    if [ -n "$folder" ]; then
        mkdir -p "$folder"
        # Eight files (what a rented machine's output folder may give back); last/ resumes, best/ is evaluated.
        for file in best/model.safetensors best/config.json best/metrics.json last/model.safetensors \
            last/config.json last/training_state.pt history.json training_curves.png; do
            if [ -f "$run/$file" ]; then cp "$run/$file" "$folder/${file/\//.}"; fi
        done
    fi
    return $code
}
trap export_run EXIT
if [ -f "$run/last/config.json" ]; then
    python3 -m organdetr_backend.cli train "${common[@]}" --resume "$@"
else
    python3 -m organdetr_backend.cli train "${common[@]}" --init-weights default \
        --segmentation-stride 1 --quality-head --oversample-rare-organs 0.5 --ema-decay 0.998 \
        --device "${ORGANDETR_DEVICE:-cuda}" --batch-size 8 --lr 2e-4 --warmup-steps "${ORGANDETR_WARMUP_STEPS:-200}" \
        --epochs "${ORGANDETR_EPOCHS:-400}" --val-every "${ORGANDETR_VAL_EVERY:-5}" "$@"
fi
