//! Timing helpers: interleaved repetitions and medians.

use std::time::{Duration, Instant};

/// Median of `v` (the mean of the middle two for an even count); NaN when
/// empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Smallest of `v`; NaN when empty.
pub fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::min)
}

/// Runs `baseline` then `subject`, `reps` times in alternation (so that
/// machine noise hits both alike); each returns one sample. Stops at the
/// first error.
pub fn interleave<B, S>(
    reps: usize,
    mut baseline: B,
    mut subject: S,
) -> Result<(Vec<f64>, Vec<f64>), String>
where
    B: FnMut() -> Result<f64, String>,
    S: FnMut() -> Result<f64, String>,
{
    let mut b = Vec::with_capacity(reps);
    let mut s = Vec::with_capacity(reps);
    for i in 0..reps {
        // Alternate which goes first, so neither always runs on a cache
        // (or a CPU frequency) the other warmed.
        if i % 2 == 0 {
            b.push(baseline()?);
            s.push(subject()?);
        } else {
            s.push(subject()?);
            b.push(baseline()?);
        }
    }
    Ok((b, s))
}

/// Nanoseconds `f` takes.
pub fn time_ns<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed().as_nanos() as f64, r)
}

/// Nanoseconds per call of `op`, run in growing batches for `budget`.
pub fn ns_per_op(budget: Duration, op: impl FnMut()) -> f64 {
    soft_iommu::bench_support::measure("", budget, op).ns_per_op
}

/// "median (min..max, n)" of a sample set, for notes.
pub fn spread(v: &[f64], scale: f64, unit: &str) -> String {
    let max = v.iter().copied().fold(f64::NAN, f64::max);
    format!(
        "{:.3}..{:.3} {unit} over {}",
        best(v) / scale,
        max / scale,
        v.len()
    )
}

/// One repetition of [`paired_blocks`]: a baseline and a subject measured
/// in short alternating blocks of the same number of operations.
#[derive(Debug, Clone)]
pub struct PairedBlocks {
    /// CPU nanoseconds per operation of the baseline over all its blocks.
    pub base_ns: f64,
    /// CPU nanoseconds per operation of the subject over all its blocks.
    pub subj_ns: f64,
    /// Per pair of neighbouring blocks, the baseline's time over the
    /// subject's: the subject's throughput relative to the baseline's
    /// (1.0: as fast; 0.9: 10% slower).
    pub ratios: Vec<f64>,
    /// Operations in a block of the nominal length (each block is 0.5x to
    /// 1.5x this).
    pub ops_per_block: u64,
}

/// This thread's CPU time, in nanoseconds: time the thread spends
/// descheduled (another process on its CPU) does not count.
fn thread_cpu_ns() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

/// CPU nanoseconds of this thread that `ops` calls of `f` take.
fn timed(ops: u64, f: &mut impl FnMut()) -> f64 {
    let t = thread_cpu_ns();
    for _ in 0..ops {
        f();
    }
    thread_cpu_ns() - t
}

