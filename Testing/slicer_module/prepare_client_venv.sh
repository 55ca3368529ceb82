#!/usr/bin/env bash
# A virtual environment with ONLY the torch-free client (and slicer-core for MRML), for test_remote_mode_without_torch.
# ~70 s on 2 cores. Usage: Testing/slicer_module/prepare_client_venv.sh [folder, default .venv-client]
set -euo pipefail
cd "$(dirname "$0")/../.."
folder="${1:-.venv-client}"
python3 -m venv "$folder"
"$folder/bin/pip" install -q ./OrganDETRSlicer slicer-core
