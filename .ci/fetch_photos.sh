#!/usr/bin/env bash
# Real photos + ImageNet class names for the pipeline test (tests/test_photos.py), from two Debian packages:
# downloaded and unpacked into $ADAPERCEIVER_PHOTOS (default /tmp/adaperceiver-photos), never installed.
# Leaves nothing behind but the 8 photos and the class-name file; exits 0 (with a note) without apt-get.
set -euo pipefail
dest="${ADAPERCEIVER_PHOTOS:-/tmp/adaperceiver-photos}"
want=(eagle.jpg dog.jpg giraffe.jpg baboon.jpg orange.jpg apple.jpg butterfly.jpg squirrel_cls.jpg
      classification_classes_ILSVRC2012.txt)
missing=0
for f in "${want[@]}"; do [ -f "$dest/$f" ] || missing=1; done
[ "$missing" = 0 ] && { echo "photos present in $dest"; exit 0; }
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "note: apt-get/dpkg-deb unavailable; the photo test will skip"; exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download opencv-doc darknet >/dev/null 2>&1; then
  (apt-get update -qq >/dev/null 2>&1 && apt-get download opencv-doc darknet >/dev/null 2>&1) \
    || { echo "note: could not download opencv-doc/darknet; the photo test will skip"; exit 0; }
fi
dpkg-deb --fsys-tarfile opencv-doc_*.deb | tar -xf - ./usr/share/doc/opencv-doc/examples/data
dpkg-deb -x darknet_*.deb darknet
mkdir -p "$dest"
data=usr/share/doc/opencv-doc/examples/data
for f in baboon.jpg orange.jpg apple.jpg butterfly.jpg squirrel_cls.jpg; do
  src="$(find "$data" -name "$f" -print -quit)"; [ -n "$src" ] && cp "$src" "$dest/"
done
src="$(find "$data" -name classification_classes_ILSVRC2012.txt -print -quit)"; [ -n "$src" ] && cp "$src" "$dest/"
for f in eagle.jpg dog.jpg giraffe.jpg; do
  src="$(find darknet -path '*/data/*' -name "$f" -print -quit)"; [ -n "$src" ] && cp "$src" "$dest/"
done
ls "$dest"
