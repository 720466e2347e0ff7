//! Tests of `deploy/`: the EC2 deployment (env templates, systemd units,
//! release bundle, install.sh, cloud-init rendering, launch.sh/teardown.sh).
//!
//! The launch/teardown test runs the real scripts with the real AWS CLI
//! against a local EC2/S3/SSM/STS emulator (`moto_server` from PyPI), all
//! installed by the test into a virtualenv cached under
//! `target/deploy-test-venv/<hash of the requirements>` (or under
//! `$PEERDEX_DEPLOY_TEST_VENV`). The first run needs PyPI (about 1-2 minutes;
//! pip's own settings such as PIP_INDEX_URL apply); without it the test fails
//! and says why.
//!
//! Needs `python3` (with the venv module), `bash`, `tar`, `base64`,
//! `systemd-analyze` (Debian package `systemd`) and `shellcheck` (Debian
//! package `shellcheck`). A missing tool fails the test with a message naming
//! the package: nothing is ever skipped. `.ci/run` installs both when it runs
//! as root on Debian.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// What the test installs from PyPI. Changing it changes the venv's folder.
const REQUIREMENTS: &[&str] = &["moto[server]>=5.1,<6", "awscli>=1.32,<2", "pyyaml>=6,<7"];
const REGION: &str = "us-east-1";
/// An SSM public parameter the emulator knows, to exercise AMI resolution.
const AMI_PARAM: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";
const BUNDLE_URL: &str = "https://downloads.example.com/peerdex/peerdex-0.1.0.tar.gz?x=1&y=%2F";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn deploy(script: &str) -> PathBuf {
    repo().join("deploy").join(script)
}

/// A scratch folder under `target/tmp`, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("deploy-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn describe(cmd: &Command) -> String {
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
    format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" "))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)))
}

/// Runs `cmd`, asserts it succeeded, returns its stdout.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `cmd`, asserts it failed with `needle` in its stderr.
fn fails_with(cmd: &mut Command, needle: &str) {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{} should have failed; stderr:\n{stderr}",
        describe(cmd)
    );
    assert!(
        stderr.contains(needle),
        "{} failed without saying {needle:?}; stderr:\n{stderr}",
        describe(cmd)
    );
}

/// Panics, naming the Debian package to install, unless `name --version` runs.
fn require_tool(name: &str, debian_package: &str) {
    let runs = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        runs,
        "the deploy test needs `{name}`, which is not installed: on Debian/Ubuntu, \
         `apt-get install --no-install-recommends {debian_package}` \
         (.ci/run does it when it runs as root)"
    );
}

// ── env templates ────────────────────────────────────────────────────────────

/// `NAME=value` lines of an env file, in order.
fn env_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn env_templates_have_every_setting_of_env_example_with_a_comment() {
    let example = fs::read_to_string(repo().join(".env.example")).unwrap();
    let names: Vec<String> = env_lines(&example).into_iter().map(|(k, _)| k).collect();
    for (component, prefix) in [("central", "CENTRAL_"), ("pserver", "PSERVER_")] {
        let path = deploy(&format!("env/{component}.env"));
        let text = fs::read_to_string(&path).unwrap();
        let want: BTreeSet<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| n.starts_with(prefix) || *n == "RUST_LOG")
            .collect();
        let got_lines = env_lines(&text);
        let got: BTreeSet<&str> = got_lines.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(got, want, "{} vs .env.example", path.display());
        assert_eq!(
            got.len(),
            got_lines.len(),
            "duplicate names in {}",
            path.display()
        );
        // Every setting directly follows a comment line.
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.starts_with('#') && line.contains('=') {
                assert!(
                    i > 0 && lines[i - 1].starts_with('#'),
                    "{}: {line} has no comment above it",
                    path.display()
                );
            }
        }
        // Same defaults as .env.example, except what differs on a VM (the
        // central's metrics are on there, on loopback; a VM offers replica
        // space, a desktop by default none).
        let example_values: BTreeMap<String, String> = env_lines(&example).into_iter().collect();
        for (k, v) in &got_lines {
            if k == "CENTRAL_METRICS_ADDR" {
                assert_eq!(v, "127.0.0.1:9090", "{}: {k}", path.display());
                continue;
            }
            if k == "PSERVER_REPLICA_QUOTA_BYTES" {
                assert_eq!(v, "10737418240", "{}: {k}", path.display());
                assert_eq!(example_values.get(k).map(String::as_str), Some("0"));
                continue;
            }
            if !(k.ends_with("_DIR") || k == "PSERVER_PUBLIC_URL") {
                assert_eq!(Some(v), example_values.get(k), "{}: {k}", path.display());
            }
        }
        // Folders stay inside what the unit may write.
        for (k, v) in &got_lines {
            if k.ends_with("_DIR") {
                assert!(v.starts_with("/var/lib/peerdex/"), "{k}={v}");
            }
        }
    }
}

// ── bundle, install.sh, systemd units ───────────────────────────────────────

fn host_triple() -> String {
    let out = ok(Command::new("rustc").arg("-vV"));
    out.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV prints host")
        .to_owned()
}

