#!/usr/bin/env bash
# Launch a peerdex deployment on EC2: one central directory + N PServers.
#
#   deploy/launch.sh --key-name KEY --bundle dist/peerdex-0.1.0-x86_64-unknown-linux-gnu.tar.gz
#   deploy/launch.sh --key-name KEY --bundle-url https://example.com/peerdex.tar.gz --pservers 3
#
# Options (environment variable in brackets):
#   --name NAME           deployment name, tags every resource [PEERDEX_DEPLOYMENT] (peerdex)
#   --region REGION       AWS region [AWS_REGION, AWS_DEFAULT_REGION, aws configure]
#   --key-name KEY        existing EC2 key pair for SSH, required [PEERDEX_KEY_NAME]
#   --pservers N          number of PServers wanted (2)
#   --instance-type TYPE  instance type of every VM [PEERDEX_INSTANCE_TYPE] (t3.micro)
#   --ami AMI             image id; default: resolved from --ami-param
#   --ami-param PATH      SSM public parameter naming the image
#                         (/aws/service/debian/release/12/latest/amd64)
#   --bundle-url URL      where the VMs download the release bundle (https)
#   --bundle FILE         a bundle from deploy/bundle.sh: uploaded to a private
#                         S3 bucket this script creates (peerdex-NAME-ACCOUNT-REGION)
#                         and handed to the VMs as a 7-day presigned URL
#   --ssh-cidr CIDR       also open SSH (22/tcp) from CIDR, e.g. 198.51.100.7/32
#   --ssh-user USER       login shown in the hints (admin: Debian; ec2-user: Amazon Linux)
#   --subnet-id SUBNET    launch into this subnet (default: the default VPC); it must
#                         assign public IPv4 addresses
#   --endpoint-url URL    passed to every aws call (tests against an emulator)
#   --state-dir DIR       where the deployment's CA and certificates are kept
#                         [PEERDEX_STATE_DIR] ($HOME/.peerdex/deploy/NAME)
#   --ha                  the directory on etcd: 3 central VMs, each running an
#                         etcd member (Debian's etcd-server, unit peerdex-etcd,
#                         data in /var/lib/peerdex-etcd) of one static 3-member
#                         cluster and a central-server on it (CENTRAL_ETCD_ENDPOINTS
#                         = the 3 members, CENTRAL_NAME central-1..3); every
#                         PServer lists the 3 centrals in PSERVER_CENTRAL_URL
#
# TLS on every hop: a per-deployment CA (openssl, kept in the state dir, key
# 0600) signs one certificate per VM covering its private and public
# addresses; each VM's ca.pem, cert.pem and key.pem (0600) are written next to
# its env settings in the state dir, uploaded as a tar to the deployment's
# private bucket and fetched by the VM's first boot through a presigned URL
# (the addresses, hence the certificate, exist only once the VM is launched).
# The central speaks only TLS; PServers serve https and trust the CA.
#
# Firewall: one security group tagged peerdex:deployment=NAME with exactly
#   7071/tcp  from 0.0.0.0/0             (peer API: downloads between peers)
#   50051/tcp from the security group    (central gRPC: only the deployment's VMs)
#   22/tcp    from --ssh-cidr            (only when given)
# Any other inbound rule found on it is removed. The control API (7070) stays
# on each PServer's loopback; reach it through an SSH tunnel. With --ha the
# centrals also share a second group, tagged peerdex:role=etcd-sg, with exactly
#   2379/tcp  from that group            (etcd clients: the centrals)
#   2380/tcp  from that group            (etcd peers: the members)
# so etcd is reachable from the 3 centrals only (plain HTTP inside the VPC).
#
# Idempotent: re-running reuses the security group, the central and the running
# PServers, and only launches PServers missing to reach N (it never terminates
# any; use teardown.sh). PServer k lists PServer k-1 as its neighbour.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

usage() { sed -n '2,59p' "$0" | sed 's/^# \{0,1\}//'; }

name="${PEERDEX_DEPLOYMENT:-peerdex}"
region=""
key_name="${PEERDEX_KEY_NAME:-}"
pservers=2
instance_type="${PEERDEX_INSTANCE_TYPE:-t3.micro}"
ami=""
ami_param="/aws/service/debian/release/12/latest/amd64"
bundle_url=""
bundle=""
ssh_cidr=""
ssh_user="admin"
subnet_id=""
endpoint_url=""
state_dir="${PEERDEX_STATE_DIR:-}"
ha=no

