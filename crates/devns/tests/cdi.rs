//! devns's CDI spec: `devns cdi generate`, the daemon keeping it up to
//! date, and podman 4.3.1 giving a user-namespaced container exactly the
//! CDI device it asked for, owned by its namespace.

mod common;
use common::oci::*;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The CDI JSON schema, as Debian's CDI package (0.5.2) ships it.
const CDI_SCHEMA: &str =
    "/usr/share/gocode/src/github.com/container-orchestrated-devices/container-device-interface/schema/schema.json";

/// `spec` checked against the CDI schema by Debian's python3-jsonschema
/// (draft 7, `defs.json` resolved beside the schema): `Err` with the
/// validator's words when it does not validate.
fn validate_cdi(spec: &Value) -> Result<(), String> {
    assert!(Path::new(CDI_SCHEMA).exists(), "no CDI schema at {CDI_SCHEMA} (.ci/run installs its package)");
    let check = r#"
import json, sys, pathlib, jsonschema
schema_path = pathlib.Path(sys.argv[1])
schema = json.loads(schema_path.read_text())
resolver = jsonschema.RefResolver(base_uri=schema_path.parent.as_uri() + "/", referrer=schema)
validator = jsonschema.Draft7Validator(schema, resolver=resolver)
errors = sorted(validator.iter_errors(json.load(sys.stdin)), key=lambda e: list(e.path))
for e in errors:
    print("/".join(map(str, e.path)) + ": " + e.message)
sys.exit(1 if errors else 0)
"#;
    use std::io::Write;
    let mut p = std::process::Command::new("/usr/bin/python3")
        .args(["-c", check, CDI_SCHEMA])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("Debian's python3 (with python3-jsonschema)");
    p.stdin.take().unwrap().write_all(spec.to_string().as_bytes()).unwrap();
    let o = p.wait_with_output().unwrap();
    match o.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(String::from_utf8_lossy(&o.stdout).into_owned()),
        _ => panic!("the validator did not run: {}", String::from_utf8_lossy(&o.stderr)),
    }
}

fn names(spec: &Value) -> Vec<String> {
    spec["devices"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn generate_writes_one_device_per_assignable_device_each_devns_s_hook() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let l = Loop::new(false);
    let path = env.dir.path().join("cdi/devns.json");
    let out = devns_ok(&env, &["cdi", "generate", "-o", path.to_str().unwrap()]);
    assert!(out.starts_with(&path.display().to_string()), "{out}");
    let spec = read(&path);
    assert_eq!((spec["cdiVersion"].as_str(), spec["kind"].as_str()), (Some("0.5.0"), Some("devns.io/device")));
    // It validates against the CDI JSON schema; the same spec broken (a
    // device without its edits, a hook's args not strings) does not, so
    // the check is one that can fail.
    validate_cdi(&spec).unwrap_or_else(|e| panic!("devns's CDI spec against the CDI schema:\n{e}"));
    let mut broken = spec.clone();
    broken["devices"][0].as_object_mut().unwrap().remove("containerEdits");
    broken["devices"][1]["containerEdits"]["hooks"][0]["args"] = serde_json::json!([1, 2]);
    let e = validate_cdi(&broken).expect_err("a broken spec validates");
    assert!(e.contains("'containerEdits' is a required property") && e.contains("is not of type 'string'"), "{e}");
    let names = names(&spec);
    assert_eq!(names[0], "loop");
    assert!(names.contains(&l.name), "{names:?}");
    // Global devices are in every view already; loop-control is the view's.
    for not in ["null", "fuse", "loop-control"] {
        assert!(!names.iter().any(|n| n == not), "{not} in {names:?}");
    }
    let dev = spec["devices"].as_array().unwrap().iter().find(|d| d["name"] == l.name.as_str()).unwrap();
    let hooks = &dev["containerEdits"]["hooks"];
    assert_eq!(hooks[0]["hookName"], "createRuntime");
    assert_eq!(hooks[0]["path"], env!("CARGO_BIN_EXE_devns"));
    let socket = env.socket().display().to_string();
    assert_eq!(
        hooks[0]["args"],
        serde_json::json!(["devns", "--socket", socket, "hook", "createRuntime", "--device", l.name])
    );
    assert_eq!(hooks[1]["hookName"], "poststop");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o644, "readable by the runtimes");

    // A bad kind: said, and nothing written.
    let bad = env.dir.path().join("bad.json");
    let o = env.devns().args(["cdi", "generate", "--kind", "no-class", "-o"]).arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a CDI kind"), "{o:?}");
    assert!(!bad.exists());
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_daemon_keeps_the_generated_spec_up_to_date_as_devices_come_and_go() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let path = env.dir.path().join("cdi.json");
    std::fs::write(env.config(), format!("cdi_spec = {:?}\n", path.display().to_string())).unwrap();
    let _d = Daemon::start(&env);
    // Not written until asked for: the daemon only keeps it.
    let l = AddedLoop::new();
    eventually("the daemon knows the new device", || devns_ok(&env, &["ls"]).contains(&l.name()));
    assert!(!path.exists(), "the daemon wrote a spec nobody generated");
    devns_ok(&env, &["cdi", "generate", "--kind", "test.devns.io/device"]);
    assert!(names(&read(&path)).contains(&l.name()));
    let name = l.name();
    drop(l);
    eventually("the removed device leaves the spec", || !names(&read(&path)).contains(&name));
    let again = AddedLoop::new();
    eventually("a new device joins the spec", || names(&read(&path)).contains(&again.name()));
    assert_eq!(read(&path)["kind"], "test.devns.io/device", "the kind generate chose is kept");
}

