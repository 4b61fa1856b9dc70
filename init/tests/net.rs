//! The guest's networking (`hafen_init::net`) for real, as root, in
//! throw-away namespaces: each test re-runs itself under `unshare --net
//! --mount` with a tmpfs on /run and a sysfs of that network namespace on
//! /sys, so nothing it makes touches this host's network or files.
//!
//! The stand-in for the VM is the test's own namespace; slirp (the gateway,
//! where host forwards come from) is a second namespace behind a veth pair
//! whose near end, `eth0`, is the VM's NIC.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hafen_init::net::{self, ContainerNet, Netlink, NetworkConfig, NetworkMode, NETNS_DIR};
use hafen_proto::net::DEFAULT_SUBNET;
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

/// Set (to the test's name) in the copy of the test that runs inside the
/// private namespaces.
const INNER: &str = "HAFEN_NET_TEST_INNER";

/// Runs `body` in private network and mount namespaces: the test binary
/// runs itself again, only this test, under unshare.
fn in_private_namespaces(test: &str, body: fn()) {
    if std::env::var(INNER).as_deref() == Ok(test) {
        mount("tmpfs", "/run", "tmpfs");
        mount("sysfs", "/sys", "sysfs");
        body();
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INNER, test)
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "inner run of {test} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

fn mount(source: &str, target: &str, fstype: &str) {
    rustix::mount::mount(
        source,
        target,
        fstype,
        rustix::mount::MountFlags::empty(),
        c"",
    )
    .unwrap_or_else(|e| panic!("mount {fstype} on {target}: {e}"));
}

/// Runs `f` on a thread inside the network namespace at `ns`. Sockets it
/// makes stay in that namespace after it returns.
fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(ns).unwrap_or_else(|e| panic!("open {}: {e}", ns.display()));
            move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                .unwrap_or_else(|e| panic!("setns {}: {e}", ns.display()));
            f()
        })
        .join()
        .expect("thread in the namespace")
    })
}

/// A new network namespace with `lo` up, held open by the returned file.
fn new_netns() -> File {
    std::thread::spawn(|| {
        hafen_init::sys::unshare_netns().expect("unshare");
        let mut nl = Netlink::open().expect("netlink");
        nl.set_link(1, true, None).expect("lo up");
        File::open("/proc/thread-self/ns/net").expect("own netns")
    })
    .join()
    .expect("unshare thread")
}

/// The calling thread's network namespace, as an inode number.
fn own_netns() -> u64 {
    fs::metadata("/proc/thread-self/ns/net")
        .expect("stat own netns")
        .ino()
}

/// The calling thread's interfaces, from /proc/net/dev.
fn interfaces() -> Vec<String> {
    let dev = fs::read_to_string("/proc/thread-self/net/dev").expect("net/dev");
    let mut names: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .collect();
    names.sort();
    names
}

/// The calling thread's IPv4 routes as (interface, destination, gateway,
/// prefix), from /proc/net/route.
fn routes() -> Vec<(String, Ipv4Addr, Ipv4Addr, u32)> {
    let table = fs::read_to_string("/proc/thread-self/net/route").expect("net/route");
    let hex = |s: &str| u32::from_str_radix(s, 16).expect("hex");
    table
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Addresses in network order, printed as a native-endian number.
            let addr = |s: &str| Ipv4Addr::from(hex(s).to_ne_bytes());
            (
                f[0].to_owned(),
                addr(f[1]),
                addr(f[2]),
                hex(f[7]).count_ones(),
            )
        })
        .collect()
}

/// `ip ARGS` in the network namespace at `ns` (the process's own with `None`).
fn ip_in(ns: Option<&Path>, args: &[&str]) -> String {
    let mut cmd = Command::new("nsenter");
    if let Some(ns) = ns {
        cmd.arg(format!("--net={}", ns.display()));
    }
    let out = cmd.arg("ip").args(args).output().expect("nsenter ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_mounted(path: &Path) -> bool {
    let path = path.to_str().expect("utf8");
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path))
}

