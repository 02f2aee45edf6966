#!/usr/bin/env bash
# Long run of the invalidation torture test (tests/torture.rs): every backend for TORTURE_SECS
# seconds (default 60), the cache's Redis restarted every TORTURE_RESTART_SECS (default 3) for
# redis and tiered. Extra arguments go to the test binary, e.g. a test name filter.
#
#   scripts/torture.sh                   # every backend, 60 s each
#   TORTURE_SECS=20 scripts/torture.sh redis
set -euo pipefail
cd "$(dirname "$0")/.."
export TORTURE_SECS="${TORTURE_SECS:-60}"
export TORTURE_RESTART_SECS="${TORTURE_RESTART_SECS:-3}"
exec cargo test --test torture -- --nocapture --test-threads=1 "$@"
