#!/bin/sh
# Runs the integration suite (pytest) against the built binary in $BLOBFS.
# Extra arguments go to pytest, e.g. PYTEST_ARGS='-k pull'.
: "${PYTHON3:=/usr/bin/python3}"
: "${top_srcdir:=$(cd "$(dirname "$0")/../.." && pwd)}"
if ! "$PYTHON3" -c 'import pytest' 2>/dev/null; then
	echo "SKIP: '$PYTHON3' has no pytest; install the Debian package 'python3-pytest'"
	exit 77
fi
export PYTHONDONTWRITEBYTECODE=1
exec "$PYTHON3" -m pytest -p no:cacheprovider -q -rs $PYTEST_ARGS "$top_srcdir/tests"