/// Connects from the current thread to `to`, sends a line and checks the
/// listener sees it coming from `from` (no address translation anywhere).
fn talk(listener: &TcpListener, to: SocketAddr, from: Ipv4Addr, connect: &dyn Fn() -> TcpStream) {
    let mut client = connect();
    client.write_all(b"hello\n").expect("send");
    let (mut server, peer) = listener.accept().expect("accept");
    assert_eq!(peer.ip(), from, "connection to {to} came from {peer}");
    let mut got = [0u8; 6];
    server.read_exact(&mut got).expect("receive");
    assert_eq!(&got, b"hello\n");
}

fn connect(to: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&to, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"))
}

fn container(name: &str, mode: NetworkMode) -> ContainerNet {
    ContainerNet {
        name: name.to_owned(),
        mode,
        address: None,
        hostname: name.to_owned(),
        aliases: vec![],
        ports: vec![],
    }
}

/// The VM's NIC `eth0` with slirp's end in the namespace `slirp` at the
/// gateway's address, then the uplink configured as PID 1 does it.
fn vm_with_uplink(config: &NetworkConfig) -> File {
    let slirp = new_netns();
    Netlink::open()
        .expect("netlink")
        .new_veth("eth0", "slirp0", slirp.as_fd(), config.mtu)
        .expect("uplink veth");
    in_netns(&fd_path(&slirp), || {
        let mut nl = Netlink::open().expect("netlink");
        let index = nl.index("slirp0").expect("slirp0");
        nl.set_link(index, true, None).expect("slirp0 up");
        nl.add_address(index, config.gateway, config.prefix)
            .expect("gateway address");
    });
    assert_eq!(net::configure_uplink(config).expect("uplink"), "eth0");
    slirp
}

