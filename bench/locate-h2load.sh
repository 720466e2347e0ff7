#!/usr/bin/env bash
# Locate on the central vs a trivial tonic service, both driven by h2load
# (nghttp2's HTTP/2 load generator, not our own client). Not part of CI.
#
#   bench/locate-h2load.sh [RUNS=3] [SECONDS=10]
#
# A release central-server is pinned to core 1 (taskset -c 1) with a
# temporary data dir; a release PServer, sharing a 1 GiB (sparse) file and a
# 1 KB file, joins it so both are listed. h2load, pinned to core 0, POSTs
# gRPC-framed LocateRequests (1 byte 0, 4-byte big-endian length, protobuf
# field 1 = the 64-hex file id) to /peerdex.v1.Directory/Locate. The
# baseline is `central-bench --health-server` (tonic-health, nothing else),
# pinned to the same core 1, answering /grpc.health.v1.Health/Check with an
# empty request. Each run: Locate 1 KB, Locate 1 GiB, Health, interleaved;
# RUNS rounds; the median req/s of each is reported. Before the runs, one
# request of each kind goes through curl (HTTP/2 prior knowledge) and must
# answer grpc-status 0: h2load itself only counts HTTP statuses.
#
# The server's CPU over each run (utime+stime from /proc) is printed too:
# ~100 % of its core means the server, not h2load, was the limit; less means
# h2load or, on a shared box, other processes on core 1 held it back. So the
# requests per CPU-second of the server (req/s ÷ its CPU share) are reported
# as well, a figure other load on the core does not lower as much.
#
# Needs h2load (apt-get install -y nghttp2-client), curl, python3, taskset
# (util-linux) and 2+ cores.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SECS=${2:-10}
# h2load load shape: clients × streams in flight per client, one thread.
CLIENTS=${H2LOAD_CLIENTS:-4}
STREAMS=${H2LOAD_STREAMS:-32}
WORK=${BENCH_DIR:-/tmp/peerdex-bench-locate}

# shellcheck source=bench/lib.sh
. bench/lib.sh
need h2load nghttp2-client
need curl curl
need python3 python3
need taskset util-linux
need_time
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores (server on core 1, h2load on core 0)" >&2; exit 1; }
check_runs "$RUNS"

build_release central-server pserver peerdex-bench

rm -rf "$WORK"; mkdir -p "$WORK"/{central,peer/share,peer/data}
# Run a copy of the binaries: the shared target dir may be rebuilt meanwhile.
BIN=$WORK/bin; mkdir -p "$BIN"
for b in central-server pserver central-bench; do cp "target/release/$b" "$BIN/"; done
echo "binaries from $(git rev-parse --short HEAD)$(git status --porcelain -- pserver central-server proto client | grep -q . && echo ' + uncommitted changes')" >&2
truncate -s 1G "$WORK/peer/share/big-1GiB.bin"            # sparse: hashed at start
head -c 1000 /dev/urandom > "$WORK/peer/share/small-1KB.bin"

pids=()
cleanup() {
  exec 3>&- 2>/dev/null || true                             # closes the health server's stdin
  stop_pids "${pids[@]}"
  wait 2>/dev/null || true
}
trap cleanup EXIT

# wait_for FILE PATTERN: up to 60 s for PATTERN to appear in FILE.
wait_for() {
  local i
  for i in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2 || true; exit 1
}

taskset -c 1 "$BIN/central-server" --listen-addr 127.0.0.1:0 --data-dir "$WORK/central" \
  > "$WORK/central.out" 2> "$WORK/central.log" &
CENTRAL_PID=$!; pids+=("$CENTRAL_PID")
wait_for "$WORK/central.out" listening
CENTRAL_ADDR=$(awk '{print $NF}' "$WORK/central.out")

# The PServer stays on core 0 (it only heartbeats during the runs).
PSERVER_API_ADDR=127.0.0.1:0 PSERVER_PEER_ADDR=127.0.0.1:0 PSERVER_SHARE_DIR="$WORK/peer/share" \
PSERVER_DATA_DIR="$WORK/peer/data" PSERVER_CENTRAL_URL="http://$CENTRAL_ADDR" RUST_LOG=warn \
  taskset -c 0 "$BIN/pserver" > "$WORK/peer.out" 2> "$WORK/peer.log" &
