//! The QEMU command line for a Hafen image.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use hafen_proto::layout::{HOST_VOLUME_RO_TAG, HOST_VOLUME_TAG};
use hafen_proto::net::{PublishedPort, Subnet};

/// The name of the guest's control port (what hafen-init looks for).
pub const CONTROL_PORT: &str = "org.hafen.control";

/// The accelerator actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accelerator {
    /// QEMU's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

/// What one boot needs.
#[derive(Debug, Clone)]
pub struct Machine {
    /// PVH kernel.
    pub kernel: PathBuf,
    /// Initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Accelerator.
    pub accel: Accelerator,
    /// A listening unix socket QEMU inherits and serves QMP on, if QMP is wanted.
    pub qmp_fd: Option<RawFd>,
    /// Where QEMU serves the host end of the guest's control port
    /// (virtio-serial port `org.hafen.control`), if it is wanted.
    pub control_socket: Option<PathBuf>,
    /// The data disk (a raw file), if the image has volumes.
    pub data_disk: Option<PathBuf>,
    /// Volumes backed by host directories (`hafen run -v`).
    pub host_volumes: Vec<HostVolume>,
    /// The network card; `None`: none at all (the KVM probe).
    pub nic: Option<Nic>,
}

/// The VM's network card: virtio-net on QEMU's user networking (slirp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Slirp's subnet; its gateway, DNS and the VM's addresses follow.
    pub subnet: Subnet,
    /// Whether the guest may open connections beyond the host.
    pub outbound: bool,
    /// Host ports forwarded into the guest.
    pub forwards: Vec<PublishedPort>,
}

impl Nic {
    /// The `-netdev user,...` value.
    ///
    /// `restrict=on` cuts the guest off from the host and the world (slirp
    /// drops every connection the guest opens) while the forwards still
    /// work: slirp looks a forwarded connection up before it applies the
    /// restriction. IPv6 is off: the guest's kernel has none.
    pub fn netdev(&self) -> String {
        let s = &self.subnet;
        let mut out = format!(
            "user,id=net0,restrict={},net={s},host={},dns={},ipv6=off",
            if self.outbound { "off" } else { "on" },
            s.gateway(),
            s.dns(),
        );
        for f in &self.forwards {
            let p = &f.port;
            out.push_str(&format!(
                ",hostfwd={}:{}:{}-{}:{}",
                p.protocol, p.host_ip, p.host_port, f.address, p.container_port
            ));
        }
        out
    }
}

/// A volume backed by a host directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVolume {
    /// The host directory (absolute).
    pub dir: PathBuf,
    /// The volume's name in the image.
    pub name: String,
    /// The guest may not write to it.
    pub readonly: bool,
}

/// The kernel command line: console on the first serial port, reboot on
/// panic (which `-no-reboot` turns into QEMU exiting), quiet unless verbose,
/// then the image's words and the user's.
pub fn kernel_cmdline(verbose: bool, image: &[String], user: &[String]) -> String {
    let mut words = vec!["console=ttyS0".to_owned(), "panic=-1".to_owned()];
    if !verbose {
        words.push("quiet".to_owned());
    }
    words.extend(image.iter().cloned());
    words.extend(user.iter().cloned());
    words.join(" ")
}