#[test]
fn bundle_installs_idempotently_and_units_verify() {
    require_tool("systemd-analyze", "systemd");
    let tmp = Scratch::new("bundle");
    // Stand-in binaries: this test checks packaging, not the release build.
    let bins = tmp.0.join("bins");
    fs::create_dir_all(&bins).unwrap();
    for b in ["central-server", "pserver", "peerdex"] {
        let p = bins.join(b);
        fs::write(&p, format!("#!/bin/sh\necho {b}\n")).unwrap();
        ok(Command::new("chmod").arg("755").arg(&p));
    }
    let out_dir = tmp.0.join("dist");
    let stdout = ok(Command::new(deploy("bundle.sh"))
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--out")
        .arg(&out_dir));
    let name = format!("peerdex-{}-{}", env!("CARGO_PKG_VERSION"), host_triple());
    let tarball = out_dir.join(format!("{name}.tar.gz"));
    assert_eq!(stdout.lines().last(), Some(tarball.to_str().unwrap()));

    let listing = ok(Command::new("tar").arg("-tzf").arg(&tarball));
    let entries: BTreeSet<&str> = listing
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|l| l.strip_prefix(&format!("{name}/")).expect("one top folder"))
        .collect();
    let want: BTreeSet<&str> = [
        "bin/central-server",
        "bin/pserver",
        "bin/peerdex",
        "systemd/central-server.service",
        "systemd/pserver.service",
        "systemd/peerdex-etcd.service",
        "env/central.env",
        "env/pserver.env",
        "install.sh",
        "INSTALL",
    ]
    .into();
    assert_eq!(entries, want);

    let unpacked = tmp.0.join("unpacked");
    fs::create_dir_all(&unpacked).unwrap();
    ok(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked));
    let install = unpacked.join(&name).join("install.sh");
    let root = tmp.0.join("root");

    // Bad arguments are refused.
    fails_with(
        Command::new(&install).arg("--root").arg(&root),
        "--component",
    );
    fails_with(
        Command::new(&install)
            .args(["--component", "both", "--root"])
            .arg(&root),
        "unknown component",
    );

    ok(Command::new(&install)
        .args(["--component", "all", "--root"])
        .arg(&root));
    for p in [
        "usr/local/bin/central-server",
        "usr/local/bin/pserver",
        "usr/local/bin/peerdex",
        "etc/systemd/system/central-server.service",
        "etc/systemd/system/pserver.service",
        "etc/systemd/system/peerdex-etcd.service",
        "etc/peerdex/central.env",
        "etc/peerdex/pserver.env",
    ] {
        assert!(root.join(p).is_file(), "{p} not installed");
    }
    for d in ["central", "pserver", "share"] {
        assert!(root.join("var/lib/peerdex").join(d).is_dir(), "{d} dir");
    }
    assert_eq!(
        fs::read_to_string(root.join("etc/peerdex/pserver.env")).unwrap(),
        fs::read_to_string(deploy("env/pserver.env")).unwrap()
    );

    // Upgrade: settings edited by the operator survive, binaries are replaced.
    let env_path = root.join("etc/peerdex/pserver.env");
    fs::write(&env_path, "PSERVER_CENTRAL_URL=http://10.0.0.9:50051\n").unwrap();
    fs::write(root.join("usr/local/bin/pserver"), "old").unwrap();
    let second = ok(Command::new(&install)
        .args(["--component", "pserver", "--root"])
        .arg(&root));
    assert!(second.contains("kept existing"), "{second}");
    assert_eq!(
        fs::read_to_string(&env_path).unwrap(),
        "PSERVER_CENTRAL_URL=http://10.0.0.9:50051\n"
    );
    assert!(
        fs::read_to_string(root.join("usr/local/bin/pserver"))
            .unwrap()
            .contains("echo pserver")
    );

    // The units say what the deployment relies on.
    let drain: u64 = env_lines(&fs::read_to_string(deploy("env/pserver.env")).unwrap())
        .into_iter()
        .find(|(k, _)| k == "PSERVER_DRAIN_SECS")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    for (unit, env, rw) in [
        (
            "central-server",
            "central",
            "/var/lib/peerdex/central".to_owned(),
        ),
        (
            "pserver",
            "pserver",
            "/var/lib/peerdex/pserver /var/lib/peerdex/share".to_owned(),
        ),
    ] {
        let text = fs::read_to_string(deploy(&format!("systemd/{unit}.service"))).unwrap();
        let keys: BTreeMap<&str, &str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .collect();
        for (k, v) in [
            ("User", "peerdex"),
            ("EnvironmentFile", &format!("/etc/peerdex/{env}.env")),
            ("ExecStart", &format!("/usr/local/bin/{unit}")),
            ("Restart", "on-failure"),
            ("KillSignal", "SIGTERM"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("ReadWritePaths", rw.as_str()),
        ] {
            assert_eq!(keys.get(k).copied(), Some(v), "{unit}: {k}");
        }
        let stop: u64 = keys["TimeoutStopSec"].parse().unwrap();
        assert!(
            stop > drain,
            "{unit}: TimeoutStopSec {stop} <= drain {drain}"
        );
    }

    // The etcd member of a central on etcd (--ha): Debian's etcd as its own
    // user, settings and data of its own.
    let text = fs::read_to_string(deploy("systemd/peerdex-etcd.service")).unwrap();
    let keys: BTreeMap<&str, &str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    for (k, v) in [
        ("User", "etcd"),
        ("EnvironmentFile", "/etc/peerdex/etcd.env"),
        ("ExecStart", "/usr/bin/etcd"),
        ("StateDirectory", "peerdex-etcd"),
        ("Restart", "on-failure"),
        ("Before", "central-server.service"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
    ] {
        assert_eq!(keys.get(k).copied(), Some(v), "peerdex-etcd: {k}");
    }
    // A stand-in for the binary of Debian's etcd-server.
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("usr/bin/etcd"), "#!/bin/sh\n").unwrap();
    ok(Command::new("chmod")
        .arg("755")
        .arg(root.join("usr/bin/etcd")));

    // systemd-analyze verify, against the installed tree (it checks that
    // ExecStart exists too). It needs the stock targets under the root.
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("multi-user.target").exists())
        .expect("systemd-analyze is installed but no multi-user.target found");
    fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    ok(Command::new("cp")
        .arg("-a")
        .arg(system_units)
        .arg(root.join("usr/lib/systemd/system")));
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args([
            "central-server.service",
            "pserver.service",
            "peerdex-etcd.service",
        ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
    // And it does catch a broken unit (so the check above means something).
    fs::remove_file(root.join("usr/local/bin/pserver")).unwrap();
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("pserver.service"));
    assert!(!out.status.success(), "verify ignored a missing ExecStart");
    eprintln!("systemd-analyze verify: the three units pass");
}

