#!/bin/sh
# Rebuilds wheelhouse/greeting-1.0-py3-none-any.whl from vendor/greeting (needs
# network to PyPI for setuptools, once; the tests themselves never build it).
# The wheel is committed; run this only when vendor/greeting changes.
set -eu
cd "$(dirname "$0")/.."
SOURCE_DATE_EPOCH=315532801 python3 -m pip wheel --no-deps --wheel-dir wheelhouse vendor/greeting
rm -rf vendor/greeting/build vendor/greeting/*.egg-info
