//! Tests of the host-side layers.
