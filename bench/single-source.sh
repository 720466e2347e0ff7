#!/usr/bin/env bash
# Single-source download of a large file between two PServers on loopback
# (verified with BLAKE3, fsync'd, moved into the share folder), side by side
# with curl fetching the same file from nginx to disk. Not part of CI.
#
#   bench/single-source.sh [SIZE_MIB=1024] [RUNS=3]
#
# Needs nginx (apt-get install -y nginx) and curl. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
RUNS=${2:-3}
WORK=${BENCH_DIR:-/tmp/peerdex-bench-single}

command -v nginx >/dev/null || { echo "nginx missing: apt-get install -y nginx" >&2; exit 1; }
cargo build --release --bins -p central-server -p pserver >&2
BIN=$PWD/target/release

rm -rf "$WORK"; mkdir -p "$WORK"/{www,out,central,holder/share,holder/data,getter/share,getter/data}
echo "creating a ${SIZE_MIB} MiB random file…" >&2
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/www/big.bin"
cp "$WORK/www/big.bin" "$WORK/holder/share/big.bin"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx serving the file.
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

# central + holder + getter.
"$BIN/central-server" --listen-addr 127.0.0.1:0 --data-dir "$WORK/central" > "$WORK/central.out" 2> "$WORK/central.log" &
pids+=($!)
until grep -q listening "$WORK/central.out" 2>/dev/null; do sleep 0.05; done
CENTRAL="http://$(awk '{print $NF}' "$WORK/central.out")"

start_peer() { # name
  local d="$WORK/$1"
  PSERVER_API_ADDR=127.0.0.1:0 PSERVER_PEER_ADDR=127.0.0.1:0 PSERVER_SHARE_DIR="$d/share" \
  PSERVER_DATA_DIR="$d/data" PSERVER_CENTRAL_URL="$CENTRAL" RUST_LOG=warn \
    "$BIN/pserver" > "$d/out" 2> "$d/log" &
  pids+=($!)
  until grep -q listening "$d/out" 2>/dev/null; do sleep 0.05; done
  sed -E 's/.*api=([^ ]+).*/\1/' "$d/out"
}
HOLDER_API=$(start_peer holder)
GETTER_API=$(start_peer getter)
ID=$(b3=$(python3 - "$WORK/www/big.bin" <<'PY'
import sys
try:
    import blake3
    print(blake3.blake3(open(sys.argv[1],'rb').read()).hexdigest())
except ImportError:
    print("")
PY
); echo "$b3")
# Wait for the holder to have hashed and published the file.
until curl -sf "$HOLDER_API/api/v1/files" | grep -q big.bin; do sleep 0.2; done
ID=$(curl -sf "$HOLDER_API/api/v1/files" | python3 -c 'import json,sys; print(json.load(sys.stdin)["files"][0]["file_id"])')
until curl -sf "$GETTER_API/api/v1/search?q=big" | grep -q "$ID"; do sleep 0.2; done

now() { date +%s.%N; }
mbps() { python3 -c "print(f'{$SIZE_MIB*1.048576/($2-$1):.0f}')"; }

curl_times=(); peer_times=()
for i in $(seq "$RUNS"); do
  rm -f "$WORK/out/curl.bin"; sync
  t0=$(now); curl -s -o "$WORK/out/curl.bin" "http://127.0.0.1:$NGINX_PORT/big.bin"; sync -f "$WORK/out/curl.bin" 2>/dev/null || sync; t1=$(now)
  curl_times+=("$(python3 -c "print($t1-$t0)")")

  curl -sf -X DELETE "$GETTER_API/api/v1/files/$ID" >/dev/null 2>&1 || true; sync
  t0=$(now)
  JOB=$(curl -sf -X POST -H 'content-type: application/json' -d "{\"file_id\":\"$ID\"}" "$GETTER_API/api/v1/downloads" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
  # Follow the NDJSON event stream until the job ends.
  STATE=$(curl -sN "$GETTER_API/api/v1/downloads/$JOB/events" | tail -n 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
  t1=$(now)
  [ "$STATE" = done ] || { echo "download ended in state $STATE" >&2; exit 1; }
  peer_times+=("$(python3 -c "print($t1-$t0)")")
  echo "run $i: curl ${curl_times[-1]} s, peerdex ${peer_times[-1]} s" >&2
done
cmp "$WORK/www/big.bin" "$WORK/getter/share/big.bin"

best() { printf '%s\n' "$@" | sort -n | head -1; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
cb=$(best "${curl_times[@]}"); pb=$(best "${peer_times[@]}")
cm=$(median "${curl_times[@]}"); pm=$(median "${peer_times[@]}")
tp() { python3 -c "print(f'{$SIZE_MIB/$1:.0f}')"; }
echo
echo "Single-source ${SIZE_MIB} MiB on loopback, $(nproc) cores, $(date -u +%F), best/median of $RUNS runs"
echo
echo "| tool | best s | median s | MiB/s (best) | ratio vs curl (best) |"
echo "|---|---|---|---|---|"
echo "| curl ← nginx, to disk + sync | $cb | $cm | $(tp "$cb") | 1.00 |"
echo "| peerdex PServer ← PServer (verified, fsync, published) | $pb | $pm | $(tp "$pb") | $(python3 -c "print(f'{$cb/$pb:.2f}')") |"
