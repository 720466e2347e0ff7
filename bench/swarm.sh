#!/usr/bin/env bash
# Swarming downloads (issue 6). Not part of CI; loads every core for a few
# minutes.
#
#   bench/swarm.sh [SIZE_MIB=1024] [RUNS=5]
#
# One random file, four holder PServers on loopback (hard links of the same
# file), a fresh downloading PServer for every run:
#
#  1. Capped: every holder at PSERVER_MAX_UPLOAD_BPS=25000000 (25 MB/s).
#     Multi-source (PSERVER_MAX_SOURCES=8, all four holders) vs a single
#     holder (PSERVER_MAX_SOURCES=1: the same code, one source). Goal ≥ 3.5×.
#  2. Uncapped: the multi-source download vs `curl` fetching the same file
#     from nginx to disk (goal ≥ 1.0×) and vs `aria2c -x4` given the four
#     holders' peer-API URLs (goal ≥ 1.3×), interleaved run by run, medians
#     reported. curl and aria2c times include a `sync` of their output; the
#     PServer's (`peerdex get`, start to exit) include fetching and checking
#     the tree manifest, verifying every chunk (the holders verify it too,
#     before sending it), its fsyncs, the move into the share folder and the
#     publish to the central.
#
# Before each timed transfer a scratch file of the download's size is
# written and deleted (warm_pages below: equal page-cache conditions).
#
# For the downloading PServer: CPU seconds (utime+stime from /proc/PID/stat,
# over the download) and peak RSS (VmHWM). curl and aria2c are run under
# /usr/bin/time for the same figures. The four holders' CPU seconds over
# each peerdex download are summed ("holders CPU s").
#
# Needs nginx, aria2c, curl, python3, /usr/bin/time
# (apt-get install -y nginx aria2 curl python3 time).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
RUNS=${2:-5}
CAP_BPS=25000000
WORK=${BENCH_DIR:-/tmp/peerdex-bench-swarm}

# shellcheck source=bench/lib.sh
. bench/lib.sh
need nginx nginx
need aria2c aria2
need curl curl
need python3 python3
need_time
check_runs "$RUNS"
build_release central-server pserver peerdex-client

rm -rf "$WORK"; mkdir -p "$WORK"/{www,out,central}
# Run a copy of the binaries: the shared target dir may be rebuilt meanwhile.
BIN=$WORK/bin; mkdir -p "$BIN"
for b in central-server pserver peerdex; do cp "target/release/$b" "$BIN/"; done
echo "binaries from $(git rev-parse --short HEAD)$(git status --porcelain -- pserver central-server proto client | grep -q . && echo ' + uncommitted changes')" >&2
echo "creating a ${SIZE_MIB} MiB random file…" >&2
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/www/big.bin"
for h in h1 h2 h3 h4; do
  mkdir -p "$WORK/$h/share" "$WORK/$h/data"
  ln "$WORK/www/big.bin" "$WORK/$h/share/big.bin"
done

pids=()
cleanup() {
  stop_pids "${pids[@]}"
  if [ -f "$WORK/nginx.pid" ]; then kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; fi
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
# warm_pages: write and delete a scratch file the size of the download just
# before each timed transfer, whichever tool. On this kind of VM the host
# reclaims freed guest pages within ~3 s (virtio-balloon free page
# reporting), and writing 1 GiB into such cold pages costs 1.1-1.8 CPU-s of
# kernel copy instead of ~0.3 s: without this, whichever tool happened to
# start after a pause (e.g. after starting a PServer) paid that alone.
warm_pages() {
  dd if=/dev/zero of="$WORK/warm.bin" bs=1M count="$((SIZE_MIB + 64))" status=none
  rm -f "$WORK/warm.bin"
}
py() { python3 -c "$1"; }

NGINX_PORT=$(free_port)
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
daemon on;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  server { listen 127.0.0.1:$NGINX_PORT; root $WORK/www; }
}
CONF
nginx -c "$WORK/nginx.conf" -p "$WORK"

"$BIN/central-server" --listen-addr 127.0.0.1:0 --data-dir "$WORK/central" > "$WORK/central.out" 2> "$WORK/central.log" &
pids+=($!)
for i in $(seq 600); do grep -q listening "$WORK/central.out" 2>/dev/null && break; sleep 0.1; done
CENTRAL="http://$(awk '{print $NF}' "$WORK/central.out")"

