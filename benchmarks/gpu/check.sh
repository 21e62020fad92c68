#!/usr/bin/env bash
# The one script to run on a GPU machine: build phi_engine with its CUDA module from source, run
# the GPU tests against the numpy reference, then time each kernel against the ceilings measured
# on the same device (benchmarks/gpu/bench_cuda.py) and print a short table. A few minutes.
#
#   benchmarks/gpu/check.sh [--dry-run] [--part all|tests|bench]
#
# --dry-run: on a machine without a GPU, build and run everything that can run (the GPU tests
# skip, the benchmark is left out), to check the script itself.
# --part: "tests" builds and runs the tests only; "bench" reuses that build (PHI_SITE) and runs
# the benchmarks only. A lent GPU machine allows 10 minutes per command, so run the two parts as
# two calls on the same warm machine when the whole would not fit.
#
# Environment:
#   PYTHON      interpreter to build and test with (default python3; it needs numpy, pytest,
#               scikit-build-core, pybind11, cmake, ninja and scipy-openblas32)
#   PHI_WHEELS  folder of wheels installed first (default .whl in the repository): a machine with
#               no network needs the wheels its image lacks carried there (on the lent GPU
#               machines: scipy-openblas32, cryptography, cffi, pycparser, pyjwt), e.g. made with
#                 echo /.whl/ >> .git/info/exclude
#                 python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                   --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#                   scipy-openblas32 cryptography cffi pycparser pyjwt
#   CUDAARCHS   architectures to build for (default: the GPU's compute capability, e.g. 90)
#   OUT         where logs and results go (default build/gpu-check): build.log, pytest_gpu.log,
#               pytest_triton.log, pytest_xla.log, bench_cuda.md, bench_cuda.json, bench_triton.md,
#               bench_minilm.md
#
# Nothing is installed into PYTHON's environment: the build goes to a --target folder
# (PHI_SITE, default /tmp/phi-gpu-site) that PYTHONPATH puts first.
#
# Exit status: 0 everything passed; 1 a test or a benchmark check failed; 2 the setup or build
# failed; 3 no GPU.
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 2
ROOT=$(pwd)
DRY_RUN=0
PART=all
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --part)
      PART=${2:-}
      shift
      ;;
    *)
      echo "check.sh: unknown argument $1 (use --dry-run, --part all|tests|bench)" >&2
      exit 2
      ;;
  esac
  shift
done
[[ $PART == all || $PART == tests || $PART == bench ]] || {
  echo "check.sh: --part must be all, tests or bench" >&2
  exit 2
}
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-$ROOT/build/gpu-check}
SITE=${PHI_SITE:-/tmp/phi-gpu-site}
BUILD_DIR=${PHI_BUILD_DIR:-/tmp/phi-gpu-build}
WHEELS=${PHI_WHEELS:-$ROOT/.whl}
mkdir -p "$OUT_DIR" "$SITE"
rm -f "$OUT_DIR"/build.log "$OUT_DIR"/pytest_*.log "$OUT_DIR"/bench_cuda.md "$OUT_DIR"/bench_cuda.json \
  "$OUT_DIR"/bench_triton.md "$OUT_DIR"/bench_minilm.md
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

step() { printf '\n== %s\n' "$*"; }
die() {
  echo "check.sh: $2" >&2
  exit "$1"
}

step "machine"
if nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d ' .')
  export CUDAARCHS=${CUDAARCHS:-$cap}
elif [[ $DRY_RUN == 1 ]]; then
  echo "no GPU (dry run): building for sm_80 and sm_90"
  export CUDAARCHS=${CUDAARCHS:-80;90}
else
  die 3 "no GPU visible (nvidia-smi failed); use --dry-run to check the script without one"
fi
command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || die 2 "no nvcc on this machine"
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
nvcc --version | tail -n1
"$PY" --version

step "python packages"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl ||
    die 2 "could not install the wheels in $WHEELS"
  echo "installed: $(cd "$WHEELS" && ls ./*.whl | xargs -n1 basename | tr '\n' ' ')"
fi
"$PY" - <<'EOF' || die 2 "a build or test requirement is missing (see above; carry its wheel in PHI_WHEELS)"
import importlib, importlib.metadata as md, shutil, sys
missing = []
for module, dist in [("numpy", "numpy"), ("pytest", "pytest"), ("scikit_build_core", "scikit-build-core"),
                     ("pybind11", "pybind11"), ("scipy_openblas32", "scipy-openblas32")]:
    try:
        importlib.import_module(module)
        print(f"  {dist} {md.version(dist)}")
    except Exception as exc:
        missing.append(dist)
        print(f"  {dist}: MISSING ({exc})")
for tool in ("cmake", "ninja"):
    print(f"  {tool}: {shutil.which(tool) or 'not on PATH (the Python package may provide it)'}")
sys.exit(1 if missing else 0)
EOF

if [[ $PART == bench && -d "$SITE/phi_engine" ]]; then
  step "build: reusing $SITE (--part bench)"
