#!/usr/bin/env bash
# Installs FashionMNIST (Debian package dataset-fashion-mnist) when it is missing.
# Never fails the build: without the data, `mvq demo` falls back to the procedural shapes set.
set -u
dir=/usr/share/datasets/fashion-mnist
if [ -n "${MVQ_FASHION_MNIST:-}" ] && [ -d "$MVQ_FASHION_MNIST" ]; then
  echo "data: FashionMNIST from MVQ_FASHION_MNIST=$MVQ_FASHION_MNIST"; exit 0
fi
if ls "$dir"/train-images-idx3-ubyte* >/dev/null 2>&1; then
  echo "data: FashionMNIST found in $dir"; exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "data: installing dataset-fashion-mnist with apt-get ..."
  if (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }); then
    echo "data: FashionMNIST installed in $dir"; exit 0
  fi
  echo "data: WARNING: apt-get could not install dataset-fashion-mnist."
else
  echo "data: WARNING: FashionMNIST is not in $dir and this is not a root shell with apt-get."
fi
echo "data: install it with 'sudo apt-get install dataset-fashion-mnist', or point MVQ_FASHION_MNIST"
echo "data: at a folder holding the four idx files. Until then mvq uses its procedural shapes set."
exit 0
