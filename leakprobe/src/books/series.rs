//! Series over time: bounded lists of samples, kept evenly spread over the whole window, and
//! the readings the verdict takes from them (slope, floor growth).

/// A bounded list of samples over time: when full, every other sample is dropped, so what is
/// kept stays evenly spread over the whole window.
#[derive(Clone, Debug)]
pub struct Thinned<T> {
    items: Vec<T>,
    capacity: usize,
}

impl<T> Thinned<T> {
    /// Keeps at most `capacity` samples.
    pub fn new(capacity: usize) -> Self {
        Self { items: Vec::new(), capacity: capacity.max(2) }
    }

    /// Adds a sample.
    pub fn push(&mut self, item: T) {
        if self.items.len() >= self.capacity {
            let mut i = 0;
            self.items.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
        self.items.push(item);
    }

    /// The samples, oldest first.
    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// Keeps the samples `keep` accepts.
    pub fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        self.items.retain(keep);
    }

    /// Replaces the `n` oldest samples with `first`, if any.
    fn replace_oldest(&mut self, n: usize, first: Option<T>) {
        self.items.splice(..n, first);
    }
}

/// Books that forget what they saw before a time: the agent's rolling window, so that what a
/// process did days ago does not blunt what it does now.
pub trait Forget {
    /// Forgets what was seen before `t` (seconds since attach).
    fn forget_before(&mut self, t: f64);
}

/// A bounded series of (seconds since start, value) points.
#[derive(Clone, Debug)]
pub struct Series {
    points: Thinned<(f64, f64)>,
}

impl Default for Series {
    fn default() -> Self {
        Self { points: Thinned::new(SERIES_POINTS) }
    }
}

/// Most points a series keeps.
pub const SERIES_POINTS: usize = 128;

impl Series {
    /// Adds a point.
    pub fn push(&mut self, t: f64, v: f64) {
        self.points.push((t, v));
    }

    /// The points, oldest first.
    pub fn points(&self) -> &[(f64, f64)] {
        self.points.items()
    }

    /// Least-squares slope (value per second); 0 with fewer than two points.
    pub fn slope(&self) -> f64 {
        let points = self.points();
        let n = points.len() as f64;
        if n < 2.0 {
            return 0.0;
        }
        let (mt, mv) = points.iter().fold((0.0, 0.0), |(a, b), (t, v)| (a + t / n, b + v / n));
        let (num, den) = points
            .iter()
            .fold((0.0, 0.0), |(num, den), (t, v)| (num + (t - mt) * (v - mv), den + (t - mt) * (t - mt)));
        if den == 0.0 {
            0.0
        } else {
            num / den
        }
    }

    /// Growth of the floor: the lowest value in the last third of the window minus the lowest
    /// in the middle third. Memory freed by the GC moves in a sawtooth (it grows until a
    /// collection frees what is garbage); its floor is what survives. A leak lifts the floor, a
    /// bounded cache or steady churn leaves it flat, and so does a cache that filled early on.
    pub fn floor_growth(&self) -> f64 {
        let points = self.points();
        let (Some(first), Some(last)) = (points.first(), points.last()) else {
            return 0.0;
        };
        let third = (last.0 - first.0) / 3.0;
        let floor = |from: f64, to: f64| {
            points.iter().filter(|(t, _)| (from..=to).contains(t)).map(|p| p.1).fold(f64::INFINITY, f64::min)
        };
        let (middle, end) =
            (floor(first.0 + third, first.0 + 2.0 * third), floor(first.0 + 2.0 * third, last.0));
        if middle.is_finite() && end.is_finite() {
            end - middle
        } else {
            0.0
        }
    }

    /// The value at time `t`: that of the last point at or before it (the first point's, if
    /// `t` is earlier).
    pub fn at(&self, t: f64) -> Option<f64> {
        let points = self.points();
        points.iter().take_while(|p| p.0 <= t).last().or(points.first()).map(|p| p.1)
    }

    /// Drops the points before `t` (a series of readings taken at events, such as the heap
    /// after each mark-compact: nothing was read at `t` itself).
    pub fn drop_before(&mut self, t: f64) {
        self.points.retain(|p| p.0 >= t);
    }

