#!/usr/bin/env bash
# One-command environment for detr-panoptic-d2.
#
# Creates .venv (Python 3.11) and installs exact pins from the package registries:
#   requirements/requirements.txt   direct pins (torch, torchvision, numpy, scipy, ...)
#   requirements/constraints.txt    transitive pins
#   detectron2                      PyPI sal-detectron2==0.7.2 (upstream detectron2 Python code), checked by sha256
#   panopticapi                     PyPI panopticapi-lite==0.2.0
#   the project itself              pip install -e .
# Idempotent: a stamp records the hash of the inputs; a second run on a ready venv returns in seconds.
# An already-importable detectron2 (e.g. built from upstream source) is left alone.
# Environment: VENV (default .venv), PYTHON (default python3.11, else python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
D2_VERSION="0.7.2"
D2_SHA256="491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"
PANOPTICAPI="panopticapi-lite==0.2.0"

step() { echo "[bootstrap] $*"; }
fail() { echo "[bootstrap] FAILED at step: $*" >&2; exit 1; }

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || fail "python check: $PYTHON is not Python 3.11 (set PYTHON=/path/to/python3.11)"

stamp_inputs() {
  cat "$ROOT/requirements/requirements.txt" "$ROOT/requirements/constraints.txt" "$ROOT/setup.py" "${BASH_SOURCE[0]}" \
    | sha256sum | cut -d' ' -f1
}
STAMP="$VENV/.bootstrap-stamp"
WANT="$(stamp_inputs)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && "$VENV/bin/python" -c 'import torch, torchvision, detectron2, panopticapi, detr_panoptic_d2, detr_panoptic_runtime' 2>/dev/null; then
  step "environment ready ($VENV)"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  step "create venv $VENV"
  "$PYTHON" -m venv "$VENV" || fail "create venv $VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -c "$ROOT/requirements/constraints.txt")

step "pip requirements (torch, torchvision, numpy, scipy, ...)"
"${PIP[@]}" -r "$ROOT/requirements/requirements.txt" || fail "pip install -r requirements/requirements.txt"

if "$PY" -c 'import detectron2' 2>/dev/null && ! "$PY" -m pip show -q sal-detectron2 >/dev/null 2>&1; then
  step "detectron2 already importable (own build): left alone"
else
  if ! "$PY" -m pip show -q sal-detectron2 2>/dev/null | grep -q . && ! "$PY" -c 'import detectron2' 2>/dev/null \
     || [ "$("$PY" -m pip show sal-detectron2 2>/dev/null | awk '/^Version:/{print $2}')" != "$D2_VERSION" ]; then
    step "detectron2 (sal-detectron2==$D2_VERSION)"
    TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
    "$PY" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.10 \
      -d "$TMP" "sal-detectron2==$D2_VERSION" || fail "download sal-detectron2==$D2_VERSION"
    WHL="$(ls "$TMP"/sal_detectron2-*.whl)" || fail "download sal-detectron2: no wheel"
    echo "$D2_SHA256  $WHL" | sha256sum -c --quiet - || fail "checksum of $WHL (expected $D2_SHA256)"
    cp "$WHL" "$TMP/sal_detectron2-$D2_VERSION-py3-none-any.whl"
    "${PIP[@]}" "$TMP/sal_detectron2-$D2_VERSION-py3-none-any.whl" || fail "pip install sal-detectron2 wheel"
  fi
fi

step "panopticapi ($PANOPTICAPI)"
"${PIP[@]}" --no-deps "$PANOPTICAPI" || fail "pip install $PANOPTICAPI"

step "project (pip install -e .)"
"${PIP[@]}" --no-deps -e "$ROOT" || fail "pip install -e $ROOT"

"$PY" -c 'import torch, torchvision, detectron2, panopticapi, detr_panoptic_d2, detr_panoptic_runtime' || fail "import check"
echo "$WANT" > "$STAMP"
step "environment ready ($VENV)"