fn fd_path(file: &File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

#[test]
fn bridge_and_none_containers_get_working_networks() {
    in_private_namespaces("bridge_and_none_containers_get_working_networks", || {
        let mut web = container("web", NetworkMode::Bridge);
        web.aliases = vec!["www".into()];
        let containers = vec![
            web,
            container("api", NetworkMode::Bridge),
            container("batch", NetworkMode::None),
            container("proxy", NetworkMode::Host),
        ];
        let config = NetworkConfig::new(DEFAULT_SUBNET, false, 1400, containers).expect("plan");
        let addr = |name: &str| config.container(name).and_then(|c| c.address).expect(name);
        let (web, api) = (addr("web"), addr("api"));
        let slirp = vm_with_uplink(&config);
        let slirp = fd_path(&slirp);

        // The VM: forwarding, proxy ARP and the default route on its NIC.
        assert_eq!(
            fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("ip_forward"),
            "1\n"
        );
        assert_eq!(
            fs::read_to_string("/proc/sys/net/ipv4/conf/eth0/proxy_arp").expect("proxy_arp"),
            "1\n"
        );
        assert!(routes().contains(&("eth0".into(), Ipv4Addr::UNSPECIFIED, config.gateway, 0)));
        assert!(ip_in(None, &["-o", "-4", "addr", "show", "eth0"]).contains("inet 10.0.2.15/24"));

        let mut paths = Vec::new();
        for c in &config.containers {
            let before = own_netns();
            let path = net::prepare_container(&config, c).expect("prepare");
            assert_eq!(
                own_netns(),
                before,
                "{}: back in the VM's namespace",
                c.name
            );
            paths.push(path);
        }
        let web_ns = Path::new(NETNS_DIR).join("web");
        let api_ns = Path::new(NETNS_DIR).join("api");
        let batch_ns = Path::new(NETNS_DIR).join("batch");
        assert_eq!(
            paths,
            [
                Some(web_ns.clone()),
                Some(api_ns.clone()),
                Some(batch_ns.clone()),
                None
            ]
        );

        // Inside a bridge container: lo and eth0, its address, MTU, routes.
        for (ns, address) in [(&web_ns, web), (&api_ns, api)] {
            let (ifaces, table) = in_netns(ns, || (interfaces(), routes()));
            assert_eq!(ifaces, ["eth0", "lo"], "{}", ns.display());
            assert!(
                table.contains(&("eth0".into(), Ipv4Addr::UNSPECIFIED, config.gateway, 0)),
                "no default route via the gateway in {}: {table:?}",
                ns.display()
            );
            assert!(table.contains(&("eth0".into(), config.subnet, Ipv4Addr::UNSPECIFIED, 24)));
            let link = ip_in(Some(ns), &["-o", "link", "show", "eth0"]);
            assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
            let addrs = ip_in(Some(ns), &["-o", "-4", "addr", "show", "eth0"]);
            assert!(addrs.contains(&format!("inet {address}/24")), "{addrs}");
        }
        // The VM's side: a /32 route to each bridge container.
        let vm_routes = routes();
        for (peer, address) in [("vh-web", web), ("vh-api", api)] {
            assert!(
                vm_routes.contains(&(peer.into(), address, Ipv4Addr::UNSPECIFIED, 32)),
                "{vm_routes:?}"
            );
            let p = format!("/proc/sys/net/ipv4/conf/{peer}/proxy_arp");
            assert_eq!(fs::read_to_string(&p).expect("proxy_arp"), "1\n", "{p}");
        }

        // Container to container, with no translation in between.
        let on_api = in_netns(&api_ns, || {
            TcpListener::bind((api, 7000)).expect("bind in api")
        });
        let to = SocketAddr::from((api, 7000));
        talk(&on_api, to, web, &|| in_netns(&web_ns, || connect(to)));
        // The VM to a container.
        talk(&on_api, to, config.guest, &|| connect(to));
        // A container to the gateway (proxy ARP on its veth, forwarding).
        let on_slirp = in_netns(&slirp, || {
            TcpListener::bind((config.gateway, 7001)).expect("bind")
        });
        let to = SocketAddr::from((config.gateway, 7001));
        talk(&on_slirp, to, web, &|| in_netns(&web_ns, || connect(to)));
        // The gateway to a container's address, as a host forward arrives
        // (proxy ARP on the VM's NIC).
        let on_web = in_netns(&web_ns, || {
            TcpListener::bind((web, 7002)).expect("bind in web")
        });
        let to = SocketAddr::from((web, 7002));
        talk(&on_web, to, config.gateway, &|| {
            in_netns(&slirp, || connect(to))
        });

        // `none`: loopback only, up, and no route at all.
        let (ifaces, table, lo_works) = in_netns(&batch_ns, || {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 7003)).expect("bind lo");
            let works = TcpStream::connect(("127.0.0.1", 7003)).is_ok();
            drop(l);
            (interfaces(), routes(), works)
        });
        assert_eq!(ifaces, ["lo"]);
        assert!(table.is_empty(), "{table:?}");
        assert!(lo_works, "lo is not up in a none container");
        let unreachable = in_netns(&batch_ns, || TcpStream::connect((api, 7000)));
        assert!(unreachable.is_err());

        // Release: namespace file, mount and both veth ends go, at once, so
        // the same container can be prepared again.
        drop((on_api, on_web));
        net::release_container("web").expect("release web");
        assert!(!web_ns.exists());
        assert!(!is_mounted(&web_ns));
        assert!(!interfaces().contains(&"vh-web".to_owned()));
        assert!(!routes().iter().any(|r| r.1 == web));
        net::release_container("web").expect("releasing twice is no error");
        let web_c = config.container("web").expect("web");
        net::prepare_container(&config, web_c).expect("prepare again after release");
        for c in &config.containers {
            net::release_container(&c.name).expect("release");
        }
        assert!(
            interfaces().iter().all(|i| !i.starts_with("vh-")),
            "{:?}",
            interfaces()
        );
        assert_eq!(fs::read_dir(NETNS_DIR).expect("netns dir").count(), 0);
    });
}

