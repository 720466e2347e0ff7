# shellcheck shell=bash
# Shared by the benchmark scripts (sourced, not run): tool checks, the
# release build, and stopping what a script started.

# need CMD PACKAGE: stop with the Debian package to install if CMD is missing.
need() { command -v "$1" >/dev/null || { echo "$1 missing: apt-get install -y $2" >&2; exit 1; }; }

# need_time: GNU time (for CPU seconds of a whole command).
need_time() { [ -x /usr/bin/time ] || { echo "/usr/bin/time missing: apt-get install -y time" >&2; exit 1; }; }

# check_runs N: a sane number of interleaved runs.
check_runs() {
  if ! { [ "$1" -ge 1 ] && [ "$1" -le 20 ]; }; then echo "RUNS must be 1..20" >&2; exit 1; fi
}

# build_release PACKAGE...: release binaries, unless SKIP_BUILD is set.
build_release() {
  local args=() p
  for p in "$@"; do args+=(-p "$p"); done
  if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release --locked "${args[@]}" >&2
  fi
}

# stop_pids PID...: newest first (PServers before the central, so their
# Leave reaches it); up to 10 s each, then SIGKILL.
stop_pids() {
  local all=("$@") i p _
  for ((i = ${#all[@]} - 1; i >= 0; i--)); do
    p=${all[i]}; kill "$p" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}
