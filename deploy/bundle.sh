#!/usr/bin/env bash
# Build the release bundle: dist/peerdex-<version>-<target>.tar.gz
#
#   deploy/bundle.sh                    # cargo build --release, then pack
#   deploy/bundle.sh --bin-dir DIR      # pack prebuilt binaries from DIR
#   deploy/bundle.sh --out DIR          # write the tarball to DIR (default dist/)
#
# The tarball holds one folder, peerdex-<version>-<target>/, with
#   bin/{central-server,pserver,peerdex}   release binaries (host target)
#   systemd/{central-server,pserver,peerdex-etcd}.service
#   env/{central,pserver}.env              settings templates
#   install.sh                             sudo ./install.sh --component ...
#   INSTALL                                short instructions
# <version> is the workspace version (cargo metadata), <target> the host
# triple (rustc -vV). Build on the same OS/arch as the VMs (e.g. Debian 12
# x86_64 for the default AMI) or cross-compile and pass --bin-dir.
# Prints the tarball's path on the last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bin_dir=""
out="$repo/dist"
while [[ $# -gt 0 ]]; do
	case "$1" in
	--bin-dir) bin_dir="${2:?--bin-dir needs a folder}"; shift 2 ;;
	--out) out="${2:?--out needs a folder}"; shift 2 ;;
	-h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "bundle.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
	esac
done

command -v cargo >/dev/null || { echo "bundle.sh: cargo not found" >&2; exit 1; }
command -v rustc >/dev/null || { echo "bundle.sh: rustc not found" >&2; exit 1; }

# Version of the central-server package (= the workspace version), e.g.
# "path+file:///src/peerdex/central-server#0.1.0" -> 0.1.0
version="$(cd "$repo" && cargo pkgid -p central-server | sed 's/.*[#@]//')"
target="$(rustc -vV | sed -n 's/^host: //p')"
[[ -n "$version" && -n "$target" ]] || { echo "bundle.sh: cannot read version/target" >&2; exit 1; }

if [[ -z "$bin_dir" ]]; then
	(cd "$repo" && cargo build --release --locked --bins -p central-server -p pserver -p peerdex-client) >&2
	target_dir="$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
		sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
	bin_dir="${target_dir:-$repo/target}/release"
fi

name="peerdex-$version-$target"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
pkg="$stage/$name"
mkdir -p "$pkg/bin" "$pkg/systemd" "$pkg/env"
for b in central-server pserver peerdex; do
	[[ -x "$bin_dir/$b" ]] || { echo "bundle.sh: $bin_dir/$b not found or not executable" >&2; exit 1; }
	install -m 0755 "$bin_dir/$b" "$pkg/bin/$b"
done
install -m 0644 "$here/systemd/central-server.service" "$here/systemd/pserver.service" \
	"$here/systemd/peerdex-etcd.service" "$pkg/systemd/"
install -m 0644 "$here/env/central.env" "$here/env/pserver.env" "$pkg/env/"
install -m 0755 "$here/install.sh" "$pkg/install.sh"
cat >"$pkg/INSTALL" <<EOF
peerdex $version ($target)

Install or upgrade on a systemd Linux host (Debian 12, Ubuntu 22.04+,
Amazon Linux 2023):

  tar -xzf $name.tar.gz && cd $name
  sudo ./install.sh --component central     # on the directory host
  sudo ./install.sh --component pserver     # on each peer host

First install: edit /etc/peerdex/central.env or /etc/peerdex/pserver.env
(a pserver needs PSERVER_CENTRAL_URL and PSERVER_PUBLIC_URL), then
  sudo systemctl enable --now central-server   # or: pserver
Upgrade: run install.sh from the new bundle (your env files are kept), then
  sudo systemctl restart central-server        # or: pserver
Logs:  journalctl -u central-server -f  /  journalctl -u pserver -f
Use:   peerdex   (on the peer host; it talks to the control API on 127.0.0.1:7070)

Firewall: 50051/tcp (central gRPC) only from the peers; 7071/tcp (peer API)
from everyone; never expose 7070 (control API).

Directory on etcd (several centrals): set CENTRAL_ETCD_ENDPOINTS in each
central.env; systemd/peerdex-etcd.service (installed, not enabled) runs a
member with Debian's etcd-server from /etc/peerdex/etcd.env (deploy/launch.sh
--ha sets all of this up). Open 2379/2380 only between the etcd hosts and the
centrals.
EOF

mkdir -p "$out"
out="$(cd "$out" && pwd)"
tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$out/$name.tar.gz.tmp" "$name"
mv -f "$out/$name.tar.gz.tmp" "$out/$name.tar.gz"
echo "bundle.sh: $(du -h "$out/$name.tar.gz" | cut -f1) written" >&2
echo "$out/$name.tar.gz"
