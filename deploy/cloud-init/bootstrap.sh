#!/bin/bash
# peerdex first-boot script, written by cloud-init and run once from runcmd:
#   peerdex-bootstrap central|pserver BUNDLE_URL [TLS_URL]
# For a pserver it first sets PSERVER_PUBLIC_URL in /etc/peerdex/pserver.env
# from the instance metadata (IMDSv2 token, then public-ipv4; the private
# address if the instance has no public one): https:// when the env file sets
# PSERVER_TLS_CERT. Then it downloads the release bundle, runs its install.sh
# (which keeps the env file cloud-init wrote), installs this VM's TLS files
# from TLS_URL (a tar of ca.pem, cert.pem, key.pem and join.secret that
# launch.sh uploads once the VM's addresses are known: retried until it is
# there) into /etc/peerdex/tls (key 0600, owned by peerdex), writes the join
# secret of the deployment's private network into the env file
# (CENTRAL_JOIN_SECRET / PSERVER_JOIN_SECRET; the secret never appears in
# user-data), and enables + starts the service.
# A central of a directory on etcd (launch.sh --ha) finds two more files in
# its tar: etcd.env (the ETCD_* settings of this VM's member of the static
# 3-member cluster) and etcd.endpoints (every member's client URL, written to
# CENTRAL_ETCD_ENDPOINTS). It then installs Debian's etcd-server with the
# package's own etcd.service masked, starts peerdex-etcd.service (data in
# /var/lib/peerdex-etcd), waits until the cluster is healthy (the other
# members boot at the same time) and only then starts the central.
# Output: /var/log/cloud-init-output.log.
set -euo pipefail
component="$1"
url="$2"
tls_url="${3:-}"
log() { echo "peerdex-bootstrap: $*" >&2; }

imds() {
	local token
	token="$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \
		--retry 5 --retry-connrefused http://169.254.169.254/latest/api/token)"
	curl -fsS -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}

case "$component" in
central)
	service=central-server
	env=/etc/peerdex/central.env
	secret_var=CENTRAL_JOIN_SECRET
	;;
pserver)
	service=pserver
	env=/etc/peerdex/pserver.env
	secret_var=PSERVER_JOIN_SECRET
	port="$(sed -n 's/^PSERVER_PEER_ADDR=.*:\([0-9][0-9]*\)$/\1/p' "$env")"
	ip="$(imds public-ipv4 || true)"
	if [[ -z "$ip" ]]; then
		ip="$(imds local-ipv4)"
		log "no public IPv4: advertising the private address $ip"
	fi
	scheme=http
	if grep -q '^PSERVER_TLS_CERT=.' "$env"; then scheme=https; fi
	sed -i "s|^PSERVER_PUBLIC_URL=.*|PSERVER_PUBLIC_URL=$scheme://$ip:${port:-7071}|" "$env"
	log "PSERVER_PUBLIC_URL=$scheme://$ip:${port:-7071}"
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
if [[ -n "$tls_url" ]]; then
	log "waiting for this VM's TLS files"
	curl -fsSL --retry 120 --retry-delay 5 --retry-all-errors -o "$work/tls.tar" "$tls_url"
	install -d -m 0750 -o root -g peerdex /etc/peerdex/tls
	(umask 077 && tar -xf "$work/tls.tar" --no-same-owner --no-same-permissions -C /etc/peerdex/tls ca.pem cert.pem key.pem join.secret)
	chown root:peerdex /etc/peerdex/tls/ca.pem /etc/peerdex/tls/cert.pem
	chmod 0644 /etc/peerdex/tls/ca.pem /etc/peerdex/tls/cert.pem
	chown peerdex:peerdex /etc/peerdex/tls/key.pem
	chmod 0600 /etc/peerdex/tls/key.pem
	log "TLS files installed in /etc/peerdex/tls"
	secret="$(tr -dc '0-9a-f' </etc/peerdex/tls/join.secret)"
	rm -f /etc/peerdex/tls/join.secret
	[[ ${#secret} -ge 16 ]] || { log "the join secret in the TLS tar is missing or short"; exit 1; }
	sed -i "s|^$secret_var=.*|$secret_var=$secret|" "$env"
	log "joined the deployment's private network ($secret_var set in $env)"
	if [[ "$component" == central ]] && tar -tf "$work/tls.tar" etcd.env >/dev/null 2>&1; then
		tar -xf "$work/tls.tar" --no-same-owner -C "$work" etcd.env etcd.endpoints
		install -m 0644 -o root -g root "$work/etcd.env" /etc/peerdex/etcd.env
		endpoints="$(tr -d '[:space:]' <"$work/etcd.endpoints")"
		[[ "$endpoints" =~ ^http://[0-9.]+:2379(,http://[0-9.]+:2379)*$ ]] || { log "bad etcd.endpoints: $endpoints"; exit 1; }
		sed -i "s|^CENTRAL_ETCD_ENDPOINTS=.*|CENTRAL_ETCD_ENDPOINTS=$endpoints|" "$env"
		log "the directory is on etcd: CENTRAL_ETCD_ENDPOINTS=$endpoints"
		# The package's own etcd.service (a 1-member cluster on loopback)
		# never starts: this VM's member is peerdex-etcd.service.
		systemctl mask etcd.service
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -q
		apt-get install -y -q --no-install-recommends etcd-server
		systemctl enable --now peerdex-etcd
		log "waiting for the etcd cluster to be healthy (its 3 members boot together)"
		healthy=no
		for _ in $(seq 180); do
			if curl -fsS --max-time 3 http://127.0.0.1:2379/health 2>/dev/null | grep -q '"health":"true"'; then
				healthy=yes
				break
			fi
			sleep 5
		done
		[[ $healthy == yes ]] || log "warning: etcd is not healthy after 15 minutes (journalctl -u peerdex-etcd); starting the central anyway"
	fi
fi
systemctl enable --now "$service"
log "$service enabled and started"
