//! The configuration parser: any text either parses into a configuration
//! that builds a platform, or is refused with an error naming what is wrong.
//! Never a panic, never an allocation sized by a number in the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use softvfio_fuzz::BoundedAlloc;
use softvfio_platform::config::Config;

#[global_allocator]
static ALLOC: BoundedAlloc = BoundedAlloc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(cfg) => {
            // Re-validation of a parsed configuration agrees, and a valid
            // configuration assembles (or is refused with an error) without
            // panicking.
            assert!(cfg.validate().is_ok());
            if let Ok(built) = softvfio_platform::build::build(&cfg) {
                assert_eq!(built.devices.len(), cfg.devices.len());
            }
        }
        Err(e) => {
            // Every error has a message.
            assert!(!e.to_string().is_empty());
        }
    }
});
