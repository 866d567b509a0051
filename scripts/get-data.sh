#!/usr/bin/env bash
# Installs the real data sets from Debian packages when apt is available (as root):
#   Fashion-MNIST  <- dataset-fashion-mnist  (/usr/share/datasets/fashion-mnist/)
#   text:python-docs <- python3.11-doc       (/usr/share/doc/python3.11/html/_sources/, the documentation's text)
# Elsewhere, pass --data-dir to prunekit. Tests that need a missing data set are skipped.
set -u
fashion=/usr/share/datasets/fashion-mnist
docs=/usr/share/doc/python3.11/html/_sources
need=()
[ -f "$fashion/train-images-idx3-ubyte.gz" ] || need+=(dataset-fashion-mnist)
[ -d "$docs" ] || need+=(python3.11-doc)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "Installing ${need[*]} (Debian packages)..."
  (apt-get update -q && apt-get install -y -q "${need[@]}") >/dev/null 2>&1 || true
fi
if [ ! -f "$fashion/train-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu)," >&2
  echo "or put the four IDX files in a folder and pass --data-dir FOLDER. Tests that need it are skipped." >&2
fi
if [ ! -d "$docs" ]; then
  echo "The Python documentation (text:python-docs) is not installed: run 'sudo apt-get install python3.11-doc'," >&2
  echo "or pass a folder of .txt documents as text:/path/to/folder. Tests that need it are skipped." >&2
fi
exit 0
