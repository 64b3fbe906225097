#!/usr/bin/env bash
# The test command (README, .ci/run): install what the tests need, run them,
# and smoke-test the package under Python 3.9 (pykd's newest) where one exists.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

py39=""
for c in python3.9 "$HOME"/.pyenv/versions/3.9*/bin/python3.9 /usr/bin/python3.9 /usr/local/bin/python3.9; do
  if [ -n "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 9)' >/dev/null 2>&1; then py39=$c; break; fi
done
if [ -n "$py39" ]; then
  echo "test: Python 3.9 smoke tests with $py39"
  [ -x .venv39/bin/python ] || "$py39" -m venv .venv39
  .venv39/bin/python -m pip install -q --disable-pip-version-check ".[test]"
  (cd /tmp && "$OLDPWD/.venv39/bin/python" -m pytest -q -p no:cacheprovider "$OLDPWD/tests/test_cli_smoke.py" \
     "$OLDPWD"/tests/test_windbg*.py)
else
  echo "test: no Python 3.9 on this machine; 3.9 smoke tests not run"
fi

.venv/bin/python -m pytest -q "$@"
