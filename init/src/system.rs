//! System mode: PID 1 of a Hafen guest.

/// Boots the guest and never returns.
pub fn main() -> ! {
    loop {
        std::thread::park();
    }
}
