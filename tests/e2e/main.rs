//! End-to-end tests: the real `wharf` binary on loopback with temp data dirs.

mod api;
mod bad_input;
mod blocking;
mod cli;
mod cluster;
mod config_dir;
mod coordination;
mod crash;
mod dns;
mod docker;
mod harness;
mod health;
mod proxy;
mod python_client;
mod seeds;
mod snapshot;
mod templates;
mod wasm;
