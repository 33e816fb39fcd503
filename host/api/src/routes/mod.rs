//! One module per collection; handlers are extract → authorize → one store call → render.

pub mod admin;
mod channels;
pub mod files;
pub mod sandboxes;
pub mod services;
pub mod sessions;
pub mod stdio;
