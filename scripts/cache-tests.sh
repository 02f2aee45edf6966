#!/usr/bin/env bash
# Runs the HTTP cache test suite (http-tests/cache-tests, the suite behind cache-tests.fyi) against
# examples/caching_proxy.rs (CacheLayer::proxy() in front of the suite's origin server), the way
# the site tests reverse proxies, and scores the results next to the published ones of Varnish,
# nginx, Squid, ATS, httpd, Caddy, HAProxy, Fastly and browsers.
#
#   bash scripts/cache-tests.sh                          # from the repository root
#   CACHE_TESTS_RUNS=2 bash scripts/cache-tests.sh       # twice, listing the flaky tests
#   CACHE_TESTS_ID=freshness-none bash scripts/cache-tests.sh   # one test, with its exchange
#
# Environment (all optional):
#   CACHE_TESTS_DIR           the suite, read-only (default: ../shared/cache-tests beside the repo)
#   CACHE_TESTS_OUT           results file (default target/cache-tests/results.json); failures.md,
#                             table.md, summary.json and the logs go in the same directory
#   CACHE_TESTS_RUNS          how many times to run the suite (default 1); results-N.json for N > 1
#   CACHE_TESTS_MIN_REQUIRED  fail when fewer required tests pass (default 0)
#   CACHE_TESTS_MIN_OPTIMAL   fail when fewer optimal tests pass (default 0)
#   CACHE_TESTS_NPM_CACHE     a directory where the suite's node_modules are kept between runs
#   CACHE_TESTS_PROFILE       debug (default) or release build of the proxy
#   CACHE_TESTS_ID            run this one test only: prints its requests and responses, no scoring
#   BACKEND                   the proxy's backend (default memory; see examples/caching_proxy.rs)
#   TARGETED                  the proxy's targeted field (default CDN-Cache-Control, which the
#                             suite's cdn-cache-control tests exercise; empty for none)
#
# Exit status: 0 when the suite ran and the floors are met; non-zero otherwise (a build, install,
# start-up or suite failure, or a score below a floor). Everything it starts is stopped on exit.

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
suite=${CACHE_TESTS_DIR:-$repo/../shared/cache-tests}
out=${CACHE_TESTS_OUT:-$repo/target/cache-tests/results.json}
runs=${CACHE_TESTS_RUNS:-1}
min_required=${CACHE_TESTS_MIN_REQUIRED:-0}
min_optimal=${CACHE_TESTS_MIN_OPTIMAL:-0}
profile=${CACHE_TESTS_PROFILE:-debug}
test_id=${CACHE_TESTS_ID:-}
export BACKEND=${BACKEND:-memory}
export TARGETED=${TARGETED-CDN-Cache-Control}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'cache-tests: %s\n' "$*" >&2; exit 1; }

# -- Checks ---------------------------------------------------------------------------------------

[[ -f $suite/test-engine/cli.mjs && -f $suite/tests/index.mjs ]] ||
  die "no cache-tests suite at $suite (set CACHE_TESTS_DIR)"
suite=$(cd "$suite" && pwd)
command -v node >/dev/null || die "node is not installed (the suite needs Node.js 18 or later)"
command -v npm >/dev/null || die "npm is not installed"
command -v cargo >/dev/null || die "cargo is not installed"
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "CACHE_TESTS_RUNS must be a positive number, not '$runs'"
for floor in "$min_required" "$min_optimal"; do
  [[ $floor =~ ^[0-9]+$ ]] || die "CACHE_TESTS_MIN_* must be whole numbers, not '$floor'"
done
case $profile in
  debug) cargo_args=(build --example caching_proxy) ;;
  release) cargo_args=(build --release --example caching_proxy) ;;
  *) die "CACHE_TESTS_PROFILE must be debug or release, not '$profile'" ;;
esac

mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
outdir=$(dirname "$out")
logs=$outdir
rm -f "${out%.json}"-[0-9]*.json  # the other runs of a previous invocation

