//! The local agent's registration sources and duties: everything that *writes* to the
//! catalog from what this host sees, as opposed to the catalog itself.
//!
//! - `config_file`: Consul's JSON agent config files (pure; flags sit over them).
//! - `config_dir`: service and check definitions from `-config-dir` / `-config-file`.
//! - `docker`: Registrator's job, following the Docker engine's containers and events.
//! - `health`: runs the checks this agent owns and writes status changes.
//! - `membership`: on the leader, the gossip view (alive, failed, left) into the catalog.
//! - `session_ttl`: on the leader, invalidates sessions whose TTL ran out.

pub mod config_dir;
pub mod config_file;
pub mod docker;
pub mod health;
pub mod membership;
pub mod session_ttl;
