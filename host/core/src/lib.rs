//! nimbus-core