else
  step "build (PHI_ENGINE_CUDA=ON, CUDAARCHS=$CUDAARCHS)"
  rm -rf "$SITE/phi_engine" "$SITE"/phi_engine-*.dist-info
  PHI_ENGINE_CUDA=ON timeout 1200 "$PY" -m pip install -v --no-index --no-deps --no-build-isolation \
    --target "$SITE" --upgrade -Cbuild-dir="$BUILD_DIR" "$ROOT" >"$OUT_DIR/build.log" 2>&1
  build_rc=$?
  grep -E "phi_engine:|CMake (Error|Warning)|error:" "$OUT_DIR/build.log" | head -n 40
  [[ $build_rc == 0 ]] || {
    tail -n 40 "$OUT_DIR/build.log"
    die 2 "the build failed (full log: $OUT_DIR/build.log)"
  }
fi
"$PY" - <<'EOF' || die 2 "the CUDA module does not load"
from phi_engine import _native
cu = _native.cuda
if cu is None:
    import phi_engine._core_cuda  # raises the loader's reason
print(f"{cu.__file__}: sm {cu.architectures}, cuBLAS {cu.has_cublas}, runtime {cu.runtime_version()}, "
      f"driver {cu.driver_version()}, devices {cu.device_list() or cu.device_status()}")
EOF

test_rc=0 triton_rc=0 xla_rc=0
tests_summary="not run" triton_summary="not run" xla_summary="not run"
if [[ $PART != bench ]]; then
step "GPU tests (pytest tests/gpu -m gpu)"
if [[ $DRY_RUN == 1 ]]; then require=0; else require=1; fi
PHI_ENGINE_REQUIRE_GPU=$require timeout 900 "$PY" -m pytest tests/gpu -m gpu -q -rs -p no:cacheprovider \
  >"$OUT_DIR/pytest_gpu.log" 2>&1
test_rc=$?
grep -E "^(FAILED|ERROR)" "$OUT_DIR/pytest_gpu.log" | head -n 30
tests_summary=$(tail -n 1 "$OUT_DIR/pytest_gpu.log")
echo "$tests_summary"

step "Triton kernels (pytest tests/triton_kernels; compiled on the GPU, interpreted in a dry run)"
if [[ $DRY_RUN == 1 ]]; then triton_device=cpu; else triton_device=cuda; fi
PHI_ENGINE_TRITON_DEVICE=$triton_device timeout 600 "$PY" -m pytest tests/triton_kernels -q -rs \
  -p no:cacheprovider >"$OUT_DIR/pytest_triton.log" 2>&1
triton_rc=$?
grep -E "^(FAILED|ERROR)" "$OUT_DIR/pytest_triton.log" | head -n 20
triton_summary=$(tail -n 1 "$OUT_DIR/pytest_triton.log")
echo "$triton_summary"

step "XLA backend (pytest tests/native/test_xla_backend.py; JAX picks the GPU where it sees one)"
timeout 600 "$PY" -m pytest tests/native/test_xla_backend.py -q -rs -p no:cacheprovider \
  >"$OUT_DIR/pytest_xla.log" 2>&1
xla_rc=$?
grep -E "^(FAILED|ERROR)" "$OUT_DIR/pytest_xla.log" | head -n 20
xla_summary=$(tail -n 1 "$OUT_DIR/pytest_xla.log")
echo "$xla_summary"
fi

bench_rc=0
if [[ $DRY_RUN == 1 || $PART == tests ]]; then
  step "benchmarks: left out (dry run or --part tests)"
else
  step "benchmark (bench_minilm.py: the CUDA backend against PyTorch eager)"
  timeout 600 "$PY" benchmarks/gpu/bench_minilm.py --out "$OUT_DIR" >"$OUT_DIR/bench_minilm.log" 2>&1
  [[ $? == 0 ]] || { bench_rc=1; tail -n 20 "$OUT_DIR/bench_minilm.log"; }
  step "benchmark (bench_cuda.py)"
  timeout 900 "$PY" benchmarks/gpu/bench_cuda.py --out "$OUT_DIR" 2>&1 | grep -v '^|'
  [[ ${PIPESTATUS[0]} == 0 ]] || bench_rc=1
  step "benchmark (bench_triton.py)"
  timeout 600 "$PY" benchmarks/gpu/bench_triton.py --sweep rows --out "$OUT_DIR" >/dev/null 2>"$OUT_DIR/bench_triton.err"
  [[ $? == 0 ]] || { bench_rc=1; tail -n 20 "$OUT_DIR/bench_triton.err"; }
fi

step "summary"
echo "tests: $tests_summary (exit $test_rc)"
echo "triton: $triton_summary (exit $triton_rc)"
echo "xla: $xla_summary (exit $xla_rc)"
[[ -f "$OUT_DIR/bench_cuda.md" && $DRY_RUN == 0 ]] && cat "$OUT_DIR/bench_cuda.md"
[[ -f "$OUT_DIR/bench_triton.md" && $DRY_RUN == 0 ]] && cat "$OUT_DIR/bench_triton.md"
[[ -f "$OUT_DIR/bench_minilm.md" && $DRY_RUN == 0 ]] && cat "$OUT_DIR/bench_minilm.md"
echo "logs and results: $OUT_DIR"
if [[ $test_rc != 0 || $triton_rc != 0 || $xla_rc != 0 || $bench_rc != 0 ]]; then
  echo "check.sh: FAILED (tests exit $test_rc, triton $triton_rc, xla $xla_rc, benchmark exit $bench_rc)"
  exit 1
fi
echo "check.sh: OK"
