#!/usr/bin/env bash
# Build the documentation site (docs/ -> site/, MkDocs Material) with --strict: a broken link or anchor, a missing
# page or a page left out of the nav fails the build. The CLI and config references are generated from the code
# while it builds (docs/hooks/reference.py). Extra arguments go to `mkdocs build` (e.g. -d /tmp/site).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A .venv set up before the docs extra existed gets it here.
.venv/bin/python -c "import mkdocs, material" 2>/dev/null || .venv/bin/python -m pip install -q -e ".[docs]"
export NO_MKDOCS_2_WARNING=1
exec .venv/bin/python -m mkdocs build --strict "$@"
