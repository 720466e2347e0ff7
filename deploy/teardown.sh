#!/usr/bin/env bash
# Remove a peerdex deployment launched by launch.sh: terminates every instance
# tagged peerdex:deployment=NAME, waits until they are gone, deletes the
# deployment's security groups (also the etcd group of --ha), its bucket (bundle and TLS files) and the
# local state dir of its CA and certificates. Safe to re-run: what is
# already gone is skipped.
#
#   deploy/teardown.sh [--name NAME] [--region REGION] [--endpoint-url URL] [--state-dir DIR]
#
# NAME defaults to $PEERDEX_DEPLOYMENT or "peerdex"; the region comes from
# --region, AWS_REGION, AWS_DEFAULT_REGION or 'aws configure'; DIR from
# $PEERDEX_STATE_DIR or $HOME/.peerdex/deploy/NAME.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

name="${PEERDEX_DEPLOYMENT:-peerdex}"
region=""
endpoint_url=""
state_dir="${PEERDEX_STATE_DIR:-}"
while [[ $# -gt 0 ]]; do
	case "$1" in
	--name) need "$@"; name="$2"; shift 2 ;;
	--region) need "$@"; region="$2"; shift 2 ;;
	--endpoint-url) need "$@"; endpoint_url="$2"; shift 2 ;;
	--state-dir) need "$@"; state_dir="$2"; shift 2 ;;
	-h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
done

preflight
note "account $account, region $region, deployment '$name'"

# 1. instances (also the ones still shutting down, so we wait for them)
mapfile -t ids < <(instances_in "$LIVE_STATES,shutting-down")
if ((${#ids[@]} > 0)); then
	awsc ec2 terminate-instances --instance-ids "${ids[@]}" >/dev/null
	note "terminating ${#ids[@]} instance(s): ${ids[*]}"
	awsc ec2 wait instance-terminated --instance-ids "${ids[@]}"
	note "instances terminated"
else
	note "no instances left"
fi

# 2. security group; its network interfaces may take a moment to be released
mapfile -t sgs < <(security_groups)
for sg in "${sgs[@]+"${sgs[@]}"}"; do
	for attempt in $(seq 30); do
		if out="$(awsc ec2 delete-security-group --group-id "$sg" 2>&1)"; then
			note "deleted security group $sg"
			break
		fi
		if [[ "$out" == *InvalidGroup.NotFound* ]]; then
			break
		fi
		if [[ "$out" != *DependencyViolation* ]] || ((attempt == 30)); then
			die "cannot delete security group $sg: $out"
		fi
		sleep 10
	done
done
((${#sgs[@]} > 0)) || note "no security group left"

# 3. bundle bucket, only if it carries this deployment's tag
bucket="$(bucket_name)"
if awsc s3api head-bucket --bucket "$bucket" >/dev/null 2>&1; then
	owner="$(awsc s3api get-bucket-tagging --bucket "$bucket" \
		--query "TagSet[?Key=='$TAG_DEPLOYMENT']|[0].Value" --output text 2>/dev/null || true)"
	if [[ "$owner" == "$name" ]]; then
		awsc s3 rb "s3://$bucket" --force >/dev/null
		note "deleted bucket s3://$bucket"
	else
		note "bucket s3://$bucket is not tagged $TAG_DEPLOYMENT=$name; left alone"
	fi
fi

# 4. the CA and certificates (a new launch makes a new CA)
state_dir="${state_dir:-$HOME/.peerdex/deploy/$name}"
if [[ -d "$state_dir" ]]; then
	rm -rf "$state_dir"
	note "deleted the deployment's CA and certificates ($state_dir)"
fi

note "deployment '$name' removed"
