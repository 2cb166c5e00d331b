#!/usr/bin/env bash
# Download, HERE (where pip reaches the package index), the wheels that the GPU machine's image
# lacks, for bench/gpu_check.sh to install there (no registry on that machine). They land in
# .whl/ at the repository root (ignored through .git/info/exclude; never committed) and travel
# with the device `run` call's `carry: [".whl"]`.
#
#   bash bench/gpu_wheels.sh            # downloads, lists, checks, prints the total size
#
# The list: pyproject.toml's dependencies and its `test` extra, with their requirements,
# minus what /work/.library/device/KINDS.md lists as installed on the 'nvidia-h200' image
# (torch, torchvision, numpy, tensorboard, scikit-learn, nvidia-ml-py, psutil, timm, pytest,
# pytest-timeout, jinja2, pyyaml, tqdm, packaging, python-dateutil, urllib3, markupsafe, mdurl,
# ...). A few that the image has are carried anyway, at the versions this project's suite
# passes with, because the image's versions are unknown and the carried packages need
# recent ones: typing-extensions (pydantic needs >= 4.14.1), rich (textual >= 14.2),
# pygments (textual >= 2.19.2), markdown-it-py (mdit-py-plugins >= 3), pytest (pytest-asyncio
# needs >= 8.4, syrupy < 9).
# The versions are what pip's resolver picks from this index for those requirements (run
# without --no-deps into a scratch folder, then pinned here).
# Left out on purpose (the GPU check runs no S3/moto or PostgreSQL test): moto[server] and its
# requirements, psycopg2-binary. greenlet is only SQLAlchemy's asyncio extra: not needed.
#
#   bash bench/gpu_wheels.sh --venv     # also: a throwaway Python 3.12 venv with exactly these
#                                       # wheels (--no-deps) plus the image's pure-Python packages
#                                       # they need, then `pip check` and the cockpit's imports
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=0
[ "${1:-}" = --venv ] && VENV=1

WHEELS=(
  # the cockpit: textual and its requirements the image lacks
  textual==8.2.8 textual-plotext==1.0.1 plotext==5.3.2
  platformdirs==4.14.9 mdit-py-plugins==0.7.0 linkify-it-py==2.2.0
  rich==15.0.0 pygments==2.21.0 markdown-it-py==4.3.0 typing-extensions==4.16.0
  # the config schema
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 tomli-w==1.2.0
  # events decoding, sweeps
  orjson==3.13.0
  optuna==5.0.0 alembic==1.20.1 sqlalchemy==2.1.9 mako==1.4.3 colorlog==6.12.0
  # S3 mirroring (imported only when a run mirrors; carried so that every import path works)
  boto3==1.44.8 botocore==1.44.8 s3transfer==0.19.3 jmespath==1.1.0
  # quantization: torchao 0.18 is the release for torch 2.11 (engine/quantize/support.py)
  torchao==0.18.0
  # the test extra
  pytest==8.4.2 pytest-asyncio==1.5.0 pytest-textual-snapshot==1.1.0 syrupy==4.8.0
)

grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >> .git/info/exclude; }
mkdir -p .whl

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  PLATFORMS+=(--platform "$p")
done

python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"

# Exactly one wheel per name, and nothing left over from an earlier list
python3 - "${WHEELS[@]}" <<'EOF'
import re, sys, zipfile
from pathlib import Path

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

wanted = {norm(w.split("==")[0]): w.split("==")[1] for w in sys.argv[1:]}
seen = {}
for whl in sorted(Path(".whl").glob("*.whl")):
    name, version = whl.name.split("-")[:2]
    name = norm(name)
    if name not in wanted or wanted[name] != version:
        print(f"removing {whl.name}: not in the list (an earlier download)")
        whl.unlink()
        continue
    if name in seen:
        sys.exit(f"two wheels for {name}: {seen[name]} and {whl.name}")
    seen[name] = whl.name
missing = sorted(set(wanted) - set(seen))
if missing:
    sys.exit(f"not downloaded: {missing}")
EOF

