#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ API headers from Debian trixie's libonnxruntime-dev, under an
# isolated apt configuration (own sources file, lists and cache), reusing the mirror URI this
# machine's apt already uses. Nothing is installed system-wide; no mirror host is hard-coded.
#   fetch_ort_headers.sh DEST WORKDIR   ->  DEST/usr/include/onnxruntime/*.h
set -euo pipefail
DEST=${1:?destination folder}
WORK=${2:?work folder}
SRC=/etc/apt/sources.list.d/debian.sources
[ -r "$SRC" ] || { echo "no $SRC: set ORT_INCLUDE_DIR to ONNX Runtime's include folder" >&2; exit 1; }
URI=$(awk '/^URIs:/{for(i=2;i<=NF;i++) if($i !~ /security/){print $i; exit}}' "$SRC")
KEYRING=$(awk '/^Signed-By:/{print $2; exit}' "$SRC")
[ -n "$URI" ] || { echo "no mirror URI in $SRC: set ORT_INCLUDE_DIR" >&2; exit 1; }
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/etc"
{
  echo "Types: deb"; echo "URIs: $URI"; echo "Suites: trixie"; echo "Components: main"
  [ -n "$KEYRING" ] && echo "Signed-By: $KEYRING"
} > "$WORK/etc/trixie.sources"
OPTS=(-o Dir::Etc::SourceList="$WORK/etc/trixie.sources" -o Dir::Etc::SourceParts=-
      -o Dir::State::Lists="$WORK/lists" -o Dir::Cache="$WORK/cache"
      -o Dir::State::status=/dev/null -o APT::Get::List-Cleanup=0)
apt-get "${OPTS[@]}" -qq update
(cd "$WORK" && apt-get "${OPTS[@]}" -qq download libonnxruntime-dev)
DEB=$(ls "$WORK"/libonnxruntime-dev_*.deb | head -1)
mkdir -p "$DEST"
dpkg-deb -x "$DEB" "$DEST"
echo "$DEB"
