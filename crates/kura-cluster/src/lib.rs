//! kura's cluster: Apache DataFusion Ballista with attested executors.
//!
//! The coordinator (the service every party talks to) runs Ballista's scheduler and a
//! certificate authority that lives only for its start ([`coordinator`], [`tls`]). An executor
//! (`kura-enclave executor`) joins only after both sides verified each other's evidence against
//! the contract ([`join`]); from then on every connection of the cluster is mutual TLS with
//! certificates of that authority. The output rules stay on the coordinator: the cluster runs
//! a query's counted aggregations (scans, joins, aggregations with the threshold's hidden
//! counts) and hands their output back, where the rules decide what is released
//! ([`kura_engine::Compute`]). Stored datasets travel as their files' locations and keys, inside
//! the plan and the TLS ([`codec`]).

pub mod codec;
pub mod coordinator;
pub mod executor;
pub mod join;
pub mod shuffle;
pub mod tls;

pub use coordinator::Coordinator;