# start_peer NAME [ENV=VALUE…]: starts a PServer over $WORK/NAME; sets PEER_PID, PEER_API, PEER_URL.
start_peer() {
  local d="$WORK/$1"; shift
  mkdir -p "$d/share" "$d/data"
  rm -f "$d/out"
  env PSERVER_API_ADDR=127.0.0.1:0 PSERVER_PEER_ADDR=127.0.0.1:0 PSERVER_SHARE_DIR="$d/share" \
      PSERVER_DATA_DIR="$d/data" PSERVER_CENTRAL_URL="$CENTRAL" PSERVER_DRAIN_SECS=1 RUST_LOG=warn "$@" \
      "$BIN/pserver" > "$d/out" 2>> "$d/log" &
  PEER_PID=$!
  pids+=("$PEER_PID")
  local i
  for i in $(seq 600); do grep -q listening "$d/out" 2>/dev/null && break; sleep 0.1; done
  grep -q listening "$d/out" || { echo "$1 did not start" >&2; cat "$d/log" >&2; exit 1; }
  PEER_API=$(sed -E 's/.*api=([^ ]+).*/\1/' "$d/out")
  PEER_URL=$(sed -E 's/.*peer=([^ ]+).*/\1/' "$d/out")
}
stop_pid() { # up to 30 s
  local i
  kill "$1" 2>/dev/null || true
  for i in $(seq 600); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
  echo "pid $1 did not stop" >&2; exit 1
}

