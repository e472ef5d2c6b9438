#!/usr/bin/env bash
# Create (or repair) the project's virtualenv: `make venv` runs this before installing the locked dependencies.
# A Python outside 3.11–3.12 or one without the venv module stops here, with the command that fixes it;
# a half-made .venv (interrupted creation, a removed interpreter, a wrong version, no pip) is rebuilt.
set -euo pipefail
PYTHON=${1:-python3}
VENV=${2:-.venv}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found. Install Python 3.11 or 3.12: sudo apt-get install python3 python3-venv" \
       "(or choose one: make demo PYTHON=python3.11)" >&2
  exit 2
fi
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$version" in
  3.11|3.12) ;;
  *) echo "error: $PYTHON is Python $version; msml needs 3.11 or 3.12 (MLflow 2.19's range)." \
          "Install one (sudo apt-get install python3.11 python3.11-venv, or uv python install 3.11)" \
          "and run: make demo PYTHON=python3.11" >&2
     exit 2 ;;
esac
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "error: $PYTHON has no venv/ensurepip module. Fix: sudo apt-get install python$version-venv" >&2
  exit 2
fi

# A usable venv runs its own python, of a supported version, with pip importable.
if [ -e "$VENV" ] && ! "$VENV/bin/python" -c \
     'import sys, pip; sys.exit(0 if sys.version_info[:2] in ((3, 11), (3, 12)) else 1)' >/dev/null 2>&1; then
  echo "$VENV is incomplete or broken: rebuilding it"
  rm -rf "$VENV"
fi
if [ ! -e "$VENV" ]; then
  echo "creating $VENV with $PYTHON (Python $version)"
  "$PYTHON" -m venv "$VENV"  # interrupted here, the check above rebuilds it next time
fi