while [[ $# -gt 0 ]]; do
	case "$1" in
	--name) need "$@"; name="$2"; shift 2 ;;
	--region) need "$@"; region="$2"; shift 2 ;;
	--key-name) need "$@"; key_name="$2"; shift 2 ;;
	--pservers | --count) need "$@"; pservers="$2"; shift 2 ;;
	--instance-type) need "$@"; instance_type="$2"; shift 2 ;;
	--ami) need "$@"; ami="$2"; shift 2 ;;
	--ami-param) need "$@"; ami_param="$2"; shift 2 ;;
	--bundle-url) need "$@"; bundle_url="$2"; shift 2 ;;
	--bundle) need "$@"; bundle="$2"; shift 2 ;;
	--ssh-cidr) need "$@"; ssh_cidr="$2"; shift 2 ;;
	--ssh-user) need "$@"; ssh_user="$2"; shift 2 ;;
	--subnet-id) need "$@"; subnet_id="$2"; shift 2 ;;
	--endpoint-url) need "$@"; endpoint_url="$2"; shift 2 ;;
	--state-dir) need "$@"; state_dir="$2"; shift 2 ;;
	--ha) ha=yes; shift ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
done

# ── checks that need no AWS call ──────────────────────────────────────────────
if ! [[ "$pservers" =~ ^[0-9]+$ ]] || ((pservers > 50)); then
	die "--pservers must be a number from 0 to 50"
fi
if [[ -n "$bundle" && -n "$bundle_url" ]]; then
	die "give either --bundle FILE or --bundle-url URL, not both"
elif [[ -z "$bundle" && -z "$bundle_url" ]]; then
	die "no release bundle: pass --bundle dist/peerdex-*.tar.gz (built by deploy/bundle.sh) or --bundle-url URL"
fi
[[ -z "$bundle" || -f "$bundle" ]] || die "bundle file not found: $bundle (build it with deploy/bundle.sh)"
[[ -n "$ssh_cidr" && ! "$ssh_cidr" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$ ]] &&
	die "--ssh-cidr must be an IPv4 CIDR such as 198.51.100.7/32"

command -v openssl >/dev/null ||
	die "openssl is not installed: it makes the deployment's TLS certificates (Debian: apt install openssl)"

preflight
state_dir="${state_dir:-$HOME/.peerdex/deploy/$name}"
[[ -n "$key_name" ]] ||
	die "no key pair: pass --key-name (an EC2 key pair in $region; create one with 'aws ec2 create-key-pair --key-name peerdex --query KeyMaterial --output text > peerdex.pem')"
if ! out="$(awsc ec2 describe-key-pairs --key-names "$key_name" --query 'KeyPairs[0].KeyName' --output text 2>&1)"; then
	die "key pair '$key_name' not found in $region ($(tail -n 1 <<<"$out")). List yours with 'aws ec2 describe-key-pairs --region $region'"
fi
note "account $account, region $region, deployment '$name'"

# ── image ─────────────────────────────────────────────────────────────────────
if [[ -z "$ami" ]]; then
	ami="$(awsc ssm get-parameters --names "$ami_param" --query 'Parameters[0].Value' --output text 2>/dev/null || true)"
	[[ "$ami" == ami-* ]] || die "cannot resolve an image from the SSM parameter $ami_param in $region; pass --ami ami-... (or --ami-param)"
	note "image $ami (from $ami_param)"
fi

# ── network ───────────────────────────────────────────────────────────────────
if [[ -n "$subnet_id" ]]; then
	vpc_id="$(awsc ec2 describe-subnets --subnet-ids "$subnet_id" --query 'Subnets[0].VpcId' --output text)" ||
		die "subnet $subnet_id not found in $region"
else
	vpc_id="$(awsc ec2 describe-vpcs --filters Name=is-default,Values=true --query 'Vpcs[0].VpcId' --output text)"
	[[ "$vpc_id" == vpc-* ]] || die "no default VPC in $region: pass --subnet-id of a public subnet"
fi

