#!/usr/bin/env bash
# Single-source download of a large file between two PServers on loopback,
# over TLS and over plaintext in the same run: two networks side by side
# (central + holder + getter each), the TLS one with a throwaway CA (openssl),
# the central on TLS only and both peer APIs on https. Not part of CI.
#
#   bench/tls.sh [SIZE_MIB=1024] [RUNS=3]
#
# Runs are interleaved (plaintext, then TLS, RUNS times); medians reported.
# Each transfer is a real `peerdex get` (BLAKE3-verified on serve and on
# receipt, fsync'd, published). Measured: wall time, and the CPU seconds
# (utime+stime from /proc/PID/stat, before and after) of the sending and the
# receiving PServer, per GiB. Before each transfer a scratch file of the same
# size is written and deleted (see warm_pages in bench/single-source.sh).
#
# Needs openssl, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
RUNS=${2:-3}
WORK=${BENCH_DIR:-/tmp/peerdex-bench-tls}

# shellcheck source=bench/lib.sh
. bench/lib.sh
need openssl openssl
need curl curl
need python3 python3
check_runs "$RUNS"
build_release central-server pserver peerdex-client

rm -rf "$WORK"; mkdir -p "$WORK"/tls
# Run a copy of the binaries: the shared target dir may be rebuilt meanwhile.
BIN=$WORK/bin; mkdir -p "$BIN"
for b in central-server pserver peerdex; do cp "target/release/$b" "$BIN/"; done
echo "binaries from $(git rev-parse --short HEAD)$(git status --porcelain -- pserver central-server proto client | grep -q . && echo ' + uncommitted changes')" >&2
echo "creating a ${SIZE_MIB} MiB random file…" >&2
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/big.bin"

# A throwaway CA and one loopback certificate for every process (EC P-256).
T=$WORK/tls
(umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$T/ca-key.pem" -out "$T/ca.pem" -days 2 -subj "/CN=peerdex bench CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null)
leaf() {
  (umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$T/$1-key.pem" -out "$T/$1.csr" -subj "/CN=$1" 2>/dev/null &&
    openssl x509 -req -in "$T/$1.csr" -CA "$T/ca.pem" -CAkey "$T/ca-key.pem" -set_serial "0x$(openssl rand -hex 16)" \
      -days 2 -out "$T/$1.pem" -extfile <(printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        "extendedKeyUsage=serverAuth") 2>/dev/null)
}
for n in central holder getter; do leaf "$n"; done

pids=()
cleanup() { stop_pids "${pids[@]}"; wait 2>/dev/null || true; }
trap cleanup EXIT

# wait_for FILE PATTERN: up to 60 s for PATTERN to appear in FILE.
wait_for() {
  local i
  for i in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2 || true; exit 1
}

# start_net NAME tls|plain: a central, a holder sharing big.bin and a getter.
# Sets <NAME>_HOLDER_PID, <NAME>_GETTER_PID, <NAME>_GETTER_API, <NAME>_ID.
start_net() {
  local net=$1 mode=$2 d="$WORK/$1" central_env=() scheme=http
  mkdir -p "$d"/{central,holder/share,holder/data,getter/share,getter/data}
  cp "$WORK/big.bin" "$d/holder/share/big.bin"
  if [ "$mode" = tls ]; then
    central_env=(CENTRAL_TLS_CERT="$T/central.pem" CENTRAL_TLS_KEY="$T/central-key.pem"); scheme=https
  fi
  env "${central_env[@]+"${central_env[@]}"}" "$BIN/central-server" --listen-addr 127.0.0.1:0 \
    --data-dir "$d/central" > "$d/central.out" 2> "$d/central.log" &
  pids+=($!)
  wait_for "$d/central.out" listening
  local central p peer_env
  central="$scheme://$(awk '{print $NF}' "$d/central.out")"
  for p in holder getter; do
    peer_env=(PSERVER_API_ADDR=127.0.0.1:0 PSERVER_PEER_ADDR=127.0.0.1:0 PSERVER_SHARE_DIR="$d/$p/share"
      PSERVER_DATA_DIR="$d/$p/data" PSERVER_CENTRAL_URL="$central" RUST_LOG=warn)
    if [ "$mode" = tls ]; then
      peer_env+=(PSERVER_TLS_CERT="$T/$p.pem" PSERVER_TLS_KEY="$T/$p-key.pem" PSERVER_CA_FILE="$T/ca.pem")
    fi
    env "${peer_env[@]}" "$BIN/pserver" > "$d/$p.out" 2> "$d/$p.log" &
    pids+=($!)
    printf -v "${net}_${p^^}_PID" '%s' "$!"
    wait_for "$d/$p.out" listening
  done
  grep -q "public=$scheme://" "$d/holder.out" || { echo "$net: holder is not on $scheme" >&2; exit 1; }
  local holder_api getter_api id i
  holder_api=$(sed -E 's/.*api=([^ ]+).*/\1/' "$d/holder.out")
  getter_api=$(sed -E 's/.*api=([^ ]+).*/\1/' "$d/getter.out")
  for i in $(seq 600); do curl -sf "$holder_api/api/v1/files" | grep -q big.bin && break; sleep 0.2; done
  id=$(curl -sf "$holder_api/api/v1/files" | python3 -c 'import json,sys; print(json.load(sys.stdin)["files"][0]["file_id"])')
  for i in $(seq 300); do curl -sf "$getter_api/api/v1/search?q=big" | grep -q "$id" && break; sleep 0.2; done
  printf -v "${net}_GETTER_API" '%s' "$getter_api"
  printf -v "${net}_ID" '%s' "$id"
}
start_net plain plain
start_net tls tls