#[test]
fn scripts_parse_and_pass_shellcheck() {
    require_tool("shellcheck", "shellcheck");
    let scripts = [
        "bundle.sh",
        "install.sh",
        "launch.sh",
        "teardown.sh",
        "render.sh",
        "lib.sh",
        "cloud-init/bootstrap.sh",
    ];
    for s in scripts {
        ok(Command::new("bash").arg("-n").arg(deploy(s)));
    }
    ok(Command::new("shellcheck")
        .arg("-x")
        .current_dir(repo())
        .args(scripts.map(|s| format!("deploy/{s}"))));
}

// ── the emulator ─────────────────────────────────────────────────────────────

/// The virtualenv with moto, awscli and PyYAML, created on first use
/// (behind a lock: the tests that need it run in parallel).
fn venv() -> PathBuf {
    let base = std::env::var_os("PEERDEX_DEPLOY_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .unwrap()
                .join("deploy-test-venv")
        });
    peerdex_testkit::pyvenv::install(&base, REQUIREMENTS).unwrap_or_else(|e| {
        panic!(
            "the deploy test needs the EC2 emulator: `pip install {}` into a virtualenv \
             under {}: {e}",
            REQUIREMENTS.join(" "),
            base.display()
        )
    })
}

/// A running `moto_server`, killed on drop.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    fn start(venv: &Path, log: &Path) -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log_file = fs::File::create(log).unwrap();
        let child = Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start moto_server");
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!(
                    "moto_server exited ({status}):\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            if http_answers(port) {
                return moto;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {port} within 60 s:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
}

/// Environment of every AWS call: dummy credentials, nothing from the user's
/// own AWS configuration, the venv's `aws` first on PATH.
struct Aws {
    venv: PathBuf,
    home: PathBuf,
    endpoint: String,
}

impl Aws {
    fn command(&self, program: impl AsRef<std::ffi::OsStr>, credentials: bool) -> Command {
        let mut c = Command::new(program);
        let path = format!(
            "{}:{}",
            self.venv.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env_clear()
            .env("PATH", path)
            .env("HOME", &self.home)
            .env("LANG", "C.UTF-8")
            .env("AWS_CONFIG_FILE", self.home.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.home.join("no-aws-creds"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true");
        if credentials {
            c.env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing");
        }
        c
    }

    /// `aws <args> --region R --endpoint-url E --output json`, parsed.
    fn aws(&self, args: &[&str]) -> Value {
        let out = ok(self
            .command("aws", true)
            .args(args)
            .args(["--region", REGION, "--endpoint-url", &self.endpoint])
            .args(["--output", "json"]));
        if out.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&out).unwrap()
        }
    }

    fn script(&self, script: &str) -> Command {
        let mut c = self.command(deploy(script), true);
        c.args(["--endpoint-url", &self.endpoint]);
        c
    }

    fn python(&self, code: &str, args: &[&str]) -> Value {
        let out = ok(self
            .command(self.venv.join("bin/python"), true)
            .arg("-c")
            .arg(code)
            .args(args));
        serde_json::from_str(&out).unwrap()
    }
}

/// Everything the deployment owns, as the EC2 API sees it. User-data is
/// base64-decoded and parsed with PyYAML.
const INSPECT: &str = r#"
import base64, json, sys, boto3, yaml
endpoint, region, name = sys.argv[1:4]
ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=region)
tag = [{"Name": "tag:peerdex:deployment", "Values": [name]}]
out = {"instances": [], "security_groups": []}
for r in ec2.describe_instances(Filters=tag)["Reservations"]:
    for i in r["Instances"]:
        ud = ec2.describe_instance_attribute(InstanceId=i["InstanceId"], Attribute="userData")
        raw = base64.b64decode(ud["UserData"]["Value"]).decode() if ud.get("UserData") else ""
        out["instances"].append({
            "id": i["InstanceId"],
            "state": i["State"]["Name"],
            "image": i["ImageId"],
            "type": i["InstanceType"],
            "key": i.get("KeyName"),
            "private_ip": i.get("PrivateIpAddress"),
            "public_ip": i.get("PublicIpAddress"),
            "groups": [g["GroupId"] for g in i["SecurityGroups"]],
            "tags": {t["Key"]: t["Value"] for t in i.get("Tags", [])},
            "http_tokens": i.get("MetadataOptions", {}).get("HttpTokens"),
            "user_data_first_line": raw.split("\n", 1)[0],
            "user_data": yaml.safe_load(raw) if raw else None,
        })
for g in ec2.describe_security_groups(Filters=tag)["SecurityGroups"]:
    rules = []
    for p in g["IpPermissions"]:
        for c in p.get("IpRanges", []):
            rules.append([p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), "cidr", c["CidrIp"]])
        for c in p.get("Ipv6Ranges", []):
            rules.append([p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), "cidr6", c["CidrIpv6"]])
        for c in p.get("UserIdGroupPairs", []):
            rules.append([p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), "group", c["GroupId"]])
        for c in p.get("PrefixListIds", []):
            rules.append([p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), "prefix", c["PrefixListId"]])
    out["security_groups"].append({
        "id": g["GroupId"],
        "tags": {t["Key"]: t["Value"] for t in g.get("Tags", [])},
        "ingress": sorted(rules, key=str),
    })
