#!/usr/bin/env bash
# Dependency prefetch benchmark: cold `go mod download all` of the fixture
# graph (main graph + a 4-module chain) through an edge and its origin, with the fixture
# upstream at 20 ms latency, prefetch off vs on (.mod/.info only, then with
# the requirements' .zip files too), in one run. Each run starts
# with an empty edge cache, origin store and module cache. Prints median wall
# time, the ratio, and the upstream fetches the go command had to wait for
# (client-started) next to those prefetch started.
# Usage: tests/bench/prefetch.sh [runs]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/lib.sh
RUNS="${1:-5}"
for t in cmake g++ go curl python3 bc; do command -v "$t" >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake g++ golang-go curl python3 bc >/dev/null; break; }; done
cargo build --release -q -p modcdn-edge -p modcdn-origin -p modcdn-tests --bins
BIN="$PWD/target/release"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN/modcdn-fixture" corpus --out "$WORK/corpus" --large-mib 1 >/dev/null
"$BIN/modcdn-fixture" consumer --out "$WORK/consumer" >/dev/null
UP_PORT=$(port)
"$BIN/modcdn-fixture" upstream --corpus "$WORK/corpus" --listen "127.0.0.1:$UP_PORT" --delay-ms 20 >/dev/null & PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/example.com/alpha/@v/list"

# start_edge DIR ORIGIN_PORT: an edge in front of that origin (hot-module
# prefetch off, so that only dependency prefetch is measured); sets
# EDGE_PORT and EDGE_PID.
start_edge() {
  local admin
  EDGE_PORT=$(port); admin=$(port)
  printf 'single_region = true\n[[origin]]\nid = "o"\naddress = "127.0.0.1:%s"\noperator = "127.0.0.1:%s"\nregion = "us"\n' "$2" "$3" > "$1/membership.toml"
  printf 'listen = "127.0.0.1:%s"\nmembership = "membership.toml"\nupgrade_sock = "edge.sock"\npid_file = "edge.pid"\n[admin]\nlisten = "127.0.0.1:%s"\n[cache]\ndir = "edge-cache"\n[hot]\ninterval_ms = 0\n[purge]\npoll_ms = 0\n[log]\nlevel = "warn"\n' \
    "$EDGE_PORT" "$admin" > "$1/edge.toml"
  "$BIN/modcdn-edge" serve --config "$1/edge.toml" 2>/dev/null & EDGE_PID=$!
  wait_http "http://127.0.0.1:$admin/healthz"
}

run_once() { # prefetch(true|false) zip_queue → "seconds client_fetches prefetch_fetches"
  local port op dir pid start end m
  port=$(port); op=$(port); dir="$WORK/run-$1-$RANDOM"
  mkdir -p "$dir"
  printf 'listen = "127.0.0.1:%s"\nupstream = "http://127.0.0.1:%s"\nstore_dir = "%s/store"\nverify = "off"\n[operator]\nlisten = "127.0.0.1:%s"\n[prefetch]\nenabled = %s\nzip_queue = %s\n[log]\nlevel = "warn"\n' \
    "$port" "$UP_PORT" "$dir" "$op" "$1" "$2" > "$dir/origin.toml"
  "$BIN/modcdn-origin" serve --config "$dir/origin.toml" >/dev/null & pid=$!
  wait_http "http://127.0.0.1:$port/healthz"
  start_edge "$dir" "$port" "$op"
  cp -r "$WORK/consumer" "$dir/consumer"
  start=$(date +%s.%N)
  (cd "$dir/consumer" && env -i PATH="$PATH" HOME="$dir" GOPATH="$dir/gopath" GOMODCACHE="$dir/modcache" GOCACHE="$dir/gocache" \
     GOPROXY="http://127.0.0.1:$EDGE_PORT" GOSUMDB=off GOFLAGS="-mod=mod -modcacherw" GOENV=off go mod download all)
  end=$(date +%s.%N)
  m=$(curl -sf "http://127.0.0.1:$op/metrics")
  kill "$EDGE_PID" "$pid"; wait "$EDGE_PID" "$pid" 2>/dev/null || true
  echo "$(echo "$end - $start" | bc -l) $(echo "$m" | awk '/upstream_fetches_total\{trigger="client"\}/ {print $2}') $(echo "$m" | awk '/upstream_fetches_total\{trigger="prefetch"\}/ {print $2+0}')"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
for mode in false:0 true:0 true:512; do
  : > "$WORK/times-$mode"
  for _ in $(seq "$RUNS"); do
    read -r t c p <<<"$(run_once "${mode%%:*}" "${mode##*:}")"
    echo "$t" >> "$WORK/times-$mode"; echo "$c $p" > "$WORK/fetches-$mode"
  done
done
# Floor: the same download when the edge already has everything (the go
# command's own work plus hits), to show how much of the time is upstream.
port=$(port); op=$(port); dir="$WORK/warm"; mkdir -p "$dir"
printf 'listen = "127.0.0.1:%s"\nupstream = "http://127.0.0.1:%s"\nstore_dir = "%s/store"\nverify = "off"\n[operator]\nlisten = "127.0.0.1:%s"\n[log]\nlevel = "warn"\n' "$port" "$UP_PORT" "$dir" "$op" > "$dir/origin.toml"
"$BIN/modcdn-origin" serve --config "$dir/origin.toml" >/dev/null & PIDS+=($!)
wait_http "http://127.0.0.1:$port/healthz"
start_edge "$dir" "$port" "$op"; PIDS+=("$EDGE_PID")
warm_run() {
  local d="$dir/go-$RANDOM" start end
  cp -r "$WORK/consumer" "$d"
  start=$(date +%s.%N)
  (cd "$d" && env -i PATH="$PATH" HOME="$d" GOPATH="$d/gopath" GOMODCACHE="$d/modcache" GOCACHE="$d/gocache" \
     GOPROXY="http://127.0.0.1:$EDGE_PORT" GOSUMDB=off GOFLAGS="-mod=mod -modcacherw" GOENV=off go mod download all)
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}
warm_run >/dev/null
for _ in $(seq "$RUNS"); do warm_run; done > "$WORK/times-warm"
warm=$(median < "$WORK/times-warm")

off=$(median < "$WORK/times-false:0"); mi=$(median < "$WORK/times-true:0"); on=$(median < "$WORK/times-true:512")
read -r off_c off_p < "$WORK/fetches-false:0"; read -r mi_c mi_p < "$WORK/fetches-true:0"; read -r on_c on_p < "$WORK/fetches-true:512"
printf '\n%-22s %10s %16s %18s %10s\n' "prefetch" "median s" "client fetches" "prefetch fetches" "speed-up"
printf '%-22s %10.3f %16s %18s %10s\n' "off" "$off" "$off_c" "$off_p" "1.00x"
printf '%-22s %10.3f %16s %18s %9.2fx\n' "on, .mod/.info" "$mi" "$mi_c" "$mi_p" "$(echo "$off / $mi" | bc -l)"
printf '%-22s %10.3f %16s %18s %9.2fx\n' "on, .mod/.info + .zip" "$on" "$on_c" "$on_p" "$(echo "$off / $on" | bc -l)"
printf '%-22s %10.3f %16s %18s\n' "all hits" "$warm" "0" "-"
printf 'target: on ≥ 1.5x off; upstream-bound time (minus the all-hits floor): %.2fx; %s runs each, upstream latency 20 ms\n' \
  "$(echo "($off - $warm) / ($on - $warm)" | bc -l)" "$RUNS"