# -- Clean-up of everything started here ----------------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/cache-tests.XXXXXX")
origin_pid=
proxy_pid=
cli_pid=
cleanup() {
  local status=$?
  for pid in $cli_pid $proxy_pid $origin_pid; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $cli_pid $proxy_pid $origin_pid; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$SECONDS
elapsed() { echo $((SECONDS - $1))s; }

# -- 1. The suite, with its dependencies ----------------------------------------------------------

say "copying the suite from $suite"
cp -R "$suite/." "$work/"
chmod -R u+w "$work"  # the suite may be read-only
rm -rf "$work/node_modules"

step=$SECONDS
npm_install() {
  (cd "$work" && npm install --omit=dev --no-audit --no-fund --loglevel=error) >"$logs/npm.log" 2>&1 ||
    { tail -n 20 "$logs/npm.log" >&2; die "npm install failed (log: $logs/npm.log)"; }
}
if [[ -n ${CACHE_TESTS_NPM_CACHE:-} ]]; then
  # Keyed by the suite's package.json and the Node.js major version.
  key=$(node -e 'const fs = require("fs"), hash = require("crypto").createHash("sha256")
    hash.update(fs.readFileSync(process.argv[1])).update(process.versions.node.split(".")[0])
    console.log(hash.digest("hex").slice(0, 16))' "$work/package.json")
  cached=$CACHE_TESTS_NPM_CACHE/$key/node_modules
  if [[ -d $cached ]]; then
    say "node_modules from $cached"
    cp -R "$cached" "$work/node_modules"
  else
    say "npm install (kept in $CACHE_TESTS_NPM_CACHE)"
    npm_install
    mkdir -p "$CACHE_TESTS_NPM_CACHE/$key"
    tmp=$(mktemp -d "$CACHE_TESTS_NPM_CACHE/$key/.tmp.XXXXXX")
    cp -R "$work/node_modules" "$tmp/node_modules"
    [[ -d $cached ]] || mv "$tmp/node_modules" "$cached"  # unless another run was first
    rm -rf "$tmp"
  fi
else
  say "npm install"
  npm_install
fi
npm_time=$(elapsed "$step")

# -- 2. The proxy ---------------------------------------------------------------------------------

step=$SECONDS
say "cargo ${cargo_args[*]}"
(cd "$repo" && cargo "${cargo_args[@]}") ||
  die "the proxy did not build"
target_dir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
  node -e 'let s = ""; process.stdin.on("data", d => { s += d }).on("end", () => console.log(JSON.parse(s).target_directory))')
proxy_bin=$target_dir/$profile/examples/caching_proxy
[[ -x $proxy_bin ]] || die "no proxy binary at $proxy_bin"
build_time=$(elapsed "$step")

# -- 3. Origin and proxy, each on a free port (port 0: the system picks, the process prints it) ----

# Waits until the log $4 of process $2 has a line matching $3 and prints the port that the
# pattern's first group captures.
wait_listening() {
  local name=$1 pid=$2 pattern=$3 log=$4 port
  for _ in $(seq 1 300); do
    port=$(sed -nE "s#$pattern#\1#p" "$log" 2>/dev/null | head -n 1)
    if [[ -n $port ]]; then
      echo "$port"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "the $name exited before listening (log: $log)"; }
    sleep 0.1
  done
  cat "$log" >&2
  die "the $name did not start listening within 30 s (log: $log)"
}

say "starting the suite's origin server"
(cd "$work" && exec env npm_config_protocol=http npm_config_port=0 \
  npm_config_pidfile="$work/server.pid" node test-engine/server/server.mjs) >"$logs/origin.log" 2>&1 &
origin_pid=$!
origin_port=$(wait_listening "origin server" "$origin_pid" '^Listening on http://.*:([0-9]+)/$' "$logs/origin.log")

say "starting the proxy -> http://127.0.0.1:$origin_port (BACKEND=$BACKEND TARGETED=$TARGETED)"
UPSTREAM=http://127.0.0.1:$origin_port PORT=0 HOST=127.0.0.1 "$proxy_bin" >"$logs/proxy.log" 2>&1 &
proxy_pid=$!
proxy_port=$(wait_listening "proxy" "$proxy_pid" '^caching proxy listening on http://[^ ]*:([0-9]+) -> .*$' "$logs/proxy.log")
base=http://127.0.0.1:$proxy_port

# Through the proxy to the origin: its 404 for a test without a configuration.
node -e '
  fetch(process.argv[1]).then(async r => {
    const body = await r.text()
    if (r.status === 404 && body.startsWith("Config Not Found")) process.exit(0)
    console.error(`got ${r.status}: ${body.slice(0, 200)}`); process.exit(1)
  }, e => { console.error(e.cause?.message || e.message); process.exit(1) })' "$base/test/" ||
  die "the proxy at $base does not forward to the origin (logs: $logs/proxy.log, $logs/origin.log)"

# -- 4. The suite ---------------------------------------------------------------------------------

# The suite's CLI, as `npm run --silent cli --base=$base [--id=...]` runs it. It replaces the shell
# it runs in: call it in a subshell or in the background (where $! is then the node process).
cli() {
  cd "$work" && exec env npm_config_base="$base" npm_config_id="$1" npm_package_config_id="" \
    node --no-warnings test-engine/cli.mjs
}

if [[ -n $test_id ]]; then
  say "running $test_id against $base"
  (cli "$test_id")
  echo "(what the origin saw: $logs/origin.log)"
  exit 0
fi

results=()
suite_times=()
for run in $(seq 1 "$runs"); do
  file=$out
  ((run == 1)) || file=${out%.json}-$run.json
  step=$SECONDS
  say "running the suite against $base (run $run of $runs)"
  # In the background, so that a signal to this script is handled at once (bash runs traps
  # only between foreground commands).
  cli "" >"$work/results.json" 2>"$logs/cli-$run.log" &
  cli_pid=$!
  wait "$cli_pid" ||
    { tail -n 20 "$logs/cli-$run.log" >&2; die "the suite's CLI failed (log: $logs/cli-$run.log)"; }
  cli_pid=
  mv "$work/results.json" "$file"
  results+=(--ours "$file")
  suite_times+=("$(elapsed "$step")")
done

# -- 5. Scores ------------------------------------------------------------------------------------

say "scoring"
status=0
name="ours: caching_proxy (BACKEND=$BACKEND${TARGETED:+ TARGETED=$TARGETED})"
node "$repo/scripts/cache-tests-score.mjs" --suite "$work" "${results[@]}" --name "$name" \
  --note "The interim tests (interim-*) cannot pass through this proxy: hyper neither hands 1xx
    responses to the client nor lets a server send them, so the 102/103 never reach the client." \
  --failures "$outdir/failures.md" --summary "$outdir/summary.json" \
  --min-required "$min_required" --min-optimal "$min_optimal" >"$outdir/table.md" || status=$?
cat "$outdir/table.md"
echo
echo "Results: $out; failures: $outdir/failures.md; logs: $logs/{npm,origin,proxy,cli-N}.log"
echo "Times: npm install $npm_time, build ($profile) $build_time, suite ${suite_times[*]}," \
  "total $(elapsed "$started")"
exit "$status"
