//! The latency sketch: log-linear buckets over nanoseconds, and quantiles read from them.
//!
//! A duration `d` is first cut to units of 2^12 ns (4.096 µs). Units 0..8 each get a bucket of
//! their own (linear, below 32.768 µs); above, every power of two is split into 8 equal
//! sub-buckets, up to 2^37 ns (about 137 s); longer durations share one overflow bucket. That
//! is [`BUCKETS`] = 185 buckets, and the index is a shift, a leading-zero count and a mask.
//!
//! A quantile is the midpoint of the bucket holding the nearest-rank sample, so its error is
//! at most half a bucket: at most 1/16 of the exact value from 32.768 µs to 137 s, at most
//! 2.048 µs below that, and at or above 137 s the answer is 137 s (a floor).

use std::time::Duration;

/// Nanoseconds per unit: below [`SUB`] units the buckets are linear, one unit wide.
const UNIT_SHIFT: u32 = 12;
/// Sub-buckets per power of two, as bits.
const SUB_BITS: u32 = 3;
/// Sub-buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// Durations of 2^TOP_EXP units (2^37 ns, about 137 s) and longer overflow.
const TOP_EXP: u32 = 25;
/// The overflow bucket's index.
const OVERFLOW: usize = ((TOP_EXP - SUB_BITS + 1) << SUB_BITS) as usize;
/// Buckets in a sketch, the overflow bucket included.
pub const BUCKETS: usize = OVERFLOW + 1;

/// The bucket a duration falls in: integer arithmetic only, for the request path.
#[inline]
pub(super) fn bucket(elapsed: Duration) -> usize {
    let nanos = elapsed
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(elapsed.subsec_nanos()));
    bucket_of_nanos(nanos)
}

#[inline]
fn bucket_of_nanos(nanos: u64) -> usize {
    let units = nanos >> UNIT_SHIFT;
    if units < SUB {
        return units as usize;
    }
    // units >= 8, so exp >= SUB_BITS and the shift below does not underflow.
    let exp = u64::BITS - 1 - units.leading_zeros();
    if exp >= TOP_EXP {
        return OVERFLOW;
    }
    let sub = (units >> (exp - SUB_BITS)) & (SUB - 1);
    (((exp - SUB_BITS + 1) << SUB_BITS) as usize) + sub as usize
}

/// The lowest duration in bucket `index`, and the bucket's width, in nanoseconds.
fn bounds(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB {
        return (index << UNIT_SHIFT, 1 << UNIT_SHIFT);
    }
    let exp = (index >> SUB_BITS) as u32 + SUB_BITS - 1;
    let sub = index & (SUB - 1);
    let width_units = 1u64 << (exp - SUB_BITS);
    (
        ((SUB + sub) * width_units) << UNIT_SHIFT,
        width_units << UNIT_SHIFT,
    )
}

/// Request counts per latency bucket over a window: a quantile sketch.
///
/// Buckets are 4.096 µs wide below 32.768 µs, then 8 per power of two up to 2^37 ns (137 s),
/// then one overflow bucket. A [`quantile`](Latency::quantile) is within 1/16 of the exact
/// (nearest-rank) value from 32.768 µs to 137 s, within 2.048 µs below, and 137 s (a floor)
/// above.
#[derive(Clone, PartialEq, Eq)]
pub struct Latency {
    counts: [u64; BUCKETS],
}

impl Latency {
    /// Builds the sketch from bucket counts (the window's sum).
    pub(super) fn from_counts(counts: &[u64]) -> Latency {
        let mut latency = Latency::default();
        for (mine, count) in latency.counts.iter_mut().zip(counts) {
            *mine = *count;
        }
        latency
    }

    /// The number of requests in the sketch.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q`-quantile (0.0..=1.0, nearest rank): the midpoint of the bucket holding the
    /// exact value, so within 1/16 of it; `None` when the sketch is empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        // A NaN `q` casts to 0, then rank 1: the minimum.
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (index, bucket_count) in self.counts.iter().enumerate() {
            seen += bucket_count;
            if seen >= rank {
                let (low, width) = bounds(index);
                let nanos = if index == OVERFLOW {
                    low
                } else {
                    low + width / 2
                };
                return Some(Duration::from_nanos(nanos));
            }
        }
        // seen == count >= rank after the last bucket.
        None
    }
}

impl Default for Latency {
    fn default() -> Latency {
        Latency {
            counts: [0; BUCKETS],
        }
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the filled buckets, as (lowest nanoseconds, count).
        let filled = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(index, count)| (bounds(index).0, *count));
        f.debug_map().entries(filled).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sketch(samples: &[u64]) -> Latency {
        let mut counts = [0; BUCKETS];
        for nanos in samples {
            counts[bucket_of_nanos(*nanos)] += 1;
        }
        Latency::from_counts(&counts)
    }

