//! The ACPI power button, read as an evdev input device.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::sys;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit: a timeval (16 bytes), type, code, value.
const EVENT_SIZE: usize = 24;

/// Opens every /dev/input/event* device, non-blocking. A machine without
/// one (no ACPI) simply has no power button; that is not an error.
pub fn open_event_devices() -> Vec<(String, OwnedFd)> {
    let Ok(entries) = std::fs::read_dir("/dev/input") else {
        return Vec::new();
    };
    let mut devices: Vec<(String, OwnedFd)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter_map(|e| {
            let path = e.path();
            let fd = rustix::fs::open(
                &path,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::NONBLOCK
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok()?;
            Some((path.to_string_lossy().into_owned(), fd))
        })
        .collect();
    devices.sort_by(|a, b| a.0.cmp(&b.0));
    devices
}

/// Drains pending events from `fd`; true when the power key was pressed.
pub fn power_pressed(fd: &OwnedFd) -> bool {
    let mut pressed = false;
    let mut buf = [0u8; EVENT_SIZE * 16];
    while let Ok(Some(n)) = sys::read(fd.as_raw_fd(), &mut buf) {
        if n == 0 {
            break;
        }
        pressed |= buf[..n].chunks_exact(EVENT_SIZE).any(is_power_press);
    }
    pressed
}

fn is_power_press(event: &[u8]) -> bool {
    let field = |at: usize| u16::from_ne_bytes([event[at], event[at + 1]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    field(16) == EV_KEY && field(18) == KEY_POWER && value == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut e = [0u8; EVENT_SIZE];
        e[16..18].copy_from_slice(&kind.to_ne_bytes());
        e[18..20].copy_from_slice(&code.to_ne_bytes());
        e[20..24].copy_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)), "release");
        assert!(!is_power_press(&event(EV_KEY, 30, 1)), "another key");
        assert!(!is_power_press(&event(0, 0, 0)), "sync event");
    }
}