    /// Starts the series at `t`: the points before it are dropped, and the value it had at `t`
    /// (its last earlier point's) becomes a point at `t`. A series of what a stack holds at
    /// each sample is a step: the sum of a site's stacks still counts each from `t`.
    pub fn start_at(&mut self, t: f64) {
        let points = self.points();
        let later = points.partition_point(|p| p.0 < t);
        if later == 0 {
            return;
        }
        let carried = points.get(later).is_none_or(|p| p.0 > t).then(|| (t, points[later - 1].1));
        self.points.replace_oldest(later, carried);
    }

    /// The latest value.
    pub fn last(&self) -> Option<f64> {
        self.points().last().map(|p| p.1)
    }

    /// The point-wise sum of `parts`, at every time any of them has a point: each part counts
    /// its value at or before that time, and 0 before its first point (a stack that had not
    /// allocated yet held nothing). The stacks of one site sum to what the site held, whenever
    /// each started or ended: one store replaced by another stack's is not a drop and a start.
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a Series>) -> Series {
        let parts: Vec<&Series> = parts.into_iter().collect();
        let mut times: Vec<f64> = parts.iter().flat_map(|s| s.points().iter().map(|p| p.0)).collect();
        times.sort_by(f64::total_cmp);
        times.dedup();
        let mut sum = Series::default();
        // Each part's next point: times rise, so every part is read once over the whole sum.
        let mut next = vec![0usize; parts.len()];
        for t in times {
            let mut total = 0.0;
            for (part, next) in parts.iter().zip(next.iter_mut()) {
                let points = part.points();
                while points.get(*next).is_some_and(|p| p.0 <= t) {
                    *next += 1;
                }
                total += next.checked_sub(1).map_or(0.0, |k| points[k].1);
            }
            sum.push(t, total);
        }
        sum
    }
}

/// The median of the slopes between every two points (Theil–Sen): one trough read while the
/// sweeper lagged (on a loaded machine) does not turn a flat trend into growth, as it would a
/// least-squares line.
pub fn median_slope(points: &[(f64, f64)]) -> f64 {
    let mut slopes: Vec<f64> = points
        .iter()
        .enumerate()
        .flat_map(|(i, a)| {
            points[i + 1..].iter().filter(|b| b.0 > a.0).map(move |b| (b.1 - a.1) / (b.0 - a.0))
        })
        .collect();
    slopes.sort_by(f64::total_cmp);
    match slopes.len() {
        0 => 0.0,
        n if n % 2 == 1 => slopes[n / 2],
        n => (slopes[n / 2 - 1] + slopes[n / 2]) / 2.0,
    }
}

