//! A fixed number of the `softvfio bench sanitize-churn` pairs, for
//! instruction counts (the bench itself runs for a time budget, so its work
//! varies with the machine):
//!
//! ```text
//! cargo build --release -p softvfio --example sanitize_churn_count
//! valgrind --tool=callgrind target/release/examples/sanitize_churn_count PAIRS plain|sanitized new|ring [type1|iommufd]
//! ```
//!
//! The bench's own workload (`softvfio::testing::churn`), warm-up included;
//! the difference of two runs' totals over the difference of their `PAIRS`
//! is the instructions of one pair, the setup cancelled.

use softvfio::sanitizer::{Sanitizer, SanitizerConfig};
use softvfio::testing::churn::{Backend, Churn, NEW_REGION_EACH_PAIR, RING};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: sanitize_churn_count PAIRS plain|sanitized new|ring [type1|iommufd]";
    let pairs: u64 = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let sanitized = match args.get(2).map(String::as_str) {
        Some("plain") => false,
        Some("sanitized") => true,
        _ => panic!("{usage}"),
    };
    let ring = match args.get(3).map(String::as_str) {
        Some("new") => NEW_REGION_EACH_PAIR,
        Some("ring") => RING,
        _ => panic!("{usage}"),
    };
    let backend = match args.get(4).map(String::as_str) {
        None | Some("type1") => Backend::Type1,
        Some("iommufd") => Backend::Iommufd,
        _ => panic!("{usage}"),
    };
    let sanitizer = sanitized.then(|| Sanitizer::new(SanitizerConfig::default()));
    let mut churn = Churn::with_backend(backend, ring, sanitizer).expect("churn engine");
    churn.warm_up().expect("warm-up");
    for _ in 0..pairs {
        churn.pair().expect("pair");
    }
}