tags() { # tag list for --tag-specifications: tags ROLE [INDEX]
	local t="{Key=Name,Value=peerdex-$name-$1${2:+-$2}},{Key=$TAG_DEPLOYMENT,Value=$name},{Key=$TAG_ROLE,Value=$1}"
	if [[ -n "${2:-}" ]]; then t+=",{Key=$TAG_INDEX,Value=$2}"; fi
	echo "Tags=[$t]"
}

# ensure_sg ROLE GROUP_NAME DESCRIPTION: the id of the deployment's group of
# ROLE, created when missing.
ensure_sg() {
	local id
	id="$(security_group_of "$1")"
	if [[ -z "$id" ]]; then
		id="$(awsc ec2 create-security-group --group-name "$2" --vpc-id "$vpc_id" \
			--description "$3" --tag-specifications "ResourceType=security-group,$(tags "$1")" \
			--query GroupId --output text)"
		note "created security group $id ($1)"
	else
		note "reusing security group $id ($1)"
	fi
	echo "$id"
}

# sync_rules GROUP WANT...: make GROUP's inbound rules exactly WANT, one
# "protocol from to cidr4 cidr6 prefix-list group" line each. (Descriptions
# stay free of quotes: the AWS CLI parses --ip-permissions shorthand.)
sync_rules() {
	local sg="$1" rule_id rest keep w h present proto from to cidr group perm
	shift
	local want=("$@") have=()
	# shellcheck disable=SC2016 # backticks are JMESPath literals, not shell
	local rules_query='SecurityGroupRules[?IsEgress==`false`].[SecurityGroupRuleId,IpProtocol,FromPort,ToPort,CidrIpv4,CidrIpv6,PrefixListId,ReferencedGroupInfo.GroupId]'
	while IFS=$'\t' read -r rule_id rest; do
		[[ -n "$rule_id" ]] || continue
		rest="$(tr '\t' ' ' <<<"$rest")"
		keep=no
		for w in "${want[@]}"; do if [[ "$w" == "$rest" ]]; then keep=yes; fi; done
		if [[ $keep == yes ]]; then
			have+=("$rest")
		else
			awsc ec2 revoke-security-group-ingress --group-id "$sg" --security-group-rule-ids "$rule_id" >/dev/null
			note "removed inbound rule $rule_id ($rest): not part of the deployment"
		fi
	done < <(awsc ec2 describe-security-group-rules --filters "Name=group-id,Values=$sg" \
		--query "$rules_query" \
		--output text)
	for w in "${want[@]}"; do
		present=no
		for h in "${have[@]+"${have[@]}"}"; do if [[ "$h" == "$w" ]]; then present=yes; fi; done
		[[ $present == yes ]] && continue
		read -r proto from to cidr _ _ group <<<"$w"
		if [[ "$group" != None ]]; then
			case "$from" in
			2379) desc="etcd clients from the centrals" ;;
			2380) desc="etcd peers from the other members" ;;
			*) desc="peerdex central gRPC from the deployment" ;;
			esac
			perm="IpProtocol=$proto,FromPort=$from,ToPort=$to,UserIdGroupPairs=[{GroupId=$group,Description=$desc}]"
		elif [[ "$from" == 22 ]]; then
			perm="IpProtocol=$proto,FromPort=$from,ToPort=$to,IpRanges=[{CidrIp=$cidr,Description=SSH}]"
		else
			perm="IpProtocol=$proto,FromPort=$from,ToPort=$to,IpRanges=[{CidrIp=$cidr,Description=peerdex peer API}]"
		fi
		awsc ec2 authorize-security-group-ingress --group-id "$sg" --ip-permissions "$perm" \
			--tag-specifications "ResourceType=security-group-rule,$(tags sg-rule)" >/dev/null
		note "opened $proto/$from on $sg from ${cidr/None/$group}"
	done
}

sg_id="$(ensure_sg sg "peerdex-$name" "peerdex deployment $name: peer API 7071 public, central gRPC 50051 from this group")"
want=("tcp 7071 7071 0.0.0.0/0 None None None" "tcp 50051 50051 None None None $sg_id")
if [[ -n "$ssh_cidr" ]]; then want+=("tcp 22 22 $ssh_cidr None None None"); fi
sync_rules "$sg_id" "${want[@]}"
etcd_sg_id=""
if [[ $ha == yes ]]; then
	etcd_sg_id="$(ensure_sg etcd-sg "peerdex-$name-etcd" "peerdex deployment $name: etcd 2379 and 2380 between its centrals only")"
	sync_rules "$etcd_sg_id" "tcp 2379 2379 None None None $etcd_sg_id" "tcp 2380 2380 None None None $etcd_sg_id"