/// Runs `base` and `subject` (one operation each) in alternating blocks of
/// about `block` each on this thread, for about `budget` each, and pairs
/// each block with its neighbour of the other side (the same number of
/// operations): a burst of machine noise lands in a block or two of either
/// side, which moves a few pair ratios (the median ignores them), instead
/// of one side's whole run. Against a busy machine:
/// - blocks are timed by the thread's CPU clock, so a block during which
///   the thread was descheduled is not charged for the time it waited (only
///   for the caches the other process cooled);
/// - which side goes first in a pair, and the block's length (0.5x to 1.5x
///   `block`, the same for both sides of a pair), are drawn at random, so
///   that the pattern cannot lock in phase with the scheduler's tick and
///   charge the same side each time.
///
/// Before the blocks, both sides run (warm-up), and the baseline's fastest
/// of three runs sets the block's operation count. `seed` draws the order
/// and lengths (repetitions pass their index: each draws its own sequence,
/// and a run draws the same as the last). An error when the thread's CPU
/// clock does not move (no block could be timed) within a minute past the
/// budget.
pub fn paired_blocks(
    budget: Duration,
    block: Duration,
    seed: u64,
    mut base: impl FnMut(),
    mut subject: impl FnMut(),
) -> Result<PairedBlocks, String> {
    let block_ns = block.as_nanos().max(1) as f64;
    // Calibrate: double until a run of the baseline takes a quarter block.
    let mut n = 16u64;
    loop {
        let t = timed(n, &mut base);
        timed(n, &mut subject);
        if t >= block_ns / 4.0 || n >= 1 << 30 {
            break;
        }
        n *= 2;
    }
    let per_op = (0..3)
        .map(|_| {
            let t = timed(n, &mut base);
            timed(n, &mut subject);
            t / n as f64
        })
        .fold(f64::INFINITY, f64::min);
    let ops = ((block_ns / per_op.max(1e-3)) as u64).max(2);
    let (mut tb, mut ts, mut total) = (0.0, 0.0, 0u64);
    let mut ratios = Vec::new();
    // xorshift64 (never seeded with 0, its fixed point).
    let mut seed = 0x2545_f491_4f6c_dd1du64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    if seed == 0 {
        seed = 0x2545_f491_4f6c_dd1d;
    }
    let start = Instant::now();
    let give_up = budget * 2 + Duration::from_secs(60);
    // At least 8 pairs, so that a median means something.
    while ratios.len() < 8 || start.elapsed() < budget * 2 {
        if start.elapsed() > give_up {
            return Err(format!(
                "paired blocks: {} of 8 blocks timed in {:?} (the thread's CPU clock does not move)",
                ratios.len(),
                start.elapsed()
            ));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = ops / 2 + (seed >> 1) % ops.max(1);
        let (b, s) = if seed & 1 == 0 {
            let b = timed(n, &mut base);
            (b, timed(n, &mut subject))
        } else {
            let s = timed(n, &mut subject);
            (timed(n, &mut base), s)
        };
        tb += b;
        ts += s;
        total += n;
        if s > 0.0 && b > 0.0 {
            ratios.push(b / s);
        }
    }
    let total = total.max(1) as f64;
    Ok(PairedBlocks {
        base_ns: tb / total,
        subj_ns: ts / total,
        ratios,
        ops_per_block: ops,
    })
}

/// The `q` quantile (0..=1) of `v` by the nearest rank; NaN when empty.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((s.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    s[i.min(s.len() - 1)]
}

/// "median m, quartiles q1..q3, min..max over n" of block ratios, for
/// notes.
pub fn ratio_spread(r: &[f64]) -> String {
    let min = r.iter().copied().fold(f64::NAN, f64::min);
    let max = r.iter().copied().fold(f64::NAN, f64::max);
    format!(
        "median {:.3}, quartiles {:.3}..{:.3}, min..max {min:.3}..{max:.3} over {}",
        median(r),
        quantile(r, 0.25),
        quantile(r, 0.75),
        r.len()
    )
}

#[cfg(test)]
mod tests {
    // Unused where the module is included by the criterion bench.
    #[allow(unused_imports)]
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(best(&[3.0, 1.0]), 1.0);
        let (b, s) = interleave(3, || Ok(1.0), || Ok(2.0)).unwrap();
        assert_eq!((b.len(), s.len()), (3, 3));
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 0.25), 2.0);
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert!(quantile(&[], 0.5).is_nan());
        assert_eq!(
            ratio_spread(&[1.2, 0.9, 1.0, 0.8, 1.1]),
            "median 1.000, quartiles 0.900..1.100, min..max 0.800..1.200 over 5"
        );
    }

    /// Blocks alternate and each side runs the same operations: a subject
    /// doing twice the work of the baseline comes out near half as fast.
    #[test]
    fn paired_blocks_pair_equal_work() {
        let (mut nb, mut ns) = (0u64, 0u64);
        let work = |n: u64| (0..n).fold(0u64, |a, i| a.wrapping_mul(31).wrapping_add(i));
        let r = paired_blocks(
            Duration::from_millis(20),
            Duration::from_millis(1),
            0,
            || {
                nb += 1;
                std::hint::black_box(work(std::hint::black_box(2000)));
            },
            || {
                ns += 1;
                std::hint::black_box(work(std::hint::black_box(4000)));
            },
        )
        .unwrap();
        assert!(r.ratios.len() >= 8);
        assert_eq!(nb, ns, "both sides run the same number of operations");
        let m = median(&r.ratios);
        assert!((0.25..0.8).contains(&m), "median ratio {m}");
        assert!(r.subj_ns > r.base_ns);
    }
}
