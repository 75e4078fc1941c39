#!/usr/bin/env bash
# Install the GPU-node kit that `make gpu-kit` wrote, with no package index (on the node, from the repo root).
#   usage: scripts/install-kit.sh KIT_DIR [TARGET]        (TARGET default: KIT_DIR/site)
#   then:  eval "$(scripts/install-kit.sh KIT_DIR)"        sets PYTHONPATH and PATH in this shell
# First checks every part named in KIT_DIR/manifest.json against its sha256: a missing or corrupt part is
# one line on stderr and exit code 2, before anything is unpacked. Then unpacks the parts into TARGET
# (replacing another kit installed there before, keeping the same one; a non-empty folder that holds no
# kit is refused), checks that this Python is the kit's and has what the kit assumes of the node's image
# (warning lines), and prints on stdout the one line to run:
#   export PYTHONPATH="TARGET:REPO" PATH="TARGET/bin:$PATH"
# The console scripts there (ray, mlflow, ...) start `/usr/bin/env python3`: the first python3 on PATH.
# Environment: PYTHON=python3, the interpreter the kit is for (a different X.Y is refused, exit 2).
set -euo pipefail
say() { echo "install-kit: $*" >&2; }
fail() { say "$*"; exit 2; }

[ $# -ge 1 ] && [ $# -le 2 ] || fail "usage: scripts/install-kit.sh KIT_DIR [TARGET]"
kit=$(cd "$1" 2>/dev/null && pwd) || fail "no kit folder $1"
target=${2:-$kit/site}
python=${PYTHON:-python3}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
manifest=$kit/manifest.json
[ -f "$manifest" ] || fail "no manifest.json in $kit: not a kit folder (make gpu-kit writes one)"
command -v "$python" >/dev/null || fail "no $python here: set PYTHON=/path/to/python3"

# The kit's Python, then "sha256 file" per part; every part's checksum is checked before anything is unpacked.
listing=$("$python" -c '
import json, sys
m = json.load(open(sys.argv[1]))
print(m["target"]["python"])
for p in m["parts"]:
    print(p["sha256"], p["file"])
' "$manifest" 2>/dev/null) || fail "cannot read $manifest: not a kit's manifest"
mapfile -t lines <<< "$listing"
want_python=${lines[0]}
parts=("${lines[@]:1}")
[ ${#parts[@]} -gt 0 ] || fail "$manifest lists no parts"
for line in "${parts[@]}"; do
  sum=${line%% *}
  file=${line#* }
  [ -f "$kit/$file" ] || fail "missing part $file (the manifest lists ${#parts[@]} parts: copy every one into $kit)"
  got=$(sha256sum "$kit/$file" | cut -d' ' -f1)
  [ "$got" = "$sum" ] || fail "corrupt part $file: sha256 $got, the manifest says $sum (copy it again)"
done

have_python=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have_python" = "$want_python" ] \
  || fail "the kit is for Python $want_python and $python is $have_python (set PYTHON=, or build KIT_PYTHON=$have_python)"

if [ -f "$target/.kit-manifest.json" ] && cmp -s "$manifest" "$target/.kit-manifest.json"; then
  target=$(cd "$target" && pwd)
  say "this kit is already installed in $target"
else
  if [ -e "$target" ] && [ -n "$(ls -A "$target" 2>/dev/null)" ]; then
    [ -f "$target/.kit-manifest.json" ] || [ -f "$target/.kit-incomplete" ] \
      || fail "$target is not empty and holds no kit: give an empty or new folder"
    rm -rf "$target"  # another kit, or one whose unpacking was cut short
  fi
  mkdir -p "$target"
  target=$(cd "$target" && pwd)
  touch "$target/.kit-incomplete"
  for line in "${parts[@]}"; do
    file=${line#* }
    if command -v xz >/dev/null; then
      tar -xJf "$kit/$file" -C "$target"
    else
      "$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$kit/$file" "$target"
    fi
  done
  cp "$manifest" "$target/.kit-manifest.json"
  rm -f "$target/.kit-incomplete"
  say "installed ${#parts[@]} part(s) into $target ($(du -sh "$target" | cut -f1))"
fi
PYTHONPATH="$target" "$python" "$repo/scripts/gpu_kit.py" check-base "$manifest" || true
echo "export PYTHONPATH=\"$target:$repo\" PATH=\"$target/bin:\$PATH\""