fi

# ── bucket (TLS files of the VMs; the bundle with --bundle) ───────────────────
bucket="$(bucket_name)"
if ! awsc s3api head-bucket --bucket "$bucket" >/dev/null 2>&1; then
	if [[ "$region" == us-east-1 ]]; then
		awsc s3api create-bucket --bucket "$bucket" >/dev/null
	else
		awsc s3api create-bucket --bucket "$bucket" \
			--create-bucket-configuration "LocationConstraint=$region" >/dev/null
	fi
	awsc s3api put-public-access-block --bucket "$bucket" --public-access-block-configuration \
		BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
	awsc s3api put-bucket-tagging --bucket "$bucket" \
		--tagging "TagSet=[{Key=$TAG_DEPLOYMENT,Value=$name},{Key=$TAG_ROLE,Value=bundle}]"
	note "created bucket s3://$bucket"
fi
if [[ -n "$bundle" ]]; then
	key="bundles/$(basename "$bundle")"
	awsc s3 cp --only-show-errors "$bundle" "s3://$bucket/$key" >&2
	bundle_url="$(awsc s3 presign "s3://$bucket/$key" --expires-in 604800)"
	note "bundle uploaded to s3://$bucket/$key"
fi

# ── instances ─────────────────────────────────────────────────────────────────
launched=()
run_instance() { # run_instance ROLE INDEX USERDATA_FILE [GROUP] -> prints "id private-ip"
	local groups=("$sg_id")
	if [[ -n "${4:-}" ]]; then groups+=("$4"); fi
	local args=(--image-id "$ami" --instance-type "$instance_type" --count 1 --key-name "$key_name"
		--security-group-ids "${groups[@]}" --user-data "file://$3"
		--metadata-options "HttpTokens=required,HttpEndpoint=enabled,HttpPutResponseHopLimit=1"
		--tag-specifications "ResourceType=instance,$(tags "$1" "$2")" "ResourceType=volume,$(tags "$1" "$2")"
		--query 'Instances[0].[InstanceId,PrivateIpAddress]' --output text)
	if [[ -n "$subnet_id" ]]; then args+=(--subnet-id "$subnet_id"); fi
	awsc ec2 run-instances "${args[@]}"
}
private_ip() {
	local ip=""
	for _ in $(seq 60); do
		ip="$(awsc ec2 describe-instances --instance-ids "$1" \
			--query 'Reservations[0].Instances[0].PrivateIpAddress' --output text)"
		[[ "$ip" =~ ^[0-9.]+$ ]] && { echo "$ip"; return; }
		sleep 2
	done
	die "instance $1 has no private IP after 2 minutes"
}
public_ip() { # the public IPv4 of an instance, or nothing if it gets none
	local ip=""
	for _ in $(seq 15); do
		ip="$(awsc ec2 describe-instances --instance-ids "$1" \
			--query 'Reservations[0].Instances[0].PublicIpAddress' --output text)"
		[[ "$ip" =~ ^[0-9.]+$ ]] && { echo "$ip"; return; }
		sleep 2
	done
}
workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

