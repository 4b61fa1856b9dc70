//! Link flags for the static musl hafen-init (the guest's PID 1 and the tiny
//! init): its relative relocations packed as RELR (musl applies them at
//! start-up). The RELA form was 44 KB of the 1.7 MB file, read at every
//! start and, under the kernel's fault-around, kept resident: the tiny
//! init's RSS fell from 714 to 682 kB (medians of 12), below tini-static's
//! 708. Other targets (a test build against glibc) keep their defaults.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let musl = std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "musl");
    if musl {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
