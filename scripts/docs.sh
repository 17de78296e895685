#!/usr/bin/env bash
# The documentation site (mkdocs.yml, docs/): `bash scripts/docs.sh` serves it at
# http://127.0.0.1:8000, reloading on edits; `bash scripts/docs.sh build` builds it into site/
# with warnings as errors, as tests/test_docs.py does. Other arguments go to mkdocs. Needs the
# setup (scripts/setup.sh installs the docs extra).
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_MKDOCS_2_WARNING=1  # Material's banner about MkDocs 2, printed at every build
case "${1:-serve}" in
  build) shift; exec .venv/bin/mkdocs build --strict "$@" ;;
  serve) shift || true; exec .venv/bin/mkdocs serve "$@" ;;
  *) exec .venv/bin/mkdocs serve "$@" ;;
esac