# Every wheel's requirements (for Python 3.12 on Linux, no extras) must be met by another
# wheel here or by a package the image has (KINDS.md's list, versions unknown there).
python3 - <<'EOF'
import re, sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement
from packaging.version import Version

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

IMAGE = set()
kinds = Path("/work/.library/device/KINDS.md")
if kinds.exists():
    text = kinds.read_text()
    m = re.search(r"Packages: (.*?)\.\s*$", text, re.S | re.M)
    if m:
        IMAGE = {norm(p.strip()) for p in m.group(1).split(",") if p.strip()}
if not IMAGE:
    print("warning: KINDS.md's package list not found; checking against the wheels alone")
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
wheels = {}
for whl in Path(".whl").glob("*.whl"):
    name, version = whl.name.split("-")[:2]
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = [line.split(":", 1)[1].strip() for line in z.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    wheels[norm(name)] = (Version(version), reqs)
bad = 0
for name, (version, reqs) in sorted(wheels.items()):
    for text in reqs:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate(env):
            continue
        dep = norm(req.name)
        if dep in wheels:
            ok = req.specifier.contains(wheels[dep][0], prereleases=True)
            where = f"wheel {wheels[dep][0]}"
        elif dep in IMAGE:
            ok, where = True, "image (version unchecked here)"
        else:
            ok, where = False, "MISSING"
        if not ok:
            bad += 1
            print(f"  UNMET {name}: {text} -> {where}")
print(f"requirements checked: {len(wheels)} wheels, {bad} unmet")
sys.exit(1 if bad else 0)
EOF

echo "wheels in .whl/:"
ls -l .whl | awk 'NR>1 {printf "  %9d  %s\n", $5, $9}'
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | awk 'END {print $1}')
echo "total: $(ls .whl/*.whl | wc -l) wheels, $total bytes ($((total / 1048576)) MiB); tracked tree $tree bytes;" \
     "with the wheels $(((total + tree) / 1048576)) MiB of the 64 MiB a call may carry"
if [ "$total" -gt $((45 * 1048576)) ]; then
  echo "too big: over 45 MiB of wheels" >&2
  exit 1
fi

if [ "$VENV" = 1 ]; then
  PY312=""
  for cand in python3.12 $(command -v pyenv > /dev/null && pyenv versions --bare 2>/dev/null | grep '^3\.12' |
                           while read -r v; do PYENV_VERSION=$v pyenv which python3.12 2>/dev/null; done); do
    if "$cand" --version > /dev/null 2>&1; then PY312=$cand; break; fi
  done
  if [ -z "$PY312" ]; then
    echo "--venv: no working python3.12 here; the Requires-Dist check above is what there is" >&2
    exit 0
  fi
  V=$(mktemp -d /tmp/gpu-wheels-venv.XXXXXX)
  "$PY312" -m venv "$V"
  "$V/bin/pip" install -q --disable-pip-version-check --no-index --no-deps .whl/*.whl
  # what the image provides (KINDS.md) and these wheels need, from the index (versions may differ there)
  "$V/bin/pip" install -q --disable-pip-version-check jinja2 markupsafe mdurl numpy packaging pluggy iniconfig \
    "python-dateutil<3" six pyyaml tqdm urllib3 psutil nvidia-ml-py pytest-timeout 2>&1 | grep -v 'is ignored' || true
  "$V/bin/pip" check || echo "(pip check: a conflict with a package the index gives here is not the image's)"
  PYTHONPATH=$PWD "$V/bin/python" -c "
import engine.config.schema, contracts.events, cockpit.app, cockpit.cli
import optuna, sqlalchemy, alembic, boto3, orjson, tomli_w, textual, textual_plotext, pydantic
import pytest_asyncio, syrupy, pytest_textual_snapshot
print('venv', __import__('sys').version.split()[0] + ': the cockpit and the engine config import; textual',
      textual.__version__, 'pydantic', pydantic.VERSION)"
  (cd "$V" && PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$V/bin/python" -m pytest -p pytest_timeout -p pytest_asyncio.plugin --version)
  rm -rf "$V"
fi
