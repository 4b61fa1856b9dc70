//! Networking, host side: a taken host port is refused before anything
//! boots; `hafen build` gives the same bytes whoever runs it, network plan
//! included; a running VM's published ports are bound on the host and
//! shown by `hafen port` and `hafen ps` without asking the guest.

mod common;

use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    build_image, eventually, free_tcp_port, free_udp_port, hafen_cli, wait_child, Scratch, Vm,
};

const CLI: Duration = Duration::from_secs(60);

/// Two busybox containers, `web` publishing `web_ports`. `outbound` is
/// on: UDP ports need it (slirp's restricted mode drops the guest's UDP);
/// nothing in these containers opens a connection anywhere.
fn manifest(name: &str, web_ports: &str) -> String {
    format!(
        r#"
name = "{name}"
[network]
outbound = true
[[container]]
name = "web"
image = "oci:busybox:1"
ports = [{web_ports}]
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo ready; while true; do sleep 1 & wait $!; done"]
[[container]]
name = "side"
image = "oci:busybox:1"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done"]
"#
    )
}

/// `hafen run` with a host port another program listens on fails at once,
/// naming the port and the container, and leaves no VM behind (no state
/// directory, so no QEMU was started), in the foreground and with -d.
#[test]
fn a_taken_host_port_is_refused_before_boot_and_leaves_no_vm() {
    let scratch = Scratch::new("port-taken");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let image = build_image(
        &scratch,
        &manifest(
            "porttaken",
            &format!("\"{}:53/udp\", \"{port}:80\"", free_udp_port()),
        ),
    );
    let runtime = scratch.0.join("run");
    std::fs::create_dir_all(&runtime).expect("mkdir");
    for detach in [false, true] {
        let mut command = Command::new(common::hafen());
        command.args(["run", "--accel", "tcg"]);
        if detach {
            command.arg("-d");
        }
        let mut child = command
            .arg(&image)
            .env("XDG_RUNTIME_DIR", &runtime)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hafen run");
        let started = Instant::now();
        let status = wait_child(&mut child, Duration::from_secs(30))
            .expect("hafen run must fail fast, not boot");
        let output = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(status.code(), Some(2), "detach {detach}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "cannot publish host port 127.0.0.1:{port}/tcp for container web (127.0.0.1:{port}->80/tcp)"
            )) && stderr.contains("another program uses it"),
            "detach {detach}: {stderr}"
        );
        assert!(!stderr.contains("booting"), "detach {detach}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        let vms = runtime.join("hafen/vms");
        let left: Vec<_> = std::fs::read_dir(&vms)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "detach {detach}: a VM was left: {left:?}");
    }
    drop(taken);
}

/// `hafen build` as an ordinary user (nobody) writes the same bytes as
/// root's build, network plan and published ports included: nothing in
/// network.json or image.json depends on who builds.
#[test]
fn a_build_as_nobody_gives_the_same_bytes_network_plan_included() {
    const NOBODY: u32 = 65534;
    let scratch = Scratch::new("build-nobody");
    let text = manifest("buildnobody", "\"8080:80\", \"0.0.0.0:5353:53/udp\"")
        .replace(
            "outbound = true\n",
            "outbound = true\nsubnet = \"10.5.0.0/16\"\n",
        )
        .replace(
            "name = \"side\"\n",
            "name = \"side\"\nnetwork = \"host\"\nports = [\"9000:9000\"]\n",
        );
    let root_image = build_image(&scratch, &text);
    // nobody reads what root's build read, from copies it may reach.
    let (vmlinux, bzimage) = hafen_image_build::locate_kernel(None).expect("kernel");
    let tools = scratch.0.join("tools");
    std::fs::create_dir_all(&tools).expect("mkdir");
    std::fs::copy(&vmlinux, tools.join("vmlinux")).expect("copy vmlinux");
    if let Some(bzimage) = bzimage {
        std::fs::copy(&bzimage, tools.join("bzImage")).expect("copy bzImage");
    }
    std::fs::copy(common::init_binary(), tools.join("hafen-init")).expect("copy init");
    let out = scratch.0.join("nobody");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::os::unix::fs::chown(&out, Some(NOBODY), Some(NOBODY)).expect("chown");
    for dir in [&scratch.0, &tools] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let result = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(common::hafen())
        .arg("build")
        .arg(scratch.0.join("hafen.toml"))
        .arg("-o")
        .arg(out.join("image"))
        .arg("--kernel")
        .arg(&tools)
        .arg("--init")
        .arg(tools.join("hafen-init"))
        .env("HOME", &out)
        .output()
        .expect("run setpriv hafen build");
    assert!(
        result.status.success(),
        "hafen build as nobody: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    for file in ["initramfs", "image.json"] {
        let read = |dir: &Path| {
            let path = match file {
                "initramfs" => common::initramfs_path(dir),
                _ => dir.join(file),
            };
            std::fs::read(path).expect("read")
        };
        assert!(
            read(&root_image) == read(&out.join("image")),
            "{file} differs between root's build and nobody's"
        );
    }
    let info = std::fs::read_to_string(root_image.join("image.json")).expect("image.json");
    assert!(
        info.contains("\"subnet\": \"10.5.0.0\"") && info.contains("\"container\": \"side\""),
        "{info}"
    );
}

