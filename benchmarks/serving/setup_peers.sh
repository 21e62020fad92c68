#!/usr/bin/env bash
# Creates one virtual environment per peer server for benchmarks/bench_serving.py.
#
#   benchmarks/serving/setup_peers.sh [VENV_ROOT]      (default: build/bench-venvs, git-ignored)
#
# Peers: litserve, ray[serve], bentoml, fastapi+uvicorn (the plain-numpy and constant-endpoint
# servers). Each venv also gets numpy. torch must never be installed: a constraint pins it to a
# version that does not exist, so a peer that needs torch fails to install (and is reported)
# instead of pulling it in. Re-running skips venvs that already import their peer.
#
# Also "phi-std": uvloop + httptools (what uvicorn[standard] adds) layered over phi_engine's own
# venv (PHI_VENV, default: the environment of $PYTHON; its site-packages are added by a .pth, nothing is
# installed into it), so phi_engine can also be measured on the HTTP stack the peers get.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ROOT="${1:-$REPO/build/bench-venvs}"
PY="${PYTHON:-python3}"
mkdir -p "$ROOT"
NO_TORCH="$ROOT/no-torch.txt"
printf 'torch==0.0.0.dev0\n' > "$NO_TORCH"

declare -A PKGS=(
  [fastapi]="fastapi uvicorn[standard] numpy"
  [litserve]="litserve numpy"
  [ray]="ray[serve] numpy"
  [bentoml]="bentoml numpy"
)
declare -A IMPORT=(
  [fastapi]="fastapi, uvicorn"
  [litserve]="litserve"
  [ray]="ray, ray.serve"
  [bentoml]="bentoml"
)

status=0
for name in fastapi litserve ray bentoml; do
  venv="$ROOT/$name"
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import ${IMPORT[$name]}, numpy" 2>/dev/null; then
    echo "[setup] $name: ready ($venv)"
    continue
  fi
  echo "[setup] $name: creating $venv"
  "$PY" -m venv "$venv" || { status=1; continue; }
  "$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1
  if ! "$venv/bin/pip" install -q -c "$NO_TORCH" ${PKGS[$name]} 2>&1 | grep -v 'is ignored: it is neither'; test "${PIPESTATUS[0]}" -eq 0; then
    echo "[setup] $name: INSTALL FAILED" >&2
    status=1
    continue
  fi
  if "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "[setup] $name: torch got installed; refusing this peer" >&2
    status=1
    continue
  fi
  "$venv/bin/python" -c "import ${IMPORT[$name]}, numpy" || { status=1; continue; }
  echo "[setup] $name: ok ($("$venv/bin/pip" freeze | grep -i -E "^(${name}|ray|litserve|bentoml|fastapi|uvicorn|numpy)==" | tr '\n' ' '))"
done
# phi-std: uvloop + httptools over phi_engine's venv.
PHI_VENV="${PHI_VENV:-$("$PY" -c 'import sys; print(sys.prefix)')}"
venv="$ROOT/phi-std"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import uvloop, httptools, phi_engine" 2>/dev/null; then
  echo "[setup] phi-std: ready ($venv)"
else
  echo "[setup] phi-std: creating $venv over $PHI_VENV"
  sys_site="$(grep -q "include-system-site-packages = true" "$PHI_VENV/pyvenv.cfg" && echo --system-site-packages)"
  "$PHI_VENV/bin/python" -m venv --without-pip $sys_site "$venv"
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  base="$("$PHI_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$PHI_VENV/bin/python" -m pip install -q --target "$site" uvloop httptools 2>&1 | grep -v 'is ignored: it is neither'
  echo "import site; site.addsitedir('$base')" > "$site/zz_phi_venv.pth"
  if "$venv/bin/python" -c "import uvloop, httptools, phi_engine, fastapi, onnx"; then
    echo "[setup] phi-std: ok (uvloop $("$venv/bin/python" -c 'import uvloop; print(uvloop.__version__)'), httptools over $PHI_VENV)"
  else
    echo "[setup] phi-std: FAILED" >&2; status=1
  fi
fi
exit $status