/// A spec in the directory podman reads (`/var/run/cdi`), of a kind of the
/// test's own; removed on drop, and the directory too when the test made
/// it (and no other test's spec is in it).
struct PublishedSpec(PathBuf, bool);

impl PublishedSpec {
    fn new(tag: &str) -> PublishedSpec {
        let dir_was_there = Path::new("/var/run/cdi").exists();
        PublishedSpec(PathBuf::from(format!("/var/run/cdi/{tag}.json")), dir_was_there)
    }
}

impl Drop for PublishedSpec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if !self.1 {
            let _ = std::fs::remove_dir("/var/run/cdi");
        }
    }
}

/// `podman run --device KIND=loopN` of a user-namespaced container: its
/// /dev is the view with that device (and no other of the host's), usable,
/// owned by its namespace while it runs; `loop` alone gives the view; and
/// after `podman rm` nothing of it is left.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn podman_gives_a_container_exactly_the_cdi_device_it_asked_for() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let (wanted, other) = (Loop::new(false), Loop::new(false));
    let tag = marker("cdi");
    let kind = format!("{tag}.devns.io/device");
    let spec = PublishedSpec::new(&tag);
    devns_ok(&env, &["cdi", "generate", "--kind", &kind, "-o", spec.0.to_str().unwrap()]);
    let podman = Podman::new(&env);
    let b = Bundle::new("cdi");
    let mounts_before = env.host_mounts();
    let name = format!("{}-dev", b.id);
    let script = format!(
        "ls /dev; echo ==; head -c 512 /dev/{} | wc -c; test -e /dev/{} && echo other-there; echo end",
        wanted.name, other.name
    );
    let mut cmd = podman.run_args(&name, b.base);
    let device = format!("{kind}={}", wanted.name);
    cmd.args(["--runtime", "runc", "--device", &device, "--rootfs"]).arg(b.rootfs()).args(["/bin/sh", "-c", &script]);
    let out = cmd.output().unwrap();
    let s = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "podman run --device {device}: {s}");
    let (listing, rest) = s.split_once("==\n").unwrap_or_else(|| panic!("{s}"));
    let listed: Vec<&str> = listing.lines().collect();
    assert!(listed.contains(&wanted.name.as_str()) && listed.contains(&"loop-control"), "{s}");
    assert_eq!(rest.lines().collect::<Vec<_>>(), ["512", "end"], "usable, and no other host device: {s}");
    assert!(podman.rm(&name).status.success());

    // While it runs, the device is its namespace's.
    let name = format!("{}-run", b.id);
    let mut cmd = podman.run_args(&name, b.base);
    cmd.args(["-d", "--runtime", "runc", "--device", &device, "--device", &format!("{kind}=loop"), "--rootfs"])
        .arg(b.rootfs())
        .args(["/bin/sh", "-c", "sleep 1000"]);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let owner = || env.owned().iter().find(|o| o["name"] == wanted.name.as_str()).map(|o| o["owner"].to_string());
    eventually("the device owned by the container's namespace", || owner().is_some());
    let rows: Vec<Value> = serde_json::from_str(&devns_ok(&env, &["ns", "ls", "--json"])).unwrap();
    assert_eq!(rows.len(), 1, "one namespace for the container: {rows:?}");
    assert!(owner().unwrap().contains(&rows[0]["id"].to_string()), "{:?} {rows:?}", owner());
    assert!(podman.rm(&name).status.success());
    eventually("the namespace let go", || env.owned().is_empty());
    drop(podman);
    assert_eq!(env.host_mounts(), mounts_before, "nothing of the containers left mounted");
}

