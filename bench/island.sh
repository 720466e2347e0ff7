#!/usr/bin/env bash
# A bigger island (issue 27): `central-bench --island` on etcd (3 members, 3
# centrals) and on SQLite (one central), with a central-server built before
# the change and the current one, side by side in the same run, at each size
# given. One JSON object per run is appended to OUT, tagged with the binary.
# Not part of CI.
#
#   bench/island.sh BEFORE_BIN [SIZES="2000:100000 10000:1000000"] [OUT]
#
# SIZES are PEERS:HOLDINGS pairs. BEFORE_BIN is a central-server built from
# the commit before the change (e.g. `git stash; cargo build --release -p
# central-server; cp target/release/central-server /tmp/central-before`);
# the current one is target/release/central-server. Each run starts its own
# etcd and centrals on loopback and removes them after; the machine's load
# average is in every object (`load_average`, before and after the run).
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=${1:?usage: bench/island.sh BEFORE_BIN [SIZES] [OUT]}
SIZES=${2:-"2000:100000 10000:1000000"}
OUT=${3:-/tmp/peerdex-island.jsonl}
AFTER=target/release/central-server
BENCH=target/release/central-bench
for f in "$BEFORE" "$AFTER" "$BENCH"; do
  [ -x "$f" ] || { echo "missing $f: cargo build --release -p central-server -p peerdex-bench" >&2; exit 1; }
done
for size in $SIZES; do
  peers=${size%%:*}
  files=${size##*:}
  for store in etcd sqlite; do
    for which in before after; do
      bin=$BEFORE
      [ "$which" = after ] && bin=$AFTER
      echo "== $store, $peers peers, $files holdings, $which ($(date -u +%H:%M:%S) UTC)" >&2
      json=$("$BENCH" --island --store "$store" --peers "$peers" --files "$files" \
        --central-bin "$bin" --json)
      echo "{\"binary\":\"$which\",\"result\":$json}" | tee -a "$OUT"
    done
  done
done
