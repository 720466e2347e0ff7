#!/usr/bin/env bash
# Render the cloud-init user-data of one instance to stdout.
#
#   deploy/render.sh central --bundle-url URL [--tls-url URL] [--set NAME=VALUE]...
#   deploy/render.sh pserver --bundle-url URL --set PSERVER_CENTRAL_URL=https://10.0.0.5:50051 \
#       [--set PSERVER_NEIGHBOURS=https://10.0.0.6:7071] [--set NAME=VALUE]...
#
# Takes deploy/cloud-init/<component>.yaml, embeds deploy/env/<component>.env
# (with every --set applied; NAME must be a setting of that template) as
# /etc/peerdex/<component>.env and deploy/cloud-init/bootstrap.sh as
# /usr/local/sbin/peerdex-bootstrap, and passes the bundle URL (and the URL of
# the VM's TLS files, --tls-url) to the bootstrap in runcmd. Used by
# launch.sh; handy to review what a VM gets.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "render.sh: $*" >&2; exit 2; }

component="${1:-}"
if [[ "$component" == -h || "$component" == --help ]]; then
	sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
fi
[[ "$component" == central || "$component" == pserver ]] ||
	die "first argument must be central or pserver (see --help)"
shift
bundle_url=""
tls_url=""
sets=()
while [[ $# -gt 0 ]]; do
	case "$1" in
	--bundle-url) bundle_url="${2:-}"; shift 2 || die "--bundle-url needs a value" ;;
	--tls-url) tls_url="${2:-}"; shift 2 || die "--tls-url needs a value" ;;
	--set) sets+=("${2:-}"); shift 2 || die "--set needs NAME=VALUE" ;;
	*) die "unknown argument: $1" ;;
	esac
done
[[ -n "$bundle_url" ]] || die "--bundle-url is required"
# The URL goes into a double-quoted YAML string and a shell argument.
[[ "$bundle_url" =~ ^https?://[^[:space:]\"\'\\]+$ ]] ||
	die "--bundle-url must be an http(s) URL without spaces, quotes or backslashes: $bundle_url"
[[ -z "$tls_url" || "$tls_url" =~ ^https?://[^[:space:]\"\'\\]+$ ]] ||
	die "--tls-url must be an http(s) URL without spaces, quotes or backslashes: $tls_url"

env_text="$(cat "$here/env/$component.env")"
for kv in "${sets[@]+"${sets[@]}"}"; do
	[[ "$kv" == *=* ]] || die "--set needs NAME=VALUE, got: $kv"
	name="${kv%%=*}"
	value="${kv#*=}"
	[[ "$name" =~ ^[A-Z][A-Z0-9_]*$ ]] || die "bad setting name: $name"
	[[ "$value" != *$'\n'* && "$value" != *$'\r'* ]] || die "$name: value must be one line"
	grep -q "^$name=" <<<"$env_text" || die "$name is not a setting of env/$component.env"
	env_text="$(NAME="$name" VALUE="$value" awk '
		index($0, ENVIRON["NAME"] "=") == 1 { print ENVIRON["NAME"] "=" ENVIRON["VALUE"]; next }
		{ print }' <<<"$env_text")"
done

indent() { sed 's/^\(.\)/      \1/'; }
env_block="$(indent <<<"$env_text")"
boot_block="$(indent <"$here/cloud-init/bootstrap.sh")"

# runcmd's argument list: the bundle URL, then the TLS files' URL if any.
urls="\"$bundle_url\""
if [[ -n "$tls_url" ]]; then urls+=", \"$tls_url\""; fi

ENV_BLOCK="$env_block" BOOT_BLOCK="$boot_block" URLS="$urls" awk '
	$0 == "@ENV_FILE@" { print ENVIRON["ENV_BLOCK"]; next }
	$0 == "@BOOTSTRAP@" { print ENVIRON["BOOT_BLOCK"]; next }
	{
		line = $0
		i = index(line, "\"@BUNDLE_URL@\"")
		if (i > 0) line = substr(line, 1, i - 1) ENVIRON["URLS"] substr(line, i + length("\"@BUNDLE_URL@\""))
		print line
	}' "$here/cloud-init/$component.yaml"