/// A CDI device another namespace owns is not taken from it: the start
/// fails with devns's reason, and the owner keeps it.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_cdi_device_owned_elsewhere_fails_the_start_and_stays_its_owner_s() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let l = Loop::new(false);
    let mut owner = shell_container(&env, &["--name", "owner", "--dev", &l.name]);
    assert_eq!(owner.sh("echo in"), ["in"]);
    let tag = marker("cdiown");
    let kind = format!("{tag}.devns.io/device");
    let spec = PublishedSpec::new(&tag);
    devns_ok(&env, &["cdi", "generate", "--kind", &kind, "-o", spec.0.to_str().unwrap()]);
    let podman = Podman::new(&env);
    let b = Bundle::new("cdiown");
    let name = format!("{}-taken", b.id);
    let mut cmd = podman.run_args(&name, b.base);
    cmd.args(["--runtime", "runc", "--device", &format!("{kind}={}", l.name), "--rootfs"])
        .arg(b.rootfs())
        .args(["/bin/true"]);
    let out = cmd.output().unwrap();
    let s = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{s}");
    assert!(s.contains("devns") && s.contains(&l.name), "devns's reason: {s}");
    let rows: Vec<Value> = serde_json::from_str(&devns_ok(&env, &["ns", "ls", "--json"])).unwrap();
    assert_eq!(rows.len(), 1, "no namespace kept for the refused container: {rows:?}");
    assert_eq!(rows[0]["name"], "owner");
    let id = rows[0]["id"].as_str().map_or_else(|| rows[0]["id"].to_string(), str::to_owned);
    let owned = env.owned();
    assert_eq!(owned.len(), 1, "{owned:?}");
    assert!(owned[0]["owner"].as_str().unwrap().contains(id.trim_start_matches("id:")), "{owned:?} {rows:?}");
}

mod kubelet {
    //! A kubelet stand-in: its Registration service, and a client of the
    //! plugin's, speaking the v1beta1 protos over unix sockets.
    use devns::deviceplugin::api;
    use std::path::PathBuf;
    use tokio::sync::mpsc;
    use tonic::{Request, Response, Status};

    pub struct Registration(pub mpsc::UnboundedSender<api::RegisterRequest>);

    #[tonic::async_trait]
    impl api::registration_server::Registration for Registration {
        async fn register(&self, req: Request<api::RegisterRequest>) -> Result<Response<api::Empty>, Status> {
            let _ = self.0.send(req.into_inner());
            Ok(Response::new(api::Empty {}))
        }
    }

    /// The Registration service at `path`, and its task (aborted: the
    /// kubelet gone).
    pub async fn serve(
        path: PathBuf,
    ) -> (mpsc::UnboundedReceiver<api::RegisterRequest>, tokio::task::JoinHandle<Result<(), tonic::transport::Error>>)
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(api::registration_server::RegistrationServer::new(Registration(tx)))
                .serve_with_incoming(incoming),
        );
        (rx, task)
    }

    pub async fn plugin(path: PathBuf) -> api::device_plugin_client::DevicePluginClient<tonic::transport::Channel> {
        api::device_plugin_client::DevicePluginClient::new(devns::deviceplugin::channel(path).await.unwrap())
    }
}

