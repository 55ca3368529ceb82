#!/usr/bin/env bash
# A Python 3.9 virtual environment (Slicer 5.8 bundles Python 3.9) with ONLY the torch-free client (numpy, pydantic),
# for test_python39.py. ~40 s on 2 cores. Usage: Testing/slicer_module/prepare_py39_venv.sh [folder, default .venv-py39]
# The interpreter: $ORGANDETR_PYTHON39, else the newest pyenv 3.9 (~/.pyenv/versions/3.9.*), else python3.9 on PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
folder="${1:-.venv-py39}"
python=""
for candidate in "${ORGANDETR_PYTHON39:-}" $(ls -d "$HOME"/.pyenv/versions/3.9.*/bin/python3.9 2>/dev/null | sort -rV) \
    "$(command -v python3.9 || true)"; do
    # (a pyenv shim on PATH may exist and still refuse to run: try each)
    if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null; then
        python="$candidate"
        break
    fi
done
if [ -z "$python" ]; then
    echo "no Python 3.9 interpreter found: set ORGANDETR_PYTHON39" >&2
    exit 1
fi
"$python" -m venv "$folder"
echo '*' > "$folder/.gitignore"  # the folder keeps itself out of git
"$folder/bin/pip" install -q ./OrganDETRSlicer
"$folder/bin/python" -c 'import sys, organdetr_client; print(sys.version.split()[0], organdetr_client.__version__)'
