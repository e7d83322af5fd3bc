#!/usr/bin/env bash
# Opens notebooks/deltalake-query.ipynb in Jupyter over a Delta root, from the
# project's .venv (created and filled on first use, with Jupyter's server).
#   scripts/notebook.sh                    # ./deltalake, what the consumer writes
#   scripts/notebook.sh ./deltalake-demo   # what `consumer --demo` writes
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
delta_root=$(cd "${1:-$root/deltalake}" && pwd) || { echo "notebook.sh: no Delta root at ${1:-./deltalake}" >&2; exit 1; }
source "$root/scripts/python-env.sh"
python_env
"$python" -c 'import notebook' 2>/dev/null || "$python" -m pip install --quiet --disable-pip-version-check notebook
echo "notebook over $delta_root"
args=()
[ "$(id -u)" != 0 ] || args=(--allow-root) # a container's shell
DELTA_ROOT=$delta_root exec "$python" -m notebook "${args[@]}" "$root/notebooks"
