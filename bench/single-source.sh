#!/usr/bin/env bash
# Single-source download of a large file between two PServers on loopback,
# end to end through `peerdex get` (every chunk BLAKE3-verified against the
# file id's tree manifest, fsync'd, moved into the share folder, published),
# side by side with curl fetching the same file from nginx to disk. Not part
# of CI.
#
#   bench/single-source.sh [SIZE_MIB=1024] [RUNS=5]
#
# Runs are interleaved (curl, then peerdex, RUNS times); medians reported.
# Before each timed transfer a scratch file of the same size is written and
# deleted (warm_pages below: equal page-cache conditions for both tools).
# Also measured, per GiB served: the holder PServer's CPU (utime+stime from
# /proc/PID/stat before and after each download; it verifies every chunk
# before sending it) next to nginx's worker for the curl runs (sendfile, no
# verification), and one core's BLAKE3 throughput for scale (Python package
# `blake3`, if installed: pip install blake3).
#
# Needs nginx (apt-get install -y nginx), curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
RUNS=${2:-5}
WORK=${BENCH_DIR:-/tmp/peerdex-bench-single}

# shellcheck source=bench/lib.sh
. bench/lib.sh
need nginx nginx
need curl curl
need python3 python3
need ps procps
need_time
check_runs "$RUNS"
build_release central-server pserver peerdex-client

rm -rf "$WORK"; mkdir -p "$WORK"/{www,out,central,holder/share,holder/data,getter/share,getter/data}
# Run a copy of the binaries: the shared target dir may be rebuilt meanwhile.
BIN=$WORK/bin; mkdir -p "$BIN"
for b in central-server pserver peerdex; do cp "target/release/$b" "$BIN/"; done
echo "binaries from $(git rev-parse --short HEAD)$(git status --porcelain -- pserver central-server proto client | grep -q . && echo ' + uncommitted changes')" >&2
echo "creating a ${SIZE_MIB} MiB random file…" >&2
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/www/big.bin"
cp "$WORK/www/big.bin" "$WORK/holder/share/big.bin"

