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
//!
//! `sanitize_churn_count SECONDS paired new|ring [type1|iommufd]` times the
//! two engines in one process instead, as the bench does (paired blocks of
//! 1-3 ms of the thread's CPU time, the side going first drawn per pair)
//! and prints the sanitized/plain throughput ratio of the totals and the
//! median of the blocks' ratios: a quick A/B of two builds of the engine
//! without building the whole bench.

use softvfio::sanitizer::{Sanitizer, SanitizerConfig};
use softvfio::testing::churn::{Backend, Churn, NEW_REGION_EACH_PAIR, RING};

fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// CPU nanoseconds of `pairs` pairs on `churn`.
fn block(churn: &mut Churn, pairs: u64) -> u64 {
    let t = thread_cpu_ns();
    for _ in 0..pairs {
        churn.pair().expect("pair");
    }
    thread_cpu_ns() - t
}

/// A small xorshift: the order and lengths of the blocks.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn paired(seconds: f64, backend: Backend, ring: u64) {
    let mut plain = Churn::with_backend(backend, ring, None).expect("churn engine");
    let sanitizer = Sanitizer::new(SanitizerConfig::default());
    let mut sanitized = Churn::with_backend(backend, ring, Some(sanitizer)).expect("churn engine");
    plain.warm_up().expect("warm-up");
    sanitized.warm_up().expect("warm-up");
    // Pairs in ~2 ms of the plain engine, the fastest of three tries.
    let per_pair = (0..3)
        .map(|_| block(&mut plain, 2000) as f64 / 2000.0)
        .fold(f64::MAX, f64::min);
    let nominal = ((2e6 / per_pair) as u64).max(100);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ thread_cpu_ns();
    let (mut t_plain, mut t_sanitized, mut ops) = (0u64, 0u64, 0u64);
    let mut ratios = Vec::new();
    let end = thread_cpu_ns() + (seconds * 1e9) as u64;
    while thread_cpu_ns() < end {
        let pairs = nominal / 2 + next(&mut rng) % nominal;
        let (p, s) = if next(&mut rng) & 1 == 0 {
            let p = block(&mut plain, pairs);
            (p, block(&mut sanitized, pairs))
        } else {
            let s = block(&mut sanitized, pairs);
            (block(&mut plain, pairs), s)
        };
        t_plain += p;
        t_sanitized += s;
        ops += pairs;
        ratios.push(p as f64 / s as f64);
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
    println!(
        "ratio {:.3} (blocks: median {median:.3}, {} pairs of blocks, {ops} pairs each side; plain {:.1} ns/pair)",
        t_plain as f64 / t_sanitized as f64,
        ratios.len(),
        t_plain as f64 / ops as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: sanitize_churn_count PAIRS plain|sanitized new|ring [type1|iommufd]\n       sanitize_churn_count SECONDS paired new|ring [type1|iommufd]";
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
    if args.get(2).map(String::as_str) == Some("paired") {
        let seconds: f64 = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
        paired(seconds, backend, ring);
        return;
    }
    let pairs: u64 = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let sanitized = match args.get(2).map(String::as_str) {
        Some("plain") => false,
        Some("sanitized") => true,
        _ => panic!("{usage}"),
    };
    let sanitizer = sanitized.then(|| Sanitizer::new(SanitizerConfig::default()));
    let mut churn = Churn::with_backend(backend, ring, sanitizer).expect("churn engine");
    churn.warm_up().expect("warm-up");
    for _ in 0..pairs {
        churn.pair().expect("pair");
    }
}
