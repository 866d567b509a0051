#!/usr/bin/env bash
# Installs Fashion-MNIST from Debian's package `dataset-fashion-mnist` when apt is available.
# Files land in /usr/share/datasets/fashion-mnist/. Elsewhere, pass --data-dir to prunekit.
set -u
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then exit 0; fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)..."
  (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) >/dev/null 2>&1 || true
fi
if [ ! -f "$dir/train-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu)," >&2
  echo "or put the four IDX files in a folder and pass --data-dir FOLDER. Tests that need it are skipped." >&2
fi
exit 0
