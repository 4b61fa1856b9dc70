# Sourced by the VM benchmarks: builds the release `hafen` and the static
# hafen-init (sets $hafen, exports HAFEN_INIT), and `need TOOL` stops with
# a hint when a tool scripts/setup.sh installs is missing.
cargo build --release --quiet -p hafen
hafen=$PWD/target/release/hafen
HAFEN_INIT=${HAFEN_INIT:-$(scripts/build-init.sh)}
export HAFEN_INIT
need() { command -v "$1" >/dev/null || { echo "bench: $1 is missing; run scripts/setup.sh" >&2; exit 1; }; }