#[test]
fn failed_setup_leaves_nothing_behind_and_returns_to_its_own_namespace() {
    in_private_namespaces(
        "failed_setup_leaves_nothing_behind_and_returns_to_its_own_namespace",
        || {
            let containers = vec![
                container("twice", NetworkMode::Bridge),
                container("clash", NetworkMode::Bridge),
                container("routed", NetworkMode::Bridge),
                container("alone", NetworkMode::None),
            ];
            let config = NetworkConfig::new(DEFAULT_SUBNET, false, 1500, containers).expect("plan");
            let _slirp = vm_with_uplink(&config);
            let before = own_netns();
            let get = |name: &str| config.container(name).expect(name);

            // Preparing the same container twice: the second is refused
            // before anything is made, and the first is untouched.
            let twice = net::prepare_container(&config, get("twice")).expect("first");
            let err = net::prepare_container(&config, get("twice")).expect_err("second");
            let text = err.to_string();
            assert!(
                text.starts_with("network of container twice: create /run/hafen/netns/twice:")
                    && text.contains("File exists"),
                "{text}"
            );
            assert_eq!(own_netns(), before);
            let twice = twice.expect("a bridge namespace");
            assert!(is_mounted(&twice));
            assert_eq!(in_netns(&twice, interfaces), ["eth0", "lo"]);

            // A veth name that is taken: the namespace made for it is gone,
            // the other link is not ours to delete.
            let other = new_netns();
            Netlink::open()
                .expect("netlink")
                .new_veth("vh-clash", "other", other.as_fd(), 1500)
                .expect("squatter");
            let err = net::prepare_container(&config, get("clash")).expect_err("clash");
            let text = err.to_string();
            assert!(
                text.starts_with("network of container clash: RTM_NEWLINK veth eth0 and vh-clash:")
                    && text.contains("File exists"),
                "{text}"
            );
            assert_eq!(own_netns(), before, "left in the half-made namespace");
            let clash_ns = Path::new(NETNS_DIR).join("clash");
            assert!(!clash_ns.exists() && !is_mounted(&clash_ns));
            assert!(interfaces().contains(&"vh-clash".to_owned()));

            // A failure after the veth pair exists (the VM already has a
            // route to the address): the pair goes too.
            let routed = get("routed").address.expect("address");
            let mut nl = Netlink::open().expect("netlink");
            let eth0 = nl.index("eth0").expect("eth0");
            nl.add_route(&net::Route {
                dst: routed,
                prefix: 32,
                gateway: None,
                oif: eth0,
            })
            .expect("squatting route");
            let err = net::prepare_container(&config, get("routed")).expect_err("route clash");
            let text = err.to_string();
            assert!(
                text.starts_with(&format!(
                    "network of container routed: RTM_NEWROUTE {routed}/32 on vh-routed:"
                )) && text.contains("File exists"),
                "{text}"
            );
            assert_eq!(own_netns(), before);
            assert!(
                !interfaces().contains(&"vh-routed".to_owned()),
                "{:?}",
                interfaces()
            );
            let routed_ns = Path::new(NETNS_DIR).join("routed");
            assert!(!routed_ns.exists() && !is_mounted(&routed_ns));

            // The next container is still made as usual.
            let alone = net::prepare_container(&config, get("alone")).expect("after failures");
            assert_eq!(
                in_netns(&alone.expect("none namespace"), interfaces),
                ["lo"]
            );

            for name in ["twice", "alone"] {
                net::release_container(name).expect("release");
            }
            Netlink::open()
                .expect("netlink")
                .delete_link("vh-clash")
                .expect("delete squatter");
            assert_eq!(fs::read_dir(NETNS_DIR).expect("netns dir").count(), 0);
        },
    );
}
