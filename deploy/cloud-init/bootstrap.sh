#!/bin/bash
# peerdex first-boot script, written by cloud-init and run once from runcmd:
#   peerdex-bootstrap central|pserver BUNDLE_URL
# For a pserver it first sets PSERVER_PUBLIC_URL in /etc/peerdex/pserver.env
# from the instance metadata (IMDSv2 token, then public-ipv4; the private
# address if the instance has no public one). Then it downloads the release
# bundle, runs its install.sh (which keeps the env file cloud-init wrote) and
# enables + starts the service. Output: /var/log/cloud-init-output.log.
set -euo pipefail
component="$1"
url="$2"
log() { echo "peerdex-bootstrap: $*" >&2; }

imds() {
	local token
	token="$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \
		--retry 5 --retry-connrefused http://169.254.169.254/latest/api/token)"
	curl -fsS -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}

case "$component" in
central) service=central-server ;;
pserver)
	service=pserver
	env=/etc/peerdex/pserver.env
	port="$(sed -n 's/^PSERVER_PEER_ADDR=.*:\([0-9][0-9]*\)$/\1/p' "$env")"
	ip="$(imds public-ipv4 || true)"
	if [[ -z "$ip" ]]; then
		ip="$(imds local-ipv4)"
		log "no public IPv4: advertising the private address $ip"
	fi
	sed -i "s|^PSERVER_PUBLIC_URL=.*|PSERVER_PUBLIC_URL=http://$ip:${port:-7071}|" "$env"
	log "PSERVER_PUBLIC_URL=http://$ip:${port:-7071}"
	;;
*) log "unknown component: $component"; exit 2 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log "downloading the bundle"
curl -fsSL --retry 10 --retry-delay 3 --retry-connrefused -o "$work/bundle.tar.gz" "$url"
tar -xzf "$work/bundle.tar.gz" -C "$work"
installer="$(echo "$work"/peerdex-*/install.sh)"
[[ -x "$installer" ]] || { log "the bundle has no peerdex-*/install.sh"; exit 1; }
"$installer" --component "$component"
systemctl enable --now "$service"
log "$service enabled and started"