/// How far a trend stands out of its points' scatter: `slope` (their [`median_slope`]) over its
/// standard error, read from the points' residuals about the Theil–Sen line through them (its
/// intercept the median of `y - slope·t`), as a least-squares slope's t statistic is. A leak's
/// GC troughs climb close to their line; a saw-tooth caught at random phases by a few GCs can
/// trend as steeply, but its troughs swing about that line by more than the trend. `None` with
/// fewer than three points (no scatter to read); infinite where every point is on the line.
pub fn slope_t(points: &[(f64, f64)], slope: f64) -> Option<f64> {
    let n = points.len();
    if n < 3 {
        return None;
    }
    let mut offsets: Vec<f64> = points.iter().map(|(t, y)| y - slope * t).collect();
    offsets.sort_by(f64::total_cmp);
    let intercept = match n % 2 {
        1 => offsets[n / 2],
        _ => (offsets[n / 2 - 1] + offsets[n / 2]) / 2.0,
    };
    let squares: f64 = points.iter().map(|(t, y)| (y - slope * t - intercept).powi(2)).sum();
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n as f64;
    let spread: f64 = points.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    let error = (squares / (n - 2) as f64).sqrt() / spread.sqrt();
    Some(match error > 0.0 {
        true => slope / error,
        false if slope == 0.0 => 0.0,
        false => slope.signum() * f64::INFINITY,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_slope_and_floor_growth() {
        let mut growing = Series::default();
        let mut plateau = Series::default();
        let mut sawtooth = Series::default();
        let mut leaky_sawtooth = Series::default();
        for i in 0..=30 {
            let t = i as f64;
            growing.push(t, 1000.0 * t);
            plateau.push(t, 1000.0 * t.min(8.0));
            sawtooth.push(t, 1000.0 * (i % 4) as f64);
            leaky_sawtooth.push(t, 1000.0 * (i % 4) as f64 + 500.0 * t);
        }
        assert!((growing.slope() - 1000.0).abs() < 1e-6);
        assert_eq!(growing.floor_growth(), 10_000.0, "last third's floor (t=20) minus the middle's (t=10)");
        assert!(plateau.slope() > 0.0, "early growth still shows in the slope");
        assert_eq!(plateau.floor_growth(), 0.0, "a cache that filled early has a flat floor");
        assert_eq!(sawtooth.floor_growth(), 0.0, "GC sawtooth: the floor stays");
        assert!(sawtooth.points().iter().skip(20).any(|p| p.1 > 2000.0), "even though it peaks late");
        assert!(leaky_sawtooth.floor_growth() >= 4000.0, "{}", leaky_sawtooth.floor_growth());
        assert_eq!(Series::default().slope(), 0.0);
        assert_eq!(Series::default().floor_growth(), 0.0);
    }

    #[test]
    fn a_sum_counts_each_part_from_its_first_point() {
        // One site's two stacks: the first holds 0 to 10 MB over 15 s and is then freed, the
        // second takes over at 10 MB and grows to 20 MB at 30 s. The site grew steadily.
        let mb = 1e6;
        let (mut first, mut second) = (Series::default(), Series::default());
        for i in 0..=30 {
            let t = i as f64;
            match i < 15 {
                true => first.push(t, t * 10.0 / 15.0 * mb),
                false => {
                    first.push(t, 0.0);
                    second.push(t, (10.0 + (t - 15.0) * 10.0 / 15.0) * mb);
                }
            }
        }
        let site = Series::sum([&first, &second]);
        assert_eq!(site.points().len(), 31);
        assert!((site.slope() / mb - 2.0 / 3.0).abs() < 0.01, "{}", site.slope() / mb);
        // The last third's floor (20 s: 13.3 MB) over the middle's (10 s: 6.7 MB).
        assert!((site.floor_growth() / mb - 20.0 / 3.0).abs() < 0.01, "{}", site.floor_growth() / mb);
        // Read apart, each stack's floor growth is over its own span, and they add up to half.
        let apart = first.floor_growth() + second.floor_growth();
        assert!(apart / mb < 3.5, "{}", apart / mb);
        assert_eq!(Series::sum([]).points().len(), 0);
    }

    #[test]
    fn a_series_started_later_keeps_its_value_there() {
        let mut s = Series::default();
        for t in [0.0, 10.0, 20.0, 30.0] {
            s.push(t, t * 2.0);
        }
        let mut readings = s.clone();
        s.start_at(15.0);
        assert_eq!(s.points(), &[(15.0, 20.0), (20.0, 40.0), (30.0, 60.0)]);
        s.start_at(20.0);
        assert_eq!(s.points(), &[(20.0, 40.0), (30.0, 60.0)], "a point at the start needs no other");
        s.start_at(40.0);
        assert_eq!(s.points(), &[(40.0, 60.0)], "a step goes on after its last point");
        s.start_at(5.0);
        assert_eq!(s.points(), &[(40.0, 60.0)]);
        readings.drop_before(15.0);
        assert_eq!(readings.points(), &[(20.0, 40.0), (30.0, 60.0)], "readings are not moved");
    }

    #[test]
    fn series_stays_bounded_and_spread() {
        let mut s = Series::default();
        for i in 0..10_000 {
            s.push(i as f64, i as f64);
        }
        assert!(s.points().len() <= SERIES_POINTS);
        assert_eq!(s.points()[0].0, 0.0);
        assert_eq!(s.last(), Some(9999.0));
        assert!(s.points()[1].0 > 1.0, "old points were thinned: {:?}", &s.points()[..3]);
    }
}
