#!/usr/bin/env bash
# HTTP load benchmark (see BENCHMARKS.md): requests/s and p50/p99 latency with wrk for
#   - the bench server (benches/http_server.rs): a constant handler (the ceiling), one page
#     handler cached on memory and on Redis (hits), the same handler uncached (20 ms of simulated
#     work), 304 revalidations, and the handler behind CacheLayer;
#   - the example app (examples/axum_app.rs, built in release) on its own cached routes.
# Both get their own redis-server on a free port (REDIS_URL) and their own CACHE_DIR, removed at
# the end. Nothing else is touched. Only loopback addresses are loaded.
#
#   scripts/bench-http.sh                 # DURATION=5s REPEAT=3 THREADS=2 CONNECTIONS=32 by default
#   DURATION=10s CONNECTIONS=64 scripts/bench-http.sh
# Each scenario runs REPEAT times, round-robin with the others; the tables show medians.
#
#   PEERS=1 scripts/bench-http.sh         # issue 11's HTTP hit comparison instead (THREADS=1)
# PEERS=1 runs only the comparison of benches/http_hit.rs under wrk: the bench server on ONE tokio
# worker (WORKERS=1), the same router (GET /page, constant handler, 63-byte body, memory, TTL 600 s)
# bare and behind each caching layer under /hit/{contender}/page, each warmed with one request and
# checked (its handler ran once, before and after the runs; ours send ETag, Cache-Control and Age),
# then wrk -t1 -c32 on each. The example app is not built or run.
#
# Honors CARGO_TARGET_DIR. Needs redis-server, redis-cli, curl and wrk (installed with apt-get
# when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-5s}"
REPEAT="${REPEAT:-3}"
PEERS="${PEERS:-0}"
if [ "$PEERS" = 1 ]; then THREADS="${THREADS:-1}"; else THREADS="${THREADS:-2}"; fi
CONNECTIONS="${CONNECTIONS:-32}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
LUA="$PWD/scripts/wrk-report.lua"

have() { command -v "$1" >/dev/null 2>&1; }
if ! have wrk || ! have redis-server || ! have redis-cli || ! have curl; then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    echo "== installing wrk, redis-server and curl"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk redis-server curl >/dev/null
  else
    echo "bench-http: needs wrk, redis-server, redis-cli and curl (apt-get install wrk redis-server curl)" >&2
    exit 1
  fi
fi

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  local port
  for _ in $(seq 200); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "bench-http: no free port found" >&2
  return 1
}

wait_for() { # url
  for _ in $(seq 400); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "bench-http: no answer from $1" >&2
  return 1
}

status_of() { # url [curl args...]
  local url="$1"
  shift
  curl -s -o /dev/null -w '%{http_code}' "$@" "$url"
}

etag_of() { # url
  curl -s -D - -o /dev/null "$1" | tr -d '\r' | awk 'tolower($1) == "etag:" { print $2 }'
}

echo "== building in release (target dir: $TARGET_DIR)"
[ "$PEERS" = 1 ] || cargo build --release --example axum_app
SERVER_BIN="$(cargo bench --bench http_server --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*http_server[^"]*"' | sed 's/^"executable":"//; s/"$//' | tail -n 1)"
APP_BIN="$TARGET_DIR/release/examples/axum_app"
[ -x "$SERVER_BIN" ] || { echo "bench-http: http_server bench executable not found" >&2; exit 1; }
[ "$PEERS" = 1 ] || [ -x "$APP_BIN" ] || { echo "bench-http: $APP_BIN not found" >&2; exit 1; }

REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --protected-mode no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 200); do
  [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
  sleep 0.05
done
[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] || { echo "bench-http: redis-server did not start" >&2; exit 1; }

# Scenarios are queued with `add`, then `measure` runs them round-robin REPEAT times (so slow drifts
# of the machine hit every scenario alike) and prints the median of each figure.
LABELS=()
URLS=()
HEADERS=()
add() { # label url [header]
  LABELS+=("$1")
  URLS+=("$2")
  HEADERS+=("${3:-}")
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# After `measure`: the labels and median req/s of its scenarios (for a comparison of its rows).
MEASURED_LABELS=()
MEASURED_RPS=()

measure() { # title
  local title="$1" rep i out line
  rm -f "$WORK"/result.*
  for rep in $(seq "$REPEAT"); do
    for i in "${!LABELS[@]}"; do
      local args=(-t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$LUA")
      [ -n "${HEADERS[$i]}" ] && args+=(-H "${HEADERS[$i]}")
      out="$(wrk "${args[@]}" "${URLS[$i]}")"
      line="$(grep '^WRK_RESULT' <<<"$out")"
      echo "${line#WRK_RESULT }" >>"$WORK/result.$i"
      printf '  run %s/%s  %-46s %s\n' "$rep" "$REPEAT" "${LABELS[$i]}" "${line#WRK_RESULT }"
    done
  done
  echo
  echo "### $title"
  echo
  echo "medians of $REPEAT runs of $DURATION each, wrk -t$THREADS -c$CONNECTIONS"
  echo
  echo "| scenario | route | req/s | p50 ms | p99 ms | req/s vs first row | errors |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  local ceiling="" rps p50 p99 errs ratio
  MEASURED_RPS=()
  for i in "${!LABELS[@]}"; do
    rps="$(cut -d' ' -f1 "$WORK/result.$i" | median)"
    p50="$(cut -d' ' -f2 "$WORK/result.$i" | median)"
    p99="$(cut -d' ' -f3 "$WORK/result.$i" | median)"
    errs="$(cut -d' ' -f6 "$WORK/result.$i" | awk '{ s += $1 } END { print s }')"
    [ -n "$ceiling" ] || ceiling="$rps"
    ratio="$(awk -v a="$rps" -v b="$ceiling" 'BEGIN { printf "%.2f", a / b }')"
    echo "| ${LABELS[$i]} | \`/${URLS[$i]#http://127.0.0.1:*/}\` | ${rps%.*} | $p50 | $p99 | $ratio | $errs |"
    MEASURED_RPS+=("$rps")
  done
  MEASURED_LABELS=("${LABELS[@]}")
  LABELS=()
  URLS=()
  HEADERS=()
}

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "== wrk: $THREADS threads, $CONNECTIONS connections, $DURATION per run, $REPEAT runs per scenario"

# --- PEERS=1: issue 11's HTTP hit comparison, the bench server on one worker --------------------
if [ "$PEERS" = 1 ]; then
  PORT="$(free_port)"
  WORKERS=1 PORT="$PORT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" CACHE_DIR="$WORK/cache-server" \
    "$SERVER_BIN" serve >"$WORK/server.log" 2>&1 &
  PIDS+=("$!")
  BASE="http://127.0.0.1:$PORT"
  wait_for "$BASE/const"
  grep -q '1 tokio worker' "$WORK/server.log" || { echo "bench-http: the server did not start on one worker" >&2; exit 1; }
  SLUGS=(bare cached-http layer axum-response-cache hitbox tower-http-cache http-cache-tower-server)
  NAMES=("bare handler (no cache)" "cache_runtime #[cached(http)]" "cache_runtime CacheLayer"
    "axum-response-cache 0.5" "hitbox 0.2" "tower-http-cache 0.6" "http-cache-tower-server 0.2")
  for slug in "${SLUGS[@]}"; do
    curl -fsS -o /dev/null "$BASE/hit/$slug/page" # the miss
  done
  sleep 0.2 # http-cache-tower-server stores its miss from a spawned task
  check_calls() { # when: every caching contender's handler ran exactly once
    local calls
    calls="$(curl -fsS "$BASE/hit/calls")"
    if awk '$2 != "-" && $2 != 1 { bad = 1 } END { exit !bad }' <<<"$calls"; then
      echo "bench-http: a contender's handler did not run exactly once ($1):" >&2
      echo "$calls" >&2
      exit 1
    fi
  }
  echo "== headers of a hit (after one warming request each)"
  curl -fsS -o "$WORK/page" "$BASE/hit/bare/page"
  for i in "${!SLUGS[@]}"; do
    hdrs="$(curl -fsS -D - -o "$WORK/body" "$BASE/hit/${SLUGS[$i]}/page" | tr -d '\r')"
    cmp -s "$WORK/page" "$WORK/body" || { echo "bench-http: ${SLUGS[$i]} did not send the bare handler's page" >&2; exit 1; }
    present=""
    for h in etag cache-control age x-cache x-cache-status; do
      grep -qi "^$h:" <<<"$hdrs" && present+="$(grep -i "^$h:" <<<"$hdrs" | head -n 1 | sed 's/ *$//'); "
    done
    printf '  %-32s %s\n' "${NAMES[$i]}" "${present:-(none of ETag, Cache-Control, Age, X-Cache, X-Cache-Status)}"
    case "${SLUGS[$i]}" in
      cached-http | layer)
        for h in etag cache-control age; do
          grep -qi "^$h:" <<<"$hdrs" || { echo "bench-http: ${SLUGS[$i]} sends no $h on a hit" >&2; exit 1; }
        done
        ;;
    esac
  done
  check_calls "after a second request"
  echo "== HTTP hit comparison (benches/http_server.rs /hit/, server on 1 tokio worker)"
  for i in "${!SLUGS[@]}"; do
    add "${NAMES[$i]}" "$BASE/hit/${SLUGS[$i]}/page"
  done
  measure "HTTP hits under wrk, bench server on 1 tokio worker (issue 11)"
  check_calls "after the runs"
  echo
  echo "handler calls after the runs (each caching contender: 1, the miss):"
  curl -fsS "$BASE/hit/calls" | sed 's/^/  /'
  # The fastest peer (rows 3 and up), and ours beside it.
  best=0 best_name=""
  for i in 3 4 5 6; do
    if awk -v a="${MEASURED_RPS[$i]}" -v b="$best" 'BEGIN { exit !(a > b) }'; then
      best="${MEASURED_RPS[$i]}" best_name="${MEASURED_LABELS[$i]}"
    fi
  done
  echo
  echo "fastest peer: $best_name, ${best%.*} req/s (median)"
  for i in 1 2; do
    awk -v a="${MEASURED_RPS[$i]}" -v b="$best" -v n="${MEASURED_LABELS[$i]}" \
      'BEGIN { printf "  %-32s %.2fx the fastest peer (%s)\n", n, a / b, a >= b ? "at least as fast" : "slower" }'
  done
  exit 0
fi

# --- the bench server ---------------------------------------------------------------------------
PORT="$(free_port)"
PORT="$PORT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" CACHE_DIR="$WORK/cache-server" \
  "$SERVER_BIN" serve >"$WORK/server.log" 2>&1 &
PIDS+=("$!")
BASE="http://127.0.0.1:$PORT"
wait_for "$BASE/const"
for route in memory/1 redis/1 layer/1; do
  curl -fsS -o /dev/null "$BASE/$route" # the miss: 20 ms of work, then stored
done
MEM_ETAG="$(etag_of "$BASE/memory/1")"
REDIS_ETAG="$(etag_of "$BASE/redis/1")"
[ -n "$MEM_ETAG" ] && [ -n "$REDIS_ETAG" ] || { echo "bench-http: cached routes send no ETag" >&2; exit 1; }
[ "$(status_of "$BASE/memory/1" -H "If-None-Match: $MEM_ETAG")" = 304 ] || { echo "bench-http: no 304 on /memory/1" >&2; exit 1; }
[ "$(status_of "$BASE/redis/1" -H "If-None-Match: $REDIS_ETAG")" = 304 ] || { echo "bench-http: no 304 on /redis/1" >&2; exit 1; }
curl -fsS -D - -o /dev/null "$BASE/layer/1" | grep -qi '^x-cache: HIT' || { echo "bench-http: CacheLayer does not hit" >&2; exit 1; }

echo "== bench server (benches/http_server.rs)"
add "constant handler (ceiling)" "$BASE/const"
add "cached handler hit, memory" "$BASE/memory/1"
add "cached handler hit, Redis" "$BASE/redis/1"
add "same handler uncached (20 ms work)" "$BASE/plain/1"
add "304 revalidation, memory" "$BASE/memory/1" "If-None-Match: $MEM_ETAG"
add "304 revalidation, Redis" "$BASE/redis/1" "If-None-Match: $REDIS_ETAG"
add "CacheLayer hit, memory" "$BASE/layer/1"
measure "bench server (benches/http_server.rs)"
SERVER_STATS="$(curl -fsS "$BASE/stats")"
echo
echo "cache counters after the runs (each cached route: 1 miss, the rest hits):"
echo "$SERVER_STATS" | grep -o '"function":"[^"]*"\|"hits":[0-9]*\|"misses":[0-9]*' | sed 's/^"\([a-z]*\)":/\1 /' | tr -d '"' |
  awk '$1 == "function" { f = $2 } $1 == "hits" { h[f] += $2 } $1 == "misses" { m[f] += $2 }
    END { for (f in h) printf "  %-40s hits %9d  misses %d\n", f, h[f], m[f] }'


# --- the example app ----------------------------------------------------------------------------
PORT="$(free_port)"
PORT="$PORT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/1" CACHE_DIR="$WORK/cache-app" RUST_LOG=warn \
  "$APP_BIN" >"$WORK/app.log" 2>&1 &
PIDS+=("$!")
BASE="http://127.0.0.1:$PORT"
wait_for "$BASE/"
for route in etag/articles/1 redis/pages/1 middleware/news; do
  curl -fsS -o /dev/null "$BASE/$route" # misses (the Redis page and the news take 300 ms)
done
ARTICLE_ETAG="$(etag_of "$BASE/etag/articles/1")"
[ "$(status_of "$BASE/etag/articles/1" -H "If-None-Match: $ARTICLE_ETAG")" = 304 ] || { echo "bench-http: no 304 on the example's article" >&2; exit 1; }
if grep -qi "unreachable" "$WORK/app.log"; then
  echo "bench-http: the example app did not reach its Redis" >&2
  exit 1
fi

echo
echo "== example app (examples/axum_app.rs)"
add "GET / (uncached route list; near-constant)" "$BASE/"
add "cached handler hit, memory" "$BASE/etag/articles/1"
add "cached handler hit, Redis (30 s TTL)" "$BASE/redis/pages/1"
add "304 revalidation, memory" "$BASE/etag/articles/1" "If-None-Match: $ARTICLE_ETAG"
add "CacheLayer (15 s TTL: expires during the run)" "$BASE/middleware/news"
measure "example app (examples/axum_app.rs)"
