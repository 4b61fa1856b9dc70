#!/bin/sh
# A logging OCI runtime wrapper for init/tests/podman.rs (and for debugging
# podman by hand). Put a symlink to this script at DIR/NAME and the real
# runtime at DIR/real/NAME; podman (or conmon) calling DIR/NAME then gets:
# - every command line appended to DIR/calls.log, one per line;
# - `--root DIR/state` before the arguments (not for a lone `--version`), so
#   the runtime keeps its state there and not under /run; podman 4.3's
#   `--runtime-flag root=...` cannot do this, as `podman container cleanup`
#   does not pass it on;
# - the runtime's `--log FILE` hard-linked into DIR/logs/ before the
#   runtime writes to it, so it survives podman removing the container's
#   directory (podman reads that file for the runtime's error messages, so
#   it stays where podman put it).
# The real runtime is exec'd with the same argv[0] file name, as a
# `hafen-runtime` symlink needs it to enter runtime mode.
dir=$(dirname "$0")
name=$(basename "$0")
printf '%s\n' "$name $*" >>"$dir/calls.log"
prev=
for arg in "$@"; do
  log=
  case "$arg" in
    --log=*) log=${arg#--log=} ;;
    *) [ "$prev" = --log ] && log=$arg ;;
  esac
  if [ -n "$log" ]; then
    mkdir -p "$dir/logs"
    : >>"$log"
    # Name it after the container (and exec session) directories above it.
    parent=$(dirname "$log")
    keep="$dir/logs/$(basename "$(dirname "$parent")")-$(basename "$parent")-$(basename "$log")"
    [ -e "$keep" ] || ln "$log" "$keep" 2>/dev/null || true
  fi
  prev=$arg
done
# `--version` stays alone: it is a question about the binary, not a command.
[ "$*" = --version ] && exec "$dir/real/$name" --version
exec "$dir/real/$name" --root "$dir/state" "$@"
