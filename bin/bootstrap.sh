# Sourced by bin/zonegate and bin/test: makes .venv on first use, reinstalls when pyproject changes.
# Needs only python3 >= 3.11 and the package registries.
set -euo pipefail
ZG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ZG_VENV="$ZG_ROOT/.venv"
zg_stamp="$ZG_VENV/.zonegate-installed"
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "zonegate needs Python 3.11 or newer as python3 (found: $(python3 --version 2>&1))" >&2
  exit 2
fi
if [ ! -x "$ZG_VENV/bin/python" ] || [ ! -e "$zg_stamp" ] || [ "$ZG_ROOT/pyproject.toml" -nt "$zg_stamp" ]; then
  echo "zonegate: installing into $ZG_VENV (first use only)..." >&2
  python3 -m venv "$ZG_VENV"
  "$ZG_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$ZG_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ZG_ROOT[test]"
  touch "$zg_stamp"
fi
