//! Networking in the guest: a container's published TCP and UDP ports are
//! reached from the host through `hafen run`'s forwards (UDP only with
//! `outbound = true`: restricted slirp drops the guest's datagrams, replies
//! included); containers reach
//! each other by name and alias (a user-namespaced one too); a `none`
//! container has only loopback and no route; a `host` container sees the
//! VM's NIC; no container sees another's interfaces or the control port,
//! and nothing reaches past QEMU's restricted user network.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::{build_image, eventually, free_tcp_port, free_udp_port, Scratch, Vm};

const READY: Duration = Duration::from_secs(60);

/// One HTTP/1.0 GET of `/` on 127.0.0.1:`port`: the body.
fn http_get(port: u16) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_owned())
        }
        _ => Err(format!("not a 200 answer: {response:?}")),
    }
}

/// One UDP round trip to 127.0.0.1:`port`.
fn udp_echo(port: u16) -> Result<String, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    socket
        .send_to(b"ping", ("127.0.0.1", port))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let (n, _) = socket.recv_from(&mut buf).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn published_ports_names_aliases_and_isolation() {
    let scratch = Scratch::new("netguest");
    let tcp = free_tcp_port();
    // Something on the host no container may reach.
    let outside = TcpListener::bind("127.0.0.1:0").expect("bind");
    outside.set_nonblocking(true).expect("nonblocking");
    let outside_port = outside.local_addr().expect("addr").port();
    let image = build_image(
        &scratch,
        &format!(
            r#"
name = "netguest"

[[container]]
name = "web"
image = "oci:busybox:1"
ports = ["{tcp}:80"]
aliases = ["www"]
command = ["/bin/sh", "-c", """
mkdir -p /srv && echo "hello from web" > /srv/index.html
httpd -f -p 80 -h /srv & h=$!
trap 'kill $h; exit 0' TERM
echo web ready
wait
"""]

[[container]]
name = "client"
image = "oci:busybox:1"
depends_on = ["web"]
command = ["/bin/sh", "-c", """
trap 'exit 0' TERM
until page=$(wget -q -O - http://web/ 2>/dev/null); do sleep 0.2; done
echo "by name: $page"
echo "by alias: $(wget -q -O - http://www/)"
echo "interfaces: $(ls /sys/class/net | tr '\\n' ' ')"
ls /dev/vport* /dev/virtio-ports 2>/dev/null && echo "control port VISIBLE" || echo "control port absent"
nc -w 2 10.0.2.2 {outside_port} </dev/null && echo "outside: CONNECTED" || echo "outside: unreachable"
echo client done
while true; do sleep 1 & wait $!; done
"""]

[[container]]
name = "mapped"
image = "oci:busybox:1"
userns = true
depends_on = ["web"]
command = ["/bin/sh", "-c", """
trap 'exit 0' TERM
until page=$(wget -q -O - http://web/ 2>/dev/null); do sleep 0.2; done
echo "userns by name: $page"
while true; do sleep 1 & wait $!; done
"""]

[[container]]
name = "iso"
image = "oci:busybox:1"
network = "none"
command = ["/bin/sh", "-c", """
trap 'exit 0' TERM
echo "iso routes: $(tail -n +2 /proc/net/route | wc -l) up: $(cat /sys/class/net/*/operstate | tr '\\n' ' ')"
echo "iso interfaces: $(ls /sys/class/net | tr '\\n' ' ')"
while true; do sleep 1 & wait $!; done
"""]

[[container]]
name = "hostnet"
image = "oci:busybox:1"
network = "host"
command = ["/bin/sh", "-c", """
trap 'exit 0' TERM
ip -4 addr show eth0 | grep -q 'inet 10.0.2.15/24' && echo "hostnet sees the VM's NIC"
while true; do sleep 1 & wait $!; done
"""]
"#
        ),
    );
    let mut vm = Vm::boot(&image);
    vm.checked(|| {
        vm.wait_for("web | web ready");
        let body = eventually("the published TCP port", READY, || http_get(tcp));
        assert_eq!(body, "hello from web\n");

        vm.wait_for("client | by name: hello from web");
        vm.wait_for("client | by alias: hello from web");
        vm.wait_for("mapped | userns by name: hello from web");
        let seen = vm.wait_for("client | interfaces:");
        assert!(seen.contains("eth0") && seen.contains("lo"), "{seen}");
        assert!(
            !seen.contains("vh-"),
            "the VM's veth ends are visible: {seen}"
        );
        vm.wait_for("client | control port absent");
        vm.wait_for("client | outside: unreachable");
        let routes = vm.wait_for("iso | iso routes:");
        assert!(routes.contains("routes: 0"), "{routes}");
        let iso = vm.wait_for("iso | iso interfaces:");
        assert!(!iso.contains("eth0"), "{iso}");
        vm.wait_for("hostnet | hostnet sees the VM's NIC");
        vm.wait_for("client | client done");
        assert!(
            matches!(outside.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a container reached a port on the host"
        );
    });
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait_exit().code(), Some(0), "{}", vm.console());
}

/// A published UDP port answers (with `outbound = true`, without which
/// QEMU drops the replies), and such a container's resolver is slirp's DNS.
#[test]
fn a_published_udp_port_answers_when_outbound_is_allowed() {
    let scratch = Scratch::new("netudp");
    let udp = free_udp_port();
    let image = build_image(
        &scratch,
        &format!(
            r#"
name = "netudp"

[network]
outbound = true

[[container]]
name = "echo"
image = "oci:busybox:1"
ports = ["127.0.0.1:{udp}:5353/udp"]
stop_timeout = 1
command = ["/bin/sh", "-c", """
echo "resolver: $(grep nameserver /etc/resolv.conf)"
exec hafen-check udp-echo 5353
"""]
"#
        ),
    );
    let mut vm = Vm::boot(&image);
    vm.checked(|| {
        vm.wait_for("echo | resolver: nameserver 10.0.2.3");
        vm.wait_for("echo | udp echo on 5353");
        let echo = eventually("the published UDP port", READY, || udp_echo(udp));
        assert_eq!(echo, "echo: ping");
    });
    vm.signal(libc::SIGTERM);
    // The echo server, a container's init without a handler, ignores
    // SIGTERM: it is killed after its one-second stop timeout.
    assert_eq!(vm.wait_exit().code(), Some(0), "{}", vm.console());
}

/// An ordinary user's VM publishes a port as well: user networking needs
/// no privilege.
#[test]
fn an_ordinary_users_vm_publishes_a_port() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("netnobody");
    let port = free_tcp_port();
    let image = build_image(
        &scratch,
        &format!(
            r#"
name = "netnobody"

[[container]]
name = "web"
image = "oci:busybox:1"
ports = ["{port}:80"]
command = ["/bin/sh", "-c", """
mkdir -p /srv && echo "served for nobody" > /srv/index.html
httpd -f -p 80 -h /srv & h=$!
trap 'kill $h; exit 0' TERM
wait
"""]
"#
        ),
    );
    let home = scratch.0.join("home");
    std::fs::create_dir_all(&home).expect("mkdir");
    std::os::unix::fs::chown(&home, Some(common::NOBODY), Some(common::NOBODY)).expect("chown");
    for dir in [&scratch.0, &image] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut command = common::hafen_as_nobody(&home);
    command.args(["run", "--accel", "tcg"]).arg(&image);
    let mut vm = Vm::spawn(command);
    vm.checked(|| {
        let body = eventually("the published port of nobody's VM", READY, || {
            http_get(port)
        });
        assert_eq!(body, "served for nobody\n");
    });
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait_exit().code(), Some(0), "{}", vm.console());
}