pids+=($!)
wait_for "$WORK/peer.out" listening
API=$(sed -E 's/.*api=([^ ]+).*/\1/' "$WORK/peer.out")

# The baseline: stops when its stdin closes, so it reads a FIFO held open on fd 3.
mkfifo "$WORK/health.in"
taskset -c 1 "$BIN/central-bench" --health-server < "$WORK/health.in" > "$WORK/health.out" 2> "$WORK/health.log" &
HEALTH_PID=$!; pids+=("$HEALTH_PID")
exec 3> "$WORK/health.in"
wait_for "$WORK/health.out" listening
HEALTH_ADDR=$(awk '{print $NF}' "$WORK/health.out")

# file_id NAME: the id the PServer published for NAME (waits up to 60 s).
file_id() {
  local i id
  for i in $(seq 300); do
    id=$(curl -sf "$API/api/v1/files" | python3 -c '
import json, sys
for f in json.load(sys.stdin)["files"]:
    if f["name"] == sys.argv[1]: print(f["file_id"])' "$1" 2>/dev/null || true)
    [ -n "$id" ] && { echo "$id"; return; }
    sleep 0.2
  done
  echo "$1 was never published" >&2; exit 1
}
BIG_ID=$(file_id big-1GiB.bin)
SMALL_ID=$(file_id small-1KB.bin)
echo "1 GiB file $BIG_ID, 1 KB file $SMALL_ID" >&2

# gRPC request bodies: 0x00, u32 BE length, protobuf. LocateRequest: field 1
# (tag 0x0a), length 0x40, the 64 hex chars. HealthCheckRequest: empty.
printf '\x00\x00\x00\x00\x42\x0a\x40%s' "$BIG_ID" > "$WORK/locate-big.bin"
printf '\x00\x00\x00\x00\x42\x0a\x40%s' "$SMALL_ID" > "$WORK/locate-small.bin"
printf '\x00\x00\x00\x00\x00' > "$WORK/health.bin"

LOCATE_URL=http://$CENTRAL_ADDR/peerdex.v1.Directory/Locate
HEALTH_URL=http://$HEALTH_ADDR/grpc.health.v1.Health/Check

# check NAME BODY URL: one request through curl; must be grpc-status 0 with a
# non-empty answer (for Locate: the file with its holder). Prints the answer size.
check() {
  local hdr="$WORK/$1.headers" out="$WORK/$1.answer"
  curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
    --data-binary @"$2" -D "$hdr" -o "$out" "$3"
  grep -qi '^grpc-status: *0' "$hdr" || { echo "$1: no grpc-status 0" >&2; cat "$hdr" >&2; exit 1; }
  local n; n=$(stat -c %s "$out")
  [ "$n" -ge 5 ] || { echo "$1: empty gRPC answer" >&2; exit 1; }
  echo "$n"
}
# The holder's Join may land a moment after its API lists the files: wait
# until the central answers a search for them with a holder (up to 60 s).
for i in $(seq 300); do
  curl -sf "$API/api/v1/search?q=big" | grep -q "$BIG_ID" && curl -sf "$API/api/v1/search?q=small" | grep -q "$SMALL_ID" && break
  [ "$i" = 300 ] && { echo "the central never listed the files" >&2; exit 1; }
  sleep 0.2
done
SIZE_BIG=$(check locate-big "$WORK/locate-big.bin" "$LOCATE_URL")
SIZE_SMALL=$(check locate-small "$WORK/locate-small.bin" "$LOCATE_URL")
SIZE_HEALTH=$(check health "$WORK/health.bin" "$HEALTH_URL")
grep -q "$BIG_ID" "$WORK/locate-big.answer" || { echo "Locate answer lacks the file id" >&2; exit 1; }
echo "gRPC answers (framed bytes): Locate 1 GiB $SIZE_BIG, Locate 1 KB $SIZE_SMALL, Health $SIZE_HEALTH" >&2

TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# load NAME BODY URL PID: one h2load run; prints
# "req/s server_cpu_% h2load_cpu_% requests_per_server_cpu_second".
load() {
  local log="$WORK/h2load-$1-$2.log" c0 c1 t0 t1
  c0=$(cpu_ticks "$5"); t0=$(date +%s.%N)
  taskset -c 0 /usr/bin/time -f '%U %S' -o "$log.time" h2load -t 1 -c "$CLIENTS" -m "$STREAMS" -D "$SECS" --warm-up-time=1 \
    -d "$3" -H 'content-type: application/grpc' -H 'te: trailers' "$4" > "$log" 2>&1
  t1=$(date +%s.%N); c1=$(cpu_ticks "$5")
  local rps ok fail
  rps=$(awk '/^finished in/ {for (i=1;i<=NF;i++) if ($i=="req/s,") print $(i-1)}' "$log")
  ok=$(awk '/^status codes:/ {print $3}' "$log")
  fail=$(awk '/^requests:/ {for (i=1;i<=NF;i++) if ($i=="failed,") print $(i-1)}' "$log")
  if ! { [ -n "$rps" ] && [ "${fail:-1}" = 0 ]; }; then echo "h2load run failed ($log):" >&2; cat "$log" >&2; exit 1; fi
  # Server and h2load CPU over the whole h2load process (1 s warm-up + SECS), as % of one core.
  local hu hs; read -r hu hs < "$log.time"
  python3 -c "d=$t1-$t0; c=($c1-$c0)/$TICK; print(f'{$rps:.0f} {100*c/d:.0f} {100*($hu+$hs)/d:.0f} {$rps*d/c:.0f}')"
  echo "  $1 run $2: $rps req/s, $ok HTTP 2xx, $fail failed" >&2
}

small=(); big=(); health=()
for r in $(seq "$RUNS"); do
  small+=("$(load locate-1KB "$r" "$WORK/locate-small.bin" "$LOCATE_URL" "$CENTRAL_PID")")
  big+=("$(load locate-1GiB "$r" "$WORK/locate-big.bin" "$LOCATE_URL" "$CENTRAL_PID")")
  health+=("$(load health "$r" "$WORK/health.bin" "$HEALTH_URL" "$HEALTH_PID")")
  echo "round $r: Locate 1 KB ${small[-1]} | Locate 1 GiB ${big[-1]} | Health ${health[-1]}  (req/s, server CPU %, h2load CPU %, req per server CPU-s); load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done

median() { printf '%s\n' "$@" | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
median_col() { local k=$1 x vals=(); shift; for x in "$@"; do vals+=("$(echo "$x" | awk -v k="$k" '{print $k}')"); done; median "${vals[@]}"; }
es=$(median_col 4 "${small[@]}"); eb=$(median_col 4 "${big[@]}"); eh=$(median_col 4 "${health[@]}")
f() { echo "$1" | awk -v k="$2" '{print $k}'; }
ms=$(median "${small[@]}"); mb=$(median "${big[@]}"); mh=$(median "${health[@]}")
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
runs() { local x out=""; for x in "$@"; do out+="${out:+ / }$(f "$x" 1)"; done; echo "$out"; }

echo
echo "Locate under h2load ($(h2load --version | head -1)), $(date -u '+%F %H:%M UTC'), $(nproc) cores:"
echo "server on core 1, h2load on core 0 (-t 1 -c $CLIENTS -m $STREAMS, ${SECS} s + 1 s warm-up), median of $RUNS interleaved runs"
echo
echo "| request (gRPC answer bytes) | req/s (median) | all runs | server / h2load CPU % of a core | vs baseline | req per server CPU-s (median) | vs baseline |"
echo "|---|---:|---|---:|---:|---:|---:|"
echo "| Locate, 1 KB file ($SIZE_SMALL B) | $(f "$ms" 1) | $(runs "${small[@]}") | $(f "$ms" 2) / $(f "$ms" 3) | $(ratio "$(f "$ms" 1)" "$(f "$mh" 1)")× | $es | $(ratio "$es" "$eh")× |"
echo "| Locate, 1 GiB file ($SIZE_BIG B) | $(f "$mb" 1) | $(runs "${big[@]}") | $(f "$mb" 2) / $(f "$mb" 3) | **$(ratio "$(f "$mb" 1)" "$(f "$mh" 1)")×** (goal ≥ 0.8×) | $eb | $(ratio "$eb" "$eh")× |"
echo "| Health/Check, trivial tonic server ($SIZE_HEALTH B) | $(f "$mh" 1) | $(runs "${health[@]}") | $(f "$mh" 2) / $(f "$mh" 3) | 1.00× | $eh | 1.00× |"
