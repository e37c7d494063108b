//! softvfio platforms: configuration and assembly.

pub mod config;

pub use config::{Config, ConfigError};
