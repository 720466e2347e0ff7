#!/usr/bin/env bash
# Peers behind NAT (issue 25). Not part of CI; needs root (network
# namespaces), ip (iproute2), iptables, curl, python3.
#
#   bench/nat.sh [SIZE_MIB=1024] [RUNS=3]
#
# One simulated internet (a bridge in its own namespace, 10.77.0.0/24), as
# `peerdex_testkit::netns` builds it for the tests: a central, a relay
# (PSERVER_RELAY=true), two public PServers, and two PServers each behind
# its own NAT router (MASQUERADE out, new inbound dropped).
#
#  1. Throughput, interleaved run by run, medians: SIZE_MIB between the two
#     NATed peers (through the relay) vs the same file between the two
#     public peers (direct). Goal: relayed ≥ 0.7× direct. The relay's CPU
#     seconds per GiB carried (utime+stime from /proc/PID/stat).
#  2. Time from a firewalled PServer's start to its files being
#     downloadable by others: listed through the relay (at its Join) and its
#     tunnel to the relay up, with CENTRAL_HEARTBEAT_SECS=2. Goal < 2 s plus
#     one heartbeat.
#
# Everything lives in namespaces named pdxbench-*; they are deleted at the
# end (and at the start, if a run was interrupted).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
RUNS=${2:-3}
WORK=${BENCH_DIR:-/tmp/peerdex-bench-nat}
P=pdxbench

# shellcheck source=bench/lib.sh
. bench/lib.sh
need ip iproute2
need iptables iptables
need curl curl
need python3 python3
check_runs "$RUNS"
[ "$(id -u)" = 0 ] || { echo "bench/nat.sh needs root (network namespaces)" >&2; exit 1; }
build_release central-server pserver
BIN=${BIN:-$PWD/target/release}

