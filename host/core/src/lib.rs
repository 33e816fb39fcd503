//! Nimbus core: the vocabulary every other crate speaks.
//!
//! Names and ids (parse, don't validate), resource and spec types, lifecycle state machines,
//! the authorization request/decision types with the native grants policy, the error catalog,
//! and the duration histogram the metrics use. This crate does no I/O.

pub mod authz;
pub mod error;
pub mod histogram;
pub mod lifecycle;
pub mod names;
pub mod resource;
pub mod spec;

pub use error::{Error, ErrorCode};