/// The device plugin against a kubelet stand-in: it registers its
/// resource, `ListAndWatch` sends the class's devices again when one is
/// added, assigned elsewhere (unhealthy) or removed, `Allocate` answers
/// their CDI names, and podman given such a name gives the container the
/// device.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_device_plugin_registers_follows_devices_and_allocates_cdi_names_podman_honours() {
    if !privileged() {
        return;
    }
    use devns::deviceplugin::api;
    let env = Env::new();
    let _d = Daemon::start(&env);
    let a = AddedLoop::new();
    let b_number = AddedLoop::new().0; // made and removed: a free number to add later
    let b_name = format!("loop{b_number}");
    eventually("the daemon knows the device", || devns_ok(&env, &["ls"]).contains(&a.name()));
    let dir = env.dir.path().join("device-plugins");
    std::fs::create_dir(&dir).unwrap();
    let tag = marker("dp");
    let kind = format!("{tag}.devns.io/device");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (mut registered, kubelet_task) = kubelet::serve(dir.join("kubelet.sock")).await;
        let class = format!("devns.io/disk={},{b_name}", a.name());
        let plugin = env
            .devns()
            .args(["k8s", "device-plugin", "--dir", dir.to_str().unwrap(), "--class", &class, "--cdi-kind", &kind])
            .spawn()
            .unwrap();
        let _plugin = Killed(plugin);
        let req = tokio::time::timeout(std::time::Duration::from_secs(30), registered.recv()).await.unwrap().unwrap();
        assert_eq!((req.version.as_str(), req.resource_name.as_str()), ("v1beta1", "devns.io/disk"));
        assert_eq!(req.endpoint, "devns-devns.io_disk.sock");
        assert!(req.options.is_some_and(|o| o.get_preferred_allocation_available && !o.pre_start_required));
        let mut client = kubelet::plugin(dir.join(&req.endpoint)).await;
        let mut stream = client.list_and_watch(api::Empty {}).await.unwrap().into_inner();
        async fn next_list(s: &mut tonic::Streaming<api::ListAndWatchResponse>) -> Vec<(String, String)> {
            let r = tokio::time::timeout(std::time::Duration::from_secs(30), s.message()).await;
            let list = r.expect("a ListAndWatch update").unwrap().expect("the stream goes on");
            list.devices.iter().map(|d| (d.id.clone(), d.health.clone())).collect()
        }
        macro_rules! next {
            () => {
                next_list(&mut stream)
            };
        }
        let healthy = |n: &str| (n.to_owned(), "Healthy".to_owned());
        assert_eq!(next!().await, [healthy(&a.name())]);
        // Added.
        let b = AddedLoop::number(b_number);
        let mut both = vec![healthy(&a.name()), healthy(&b.name())];
        both.sort();
        assert_eq!(next!().await, both);
        // A preferred allocation: the musts first, then the class's order.
        let prefer = |available: Vec<String>, must: Vec<String>, size: i32| api::PreferredAllocationRequest {
            container_requests: vec![api::ContainerPreferredAllocationRequest {
                available_device_i_ds: available,
                must_include_device_i_ds: must,
                allocation_size: size,
            }],
        };
        let mut sorted = vec![a.name(), b.name()];
        sorted.sort();
        let got = client.get_preferred_allocation(prefer(vec![b.name(), a.name()], vec![], 1)).await.unwrap();
        assert_eq!(got.into_inner().container_responses[0].device_i_ds, [sorted[0].clone()]);
        let got = client.get_preferred_allocation(prefer(sorted.clone(), vec![sorted[1].clone()], 2)).await.unwrap();
        assert_eq!(got.into_inner().container_responses[0].device_i_ds, [sorted[1].clone(), sorted[0].clone()]);
        let err = client.get_preferred_allocation(prefer(sorted.clone(), vec![], 3)).await.unwrap_err();
        assert!(err.message().contains("an allocation of 3 from 2 available"), "{err:?}");
        // Assigned elsewhere: unhealthy for the kubelet.
        let mut x = shell_container(&env, &["--name", "x"]);
        assert_eq!(x.sh("echo in"), ["in"]);
        devns_ok(&env, &["assign", &a.name(), "--to", "x"]);
        let got = next!().await;
        assert!(got.contains(&(a.name(), "Unhealthy".to_owned())) && got.contains(&healthy(&b.name())), "{got:?}");
        devns_ok(&env, &["release", &a.name()]);
        assert!(next!().await.contains(&healthy(&a.name())));
        drop(x);
        // Removed.
        drop(b);
        let mut got = next!().await;
        while got.len() != 1 {
            got = next!().await;
        }
        assert_eq!(got, [healthy(&a.name())]);

        // Allocated: CDI names; one the class does not offer is refused.
        let req = api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest { devices_ids: vec![a.name()] }],
        };
        let resp = client.allocate(req).await.unwrap().into_inner();
        let names: Vec<String> = resp.container_responses[0].cdi_devices.iter().map(|d| d.name.clone()).collect();
        assert_eq!(names, [format!("{kind}={}", a.name())]);
        let bad = api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest { devices_ids: vec!["nosuch".into()] }],
        };
        let err = client.allocate(bad).await.unwrap_err();
        assert!(err.message().contains("nosuch"), "{err:?}");

        // The kubelet restarts: it removes every socket in its directory
        // and makes its own again. The plugin serves anew and registers
        // again, its list as before.
        kubelet_task.abort();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
        let (mut registered, _kubelet_task) = kubelet::serve(dir.join("kubelet.sock")).await;
        let req = tokio::time::timeout(std::time::Duration::from_secs(30), registered.recv()).await.unwrap().unwrap();
        assert_eq!(req.resource_name, "devns.io/disk");
        let mut client = kubelet::plugin(dir.join(&req.endpoint)).await;
        stream = client.list_and_watch(api::Empty {}).await.unwrap().into_inner();
        assert_eq!(next!().await, [healthy(&a.name())]);

        // podman, as the CRI runtime would, given the CDI name.
        let spec = PublishedSpec::new(&tag);
        devns_ok(&env, &["cdi", "generate", "--kind", &kind, "-o", spec.0.to_str().unwrap()]);
        let podman = Podman::new(&env);
        let bundle = Bundle::new("dp");
        let name = format!("{}-dp", bundle.id);
        let mut cmd = podman.run_args(&name, bundle.base);
        cmd.args(["--runtime", "runc", "--device", &names[0], "--rootfs"]).arg(bundle.rootfs()).args([
            "/bin/sh",
            "-c",
            &format!("test -b /dev/{} && echo there", a.name()),
        ]);
        let out = cmd.output().unwrap();
        let s = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && s.contains("there"), "podman run --device {}: {s}", names[0]);
        assert!(podman.rm(&name).status.success());
    });
}
