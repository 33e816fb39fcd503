//! nimbus-plugins