now() { date +%s.%N; }
warm_pages() {
  dd if=/dev/zero of="$WORK/warm.bin" bs=1M count="$((SIZE_MIB + 64))" status=none
  rm -f "$WORK/warm.bin"
}
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
py() { python3 -c "$1"; }

# one NET: a timed `peerdex get`; prints "seconds sender_cpu_s receiver_cpu_s".
one() {
  local net=$1 api id hpid gpid
  api=${net}_GETTER_API; api=${!api}; id=${net}_ID; id=${!id}
  hpid=${net}_HOLDER_PID; hpid=${!hpid}; gpid=${net}_GETTER_PID; gpid=${!gpid}
  curl -sf -X DELETE "$api/api/v1/files/$id" >/dev/null 2>&1 || true
  [ ! -e "$WORK/$net/getter/share/big.bin" ] || { echo "$net: the getter still has big.bin" >&2; exit 1; }
  sync; warm_pages
  local c0 g0 t0 c1 g1 t1 state
  c0=$(cpu_ticks "$hpid"); g0=$(cpu_ticks "$gpid"); t0=$(now)
  "$BIN/peerdex" --pserver "$api" --json get "$id" > "$WORK/$net/get.json"
  t1=$(now); c1=$(cpu_ticks "$hpid"); g1=$(cpu_ticks "$gpid")
  state=$(py "import json; print(json.load(open('$WORK/$net/get.json'))['job']['state'])")
  [ "$state" = "done" ] || { echo "$net: download ended in state $state" >&2; cat "$WORK/$net/get.json" >&2; exit 1; }
  cmp "$WORK/big.bin" "$WORK/$net/getter/share/big.bin"
  py "print(f'{$t1-$t0:.3f} {($c1-$c0)/$TICK:.2f} {($g1-$g0)/$TICK:.2f}')"
}

plain_runs=(); tls_runs=()
for i in $(seq "$RUNS"); do
  plain_runs+=("$(one plain)")
  tls_runs+=("$(one tls)")
  echo "run $i: plaintext ${plain_runs[-1]} | TLS ${tls_runs[-1]}  (s, sender CPU s, receiver CPU s); load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done
# The TLS transfer really was TLS: the holder's peer API refuses plaintext.
tls_peer=$(sed -E 's/.*peer=([^ ]+).*/\1/' "$WORK/tls/holder.out")
tls_id=tls_ID
if curl -s -o /dev/null "http${tls_peer#https}/peer/v1/files/${!tls_id}"; then
  echo "the TLS holder answered plaintext HTTP" >&2; exit 1
fi

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
f() { echo "$1" | awk -v k="$2" '{print $k}'; }
col() { local k=$1 x out=""; shift; for x in "$@"; do out+="${out:+ / }$(f "$x" "$k")"; done; echo "$out"; }
median_of() { local k=$1; shift; local x vals=(); for x in "$@"; do vals+=("$(f "$x" "$k")"); done; median "${vals[@]}"; }
GIB=$(py "print($SIZE_MIB/1024)")
row() { # label runs...
  local label=$1; shift
  local t s r
  t=$(median_of 1 "$@"); s=$(median_of 2 "$@"); r=$(median_of 3 "$@")
  echo "| $label | $t | $(py "print(f'{$SIZE_MIB/$t:.0f}')") | $(py "print(f'{$s/$GIB:.2f}')") | $(py "print(f'{$r/$GIB:.2f}')") | $(col 1 "$@") |"
}
pt=$(median_of 1 "${plain_runs[@]}"); tt=$(median_of 1 "${tls_runs[@]}")
echo
echo "Single-source ${SIZE_MIB} MiB \`peerdex get\` on loopback, TLS vs plaintext, $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(date -u '+%F %H:%M UTC'), median of $RUNS interleaved runs"
echo
echo "| transport | median s | MiB/s | sender CPU s per GiB | receiver CPU s per GiB | all runs (s) |"
echo "|---|---:|---:|---:|---:|---|"
row "plaintext HTTP/1.1" "${plain_runs[@]}"
row "TLS 1.3 (rustls, ring; HTTP/1.1)" "${tls_runs[@]}"
echo
echo "Throughput ratio TLS / plaintext: **$(py "print(f'{$pt/$tt:.2f}')")×**"