print(json.dumps(out))
"#;

/// Renders with deploy/render.sh and parses with PyYAML.
const PARSE_YAML: &str = r#"
import json, sys, yaml
raw = open(sys.argv[1]).read()
print(json.dumps({"first_line": raw.split("\n", 1)[0], "doc": yaml.safe_load(raw), "bytes": len(raw.encode())}))
"#;

/// Fetches a URL (the presigned bundle URL) and prints its length.
const FETCH: &str = r#"
import json, sys, urllib.request
print(json.dumps({"bytes": len(urllib.request.urlopen(sys.argv[1], timeout=10).read())}))
"#;

struct State {
    v: Value,
}

impl State {
    fn live(&self) -> Vec<&Value> {
        self.v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| matches!(i["state"].as_str(), Some("pending" | "running")))
            .collect()
    }

    fn role(&self, role: &str) -> Vec<&Value> {
        let mut v: Vec<&Value> = self
            .live()
            .into_iter()
            .filter(|i| i["tags"]["peerdex:role"] == role)
            .collect();
        v.sort_by_key(|i| {
            i["tags"]["peerdex:index"]
                .as_str()
                .map(|s| s.parse::<u32>().unwrap())
        });
        v
    }

    fn ids(&self) -> BTreeSet<String> {
        self.live()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn sg(&self) -> &Value {
        let sgs = self.v["security_groups"].as_array().unwrap();
        assert_eq!(sgs.len(), 1, "one tagged security group: {sgs:?}");
        &sgs[0]
    }
}

/// Rules as `proto from-to kind source` strings.
fn rules(sg: &Value) -> BTreeSet<String> {
    sg["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {}-{} {} {}",
                r[0].as_str().unwrap(),
                r[1],
                r[2],
                r[3].as_str().unwrap(),
                r[4].as_str().unwrap()
            )
        })
        .collect()
}

