//! sandpit-core: the model every API (native and dialects) maps onto. It owns the sandbox
//! lifecycle ([`SandboxManager`]), the store of record ([`store`]), and the server's side of
//! the agent protocol ([`agent`]). It knows nothing of HTTP.
#![forbid(unsafe_code)]

pub mod agent;
pub mod budget;
mod error;
pub mod events;
mod git;
mod manager;
pub mod model;
mod network;
mod s3_leftovers;
pub mod snapshot;
pub mod store;
pub mod tenant;

pub use error::CoreError;
pub use git::credential_env;
pub use manager::valid_id;
pub use manager::{CoreConfig, SandboxManager};