# ── TLS: the deployment's CA, one certificate per VM ──────────────────────────
# Private keys are created 0600 (umask) and never leave the state dir except
# in the VM's own tar, through the private bucket.
mkdir -p "$state_dir"
chmod 0700 "$state_dir"
if [[ ! -f "$state_dir/ca.pem" ]]; then
	[[ -z "$(instances_in "$LIVE_STATES")" ]] ||
		die "deployment '$name' runs but its CA is not in $state_dir: run launch.sh where it was launched (or pass --state-dir), or remove it with teardown.sh"
	(umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$state_dir/ca-key.pem" -out "$state_dir/ca.pem" -days 3650 \
		-subj "/CN=peerdex $name deployment CA" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null) ||
		die "openssl could not create the deployment's CA in $state_dir"
	chmod 0644 "$state_dir/ca.pem"
	note "created the deployment's CA: $state_dir/ca.pem"
fi
# The deployment is a private network: one join secret for all its VMs
# (CENTRAL_JOIN_SECRET / PSERVER_JOIN_SECRET), shipped in each VM's tar.
if [[ ! -f "$state_dir/join.secret" ]]; then
	(umask 077 && openssl rand -hex 24 >"$state_dir/join.secret") ||
		die "openssl could not create the deployment's join secret in $state_dir"
	note "created the deployment's join secret: $state_dir/join.secret"
fi
# Where a VM fetches its TLS files (presigned before launch; uploaded after).
tls_url() { awsc s3 presign "s3://$bucket/tls/$1.tar" --expires-in 604800; }
# issue_cert VM IP... : a certificate for VM covering the IPs, signed by the
# CA, then VM.tar (ca.pem, cert.pem, key.pem, join.secret, and the etcd.env +
# etcd.endpoints of a --ha central when its folder has them) uploaded for its
# first boot.
issue_cert() {
	local vm="$1" d="$state_dir/$1" san="" ip
	shift
	for ip in "$@"; do san+="${san:+,}IP:$ip"; done
	mkdir -p "$d"
	(
		umask 077
		openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
			-keyout "$d/key.pem" -out "$d/cert.csr" -subj "/CN=peerdex $name $vm" 2>/dev/null &&
			openssl x509 -req -in "$d/cert.csr" -CA "$state_dir/ca.pem" -CAkey "$state_dir/ca-key.pem" \
				-set_serial "0x$(openssl rand -hex 16)" -days 825 -out "$d/cert.pem" \
				-extfile <(printf '%s\n' "subjectAltName=$san" "basicConstraints=critical,CA:FALSE" \
					"keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth") 2>/dev/null
	) || die "openssl could not issue the certificate of $vm"
	chmod 0644 "$d/cert.pem"
	cp "$state_dir/ca.pem" "$d/ca.pem"
	(umask 077 && cp "$state_dir/join.secret" "$d/join.secret")
	rm -f "$d/cert.csr"
	local files=(ca.pem cert.pem key.pem join.secret)
	if [[ -f "$d/etcd.env" ]]; then files+=(etcd.env etcd.endpoints); fi
	tar -cf "$workdir/$vm.tar" -C "$d" "${files[@]}"
	awsc s3 cp --only-show-errors "$workdir/$vm.tar" "s3://$bucket/tls/$vm.tar" >&2
	note "certificate of $vm for ${*} uploaded (files in $d)"
}

# Live instances of a role, one "id private-ip index" line each, by index.
live() {
	awsc ec2 describe-instances --filters "Name=tag:$TAG_DEPLOYMENT,Values=$name" \
		"Name=tag:$TAG_ROLE,Values=$1" "Name=instance-state-name,Values=$LIVE_STATES" \
		--query "Reservations[].Instances[].[InstanceId,PrivateIpAddress,Tags[?Key=='$TAG_INDEX']|[0].Value]" \
		--output text | sed '/^$/d' | sort -k3,3n
}

# write_etcd VM MEMBER IP ALL_IPS...: the etcd settings of VM's member MEMBER
# (central-K) of the static cluster of every --ha central, into its folder.
write_etcd() {
	local vm="$1" member="$2" ip="$3" d="$state_dir/$1" cluster="" endpoints="" k=0 other
	shift 3
	for other in "$@"; do
		k=$((k + 1))
		cluster+="${cluster:+,}central-$k=http://$other:2380"
		endpoints+="${endpoints:+,}http://$other:2379"
	done
	mkdir -p "$d"
	cat >"$d/etcd.env" <<EOF
# /etc/peerdex/etcd.env - this VM's member of the deployment's etcd cluster
# (peerdex-etcd.service; written by launch.sh --ha). etcd reads ETCD_* as its
# flags: https://etcd.io/docs/v3.5/op-guide/configuration/
ETCD_NAME=$member
ETCD_DATA_DIR=/var/lib/peerdex-etcd
ETCD_LISTEN_CLIENT_URLS=http://$ip:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$ip:2379
ETCD_LISTEN_PEER_URLS=http://$ip:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://$ip:2380
ETCD_INITIAL_CLUSTER=$cluster
ETCD_INITIAL_CLUSTER_STATE=new
ETCD_INITIAL_CLUSTER_TOKEN=peerdex-$name
# etcd's own safety net besides the leader central's compaction: keep 1 hour
# of history; the default 2 GiB quota (README: Running the directory on etcd).
ETCD_AUTO_COMPACTION_MODE=periodic
ETCD_AUTO_COMPACTION_RETENTION=1h
ETCD_QUOTA_BACKEND_BYTES=2147483648
EOF
	echo "$endpoints" >"$d/etcd.endpoints"
}

existing_pservers="$(live pserver)"
# Centrals: one, or with --ha three (central-1..3), each with an etcd member.
mapfile -t centrals_live < <(live central)
want_centrals=1
if [[ $ha == yes ]]; then want_centrals=3; fi
if ((${#centrals_live[@]} > 0 && ${#centrals_live[@]} != want_centrals)); then
	hint=""
	if [[ $ha == no ]]; then hint=" (did you mean --ha?)"; fi
	die "deployment '$name' runs ${#centrals_live[@]} central(s) and this launch wants $want_centrals$hint: a directory cannot move between SQLite and etcd in place; remove it with teardown.sh and launch again"
fi
central_ids=()
central_ips=()
if ((${#centrals_live[@]} > 0)); then
	for line in "${centrals_live[@]}"; do
		read -r id ip _ <<<"$line"
		[[ "$ip" =~ ^[0-9.]+$ ]] || ip="$(private_ip "$id")"
		central_ids+=("$id")
		central_ips+=("$ip")
	done
	note "reusing ${#central_ids[@]} central(s): ${central_ids[*]}"
else
	for ((k = 1; k <= want_centrals; k++)); do
		index="" vm=central sets=()
		if [[ $ha == yes ]]; then index=$k vm="central-$k" sets=(--set "CENTRAL_NAME=central-$k"); fi
		"$here/render.sh" central --bundle-url "$bundle_url" --tls-url "$(tls_url "$vm")" \
			--set CENTRAL_TLS_CERT=/etc/peerdex/tls/cert.pem --set CENTRAL_TLS_KEY=/etc/peerdex/tls/key.pem \
			--set CENTRAL_PEER_CA_FILE=/etc/peerdex/tls/ca.pem \
			"${sets[@]+"${sets[@]}"}" >"$workdir/$vm.yaml"
		read -r id ip < <(run_instance central "$index" "$workdir/$vm.yaml" "$etcd_sg_id")
		[[ "$ip" =~ ^[0-9.]+$ ]] || ip="$(private_ip "$id")"
		launched+=("$id")
		central_ids+=("$id")
		central_ips+=("$ip")
		note "launched $vm $id ($ip)"
	done
	# Certificates (and with --ha the etcd cluster, which needs every
	# member's address) once all the centrals have their addresses.
	for ((k = 1; k <= want_centrals; k++)); do
		vm=central
		if [[ $ha == yes ]]; then
			vm="central-$k"
			write_etcd "$vm" "central-$k" "${central_ips[k - 1]}" "${central_ips[@]}"
		fi
		# shellcheck disable=SC2046 # no public IP: no word
		issue_cert "$vm" "${central_ips[k - 1]}" $(public_ip "${central_ids[k - 1]}")
	done
	[[ -n "$existing_pservers" ]] &&
		note "warning: PServers of '$name' already run and point at the previous central(s); replace them (teardown.sh, then launch.sh)"
fi
central_url=""
for ip in "${central_ips[@]}"; do central_url+="${central_url:+,}https://$ip:50051"; done

count=0
last_index=0
prev_ip=""
while read -r id ip index; do
	[[ -n "$id" ]] || continue
	count=$((count + 1))
	if [[ "$index" =~ ^[0-9]+$ ]] && ((index > last_index)); then last_index=$index; fi
	prev_ip="$ip"
done <<<"$existing_pservers"
((count > 0)) && note "reusing $count PServer(s)"
((count > pservers)) && note "$count PServers run, more than --pservers $pservers; none terminated (teardown.sh removes all)"
while ((count < pservers)); do
	index=$((last_index + 1))
	sets=(--set "PSERVER_CENTRAL_URL=$central_url" --set PSERVER_TLS_CERT=/etc/peerdex/tls/cert.pem
		--set PSERVER_TLS_KEY=/etc/peerdex/tls/key.pem --set PSERVER_CA_FILE=/etc/peerdex/tls/ca.pem)
	if [[ -n "$prev_ip" && "$prev_ip" != None ]]; then sets+=(--set "PSERVER_NEIGHBOURS=https://$prev_ip:7071"); fi
	"$here/render.sh" pserver --bundle-url "$bundle_url" --tls-url "$(tls_url "pserver-$index")" \
		"${sets[@]}" >"$workdir/pserver-$index.yaml"
	read -r id ip < <(run_instance pserver "$index" "$workdir/pserver-$index.yaml")
	[[ "$ip" =~ ^[0-9.]+$ ]] || ip="$(private_ip "$id")"
	# shellcheck disable=SC2046 # no public IP: no word
	issue_cert "pserver-$index" "$ip" $(public_ip "$id")
	launched+=("$id")
	note "launched pserver $index: $id ($ip)"
	prev_ip="$ip"
	last_index=$index
	count=$((count + 1))
done

if ((${#launched[@]} > 0)); then
	note "waiting for ${#launched[@]} instance(s) to run"
	awsc ec2 wait instance-running --instance-ids "${launched[@]}"
fi

# ── summary ───────────────────────────────────────────────────────────────────
echo
echo "peerdex deployment '$name' in $region (security group $sg_id${etcd_sg_id:+, etcd group $etcd_sg_id})"
for ((k = 0; k < ${#central_ids[@]}; k++)); do
	vm=central
	if [[ $ha == yes ]]; then vm="central-$((k + 1))"; fi
	echo "  $vm  ${central_ids[k]}  private ${central_ips[k]}  gRPC https://${central_ips[k]}:50051 (VPC only, TLS)"
done
if [[ $ha == yes ]]; then
	echo "  etcd     one member per central on 2379 (clients) and 2380 (peers), reachable from the centrals only"
	echo "           (journalctl -u peerdex-etcd -f; etcdctl --endpoints http://${central_ips[0]}:2379 endpoint status --cluster -w table)"
fi
echo "  CA       $state_dir/ca.pem (certificates and keys of every VM: $state_dir/<vm>/)"
first_public=""
while IFS=$'\t' read -r id pub index; do
	[[ -n "$id" ]] || continue
	if [[ "$pub" == None ]]; then pub="(no public IP yet)"; fi
	echo "  pserver $index  $id  public URL https://$pub:7071"
	if [[ -z "$first_public" && "$pub" =~ ^[0-9.]+$ ]]; then first_public="$pub"; fi
done < <(awsc ec2 describe-instances --filters "Name=tag:$TAG_DEPLOYMENT,Values=$name" \
	"Name=tag:$TAG_ROLE,Values=pserver" "Name=instance-state-name,Values=$LIVE_STATES" \
	--query "Reservations[].Instances[].[InstanceId,PublicIpAddress,Tags[?Key=='$TAG_INDEX']|[0].Value]" \
	--output text | sort -k3,3n)
cat <<EOF

The VMs install the bundle and start their service within a minute or two
(progress: /var/log/cloud-init-output.log; logs: journalctl -u pserver -f).

Use a PServer with the peerdex CLI: its control API listens on the VM's
loopback (127.0.0.1:7070) only, so tunnel to it over SSH
$( [[ -z "$ssh_cidr" ]] && echo "(SSH is closed: re-run with --ssh-cidr \$(curl -s https://checkip.amazonaws.com)/32)")
  ssh -i $key_name.pem -N -L 7070:127.0.0.1:7070 $ssh_user@${first_public:-PSERVER_PUBLIC_IP}
and in another terminal run peerdex as usual (it talks to http://127.0.0.1:7070):
  peerdex status
or run it on the VM itself:  ssh -t $ssh_user@${first_public:-PSERVER_PUBLIC_IP} peerdex
(If you bind the control API elsewhere, set PSERVER_API_TOKEN on the VM and
PEERDEX_PSERVER_URL + PEERDEX_API_TOKEN on your machine; port 7070 is not opened
in the security group.)
Remove everything: deploy/teardown.sh --name $name --region $region
EOF