/// (path -> content) of a parsed cloud-config's write_files.
fn files(doc: &Value) -> BTreeMap<String, String> {
    doc["write_files"]
        .as_array()
        .expect("write_files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_owned(),
                f["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The bootstrap's command line: `[bootstrap, role, bundle URL]`, plus the
/// URL of the VM's TLS files for a launched VM.
fn runcmd(doc: &Value) -> Vec<String> {
    let cmds = doc["runcmd"].as_array().expect("runcmd");
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    cmds[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// Checks one instance's cloud-config: env file lines, bootstrap, runcmd
/// (the TLS files' URL, when there is one, is returned).
fn check_user_data(
    i: &Value,
    role: &str,
    bundle_url: &str,
    env_lines: &[String],
) -> Option<String> {
    assert_eq!(i["user_data_first_line"], "#cloud-config", "{}", i["id"]);
    let doc = &i["user_data"];
    let files = files(doc);
    let env_path = format!("/etc/peerdex/{role}.env");
    let env = files
        .get(&env_path)
        .unwrap_or_else(|| panic!("{} writes no {env_path}", i["id"]));
    for l in env_lines {
        assert!(
            has_line(env, l),
            "{} {env_path} lacks {l:?}:\n{env}",
            i["id"]
        );
    }
    assert_eq!(
        files
            .get("/usr/local/sbin/peerdex-bootstrap")
            .map(String::as_str),
        Some(
            fs::read_to_string(deploy("cloud-init/bootstrap.sh"))
                .unwrap()
                .as_str()
        ),
        "{} bootstrap script",
        i["id"]
    );
    let cmd = runcmd(doc);
    assert_eq!(
        cmd[..3],
        ["/usr/local/sbin/peerdex-bootstrap", role, bundle_url]
    );
    assert!(cmd.len() <= 4, "{cmd:?}");
    cmd.get(3).cloned()
}

/// The TLS files of one launched VM: its tar is reachable through the
/// presigned URL in its user-data; in the state dir its key is 0600 and its
/// certificate, signed by the deployment's CA, covers its addresses.
fn check_tls(aws: &Aws, state: &Path, vm: &str, url: Option<String>, ips: &[&str]) {
    use std::os::unix::fs::PermissionsExt;
    let url = url.unwrap_or_else(|| panic!("{vm}: no TLS URL in its runcmd"));
    assert!(url.contains(&format!("/tls/{vm}.tar")), "{vm}: {url}");
    let tar = aws.python(FETCH, &[&url])["bytes"].as_u64().unwrap();
    assert!(
        tar > 1024,
        "{vm}: the tar behind its TLS URL has {tar} bytes"
    );
    let dir = state.join(vm);
    // The deployment's join secret (a private network) travels in the
    // same private tar, never in user-data.
    let secret = fs::read_to_string(state.join("join.secret")).unwrap();
    assert!(secret.trim().len() >= 32, "{secret:?}");
    assert_eq!(fs::read_to_string(dir.join("join.secret")).unwrap(), secret);
    for key in [
        dir.join("key.pem"),
        state.join("ca-key.pem"),
        state.join("join.secret"),
        dir.join("join.secret"),
    ] {
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", key.display());
    }
    let cert = dir.join("cert.pem");
    let verify = ok(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(state.join("ca.pem"))
        .arg(&cert));
    assert!(verify.contains(": OK"), "{verify}");
    let san = ok(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&cert));
    for ip in ips {
        assert!(
            san.contains(&format!("IP Address:{ip}")),
            "{vm} lacks {ip}: {san}"
        );
    }
}

#[test]
fn render_launch_and_teardown_against_an_ec2_emulator() {
    let started = Instant::now();
    let venv = venv();
    let tmp = Scratch::new("ec2");
    let home = tmp.0.join("home");
    fs::create_dir_all(&home).unwrap();
    let moto = Moto::start(&venv, &tmp.0.join("moto.log"));
    eprintln!(
        "moto_server up at {} after {:.0?}",
        moto.url,
        started.elapsed()
    );
    let aws = Aws {
        venv: venv.clone(),
        home,
        endpoint: moto.url.clone(),
    };

    // ── render.sh output is valid cloud-config YAML with the env lines ──────
    for role in ["central", "pserver"] {
        let file = tmp.0.join(format!("{role}.yaml"));
        let mut cmd = Command::new(deploy("render.sh"));
        cmd.args([role, "--bundle-url", BUNDLE_URL]);
        if role == "pserver" {
            cmd.args(["--set", "PSERVER_CENTRAL_URL=http://10.1.2.3:50051"])
                .args(["--set", "PSERVER_NEIGHBOURS=http://10.1.2.4:7071"]);
        }
        fs::write(&file, ok(&mut cmd)).unwrap();
        let parsed = aws.python(PARSE_YAML, &[file.to_str().unwrap()]);
        let bytes = parsed["bytes"].as_u64().unwrap();
        assert!(bytes < 16 * 1024, "EC2 user-data limit is 16 KiB: {bytes}");
        let fake = serde_json::json!({
            "id": format!("rendered {role}"),
            "user_data_first_line": parsed["first_line"],
            "user_data": parsed["doc"],
        });
        let want: Vec<String> = if role == "pserver" {
            vec![
                "PSERVER_CENTRAL_URL=http://10.1.2.3:50051".into(),
                "PSERVER_NEIGHBOURS=http://10.1.2.4:7071".into(),
                "PSERVER_PEER_ADDR=0.0.0.0:7071".into(),
                "PSERVER_API_ADDR=127.0.0.1:7070".into(),
            ]
        } else {
            vec![
                "CENTRAL_LISTEN_ADDR=0.0.0.0:50051".into(),
                "CENTRAL_DATA_DIR=/var/lib/peerdex/central".into(),
            ]
        };
        assert_eq!(check_user_data(&fake, role, BUNDLE_URL, &want), None);
        // Every other line of the template is carried over unchanged.
        let template = fs::read_to_string(deploy(&format!("env/{role}.env"))).unwrap();
        let env = &files(&parsed["doc"])[&format!("/etc/peerdex/{role}.env")];
        assert_eq!(env.lines().count(), template.lines().count());
    }
    fails_with(
        Command::new(deploy("render.sh")).args([
            "pserver",
            "--bundle-url",
            BUNDLE_URL,
            "--set",
            "PSERVER_TYPO=1",
        ]),
        "PSERVER_TYPO is not a setting",
    );
    fails_with(
        Command::new(deploy("render.sh")).args(["central", "--bundle-url", "http://x/\"a"]),
        "--bundle-url must be",
    );

    // ── clear errors before anything is created ─────────────────────────────
    let base = |aws: &Aws, credentials: bool| {
        let mut c = aws.command(deploy("launch.sh"), credentials);
        c.args(["--endpoint-url", &aws.endpoint, "--name", "t1"])
            .args(["--bundle-url", BUNDLE_URL]);
        c
    };
    fails_with(
        base(&aws, true).args(["--key-name", "peerdex-test"]),
        "no AWS region",
    );
    fails_with(
        base(&aws, false).args(["--region", REGION, "--key-name", "peerdex-test"]),
        "AWS credentials are missing",
    );
    fails_with(base(&aws, true).args(["--region", REGION]), "no key pair");
    fails_with(
        base(&aws, true).args(["--region", REGION, "--key-name", "peerdex-test"]),
        "key pair 'peerdex-test' not found",
    );
    fails_with(
        aws.command(deploy("teardown.sh"), false).args([
            "--endpoint-url",
            &aws.endpoint,
            "--region",
            REGION,
        ]),
        "AWS credentials are missing",
    );
    aws.aws(&["ec2", "create-key-pair", "--key-name", "peerdex-test"]);

    let ami = aws.aws(&["ssm", "get-parameters", "--names", AMI_PARAM])["Parameters"][0]["Value"]
        .as_str()
        .unwrap()
        .to_owned();
    let launch = |extra: &[&str]| -> String {
        ok(aws
            .script("launch.sh")
            .args([
                "--region",
                REGION,
                "--name",
                "t1",
                "--key-name",
                "peerdex-test",
            ])
            .args(["--ami-param", AMI_PARAM, "--instance-type", "t3.small"])
            .args(extra))
    };
    let inspect = || State {
        v: aws.python(INSPECT, &[&aws.endpoint, REGION, "t1"]),
    };

    // ── first launch: 1 central + 2 pservers ────────────────────────────────
    let out = launch(&["--bundle-url", BUNDLE_URL, "--pservers", "2"]);
    let s = inspect();
    assert_eq!(s.live().len(), 3, "{}", s.v);
    let central = s.role("central");
    let pservers = s.role("pserver");
    assert_eq!((central.len(), pservers.len()), (1, 2));
    let sg = s.sg();
    let sg_id = sg["id"].as_str().unwrap().to_owned();
    assert_eq!(sg["tags"]["peerdex:deployment"], "t1");
    let want_rules: BTreeSet<String> = [
        "tcp 7071-7071 cidr 0.0.0.0/0".to_owned(),
        format!("tcp 50051-50051 group {sg_id}"),
    ]
    .into();
    assert_eq!(rules(sg), want_rules);
    for i in s.live() {
        assert_eq!(i["tags"]["peerdex:deployment"], "t1");
        assert!(
            i["tags"]["Name"]
                .as_str()
                .unwrap()
                .starts_with("peerdex-t1-")
        );
        assert_eq!(i["groups"], serde_json::json!([sg_id]));
        assert_eq!(i["image"], ami.as_str(), "AMI from the SSM parameter");
        assert_eq!(i["type"], "t3.small");
        assert_eq!(i["key"], "peerdex-test");
        assert_eq!(i["http_tokens"], "required", "IMDSv2 only");
    }
    let central_ip = central[0]["private_ip"].as_str().unwrap().to_owned();
    let state = aws.home.join(".peerdex/deploy/t1");
    let tls = check_user_data(
        central[0],
        "central",
        BUNDLE_URL,
        &[
            "CENTRAL_LISTEN_ADDR=0.0.0.0:50051".into(),
            "CENTRAL_TLS_CERT=/etc/peerdex/tls/cert.pem".into(),
            "CENTRAL_TLS_KEY=/etc/peerdex/tls/key.pem".into(),
            // Filled from the private tar at first boot, never in user-data.
            "CENTRAL_JOIN_SECRET=".into(),
        ],
    );
    check_tls(&aws, &state, "central", tls, &[&central_ip]);
    let central_line = format!("PSERVER_CENTRAL_URL=https://{central_ip}:50051");
    for (k, p) in pservers.iter().enumerate() {
        assert_eq!(p["tags"]["peerdex:index"], (k + 1).to_string());
        let neighbours = if k == 0 {
            "PSERVER_NEIGHBOURS=".to_owned()
        } else {
            format!(
                "PSERVER_NEIGHBOURS=https://{}:7071",
                pservers[k - 1]["private_ip"].as_str().unwrap()
            )
        };
        let tls = check_user_data(
            p,
            "pserver",
            BUNDLE_URL,
            &[
                central_line.clone(),
                neighbours,
                // Filled from instance metadata at first boot.
                "PSERVER_PUBLIC_URL=".into(),
                "PSERVER_PEER_ADDR=0.0.0.0:7071".into(),
                "PSERVER_TLS_CERT=/etc/peerdex/tls/cert.pem".into(),
                "PSERVER_TLS_KEY=/etc/peerdex/tls/key.pem".into(),
                "PSERVER_CA_FILE=/etc/peerdex/tls/ca.pem".into(),
                "PSERVER_JOIN_SECRET=".into(),
            ],
        );
        let (private, public_ip) = (
            p["private_ip"].as_str().unwrap(),
            p["public_ip"].as_str().unwrap(),
        );
        check_tls(
            &aws,
            &state,
            &format!("pserver-{}", k + 1),
            tls,
            &[private, public_ip],
        );
        let public = format!("https://{public_ip}:7071");
        assert!(
            out.contains(&public),
            "launch did not print {public}:\n{out}"
        );
    }
    assert!(out.contains("-L 7070:127.0.0.1:7070"), "{out}");
    let first_ids = s.ids();

    // ── idempotent: same call, nothing new ──────────────────────────────────
    launch(&["--bundle-url", BUNDLE_URL, "--pservers", "2"]);
    let s = inspect();
    assert_eq!(
        s.ids(),
        first_ids,
        "re-running launch changed the instances"
    );
    assert_eq!(s.sg()["id"], sg_id.as_str());
    assert_eq!(rules(s.sg()), want_rules);

    // ── SSH only when asked; foreign rules are removed ──────────────────────
    launch(&[
        "--bundle-url",
        BUNDLE_URL,
        "--pservers",
        "2",
        "--ssh-cidr",
        "198.51.100.7/32",
    ]);
    let mut with_ssh = want_rules.clone();
    with_ssh.insert("tcp 22-22 cidr 198.51.100.7/32".into());
    assert_eq!(rules(inspect().sg()), with_ssh);
    aws.aws(&[
        "ec2",
        "authorize-security-group-ingress",
        "--group-id",
        &sg_id,
        "--protocol",
        "tcp",
        "--port",
        "7070",
        "--cidr",
        "0.0.0.0/0",
    ]);
    launch(&["--bundle-url", BUNDLE_URL, "--pservers", "2"]);
    let s = inspect();
    assert_eq!(
        rules(s.sg()),
        want_rules,
        "SSH and 7070 must be closed again"
    );
    assert_eq!(s.ids(), first_ids);

    // ── scale to 3 with a local bundle uploaded to S3 ───────────────────────
    let bundle = tmp.0.join("peerdex-0.0.0-test.tar.gz");
    fs::write(&bundle, vec![7u8; 4096]).unwrap();
    launch(&["--bundle", bundle.to_str().unwrap(), "--pservers", "3"]);
    let s = inspect();
    assert_eq!(s.live().len(), 4);
    assert!(first_ids.is_subset(&s.ids()));
    let pservers = s.role("pserver");
    assert_eq!(pservers.len(), 3);
    let third = pservers[2];
    assert_eq!(third["tags"]["peerdex:index"], "3");
    let url = runcmd(&third["user_data"])[2].clone();
    let bucket = "peerdex-t1-123456789012-us-east-1";
    assert!(
        url.starts_with(&format!("{}/{bucket}/bundles/", moto.url)),
        "{url}"
    );
    let tls = check_user_data(
        third,
        "pserver",
        &url,
        &[
            central_line.clone(),
            format!(
                "PSERVER_NEIGHBOURS=https://{}:7071",
                pservers[1]["private_ip"].as_str().unwrap()
            ),
        ],
    );
    // Signed by the same CA as the first ones (checked against ca.pem).
    check_tls(
        &aws,
        &state,
        "pserver-3",
        tls,
        &[third["private_ip"].as_str().unwrap()],
    );
    assert_eq!(aws.python(FETCH, &[&url])["bytes"], 4096, "presigned URL");
    let buckets = aws.aws(&["s3api", "list-buckets"]);
    assert!(buckets.to_string().contains(bucket), "{buckets}");

    // ── teardown: nothing left; again: still fine ───────────────────────────
    ok(aws
        .script("teardown.sh")
        .args(["--region", REGION, "--name", "t1"]));
    let s = inspect();
    assert!(s.live().is_empty(), "instances left: {}", s.v);
    assert!(
        s.v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "terminated"),
        "{}",
        s.v
    );
    assert_eq!(s.v["security_groups"], serde_json::json!([]));
    let buckets = aws.aws(&["s3api", "list-buckets"]);
    assert!(!buckets.to_string().contains(bucket), "{buckets}");
    assert!(
        !state.exists(),
        "the CA and keys are removed with the deployment"
    );
    let out = run(aws
        .script("teardown.sh")
        .args(["--region", REGION, "--name", "t1"]));
    assert!(out.status.success(), "second teardown: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no instances left"));
    eprintln!(
        "launch/teardown against moto: ok in {:.0?}",
        started.elapsed()
    );
}

/// Lists the members of the tar behind a (presigned) URL.
const TAR_NAMES: &str = r#"
import io, json, sys, tarfile, urllib.request
data = urllib.request.urlopen(sys.argv[1], timeout=10).read()
print(json.dumps(sorted(tarfile.open(fileobj=io.BytesIO(data)).getnames())))
"#;

/// The deployment's security group tagged with `role`.
fn sg_of<'a>(s: &'a State, role: &str) -> &'a Value {
    let sgs = s.v["security_groups"].as_array().unwrap();
    sgs.iter()
        .find(|g| g["tags"]["peerdex:role"] == role)
        .unwrap_or_else(|| panic!("no group tagged {role}: {sgs:?}"))
}

