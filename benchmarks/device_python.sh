# Sourced by the device-call scripts (gpu_session.sh, gpu_train.sh) from the repository root: PY is the python to
# use (PYTHON, else python3), and PYTHONPATH holds the repository and, where that python lacks jsonargparse (the
# device machine's does), the wheels carried in .whl/, installed once into /tmp/device_python_site.
PY=${PYTHON:-python3}
if ! "$PY" -c "import jsonargparse" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/device_python_site .whl/*.whl
    export PYTHONPATH=/tmp/device_python_site:$PWD
else
    export PYTHONPATH=$PWD
fi
