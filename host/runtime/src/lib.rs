//! nimbus-runtime