cleanup() {
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap cleanup EXIT
cleanup
rm -rf "$WORK" && mkdir -p "$WORK"

# The internet.
ip netns add $P-wan
ip -n $P-wan link add br0 type bridge && ip -n $P-wan link set br0 up
public() { # NAME N: a host on the internet at 10.77.0.N; prints its address
  local ns=$P-$1 ip=10.77.0.$2
  ip netns add "$ns"
  ip link add "w$2" netns $P-wan type veth peer name eth0 netns "$ns"
  ip -n $P-wan link set "w$2" master br0 && ip -n $P-wan link set "w$2" up
  ip -n "$ns" addr add "$ip/24" dev eth0 && ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  echo "$ip"
}
nat_host() { # NAME N: a router on the internet at 10.77.0.N and one host
  # behind it, in 192.168.N.0/24; prints the host's address
  local r=$P-$1-r h=$P-$1 rip lan=192.168.$2
  rip=$(public "$1-r" "$2")
  ip netns add "$h"
  ip link add eth0 netns "$h" type veth peer name lan netns "$r"
  ip -n "$r" addr add "$lan.1/24" dev lan && ip -n "$r" link set lan up
  ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$r" iptables -w -t nat -A POSTROUTING -o eth0 -j MASQUERADE
  ip netns exec "$r" iptables -w -A FORWARD -i eth0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  ip netns exec "$r" iptables -w -A FORWARD -i eth0 -j DROP
  ip netns exec "$r" iptables -w -A INPUT -i eth0 -m conntrack --ctstate NEW -j DROP
  ip -n "$h" addr add "$lan.11/24" dev eth0 && ip -n "$h" link set eth0 up
  ip -n "$h" link set lo up
  ip -n "$h" route add default via "$lan.1"
  : "$rip"
  echo "$lan.11"
}

C=$(public c 11); R=$(public relay 12); A=$(public pa 13); B=$(public pb 14)
NA=$(nat_host na 21); NB=$(nat_host nb 22)

PIDS=()
central() {
  mkdir -p "$WORK/c"
  ip netns exec $P-c env CENTRAL_LISTEN_ADDR=0.0.0.0:50051 CENTRAL_DATA_DIR="$WORK/c" \
    CENTRAL_LEASE_TTL_SECS=6 CENTRAL_HEARTBEAT_SECS=2 RUST_LOG=warn \
    "$BIN/central-server" >"$WORK/c.out" 2>"$WORK/c.log" &
  PIDS+=($!)
}
pserver() { # NS IP NAME [ENV...]: a PServer in namespace NS at IP
  local ns=$1 ip=$2 name=$3
  shift 3
  mkdir -p "$WORK/$name/share"
  ip netns exec "$ns" env PSERVER_API_ADDR=127.0.0.1:7070 PSERVER_PEER_ADDR="$ip:7071" \
    PSERVER_SHARE_DIR="$WORK/$name/share" PSERVER_DATA_DIR="$WORK/$name/data" \
    PSERVER_CENTRAL_URL="http://$C:50051" RUST_LOG=warn "$@" \
    "$BIN/pserver" >"$WORK/$name.out" 2>"$WORK/$name.log" &
  PIDS+=($!)
}
api() { # NS PATH [CURL ARGS...]
  local ns=$1 path=$2
  shift 2
  ip netns exec "$ns" curl -fsS "$@" "http://127.0.0.1:7070$path"
}
wait_for() { # WHAT NS PYTHON-EXPR-ON-STATUS
  local _
  for _ in $(seq 300); do
    if api "$2" /api/v1/status 2>/dev/null | python3 -c "import json,sys; s=json.load(sys.stdin); sys.exit(0 if ($3) else 1)" 2>/dev/null; then return; fi
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2; exit 1
}
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # clock ticks
fetch() { # NS ID: download by id and wait; prints seconds
  local ns=$1 id=$2 job t0 t1
  t0=$(date +%s.%N)
  job=$(api "$ns" /api/v1/downloads -H 'Content-Type: application/json' \
    -d "{\"file_id\":\"$id\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
  while ! api "$ns" "/api/v1/downloads/$job" | python3 -c 'import json,sys; j=json.load(sys.stdin); sys.exit(0 if j["state"] in ("done","failed","cancelled") else 1)'; do
    sleep 0.05
  done
  t1=$(date +%s.%N)
  api "$ns" "/api/v1/downloads/$job" | python3 -c 'import json,sys; j=json.load(sys.stdin); sys.exit(0 if j["state"]=="done" else 1)' \
    || { echo "download failed" >&2; exit 1; }
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}

central
pserver $P-relay "$R" relay PSERVER_RELAY=true
RELAY_PID=${PIDS[-1]}
pserver $P-pa "$A" pa; pserver $P-pb "$B" pb
pserver $P-na "$NA" na; pserver $P-nb "$NB" nb
wait_for "the relay" $P-relay 's.get("reachability",{}).get("reachable")'
wait_for "NATed holder" $P-na 's.get("reachability",{}).get("relay_attached")'
wait_for "NATed downloader" $P-nb 's.get("reachability",{}).get("relay_attached")'

# Two files of the same size: one only on the public holder, one only on the
# NATed holder (so neither download swarms over both).
head -c $((SIZE_MIB << 20)) /dev/urandom >"$WORK/pa/share/direct.bin"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$WORK/na/share/relayed.bin"
file_id() { # NS NAME: the id once the PServer in NS shares NAME
  local id='' _
  for _ in $(seq 1200); do # hashing 1 GiB takes a few seconds
    id=$(api "$1" /api/v1/files 2>/dev/null | python3 -c "import json,sys; print(next((f['file_id'] for f in json.load(sys.stdin)['files'] if f['name']=='$2'),''))" || true)
    [ -n "$id" ] && { echo "$id"; return; }
    sleep 0.5
  done
  echo "$2 never shared" >&2; exit 1
}
ID_D=$(file_id $P-pa direct.bin)
ID_R=$(file_id $P-na relayed.bin)
sleep 3 # a heartbeat and more: both announced
echo "files of $SIZE_MIB MiB: $ID_D (direct), $ID_R (relayed)" >&2

direct=(); relayed=(); relay_cpu=()
for run in $(seq "$RUNS"); do
  rm -f "$WORK/pb/share/direct.bin" "$WORK/nb/share/relayed.bin"
  sleep 1 # the removal unpublished
  d=$(fetch $P-pb "$ID_D")
  c0=$(cpu "$RELAY_PID")
  r=$(fetch $P-nb "$ID_R")
  c1=$(cpu "$RELAY_PID")
  direct+=("$d"); relayed+=("$r"); relay_cpu+=("$(( c1 - c0 ))")
  echo "run $run: direct ${d} s, relayed ${r} s, relay CPU $(( c1 - c0 )) ticks" >&2
done

# Time to downloadable: from a fresh firewalled PServer's start to its tunnel
# to the relay being up (its files are listed through the relay at its Join).
NC=$(nat_host nc 23)
mkdir -p "$WORK/nc/share"
t0=$(date +%s.%N)
pserver $P-nc "$NC" nc PSERVER_REACHABILITY=firewalled
wait_for "the firewalled PServer's relay" $P-nc 's.get("reachability",{}).get("relay_attached")'
ready=$(python3 -c "import time; print(f'{time.time() - $t0:.2f}')")

python3 - "$SIZE_MIB" "$ready" "${direct[*]}" "${relayed[*]}" "${relay_cpu[*]}" "$(getconf CLK_TCK)" <<'EOF'
import statistics, sys
mib, ready = int(sys.argv[1]), float(sys.argv[2])
d = [float(x) for x in sys.argv[3].split()]
r = [float(x) for x in sys.argv[4].split()]
cpu = [int(x) / int(sys.argv[6]) for x in sys.argv[5].split()]
gib = mib / 1024
md, mr = statistics.median(d), statistics.median(r)
print(f"| transfer ({mib} MiB, median of {len(d)}) | seconds | MiB/s |")
print("|---|---|---|")
print(f"| public → public, direct | {md:.2f} | {mib / md:.0f} |")
print(f"| NAT → NAT, through the relay | {mr:.2f} | {mib / mr:.0f} |")
print(f"\nrelayed / direct throughput: {md / mr:.2f}x (goal >= 0.7x)")
print(f"relay CPU: {statistics.median(cpu) / gib:.2f} s per GiB carried")
print(f"firewalled start to attached (shared through its relay): {ready:.2f} s (goal < 2 s + one 2 s heartbeat)")
EOF
stop_pids "${PIDS[@]}"
