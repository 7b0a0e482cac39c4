#!/usr/bin/env bash
# Install the Debian packages medflow needs for `make run` / `make test` (as root), or say what
# is missing (as non-root). Usage: scripts/system-deps.sh run|test|venv
set -euo pipefail
what=${1:-run}
pkgs=()
case "$what" in
  venv) pkgs=(python3-venv) ;;
  run)  pkgs=(libturbojpeg0) ;;         # opentile (whole-slide conversion) loads libjpeg-turbo
  test) pkgs=(libturbojpeg0 dcmtk orthanc dicom3tools chromium) ;;  # DIMSE peers (dcmtk, Orthanc); dciodvfy checks generated DICOM; headless Chromium for the web UI tests
  *) echo "usage: $0 run|test|venv" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
if [[ $(id -u) -eq 0 ]]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "missing Debian packages: ${missing[*]} — install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
