//! softvfio platforms: configuration and assembly.

#![deny(unsafe_code)]

pub mod build;
pub mod config;
pub mod hostview;
pub mod report;
pub mod sanitize;

pub use build::{build, BuiltDevice, BuiltPlatform};
pub use config::{Config, ConfigError};