/// QEMU's arguments (without the program name).
pub fn arguments(m: &Machine) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |s: &str| args.push(s.into());
    // microvm: no PCI bus or firmware to set up; ACPI gives the power button.
    push("-M");
    push("microvm,acpi=on");
    push("-accel");
    push(m.accel.name());
    push("-cpu");
    push(match m.accel {
        Accelerator::Kvm => "host",
        Accelerator::Tcg => "max",
    });
    push("-m");
    push(&m.memory_mib.to_string());
    push("-smp");
    push(&m.cpus.to_string());
    push("-nodefaults");
    push("-no-user-config");
    push("-display");
    push("none");
    // A guest reboot or panic ends the run; `hafen run` reports which.
    push("-no-reboot");
    // Lets a kernel built with CONFIG_PVPANIC report a panic as one (a
    // SHUTDOWN event with reason guest-panic) instead of the reset that
    // `panic=-1` otherwise makes it look like.
    push("-device");
    push("pvpanic");
    // The serial console on our stdout. signal=off: QEMU must not turn a
    // Ctrl-C on the console into its own exit; `hafen run` owns that.
    push("-chardev");
    push("stdio,id=con,signal=off");
    push("-serial");
    push("chardev:con");
    match &m.nic {
        Some(nic) => {
            // virtio-net on microvm's virtio-mmio.
            push("-netdev");
            push(&nic.netdev());
            push("-device");
            push("virtio-net-device,netdev=net0");
        }
        None => {
            push("-nic");
            push("none");
        }
    }
    push("-kernel");
    args.push(m.kernel.clone().into_os_string());
    if let Some(initrd) = &m.initrd {
        args.push("-initrd".into());
        args.push(initrd.clone().into_os_string());
    }
    args.push("-append".into());
    args.push(m.cmdline.clone().into());
    if let Some(fd) = m.qmp_fd {
        // The socket is already listening when QEMU starts (we made it), so
        // the client connects at once instead of polling for the file.
        args.push("-chardev".into());
        args.push(format!("socket,id=qmp,fd={fd},server=on,wait=off").into());
        args.push("-mon".into());
        args.push("chardev=qmp,mode=control".into());
    }
    if let Some(path) = &m.control_socket {
        // virtio-serial on microvm's virtio-mmio; QEMU listens and serves
        // one client at a time. The guest finds the port by its name.
        // max_ports=2: port 0 is kept for a console, so ours is port 1. The
        // default (31) has the guest's driver set up 64 virtqueues at boot:
        // virtio_console_init took 11-48 ms under TCG against 6-9 ms.
        args.push("-device".into());
        args.push("virtio-serial-device,max_ports=2".into());
        let mut chardev = OsString::from("socket,id=control,server=on,wait=off,path=");
        chardev.push(path.as_os_str());
        args.push("-chardev".into());
        args.push(chardev);
        args.push("-device".into());
        args.push(format!("virtserialport,chardev=control,name={CONTROL_PORT}").into());
    }
    if let Some(path) = &m.data_disk {
        // virtio-blk on virtio-mmio. cache=writeback: the guest sees a
        // volatile write cache and flushes it (fsync, every journal
        // commit), and QEMU turns each flush into an fdatasync of the file
        // before completing it, so what the guest synced is on the host's
        // disk. QEMU's own lock on the file keeps a second VM off it.
        let mut drive =
            OsString::from("if=none,id=data,format=raw,cache=writeback,discard=unmap,file=");
        drive.push(escape_option(path.as_os_str()));
        args.push("-drive".into());
        args.push(drive);
        args.push("-device".into());
        args.push("virtio-blk-device,drive=data".into());
    }
    for (i, v) in m.host_volumes.iter().enumerate() {
        // virtio-9p: no daemon on the host. security_model=none: files
        // are made with QEMU's own credentials (the user's, for an
        // ordinary user) and the guest's chown attempts are ignored.
        let mut fsdev = OsString::from(format!("local,id=hv{i},security_model=none,"));
        if v.readonly {
            fsdev.push("readonly=on,");
        }
        fsdev.push("path=");
        fsdev.push(escape_option(v.dir.as_os_str()));
        args.push("-fsdev".into());
        args.push(fsdev);
        let tag = if v.readonly {
            HOST_VOLUME_RO_TAG
        } else {
            HOST_VOLUME_TAG
        };
        args.push("-device".into());
        args.push(format!("virtio-9p-device,fsdev=hv{i},mount_tag={tag}{}", v.name).into());
    }
    args
}

