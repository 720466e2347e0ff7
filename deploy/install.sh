#!/usr/bin/env bash
# Install (or upgrade) peerdex from an unpacked release bundle.
#
#   sudo ./install.sh --component central     # the directory VM
#   sudo ./install.sh --component pserver     # a peer VM
#   sudo ./install.sh --component all         # both on one machine
#
# What it does, every step safe to repeat (idempotent):
#   * creates the system user/group `peerdex` (no login, no home);
#   * creates /etc/peerdex and /var/lib/peerdex/{central,pserver,share}
#     owned by peerdex (mode 0750);
#   * copies the binaries to /usr/local/bin (all three: central-server,
#     pserver, peerdex — replaced on upgrade);
#   * copies the systemd unit(s) of the component to /etc/systemd/system
#     (a central also gets peerdex-etcd.service, the etcd member a central
#     runs beside it with launch.sh --ha; it stays disabled otherwise);
#   * copies the env template(s) to /etc/peerdex/<component>.env ONLY if that
#     file does not exist yet (your settings survive upgrades);
#   * runs `systemctl daemon-reload` when systemd is running.
# It does not start or restart anything: after a first install run
#   systemctl enable --now central-server   (or pserver)
# and after an upgrade
#   systemctl restart central-server        (or pserver)
#
# --root DIR installs into DIR instead of / (for packaging and tests): no user
# is created, nothing is chowned and systemctl is not called.
set -euo pipefail

usage() {
	sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
	echo
	echo "usage: $0 --component central|pserver|all [--root DIR]"
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
component=""
root=""
while [[ $# -gt 0 ]]; do
	case "$1" in
	--component) component="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
	--component=*) component="${1#*=}"; shift ;;
	--root) root="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
	--root=*) root="${1#*=}"; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
done

case "$component" in
# extra: installed, never started by this script's hints (peerdex-etcd runs
# only on a directory on etcd: the first boot of launch.sh --ha enables it).
central) units=(central-server); envs=(central); extra=(peerdex-etcd) ;;
pserver) units=(pserver); envs=(pserver); extra=() ;;
all) units=(central-server pserver); envs=(central pserver); extra=(peerdex-etcd) ;;
"") echo "install.sh: --component central|pserver|all is required" >&2; exit 2 ;;
*) echo "install.sh: unknown component '$component' (central, pserver or all)" >&2; exit 2 ;;
esac

if [[ -n "$root" ]]; then
	mkdir -p "$root"
	root="$(cd "$root" && pwd)"
elif [[ $EUID -ne 0 ]]; then
	echo "install.sh: must run as root (sudo $0 --component $component), or with --root DIR" >&2
	exit 1
fi

for f in bin/central-server bin/pserver bin/peerdex; do
	[[ -f "$here/$f" ]] || { echo "install.sh: $here/$f is missing (not an unpacked bundle?)" >&2; exit 1; }
done

log() { echo "install.sh: $*"; }

# 1. user
if [[ -z "$root" ]]; then
	if ! getent group peerdex >/dev/null; then
		groupadd --system peerdex
		log "created group peerdex"
	fi
	if ! getent passwd peerdex >/dev/null; then
		nologin="$(command -v nologin || echo /usr/sbin/nologin)"
		useradd --system --gid peerdex --no-create-home --home-dir /var/lib/peerdex \
			--shell "$nologin" --comment "peerdex daemons" peerdex
		log "created user peerdex"
	fi
fi

# 2. folders
install -d -m 0755 "$root/etc/peerdex" "$root/usr/local/bin" "$root/etc/systemd/system"
install -d -m 0755 "$root/var/lib/peerdex"
for d in central pserver share; do
	install -d -m 0750 "$root/var/lib/peerdex/$d"
	[[ -n "$root" ]] || chown peerdex:peerdex "$root/var/lib/peerdex/$d"
done

# 3. binaries (atomic replace, so a running daemon keeps its old inode)
for b in central-server pserver peerdex; do
	install -m 0755 "$here/bin/$b" "$root/usr/local/bin/.$b.new"
	mv -f "$root/usr/local/bin/.$b.new" "$root/usr/local/bin/$b"
done
log "installed central-server, pserver, peerdex to $root/usr/local/bin"

# 4. units
for u in "${units[@]}" "${extra[@]+"${extra[@]}"}"; do
	install -m 0644 "$here/systemd/$u.service" "$root/etc/systemd/system/$u.service"
	log "installed unit $root/etc/systemd/system/$u.service"
done

# 5. settings, only when absent
for e in "${envs[@]}"; do
	dst="$root/etc/peerdex/$e.env"
	if [[ -e "$dst" ]]; then
		log "kept existing $dst"
	else
		install -m 0640 "$here/env/$e.env" "$dst"
		[[ -n "$root" ]] || chgrp peerdex "$dst"
		log "wrote $dst from the template; edit it before starting"
	fi
done

# 6. systemd
if [[ -z "$root" ]] && [[ -d /run/systemd/system ]]; then
	systemctl daemon-reload
	log "systemd reloaded"
fi

log "done. First install: systemctl enable --now ${units[*]}; upgrade: systemctl restart ${units[*]}"
