//! Route handlers of the native API, one module per resource.

pub mod exec;
pub mod files;
pub mod ops;
pub mod sandboxes;
