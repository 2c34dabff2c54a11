#!/usr/bin/env bash
# The package as a user gets it (CI runs this from a fresh clone):
#   1. the sdist, built by the standard front end (`python -m build --sdist`);
#   2. a wheel built FROM THAT SDIST in a fresh venv (torch 2.13.0, no build isolation);
#   3. the wheel installed into another fresh venv, then, from a directory outside the source
#      tree, `python -m segops` and the smoke tests (tests/test_package.py and the op
#      contract suite) against the installed package;
#   4. the same wheel under a second torch: the newest release the package index offers
#      (TORCH_NEWEST, default: whatever pip resolves `torch` to with the local cap lifted).
# Work happens in $PKG_WORK (default: build/package); each stage prints its time. Each venv is
# removed once its stage is done (the newest torch is a CUDA build of about 5 GB), so only the
# sdist and the wheel are left in $PKG_WORK/dist.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
WORK=${PKG_WORK:-$ROOT/build/package}
SMOKE=${SMOKE:-"test_package.py ops/test_contract.py"}
rm -rf "$WORK" && mkdir -p "$WORK"
stage_start=$SECONDS
stage() { echo "-- $* (previous stage: $((SECONDS - stage_start)) s)"; stage_start=$SECONDS; }
quiet_pip() { "$@" 2>&1 | grep -v -E "^WARNING: Location|^$" || true; }

stage "sdist"
"$PYTHON" -m venv "$WORK/front" && quiet_pip "$WORK/front/bin/pip" install -q build
"$WORK/front/bin/python" -m build --sdist -o "$WORK/dist" "$ROOT" >"$WORK/sdist.log" 2>&1 ||
  { tail -30 "$WORK/sdist.log"; exit 1; }
sdist=$(ls "$WORK"/dist/segops-*.tar.gz)
echo "sdist: $(basename "$sdist"), $(du -k "$sdist" | cut -f1) KiB; files by extension:"
tar tzf "$sdist" | grep -v '/$' | sed -E 's#.*/##; s#^[^.]*$#(none)#; s#.*\.##' | sort |
  uniq -c | sort -rn | tr '\n' ' '
echo
tar tzf "$sdist" | grep "/LICENSE$" >/dev/null || { echo "sdist has no LICENSE"; exit 1; }

stage "wheel from the sdist (fresh venv, torch 2.13.0)"
"$PYTHON" -m venv "$WORK/build-env"
quiet_pip "$WORK/build-env/bin/pip" install -q torch==2.13.0 "setuptools>=77" wheel ninja
quiet_pip "$WORK/build-env/bin/pip" wheel -q --no-build-isolation --no-deps -w "$WORK/dist" \
  "$sdist"
wheel=$(ls "$WORK"/dist/segops-*.whl)
echo "wheel: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) KiB"
rm -rf "$WORK/build-env" "$WORK/front"  # each venv goes once used: the next ones are GBs

smoke() {  # $1: venv; runs outside the source tree against the installed segops
  local venv=$1 dir
  dir=$(mktemp -d)
  tar xzf "$sdist" -C "$dir" --strip-components=1 "$(basename "$sdist" .tar.gz)/tests"
  (cd "$dir/tests" && "$venv/bin/python" -m segops &&
     SEGOPS_EXPECT_INSTALLED=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
       -W "ignore:segops was compiled against torch:UserWarning" $SMOKE)
  rm -rf "$dir"
}

stage "install the wheel (fresh venv, torch 2.13.0) and smoke-test it"
"$PYTHON" -m venv "$WORK/user"
quiet_pip "$WORK/user/bin/pip" install -q torch==2.13.0 pytest hypothesis numpy
quiet_pip "$WORK/user/bin/pip" install -q --no-deps "$wheel"
smoke "$WORK/user"
rm -rf "$WORK/user"

stage "the same wheel under the newest torch on the index"
empty=$(mktemp -d)
touch "$empty/constraints.txt"
"$PYTHON" -m venv "$WORK/newest"
# The local find-links folder holds 2.13.0+cpu and a constraints file caps torch: lift both.
PIP_FIND_LINKS=$empty PIP_CONSTRAINT=$empty/constraints.txt \
  quiet_pip "$WORK/newest/bin/pip" install -q "torch${TORCH_NEWEST:+==$TORCH_NEWEST}" \
  pytest hypothesis numpy
quiet_pip "$WORK/newest/bin/pip" install -q --no-deps "$wheel"
smoke "$WORK/newest"
rm -rf "$WORK/newest"
stage "done"
