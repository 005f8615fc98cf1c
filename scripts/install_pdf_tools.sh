#!/usr/bin/env bash
# What `make pdf` and the book screenshots need beyond the venv: Debian's Chromium and poppler-utils (pdftoppm,
# to look at the pages), and a local MathJax 3 (offline machines cannot reach its CDN) in _build/mathjax.
set -euo pipefail
cd "$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")"
if ! command -v chromium >/dev/null || ! command -v pdftoppm >/dev/null; then
    sudo=""; [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get install -y -q chromium poppler-utils
fi
if [[ ! -f _build/mathjax/node_modules/mathjax/es5/tex-mml-chtml.js ]]; then
    mkdir -p _build/mathjax
    npm install --silent --no-audit --no-fund --prefix _build/mathjax mathjax@3
fi
