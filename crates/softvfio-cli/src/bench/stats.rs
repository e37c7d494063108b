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

/// The ratio of each repetition's subject to the baseline run next to it
/// (`interleave` pairs them), as "min..max, median m": two runs that shared
/// the machine's load at that moment are compared with each other.
pub fn paired_ratios(base: &[f64], subj: &[f64]) -> String {
    let r: Vec<f64> = base
        .iter()
        .zip(subj)
        .filter(|(b, _)| **b > 0.0)
        .map(|(b, s)| s / b)
        .collect();
    let min = r.iter().copied().fold(f64::NAN, f64::min);
    let max = r.iter().copied().fold(f64::NAN, f64::max);
    format!("{min:.3}..{max:.3}, median {:.3}", median(&r))
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
}
