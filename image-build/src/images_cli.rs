//! `hafen image ls|rm|tag|inspect|history|save|load|prune` over the local image store.