/// A value for QEMU's `key=value,...` options: a comma is written twice.
fn escape_option(value: &std::ffi::OsStr) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// Where `qemu-system-x86_64` is: $HAFEN_QEMU, else found on PATH by the OS.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("HAFEN_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("qemu-system-x86_64").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(accel: Accelerator) -> Machine {
        Machine {
            kernel: "/img/vmlinux".into(),
            initrd: Some("/img/initramfs.cpio.lz4".into()),
            cmdline: kernel_cmdline(false, &["hafen.log=debug".into()], &["x=1".into()]),
            memory_mib: 256,
            cpus: 2,
            accel,
            qmp_fd: Some(7),
            control_socket: Some("/run/hafen/vms/x-1/control.sock".into()),
            data_disk: None,
            host_volumes: Vec::new(),
            nic: None,
        }
    }

    fn joined(m: &Machine) -> String {
        arguments(m)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn tcg_microvm_with_console_qmp_and_no_network() {
        let args = joined(&machine(Accelerator::Tcg));
        for part in [
            "-M microvm,acpi=on",
            "-accel tcg -cpu max",
            "-m 256 -smp 2",
            "-no-reboot",
            "-nodefaults -no-user-config -display none",
            "-chardev stdio,id=con,signal=off -serial chardev:con",
            "-nic none",
            "-kernel /img/vmlinux -initrd /img/initramfs.cpio.lz4",
            "-chardev socket,id=qmp,fd=7,server=on,wait=off -mon chardev=qmp,mode=control",
            "-device virtio-serial-device,max_ports=2 -chardev socket,id=control,server=on,wait=off,\
             path=/run/hafen/vms/x-1/control.sock \
             -device virtserialport,chardev=control,name=org.hafen.control",
        ] {
            assert!(args.contains(part), "{part:?} missing from {args}");
        }
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        assert!(joined(&machine(Accelerator::Kvm)).contains("-accel kvm -cpu host"));
    }

    #[test]
    fn the_command_line_is_one_argument_in_order_console_image_user() {
        let args = arguments(&machine(Accelerator::Tcg));
        let at = args
            .iter()
            .position(|a| a == "-append")
            .expect("-append present");
        assert_eq!(
            args[at + 1],
            "console=ttyS0 panic=-1 quiet hafen.log=debug x=1"
        );
    }

    #[test]
    fn verbose_drops_quiet() {
        assert_eq!(kernel_cmdline(true, &[], &[]), "console=ttyS0 panic=-1");
        assert_eq!(
            kernel_cmdline(false, &[], &["a".into(), "b=c".into()]),
            "console=ttyS0 panic=-1 quiet a b=c"
        );
    }

    #[test]
    fn no_qmp_means_no_monitor() {
        let mut m = machine(Accelerator::Tcg);
        m.qmp_fd = None;
        m.initrd = None;
        let args = joined(&m);
        assert!(!args.contains("-mon"), "{args}");
        assert!(!args.contains("-initrd"), "{args}");
    }

    #[test]
    fn a_data_disk_honours_flushes_and_host_volumes_are_tagged_by_name() {
        let mut m = machine(Accelerator::Tcg);
        assert!(!joined(&m).contains("-drive"));
        m.data_disk = Some("/var/lib/hafen/vms/a,b/data.img".into());
        m.host_volumes = vec![
            HostVolume {
                dir: "/home/me/site".into(),
                name: "site".into(),
                readonly: false,
            },
            HostVolume {
                dir: "/etc/conf".into(),
                name: "conf".into(),
                readonly: true,
            },
        ];
        let args = joined(&m);
        assert!(
            args.contains(
                "-drive if=none,id=data,format=raw,cache=writeback,discard=unmap,file=/var/lib/hafen/vms/a,,b/data.img -device virtio-blk-device,drive=data"
            ),
            "{args}"
        );
        assert!(
            args.contains("-fsdev local,id=hv0,security_model=none,path=/home/me/site -device virtio-9p-device,fsdev=hv0,mount_tag=hafen-vol:site"),
            "{args}"
        );
        assert!(
            args.contains("-fsdev local,id=hv1,security_model=none,readonly=on,path=/etc/conf -device virtio-9p-device,fsdev=hv1,mount_tag=hafen-vol-ro:conf"),
            "{args}"
        );
    }

    fn forward(container: &str, address: &str, spec: &str) -> PublishedPort {
        PublishedPort {
            container: container.into(),
            address: address.parse().expect("address"),
            port: spec.parse().expect("port spec"),
        }
    }

    #[test]
    fn the_nic_is_restricted_virtio_net_with_one_forward_per_published_port() {
        let mut m = machine(Accelerator::Tcg);
        m.nic = Some(Nic {
            subnet: Subnet::default(),
            outbound: false,
            forwards: vec![
                forward("web", "10.0.2.77", "8080:80"),
                forward("dns", "10.0.2.40", "0.0.0.0:5353:53/udp"),
                forward("proxy", "10.0.2.15", "127.0.0.1:9000:90/tcp"),
            ],
        });
        let args = joined(&m);
        assert!(
            args.contains(
                "-netdev user,id=net0,restrict=on,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,ipv6=off,\
                 hostfwd=tcp:127.0.0.1:8080-10.0.2.77:80,\
                 hostfwd=udp:0.0.0.0:5353-10.0.2.40:53,\
                 hostfwd=tcp:127.0.0.1:9000-10.0.2.15:90 \
                 -device virtio-net-device,netdev=net0"
            ),
            "{args}"
        );
        assert!(!args.contains("-nic none"), "{args}");
    }

    #[test]
    fn outbound_lifts_the_restriction_and_a_subnet_moves_every_address() {
        let mut m = machine(Accelerator::Tcg);
        m.nic = Some(Nic {
            subnet: "192.168.64.0/18".parse().expect("subnet"),
            outbound: true,
            forwards: Vec::new(),
        });
        let args = joined(&m);
        assert!(
            args.contains(
                "-netdev user,id=net0,restrict=off,net=192.168.64.0/18,host=192.168.64.2,dns=192.168.64.3,ipv6=off \
                 -device virtio-net-device,netdev=net0"
            ),
            "{args}"
        );
    }
}