HOLDER_PIDS=(); HOLDER_URLS=()
start_holders() { # [ENV=VALUE…]
  for p in "${HOLDER_PIDS[@]}"; do stop_pid "$p"; done
  HOLDER_PIDS=(); HOLDER_URLS=()
  for h in h1 h2 h3 h4; do
    start_peer "$h" "$@"
    HOLDER_PIDS+=("$PEER_PID"); HOLDER_URLS+=("$PEER_URL")
    local i
    for i in $(seq 1200); do curl -sf "$PEER_API/api/v1/files" | grep -q big.bin && break; sleep 0.1; done
  done
  ID=$(curl -sf "$PEER_API/api/v1/files" | py 'import json,sys; print(json.load(sys.stdin)["files"][0]["file_id"])')
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
holders_ticks() { local p t=0; for p in "${HOLDER_PIDS[@]}"; do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }

# download NAME [ENV=VALUE…]: a fresh PServer downloads the file from the holders.
# Prints "seconds cpu_seconds peak_rss_mib sources holders_cpu_seconds".
download() {
  local name=$1; shift
  rm -rf "${WORK:?}/$name"
  start_peer "$name" "$@"
  local pid=$PEER_PID api=$PEER_API
  local i
  for i in $(seq 600); do
    [ "$(curl -sf "$api/api/v1/search?q=big" | py 'import json,sys; h=[x["holders"] for x in json.load(sys.stdin)["hits"]]; print(max(h or [0]))')" -ge 4 ] && break
    sleep 0.1
  done
  sync; warm_pages
  local c0 t0 state t1 c1 h0 h1
  h0=$(holders_ticks); c0=$(cpu_ticks "$pid"); t0=$(now)
  "$BIN/peerdex" --pserver "$api" --json get "$ID" > "$WORK/$name.get.json"
  t1=$(now); c1=$(cpu_ticks "$pid"); h1=$(holders_ticks)
  py "import json; print(json.dumps(json.load(open('$WORK/$name.get.json'))['job']))" > "$WORK/$name.job.json"
  state=$(py "import json; print(json.load(open('$WORK/$name.job.json'))['state'])")
  [ "$state" = "done" ] || { echo "$name: download ended in state $state" >&2; cat "$WORK/$name.job.json" >&2; exit 1; }
  local hwm
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  cmp "$WORK/www/big.bin" "$WORK/$name/share/big.bin"
  local srcs
  srcs=$(py "import json; j=json.load(open('$WORK/$name.job.json')); print('/'.join(str(s['chunks']) for s in j['sources']))")
  stop_pid "$pid"
  rm -rf "${WORK:?}/$name"
  echo "$(py "print(f'{$t1-$t0:.2f} {($c1-$c0)/$TICK:.2f} {$hwm/1024:.0f}')") $srcs $(py "print(f'{($h1-$h0)/$TICK:.2f}')")"
}

# timed CMD…: runs under /usr/bin/time; prints "seconds cpu_seconds peak_rss_mib".
timed() {
  local t0 t1
  warm_pages
  t0=$(now)
  /usr/bin/time -f '%U %S %M' -o "$WORK/time.out" "$@"
  sync -f "$WORK/out" 2>/dev/null || sync
  t1=$(now)
  read -r u s m < "$WORK/time.out"
  py "print(f'{$t1-$t0:.2f} {$u+$s:.2f} {$m/1024:.0f}')"
}

echo "== capped holders (${CAP_BPS} B/s each)" >&2
start_holders PSERVER_MAX_UPLOAD_BPS=$CAP_BPS
multi_capped=$(download getter PSERVER_MAX_SOURCES=8); echo "multi-source: $multi_capped" >&2
single_capped=$(download getter PSERVER_MAX_SOURCES=1); echo "single holder: $single_capped" >&2

echo "== uncapped" >&2
start_holders
URLS=(); for u in "${HOLDER_URLS[@]}"; do URLS+=("$u/peer/v1/files/$ID"); done
swarm_runs=(); curl_runs=(); aria_runs=()
for i in $(seq "$RUNS"); do
  rm -f "$WORK/out/curl.bin"; sync
  curl_runs+=("$(timed curl -s -o "$WORK/out/curl.bin" "http://127.0.0.1:$NGINX_PORT/big.bin")")
  cmp "$WORK/www/big.bin" "$WORK/out/curl.bin"; rm -f "$WORK/out/curl.bin"; sync
  aria_runs+=("$(timed aria2c -q -x4 -s16 -k1M --file-allocation=none --allow-overwrite=true \
      -d "$WORK/out" -o aria.bin "${URLS[@]}")")
  cmp "$WORK/www/big.bin" "$WORK/out/aria.bin"; rm -f "$WORK/out/aria.bin"; sync
  swarm_runs+=("$(download getter)")
  echo "run $i: curl ${curl_runs[-1]} | aria2c ${aria_runs[-1]} | peerdex ${swarm_runs[-1]}" >&2
done

median_row() { # rows… → the row with the median time
  printf '%s\n' "$@" | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'
}
f() { echo "$1" | awk -v k="$2" '{print $k}'; }
mib_s() { py "print(f'{$SIZE_MIB/$1:.0f}')"; }
ratio() { py "print(f'{$1/$2:.2f}')"; }

sw=$(median_row "${swarm_runs[@]}"); cu=$(median_row "${curl_runs[@]}"); ar=$(median_row "${aria_runs[@]}")
echo
echo "Swarming ${SIZE_MIB} MiB, $(nproc) cores, $(date -u '+%F %H:%M UTC'); uncapped rows: median of $RUNS runs"
echo
echo "| scenario | tool | s | MiB/s | CPU s | peak RSS MiB | chunks per source | holders CPU s | ratio |"
echo "|---|---|---:|---:|---:|---:|---|---:|---|"
echo "| 4 holders at 25 MB/s | peerdex, 4 sources | $(f "$multi_capped" 1) | $(mib_s "$(f "$multi_capped" 1)") | $(f "$multi_capped" 2) | $(f "$multi_capped" 3) | $(f "$multi_capped" 4) | $(f "$multi_capped" 5) | $(ratio "$(f "$single_capped" 1)" "$(f "$multi_capped" 1)")× vs single (goal ≥ 3.5) |"
echo "| 4 holders at 25 MB/s | peerdex, 1 source | $(f "$single_capped" 1) | $(mib_s "$(f "$single_capped" 1)") | $(f "$single_capped" 2) | $(f "$single_capped" 3) | $(f "$single_capped" 4) | $(f "$single_capped" 5) | 1.00 |"
echo "| uncapped loopback | peerdex, 4 sources | $(f "$sw" 1) | $(mib_s "$(f "$sw" 1)") | $(f "$sw" 2) | $(f "$sw" 3) | $(f "$sw" 4) | $(f "$sw" 5) | $(ratio "$(f "$cu" 1)" "$(f "$sw" 1)")× vs curl (goal ≥ 1.0), $(ratio "$(f "$ar" 1)" "$(f "$sw" 1)")× vs aria2c (goal ≥ 1.3) |"
echo "| uncapped loopback | curl ← nginx, to disk + sync | $(f "$cu" 1) | $(mib_s "$(f "$cu" 1)") | $(f "$cu" 2) | $(f "$cu" 3) | – | – | |"
echo "| uncapped loopback | aria2c -x4 -s16 -k1M, 4 peer URLs + sync | $(f "$ar" 1) | $(mib_s "$(f "$ar" 1)") | $(f "$ar" 2) | $(f "$ar" 3) | – | – | |"
echo
echo "all uncapped runs (s, CPU s, RSS MiB[, chunks per source, holders CPU s]): peerdex: ${swarm_runs[*]} | curl: ${curl_runs[*]} | aria2c: ${aria_runs[*]}"
