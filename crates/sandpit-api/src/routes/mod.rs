//! Route handlers of the native API, one module per resource.

pub mod contexts;
pub mod exec;
pub mod files;
pub mod git;
pub mod ops;
pub mod ports;
pub mod processes;
pub mod pty;
pub mod sandboxes;
pub mod sessions;
pub mod snapshots;
pub mod tenant;