/// `launch.sh --ha`: 3 centrals, each with an etcd member of one static
/// cluster (settings delivered with its TLS files, since the members'
/// addresses exist only once the VMs do), etcd's ports open between the
/// centrals only, every PServer listing the 3 centrals; idempotent; refuses
/// to turn a running deployment into the other kind; teardown removes both
/// security groups.
#[test]
fn launch_ha_and_teardown_against_an_ec2_emulator() {
    let venv = venv();
    let tmp = Scratch::new("ec2-ha");
    let home = tmp.0.join("home");
    fs::create_dir_all(&home).unwrap();
    let moto = Moto::start(&venv, &tmp.0.join("moto.log"));
    let aws = Aws {
        venv,
        home,
        endpoint: moto.url.clone(),
    };
    aws.aws(&["ec2", "create-key-pair", "--key-name", "peerdex-test"]);
    let launch = |extra: &[&str]| -> Command {
        let mut c = aws.script("launch.sh");
        c.args([
            "--region",
            REGION,
            "--name",
            "t2",
            "--key-name",
            "peerdex-test",
        ])
        .args(["--ami-param", AMI_PARAM, "--bundle-url", BUNDLE_URL])
        .args(extra);
        c
    };
    let inspect = || State {
        v: aws.python(INSPECT, &[&aws.endpoint, REGION, "t2"]),
    };

    let out = ok(&mut launch(&["--ha", "--pservers", "2"]));
    let s = inspect();
    let centrals = s.role("central");
    let pservers = s.role("pserver");
    assert_eq!((centrals.len(), pservers.len()), (3, 2), "{}", s.v);

    // Two groups: every VM's, and the centrals' etcd group.
    assert_eq!(
        s.v["security_groups"].as_array().unwrap().len(),
        2,
        "{}",
        s.v
    );
    let (sg, etcd_sg) = (sg_of(&s, "sg"), sg_of(&s, "etcd-sg"));
    let (sg_id, etcd_sg_id) = (sg["id"].as_str().unwrap(), etcd_sg["id"].as_str().unwrap());
    let want_rules: BTreeSet<String> = [
        "tcp 7071-7071 cidr 0.0.0.0/0".to_owned(),
        format!("tcp 50051-50051 group {sg_id}"),
    ]
    .into();
    assert_eq!(rules(sg), want_rules);
    // etcd's ports: from the etcd group only, never from an address range.
    let want_etcd: BTreeSet<String> = [
        format!("tcp 2379-2379 group {etcd_sg_id}"),
        format!("tcp 2380-2380 group {etcd_sg_id}"),
    ]
    .into();
    assert_eq!(rules(etcd_sg), want_etcd);
    for c in &centrals {
        let groups: BTreeSet<&str> = c["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_str().unwrap())
            .collect();
        assert_eq!(groups, [sg_id, etcd_sg_id].into(), "{}", c["id"]);
    }
    for p in &pservers {
        assert_eq!(p["groups"], serde_json::json!([sg_id]), "{}", p["id"]);
    }

    let ips: Vec<String> = centrals
        .iter()
        .map(|c| c["private_ip"].as_str().unwrap().to_owned())
        .collect();
    let endpoints = ips
        .iter()
        .map(|ip| format!("http://{ip}:2379"))
        .collect::<Vec<_>>()
        .join(",");
    let cluster = ips
        .iter()
        .enumerate()
        .map(|(k, ip)| format!("central-{}=http://{ip}:2380", k + 1))
        .collect::<Vec<_>>()
        .join(",");
    let state = aws.home.join(".peerdex/deploy/t2");
    // Every ETCD_* name is a flag of the etcd the tests run (a typo would
    // be ignored by etcd, silently).
    let etcd_help = {
        let etcd = peerdex_testkit::etcd::etcd_bin().unwrap_or_else(|e| panic!("{e}"));
        let out = run(Command::new(etcd).arg("--help"));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    for (k, c) in centrals.iter().enumerate() {
        let vm = format!("central-{}", k + 1);
        assert_eq!(c["tags"]["peerdex:index"], (k + 1).to_string());
        assert_eq!(c["tags"]["Name"], format!("peerdex-t2-central-{}", k + 1));
        let tls = check_user_data(
            c,
            "central",
            BUNDLE_URL,
            &[
                format!("CENTRAL_NAME={vm}"),
                // Filled at first boot from the VM's tar (the members'
                // addresses exist only once the VMs do).
                "CENTRAL_ETCD_ENDPOINTS=".into(),
                "CENTRAL_ETCD_PREFIX=/peerdex/".into(),
                "CENTRAL_TLS_CERT=/etc/peerdex/tls/cert.pem".into(),
                "CENTRAL_JOIN_SECRET=".into(),
            ],
        );
        let names = aws.python(TAR_NAMES, &[tls.as_deref().unwrap()]);
        assert_eq!(
            names,
            serde_json::json!([
                "ca.pem",
                "cert.pem",
                "etcd.endpoints",
                "etcd.env",
                "join.secret",
                "key.pem"
            ])
        );
        check_tls(&aws, &state, &vm, tls, &[&ips[k]]);
        let dir = state.join(&vm);
        assert_eq!(
            fs::read_to_string(dir.join("etcd.endpoints")).unwrap(),
            format!("{endpoints}\n")
        );
        let etcd_env = fs::read_to_string(dir.join("etcd.env")).unwrap();
        let ip = &ips[k];
        for line in [
            format!("ETCD_NAME={vm}"),
            "ETCD_DATA_DIR=/var/lib/peerdex-etcd".into(),
            format!("ETCD_LISTEN_CLIENT_URLS=http://{ip}:2379,http://127.0.0.1:2379"),
            format!("ETCD_ADVERTISE_CLIENT_URLS=http://{ip}:2379"),
            format!("ETCD_LISTEN_PEER_URLS=http://{ip}:2380"),
            format!("ETCD_INITIAL_ADVERTISE_PEER_URLS=http://{ip}:2380"),
            format!("ETCD_INITIAL_CLUSTER={cluster}"),
            "ETCD_INITIAL_CLUSTER_STATE=new".into(),
            "ETCD_INITIAL_CLUSTER_TOKEN=peerdex-t2".into(),
        ] {
            assert!(
                has_line(&etcd_env, &line),
                "{vm} etcd.env lacks {line:?}:\n{etcd_env}"
            );
        }
        for (name, _) in env_lines(&etcd_env) {
            let flag = format!(
                "--{}",
                name.strip_prefix("ETCD_")
                    .unwrap_or_else(|| panic!("{name} in etcd.env"))
                    .to_lowercase()
                    .replace('_', "-")
            );
            assert!(
                etcd_help.contains(&format!("{flag} ")) || etcd_help.contains(&format!("{flag}\n")),
                "{name}: etcd has no {flag}"
            );
        }
    }
    let central_line = format!(
        "PSERVER_CENTRAL_URL={}",
        ips.iter()
            .map(|ip| format!("https://{ip}:50051"))
            .collect::<Vec<_>>()
            .join(",")
    );
    for (k, p) in pservers.iter().enumerate() {
        let tls = check_user_data(
            p,
            "pserver",
            BUNDLE_URL,
            &[
                central_line.clone(),
                "PSERVER_CA_FILE=/etc/peerdex/tls/ca.pem".into(),
            ],
        );
        let names = aws.python(TAR_NAMES, &[tls.as_deref().unwrap()]);
        assert_eq!(
            names,
            serde_json::json!(["ca.pem", "cert.pem", "join.secret", "key.pem"]),
            "a PServer gets no etcd settings"
        );
        check_tls(
            &aws,
            &state,
            &format!("pserver-{}", k + 1),
            tls,
            &[p["private_ip"].as_str().unwrap()],
        );
    }
    for k in 1..=3 {
        assert!(out.contains(&format!("central-{k}  ")), "{out}");
    }
    assert!(out.contains("etcd "), "{out}");
    let ids = s.ids();

    // Idempotent; and a deployment of one kind is never turned into the
    // other in place.
    ok(&mut launch(&["--ha", "--pservers", "2"]));
    let s = inspect();
    assert_eq!(s.ids(), ids);
    assert_eq!(rules(sg_of(&s, "sg")), want_rules);
    assert_eq!(rules(sg_of(&s, "etcd-sg")), want_etcd);
    fails_with(&mut launch(&["--pservers", "2"]), "did you mean --ha?");
    assert_eq!(inspect().ids(), ids);

    // Teardown removes every instance and both groups.
    ok(aws
        .script("teardown.sh")
        .args(["--region", REGION, "--name", "t2"]));
    let s = inspect();
    assert!(s.live().is_empty(), "instances left: {}", s.v);
    assert_eq!(s.v["security_groups"], serde_json::json!([]));
}