/// A VM's published ports are bound on the host while it runs (slirp
/// listens even before the guest configures its NIC), `hafen port` and
/// `hafen ps` show them from what `hafen run` recorded, and they are free
/// again once the VM is gone.
#[test]
fn a_running_vms_published_ports_are_bound_and_shown_by_port_and_ps() {
    let scratch = Scratch::new("port-shown");
    let (tcp, udp) = (free_tcp_port(), free_udp_port());
    let image = build_image(
        &scratch,
        &manifest(
            "portshown",
            &format!("\"{tcp}:80\", \"127.0.0.1:{udp}:53/udp\""),
        ),
    );
    let name = format!("portshown-{}", std::process::id());
    let mut vm = Vm::boot_with(&image, &["--accel", "tcg", "--name", &name]);
    vm.wait_for("web | ready");
    vm.checked(|| {
        let err = TcpListener::bind(("127.0.0.1", tcp)).expect_err("QEMU holds the TCP port");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        let err = UdpSocket::bind(("127.0.0.1", udp)).expect_err("QEMU holds the UDP port");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);

        let web = hafen_cli(&["port", &name, "web"], None, CLI).ok("hafen port VM web");
        assert_eq!(
            web,
            format!("80/tcp -> 127.0.0.1:{tcp}\n53/udp -> 127.0.0.1:{udp}\n")
        );
        let all = hafen_cli(&["port", &name], None, CLI).ok("hafen port VM");
        assert_eq!(
            all,
            format!("web 80/tcp -> 127.0.0.1:{tcp}\nweb 53/udp -> 127.0.0.1:{udp}\n")
        );
        let side = hafen_cli(&["port", &name, "side"], None, CLI).ok("hafen port VM side");
        assert_eq!(side, "", "a container without ports prints nothing");
        let typo = hafen_cli(&["port", &name, "wbe"], None, CLI);
        assert_ne!(typo.code(), Some(0));
        assert!(
            typo.stderr.contains("no container \"wbe\""),
            "{}",
            typo.stderr
        );

        // ps lists a container once it has started: retry until both run.
        let ps = eventually("ps shows both containers", CLI, || {
            let text = hafen_cli(&["ps", &name], None, CLI).ok("hafen ps");
            if text.lines().any(|l| l.starts_with("side ")) {
                Ok(text)
            } else {
                Err(text)
            }
        });
        let line = |c: &str| {
            ps.lines()
                .find(|l| l.starts_with(&format!("{c} ")))
                .unwrap_or_else(|| panic!("no {c} in {ps}"))
                .to_owned()
        };
        assert!(
            ps.lines().next().is_some_and(|h| h.ends_with(" PORTS")),
            "{ps}"
        );
        assert!(
            line("web").ends_with(&format!(
                " 127.0.0.1:{tcp}->80/tcp, 127.0.0.1:{udp}->53/udp"
            )),
            "{ps}"
        );
        assert!(!line("side").contains("->"), "{ps}");
    });
    vm.signal(libc::SIGTERM);
    let status = vm.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", vm.console());
    TcpListener::bind(("127.0.0.1", tcp)).expect("the TCP port is free again");
}
