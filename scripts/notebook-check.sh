#!/usr/bin/env bash
# Runs the demo into a Delta root of its own, checks it wrote nothing where the
# configuration points, then executes notebooks/deltalake-query.ipynb headless
# (nbclient) against the demo's tables: any cell's error fails. Part of
# scripts/test.sh.
#   scripts/notebook-check.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/python-env.sh"
python_env
work=$(mktemp -d /tmp/cdc-notebook.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$root"

echo "notebook check: the demo into $work/demo ..."
if ! CDC_DELTA_ROOT="$work/configured" CDC_DEMO_DELTA_ROOT="$work/demo" \
    cargo run --quiet --example consumer -- --demo >"$work/demo.log" 2>&1; then
    tail -40 "$work/demo.log" >&2
    exit 1
fi
if [ -e "$work/configured" ]; then
    echo "notebook check: the demo wrote to the configured Delta root ($work/configured)" >&2
    exit 1
fi
grep -q "the demo wrote to $work/demo" "$work/demo.log" || {
    echo "notebook check: the demo did not say where it wrote" >&2
    exit 1
}

echo "notebook check: executing notebooks/deltalake-query.ipynb ..."
DELTA_ROOT="$work/demo" "$python" - "$root/notebooks" "$work/executed.ipynb" <<'PY'
import sys
import nbformat
from nbclient import NotebookClient

folder, executed = sys.argv[1], sys.argv[2]
notebook = nbformat.read(f"{folder}/deltalake-query.ipynb", as_version=4)
NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": folder}}).execute()
nbformat.write(notebook, executed)
cells = sum(1 for cell in notebook.cells if cell.cell_type == "code")
print(f"notebook check: all {cells} code cells ran")
PY
