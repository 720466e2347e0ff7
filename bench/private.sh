#!/usr/bin/env bash
# A private file vs the same file shared plainly (issue 28): a single-source
# download of SIZE_MIB between two PServers on loopback, end to end through
# `peerdex get`, in the same run. Plain: `peerdex get ID` (verified chunks,
# fsync, moved into the share folder). Private: `peerdex get TICKET` (the
# ciphertext verified the same way and kept as a blob, and opened while it
# downloads: AES-256-GCM STREAM, each 64 KiB segment of the verified
# prefix authenticated and decrypted into a temp file flushed as it grows,
# moved into the private folder once all is verified). Not part of CI.
#
#   bench/private.sh [SIZE_MIB=1024] [RUNS=3]
#
# Runs are interleaved (plain, then private, RUNS times); medians reported,
# with the CPU seconds per GiB of the holder (serving, verify-on-serve) and
# of the downloader (receiving, verifying, and for the private file
# decrypting), from /proc/PID/stat before and after each download. Before
# each timed transfer a scratch file of the size of what it writes is
# written and deleted (equal page-cache conditions, see single-source.sh).
#
# Needs curl, python3, procps.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
RUNS=${2:-3}
WORK=${BENCH_DIR:-/tmp/peerdex-bench-private}

# shellcheck source=bench/lib.sh
. bench/lib.sh
need curl curl
need python3 python3
need ps procps
check_runs "$RUNS"
build_release central-server pserver peerdex-client

rm -rf "$WORK"; mkdir -p "$WORK"/{src,central,holder/share,holder/data,getter/share,getter/data}
BIN=$WORK/bin; mkdir -p "$BIN"
for b in central-server pserver peerdex; do cp "target/release/$b" "$BIN/"; done
echo "binaries from $(git rev-parse --short HEAD)$(git status --porcelain -- pserver central-server proto client | grep -q . && echo ' + uncommitted changes')" >&2
echo "creating a ${SIZE_MIB} MiB random file…" >&2
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/src/big.bin"
cp "$WORK/src/big.bin" "$WORK/holder/share/big.bin"

pids=()
cleanup() { stop_pids "${pids[@]}"; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_for() {
  local i
  for i in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2 || true; exit 1
}

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
for i in $(seq 600); do curl -sf "$HOLDER_API/api/v1/files" | grep -q big.bin && break; sleep 0.2; done
ID=$(curl -sf "$HOLDER_API/api/v1/files" | python3 -c 'import json,sys; print(json.load(sys.stdin)["files"][0]["file_id"])')
echo "uploading the same file privately…" >&2
"$BIN/peerdex" --pserver "$HOLDER_API" --json upload --private "$WORK/src/big.bin" > "$WORK/private.json"
read -r PID_ TICKET < <(python3 -c "import json; f=json.load(open('$WORK/private.json'))['files'][0]; print(f['file_id'], f['ticket'])")
for i in $(seq 300); do curl -sf "$GETTER_API/api/v1/search?q=big" | grep -q "$ID" && break; sleep 0.2; done
for i in $(seq 300); do curl -sf "$GETTER_API/api/v1/search?q=${PID_:0:16}" | grep -q "$PID_" && break; sleep 0.2; done

now() { date +%s.%N; }
warm_pages() {
  dd if=/dev/zero of="$WORK/warm.bin" bs=1M count="$((SIZE_MIB * $1 + 64))" status=none
  rm -f "$WORK/warm.bin"
}
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
py() { python3 -c "$1"; }

plain_runs=(); priv_runs=()   # each: "seconds holder_cpu_s getter_cpu_s"
timed() { # label command...: appends to LAST
  local c0 g0 t0 t1 c1 g1
  c0=$(cpu_ticks "$HOLDER_PID"); g0=$(cpu_ticks "$GETTER_PID"); t0=$(now)
  "$@" > "$WORK/get.json"
  t1=$(now); c1=$(cpu_ticks "$HOLDER_PID"); g1=$(cpu_ticks "$GETTER_PID")
  state=$(py "import json; print(json.load(open('$WORK/get.json'))['job']['state'])")
  [ "$state" = "done" ] || { echo "download ended in state $state" >&2; cat "$WORK/get.json" >&2; exit 1; }
  LAST=$(py "print(f'{$t1-$t0:.3f} {($c1-$c0)/$TICK:.2f} {($g1-$g0)/$TICK:.2f}')")
}
for i in $(seq "$RUNS"); do
  curl -sf -X DELETE "$GETTER_API/api/v1/files/$ID" >/dev/null 2>&1 || true
  sync; warm_pages 1
  timed "$BIN/peerdex" --pserver "$GETTER_API" --json get "$ID"
  cmp "$WORK/src/big.bin" "$WORK/getter/share/big.bin"
  plain_runs+=("$LAST")

  # The getter forgets the private file: key, ciphertext, plaintext.
  curl -sf -X DELETE "$GETTER_API/api/v1/private/$PID_" >/dev/null 2>&1 || true
  [ ! -e "$WORK/getter/data/private/big.bin" ] || { echo "the getter still has the plaintext" >&2; exit 1; }
  sync; warm_pages 2   # it writes the ciphertext and the plaintext
  timed "$BIN/peerdex" --pserver "$GETTER_API" --json get "$TICKET"
  cmp "$WORK/src/big.bin" "$WORK/getter/data/private/big.bin"
  priv_runs+=("$LAST")
  echo "run $i: plain ${plain_runs[-1]} | private ${priv_runs[-1]}  (s, holder CPU s, getter CPU s); load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done

median() { printf '%s\n' "$@" | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
f() { echo "$1" | awk -v k="$2" '{print $k}'; }
col() { local k=$1 x out=""; shift; for x in "$@"; do out+="${out:+ / }$(f "$x" "$k")"; done; echo "$out"; }
median_of() { local k=$1; shift; local x vals=(); for x in "$@"; do vals+=("$(f "$x" "$k")"); done; median "${vals[@]}"; }
pm=$(median_of 1 "${plain_runs[@]}"); qm=$(median_of 1 "${priv_runs[@]}")
GIB=$(py "print($SIZE_MIB/1024)")
per() { py "print(f'{$1/$GIB:.2f}')"; }
echo
echo "Private vs plain, single source, ${SIZE_MIB} MiB on loopback, $(nproc) cores, $(date -u '+%F %H:%M UTC'), median of $RUNS interleaved runs"
echo
echo "| download | median s | MiB/s | all runs (s) | holder CPU s per GiB | downloader CPU s per GiB | ratio vs plain |"
echo "|---|---:|---:|---|---:|---:|---:|"
echo "| plain \`peerdex get ID\` | $pm | $(py "print(f'{$SIZE_MIB/$pm:.0f}')") | $(col 1 "${plain_runs[@]}") | $(per "$(median_of 2 "${plain_runs[@]}")") | $(per "$(median_of 3 "${plain_runs[@]}")") | 1.00 |"
echo "| private \`peerdex get TICKET\` | $qm | $(py "print(f'{$SIZE_MIB/$qm:.0f}')") | $(col 1 "${priv_runs[@]}") | $(per "$(median_of 2 "${priv_runs[@]}")") | $(per "$(median_of 3 "${priv_runs[@]}")") | **$(py "print(f'{$pm/$qm:.2f}')")×** (goal ≥ 0.8×) |"