    /// The nearest-rank quantile of sorted samples.
    fn exact(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    /// The bound stated in the module doc.
    fn within_bound(estimate: u64, exact: u64) -> bool {
        let top = 1u64 << (TOP_EXP + UNIT_SHIFT);
        if exact >= top {
            return estimate == top;
        }
        let error = estimate.abs_diff(exact);
        if exact < SUB << UNIT_SHIFT {
            error <= 1 << (UNIT_SHIFT - 1)
        } else {
            error * 16 <= exact
        }
    }

    #[test]
    fn buckets_at_their_edges() {
        let table: &[(u64, usize)] = &[
            (0, 0),
            (4_095, 0),
            (4_096, 1),
            (32_767, 7),
            (32_768, 8),
            (36_863, 8),
            (36_864, 9),
            (65_535, 15),
            (65_536, 16),
            (73_727, 16),
            (73_728, 17),
            ((1 << 37) - 1, OVERFLOW - 1),
            (1 << 37, OVERFLOW),
            (u64::MAX, OVERFLOW),
        ];
        for (nanos, index) in table {
            assert_eq!(bucket_of_nanos(*nanos), *index, "{nanos} ns");
        }
        assert_eq!(BUCKETS, 185);
        assert_eq!(bucket(Duration::from_secs(1_000_000)), OVERFLOW);
        // 1 ms = 244 units + 576 ns; 244 lies in [240, 256): exponent 7, sub-bucket 7, (7 - 2) * 8 + 7.
        assert_eq!(bucket(Duration::from_millis(1)), 47);
    }

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        let mut next = 0;
        for index in 0..OVERFLOW {
            let (low, width) = bounds(index);
            assert_eq!(
                low,
                next,
                "bucket {index} starts where {} ends",
                index.max(1) - 1
            );
            assert_eq!(bucket_of_nanos(low), index);
            assert_eq!(bucket_of_nanos(low + width - 1), index);
            if index >= SUB as usize {
                // The relative width behind the 1/16 bound: width <= low / 8.
                assert!(width * 8 <= low, "bucket {index}: {width} wide at {low}");
            }
            next = low + width;
        }
        assert_eq!(next, 1 << 37);
        assert_eq!(bounds(OVERFLOW).0, 1 << 37);
    }

    #[test]
    fn quantiles_of_a_known_sketch() {
        assert_eq!(Latency::default().quantile(0.5), None);
        // 98 requests of 1 ms, one of 100 ms, one of 200 s (overflow).
        let mut samples = vec![1_000_000; 98];
        samples.push(100_000_000);
        samples.push(200_000_000_000);
        let latency = sketch(&samples);
        assert_eq!(latency.count(), 100);
        // 1 ms lies in [983_040, 1_048_576): midpoint 1_015_808 ns.
        assert_eq!(latency.quantile(0.5), Some(Duration::from_nanos(1_015_808)));
        assert_eq!(
            latency.quantile(0.98),
            Some(Duration::from_nanos(1_015_808))
        );
        // 100 ms = 24414 units + 256 ns; 24414 lies in [22528, 24576): midpoint 23552 units.
        assert_eq!(
            latency.quantile(0.99),
            Some(Duration::from_nanos(23_552 * 4_096))
        );
        assert_eq!(latency.quantile(1.0), Some(Duration::from_nanos(1 << 37)));
        assert_eq!(latency.quantile(0.0), latency.quantile(0.01));
        assert_eq!(latency.quantile(f64::NAN), latency.quantile(0.0));
    }

    /// Log-uniform durations from 1 µs to 300 s: every bucket kind, overflow included.
    fn samples() -> impl Strategy<Value = Vec<u64>> {
        prop::collection::vec((10u32..38, 0.0f64..1.0), 1..2_000).prop_map(|raw| {
            raw.into_iter()
                .map(|(exp, frac)| ((1u64 << exp) as f64 * (1.0 + frac)) as u64)
                .collect()
        })
    }

    proptest! {
        #[test]
        fn every_duration_falls_in_its_bucket(nanos in 0u64..(1 << 38)) {
            let index = bucket_of_nanos(nanos);
            let (low, width) = bounds(index);
            prop_assert!(low <= nanos);
            prop_assert!(index == OVERFLOW || nanos < low + width);
        }

        #[test]
        fn quantiles_within_the_stated_error(mut samples in samples()) {
            let latency = sketch(&samples);
            samples.sort_unstable();
            for q in [0.5, 0.9, 0.99, 0.999] {
                let estimate = latency.quantile(q).map(|d| d.as_nanos() as u64);
                let exact = exact(&samples, q);
                prop_assert!(
                    estimate.is_some_and(|e| within_bound(e, exact)),
                    "q {q}: estimate {estimate:?} ns, exact {exact} ns"
                );
            }
        }
    }
}