pids=()
cleanup() {
  stop_pids "${pids[@]}"
  if [ -f "$WORK/nginx.pid" ]; then kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; fi
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_for FILE PATTERN: up to 60 s for PATTERN to appear in FILE.
wait_for() {
  local i
  for i in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2 || true; exit 1
}

# nginx serving the file, one worker.
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
for i in $(seq 100); do [ -s "$WORK/nginx.pid" ] && break; sleep 0.1; done
NGINX_WORKER=$(ps -o pid= --ppid "$(cat "$WORK/nginx.pid")" | head -1 | tr -d ' ')
[ -n "$NGINX_WORKER" ] || { echo "no nginx worker found" >&2; exit 1; }

# central + holder + getter.
"$BIN/central-server" --listen-addr 127.0.0.1:0 --data-dir "$WORK/central" > "$WORK/central.out" 2> "$WORK/central.log" &
pids+=($!)
wait_for "$WORK/central.out" listening
CENTRAL="http://$(awk '{print $NF}' "$WORK/central.out")"

start_peer() { # name; sets PEER_PID, PEER_API
  local d="$WORK/$1"
  PSERVER_API_ADDR=127.0.0.1:0 PSERVER_PEER_ADDR=127.0.0.1:0 PSERVER_SHARE_DIR="$d/share" \
  PSERVER_DATA_DIR="$d/data" PSERVER_CENTRAL_URL="$CENTRAL" RUST_LOG=warn \
    "$BIN/pserver" > "$d/out" 2> "$d/log" &
  PEER_PID=$!; pids+=("$PEER_PID")
  wait_for "$d/out" listening
  PEER_API=$(sed -E 's/.*api=([^ ]+).*/\1/' "$d/out")
}
start_peer holder; HOLDER_PID=$PEER_PID; HOLDER_API=$PEER_API
start_peer getter; GETTER_PID=$PEER_PID; GETTER_API=$PEER_API
# Wait (up to 2 min) for the holder to have hashed and published the file,
# and for the central to list it.
for i in $(seq 600); do curl -sf "$HOLDER_API/api/v1/files" | grep -q big.bin && break; sleep 0.2; done
ID=$(curl -sf "$HOLDER_API/api/v1/files" | python3 -c 'import json,sys; print(json.load(sys.stdin)["files"][0]["file_id"])')
for i in $(seq 300); do curl -sf "$GETTER_API/api/v1/search?q=big" | grep -q "$ID" && break; sleep 0.2; done

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
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
py() { python3 -c "$1"; }

curl_runs=(); peer_runs=()   # each: "seconds server_cpu_seconds client_cpu_seconds"
for i in $(seq "$RUNS"); do
  rm -f "$WORK/out/curl.bin"; sync; warm_pages
  c0=$(cpu_ticks "$NGINX_WORKER"); t0=$(now)
  /usr/bin/time -f '%U %S' -o "$WORK/curl.time" curl -sf -o "$WORK/out/curl.bin" "http://127.0.0.1:$NGINX_PORT/big.bin"
  sync -f "$WORK/out/curl.bin" 2>/dev/null || sync
  t1=$(now); c1=$(cpu_ticks "$NGINX_WORKER")
  read -r cu cs < "$WORK/curl.time"
  curl_runs+=("$(py "print(f'{$t1-$t0:.3f} {($c1-$c0)/$TICK:.2f} {$cu+$cs:.2f}')")")
  cmp "$WORK/www/big.bin" "$WORK/out/curl.bin"; rm -f "$WORK/out/curl.bin"

  # The getter forgets its copy (share folder and any stored state).
  curl -sf -X DELETE "$GETTER_API/api/v1/files/$ID" >/dev/null 2>&1 || true
  [ ! -e "$WORK/getter/share/big.bin" ] || { echo "the getter still has big.bin after DELETE" >&2; exit 1; }
  sync; warm_pages
  c0=$(cpu_ticks "$HOLDER_PID"); g0=$(cpu_ticks "$GETTER_PID"); t0=$(now)
  "$BIN/peerdex" --pserver "$GETTER_API" --json get "$ID" > "$WORK/get.json"
  t1=$(now); c1=$(cpu_ticks "$HOLDER_PID"); g1=$(cpu_ticks "$GETTER_PID")
  state=$(py "import json; print(json.load(open('$WORK/get.json'))['job']['state'])")
  [ "$state" = "done" ] || { echo "download ended in state $state" >&2; cat "$WORK/get.json" >&2; exit 1; }
  cmp "$WORK/www/big.bin" "$WORK/getter/share/big.bin"
  peer_runs+=("$(py "print(f'{$t1-$t0:.3f} {($c1-$c0)/$TICK:.2f} {($g1-$g0)/$TICK:.2f}')")")
  echo "run $i: curl ← nginx ${curl_runs[-1]} | peerdex get ${peer_runs[-1]}  (s, server CPU s, client CPU s); load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done

# One core's BLAKE3 throughput, for scale (the holder verifies every byte it serves).
B3=$(python3 - <<'PY' 2>/dev/null || echo "n/a (pip install blake3)"
import time, blake3
buf = bytes(range(256)) * (4 << 20)          # 1 GiB
best = 0.0
for _ in range(3):
    t = time.perf_counter(); blake3.blake3(buf, max_threads=1).digest(); d = time.perf_counter() - t
    best = max(best, 1.0 / d)
print(f"{best:.2f} GiB/s")
PY
)

median() { printf '%s\n' "$@" | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
f() { echo "$1" | awk -v k="$2" '{print $k}'; }
col() { local k=$1 x out=""; shift; for x in "$@"; do out+="${out:+ / }$(f "$x" "$k")"; done; echo "$out"; }
median_of() { local k=$1; shift; local x vals=(); for x in "$@"; do vals+=("$(f "$x" "$k")"); done; median "${vals[@]}"; }
cm=$(median_of 1 "${curl_runs[@]}"); pm=$(median_of 1 "${peer_runs[@]}")
ncpu=$(median_of 2 "${curl_runs[@]}"); hcpu=$(median_of 2 "${peer_runs[@]}")
ccpu=$(median_of 3 "${curl_runs[@]}"); gcpu=$(median_of 3 "${peer_runs[@]}")
GIB=$(py "print($SIZE_MIB/1024)")
echo
echo "Single-source ${SIZE_MIB} MiB on loopback, $(nproc) cores, $(date -u '+%F %H:%M UTC'), median of $RUNS interleaved runs"
echo
echo "| tool | median s | MiB/s | all runs (s) | receiving CPU s (median) | ratio vs curl |"
echo "|---|---:|---:|---|---:|---:|"
echo "| curl ← nginx, to disk + sync | $cm | $(py "print(f'{$SIZE_MIB/$cm:.0f}')") | $(col 1 "${curl_runs[@]}") | $ccpu (curl) | 1.00 |"
echo "| \`peerdex get\` (PServer ← PServer: verified on serve and on receipt, fsync, published) | $pm | $(py "print(f'{$SIZE_MIB/$pm:.0f}')") | $(col 1 "${peer_runs[@]}") | $gcpu (downloading PServer) | **$(py "print(f'{$cm/$pm:.2f}')")×** (goal ≥ 0.95×) |"
echo
echo "| serving side | CPU s per GiB served (median) | all runs (CPU s) |"
echo "|---|---:|---|"
echo "| nginx worker (sendfile) | $(py "print(f'{$ncpu/$GIB:.2f}')") | $(col 2 "${curl_runs[@]}") |"
echo "| holder PServer (verify-on-serve) | $(py "print(f'{$hcpu/$GIB:.2f}')") | $(col 2 "${peer_runs[@]}") |"
echo "| for scale: BLAKE3 on one core (Python blake3, max_threads=1) | $B3 | |"
