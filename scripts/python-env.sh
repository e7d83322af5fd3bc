# Sourced: the project's Python environment, .venv, created on first use.
# Debian's Python refuses `pip install` into the system interpreter (PEP 668),
# so the Python the tests use (the deltalake reader, the notebook's packages,
# nbclient to run it headless) lives in a virtual environment of its own.
# `python_env` sets $python to its interpreter.
python_env() {
    local venv=$root/.venv
    local wanted=$root/notebooks/requirements.txt
    # The notebook run headless, the chaos suite's Kafka reader, the S3 test server.
    local test_packages="nbclient nbformat ipykernel confluent-kafka moto[server]"
    if [ ! -x "$venv/bin/python" ] && ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        # Debian keeps ensurepip in a package of its own.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "installing Debian's python3-venv..." >&2
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$venv"
        else
            echo "cannot create $venv: install python3-venv (apt-get install python3-venv)" >&2
            return 1
        fi
    fi
    if ! { cat "$wanted"; echo "$test_packages"; } | cmp -s - "$venv/.installed-requirements"; then
        echo "installing the Python packages into $venv (notebooks/requirements.txt and the tests')..." >&2
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$wanted" $test_packages
        { cat "$wanted"; echo "$test_packages"; } >"$venv/.installed-requirements"
    fi
    python=$venv/bin/python
}
