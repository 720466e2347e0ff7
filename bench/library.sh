#!/usr/bin/env bash
# Issue 30: a PServer on a library of N files in F folders (1 KiB each).
#
#   bench/library.sh [N] [F]             (defaults 100000 1000)
#
# Starts one release central (metrics on) and one release PServer on the
# library, twice: first with no hash cache (every file hashed), then again
# over the same data folder (hashes cached). For each start it reports the
# time until the directory lists all N files (`peerdex_central_files` on
# the central's /metrics), the PServer's CPU seconds and peak RSS until
# then, then its CPU over 60 s at rest (goal < 1 % of a core) and its RSS at
# rest (goal < 150 MiB).
#
# Side by side, in the same run: BEFORE_PSERVER=path/to/pserver (a build of
# the code before the change, e.g. `git worktree add /tmp/before e092046 &&
# cargo build --release -p pserver` there) runs the same steps with that
# binary against the same central build. The old PServer reads one folder
# level only, so "before" gets the same N files in ONE flat folder (what it
# can share at all) and PSERVER_RESCAN_SECS=2 (its default then).
# SKIP_AFTER=1 runs the "before" rows only (with BEFORE_PSERVER).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
need curl curl
N=${1:-100000}
F=${2:-1000}
build_release central-server pserver
BIN=target/release
WORK=$(mktemp -d /tmp/peerdex-library.XXXXXX)
PIDS=()
trap 'stop_pids "${PIDS[@]}"; rm -rf "$WORK"' EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# make_tree DIR FOLDERS: N files of 1 KiB, distinct, in FOLDERS folders.
make_tree() {
  python3 - "$1" "$2" "$N" <<'PY'
import os, sys
root, folders, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per = (n + folders - 1) // folders
for i in range(n):
    f = i // per
    d = os.path.join(root, f"Artist {f // 10}", f"Album {f}") if folders > 1 else root
    os.makedirs(d, exist_ok=True)
    body = (f"{i:08d}" * 128).encode()[:1024]
    with open(os.path.join(d, f"Track {i:06d}.txt"), "wb") as fh:
        fh.write(body)
PY
}

# stat_of PID: "utime+stime seconds" and VmHWM/VmRSS (KiB) of a process.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$1/stat"; }
mem_of() { awk -v k="$2" '$1==k":" {print $2}' "/proc/$1/status"; }

listed() { curl -s "http://$METRICS/metrics" | awk '/^peerdex_central_files /{print $2}'; }

# run LABEL PSERVER_BIN SHARE DATA RESCAN DEADLINE_SECS
run() {
  local label=$1 bin=$2 share=$3 data=$4 rescan=$5 deadline=$6 api peer start pid t cpu0 cpu1 hwm rss note=""
  api=$(port); peer=$(port)
  start=$(date +%s.%N)
  PSERVER_API_ADDR=127.0.0.1:$api PSERVER_PEER_ADDR=127.0.0.1:$peer \
    PSERVER_PUBLIC_URL=http://127.0.0.1:$peer PSERVER_SHARE_DIR=$share PSERVER_DATA_DIR=$data \
    PSERVER_CENTRAL_URL=http://$CENTRAL PSERVER_MIN_FREE_BYTES=0 PSERVER_RESCAN_SECS=$rescan \
    RUST_LOG=warn "$bin" >"$WORK/$label.log" 2>&1 &
  pid=$!
  while [ "$(listed)" != "$N" ]; do
    kill -0 "$pid" 2>/dev/null || { echo "$label: pserver exited; see $WORK/$label.log" >&2; tail "$WORK/$label.log" >&2; return 1; }
    if [ "$(echo "$(date +%s.%N) - $start > $deadline" | bc)" = 1 ]; then note=" (not all listed: $(listed))"; break; fi
    sleep 0.2
  done
  t=$(echo "$(date +%s.%N) - $start" | bc)
  cpu0=$(cpu_of "$pid"); hwm=$(mem_of "$pid" VmHWM)
  sleep 60
  cpu1=$(cpu_of "$pid"); rss=$(mem_of "$pid" VmRSS)
  printf '| %s | %.1f s%s | %.1f CPU-s | %d MiB | %.2f %% of a core | %d MiB |\n' \
    "$label" "$t" "$note" "$cpu0" $((hwm / 1024)) "$(echo "($cpu1 - $cpu0) * 100 / 60" | bc -l)" $((rss / 1024))
  stop_pids "$pid"
  # The central forgets the peer at its Leave; wait until it lists none.
  while [ "$(listed)" != "0" ] && [ -n "$(listed)" ]; do sleep 0.2; done
}

CENTRAL=127.0.0.1:$(port); METRICS=127.0.0.1:$(port)
CENTRAL_LISTEN_ADDR=$CENTRAL CENTRAL_METRICS_ADDR=$METRICS CENTRAL_DATA_DIR=$WORK/central \
  RUST_LOG=warn "$BIN/central-server" >"$WORK/central.log" 2>&1 &
PIDS+=($!)
until curl -sf "http://$METRICS/metrics" >/dev/null; do sleep 0.1; done

echo "# $N files of 1 KiB in $F folders; $(date -u); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
make_tree "$WORK/tree" "$F"
echo "| start | until all listed | CPU until then | peak RSS | idle CPU over 60 s | RSS at rest |"
echo "|---|---:|---:|---:|---:|---:|"
if [ -z "${SKIP_AFTER:-}" ]; then
  run "after, hashes not cached" "$BIN/pserver" "$WORK/tree" "$WORK/data" 3600 900
  run "after, hashes cached" "$BIN/pserver" "$WORK/tree" "$WORK/data" 3600 900
fi
if [ -n "${BEFORE_PSERVER:-}" ]; then
  make_tree "$WORK/flat" 1
  # The old Join of 100k files is over the message limit: it never
  # joins; measured for 120 s.
  run "before (flat folder), not cached" "$BEFORE_PSERVER" "$WORK/flat" "$WORK/data-before" 2 120 || true
  run "before (flat folder), cached" "$BEFORE_PSERVER" "$WORK/flat" "$WORK/data-before" 2 120 || true
fi
