# shellcheck shell=bash
# Shared helpers of launch.sh and teardown.sh (sourced, not run).
# Expects: $name (deployment name), $region, $endpoint_url (may be empty).
# shellcheck disable=SC2034,SC2154 # variables shared with the sourcing scripts

TAG_DEPLOYMENT="peerdex:deployment"
TAG_ROLE="peerdex:role"
TAG_INDEX="peerdex:index"
export AWS_PAGER="" # AWS CLI v2: never open a pager

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
	echo "$(basename "$0"): error: needs bash 4.4 or newer (this is $BASH_VERSION; on macOS: brew install bash)" >&2
	exit 1
fi

die() {
	echo "$(basename "$0"): error: $*" >&2
	exit 1
}
note() { echo "$(basename "$0"): $*" >&2; }
# Option parsing: `need "$@"` before reading "$2" of a flag that takes a value.
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }

# aws with the chosen region and endpoint, text output unless overridden.
awsc() {
	local args=(--region "$region")
	if [[ -n "${endpoint_url:-}" ]]; then args+=(--endpoint-url "$endpoint_url"); fi
	aws "${args[@]}" "$@"
}

# Checks shared by launch and teardown: AWS CLI, name, region, credentials.
# Sets $account.
preflight() {
	command -v aws >/dev/null ||
		die "the AWS CLI (aws) is not installed: see https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"
	[[ "$name" =~ ^[a-z0-9][a-z0-9-]{0,29}$ ]] ||
		die "deployment name '$name' must be 1-30 characters: lowercase letters, digits, '-'"
	if [[ -z "$region" ]]; then
		region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
	fi
	if [[ -z "$region" ]]; then
		region="$(aws configure get region 2>/dev/null || true)"
	fi
	[[ -n "$region" ]] ||
		die "no AWS region: pass --region (e.g. --region eu-west-1), set AWS_REGION, or run 'aws configure set region eu-west-1'"
	local out
	if ! out="$(awsc sts get-caller-identity --query Account --output text 2>&1)"; then
		die "AWS credentials are missing or invalid (aws sts get-caller-identity failed: $(tail -n 1 <<<"$out" | sed 's/^[[:space:]]*//')).
Configure them with 'aws configure', AWS_PROFILE, or AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY."
	fi
	account="$out"
}

# Deterministic, globally unique name of the bucket launch --bundle creates.
bucket_name() { echo "peerdex-$name-$account-$region"; }

# Ids of the deployment's instances in the given states (comma-separated).
instances_in() {
	awsc ec2 describe-instances \
		--filters "Name=tag:$TAG_DEPLOYMENT,Values=$name" "Name=instance-state-name,Values=$1" \
		--query 'Reservations[].Instances[].InstanceId' --output text | tr '\t' '\n' | sed '/^$/d;/^None$/d'
}

# The deployment's security group id(s).
security_groups() {
	awsc ec2 describe-security-groups --filters "Name=tag:$TAG_DEPLOYMENT,Values=$name" \
		--query 'SecurityGroups[].GroupId' --output text | tr '\t' '\n' | sed '/^$/d;/^None$/d'
}

# The deployment's security group of one role (sg: every VM; etcd-sg: the
# centrals of --ha, whose etcd members talk only to each other), or nothing.
security_group_of() {
	awsc ec2 describe-security-groups --filters "Name=tag:$TAG_DEPLOYMENT,Values=$name" \
		"Name=tag:$TAG_ROLE,Values=$1" --query 'SecurityGroups[].GroupId' --output text |
		tr '\t' '\n' | sed '/^$/d;/^None$/d' | head -n 1
}

LIVE_STATES="pending,running,stopping,stopped"
