# Helpers the benchmark scripts share (sourced, not run).

# A free TCP port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (bounded, 20 s) until $1 answers 2xx.
wait_http() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

# Writes $WORK/random.lua: each request a random line of $PATHS_FILE.
write_random_lua() {
  cat > "$WORK/random.lua" <<'LUA'
local paths = {}
for line in io.lines(os.getenv("PATHS_FILE")) do paths[#paths + 1] = line end
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
LUA
}

# run_wrk URL CONNS [PATHS-FILE] → "req/s MB/s p99ms", wrk pinned to CPU 1
# for $DUR seconds; a non-2xx answer stops the benchmark. With $HEADER set,
# every request carries that header line.
run_wrk() {
  local out
  out=$(PATHS_FILE="${3:-/dev/null}" taskset -c 1 wrk -t1 -c"$2" -d"${DUR}s" --latency ${3:+-s "$WORK/random.lua"} ${HEADER:+-H "$HEADER"} "$1")
  echo "$out" | grep -q "Non-2xx" && { echo "non-2xx answers from $1" >&2; echo "$out" >&2; exit 1; }
  local rps mbs p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  mbs=$(echo "$out" | awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) {sub("GB","",v); v*=1024} else if (v ~ /KB/) {sub("KB","",v); v/=1024} else {sub("MB","",v)}; printf "%.1f", v}')
  p99=$(echo "$out" | awk '$1=="99%" {v=$2; if (v ~ /us/) {sub("us","",v); v/=1000} else if (v ~ /ms/) {sub("ms","",v)} else if (v ~ /s/) {sub("s","",v); v*=1000}; printf "%.2f", v}')
  echo "$rps $mbs $p99"
}

# The median of three numbers; ratio A B → "A/B" as "0.00x".
median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a/b}'; }

# The head of every nginx config here: one worker on CPU mask $2 (01 is
# CPU 0, 10 is CPU 1), pid and error log named $1, and `http {` opened with
# sendfile, keep-alive and open_file_cache; the caller closes it.
nginx_head() {
  cat <<NGINX
worker_processes 1;
worker_cpu_affinity $2;
pid $WORK/$1.pid;
error_log $WORK/$1-error.log warn;
events { worker_connections 4096; }
http {
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000; keepalive_timeout 60;
  open_file_cache max=10000 inactive=60s;
NGINX
}

# The plain origin every cache sits in front of: nginx (one worker, CPU 1)
# serving the corpus $C statically on $STATIC_PORT, and on
# $STATIC_OPS_PORT the edge's health and load polls, with the immutable
# Cache-Control proxy.golang.org sends; $1 the arguments of its
# access_log ("off", or a file and the format `path`).
static_origin() {
  { nginx_head static 10; cat <<NGINX
  log_format path '\$uri';
  access_log $1;
  types { application/json info; application/zip zip; text/plain mod; }
  default_type text/plain;
  server {
    listen 127.0.0.1:$STATIC_PORT;
    listen 127.0.0.1:$STATIC_OPS_PORT;
    root $C;
    location ~ /@v/[^/]+\.(info|mod|zip)\$ { add_header Cache-Control "public, max-age=31536000, immutable"; }
    location = /healthz { return 200 "ok\n"; }
    location = /loadz { default_type application/json; return 200 '{"in_flight": 0, "ewma_latency_ms": 0}'; }
  }
}
NGINX
  } > "$WORK/static.conf"
  nginx -c "$WORK/static.conf" -p "$WORK" -g 'daemon on;'
}

# An origin config: listen $1, upstream $2, store directory $3, operator
# listener $4; the fixture corpus is in no public checksum database.
origin_toml() {
  cat <<TOML
listen = "$1"
upstream = "$2"
store_dir = "$3"
verify = "off"
[operator]
listen = "$4"
[log]
level = "warn"
TOML
}
