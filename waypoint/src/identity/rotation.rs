//! When to renew, how long to wait after a failure, and noticing changed files.

use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::TlsConfigs;

/// When to ask for the next certificate: when half of its validity is left (as Istio's agents
/// and ztunnel do), minus up to a twentieth of it so that replicas started together do not all hit
/// the CA in the same second. Counted from now rather than from notBefore, which CAs backdate
/// for clock skew; never sooner than a second, so a CA handing out expired certificates is not
/// asked in a tight loop.
pub(super) fn renew_in(c: &TlsConfigs) -> Duration {
    let left = c.remaining();
    let at = (left / 2).saturating_sub(left.mul_f64(random_fraction() / 20.0));
    at.max(Duration::from_secs(1))
}

/// A number in [0, 1): jitter does not need a cryptographic source, only one that differs per
/// process and per call, which std's randomly keyed hasher provides.
fn random_fraction() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Exponential backoff with jitter between failed attempts, reset by a success.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            next: first,
            first,
            max,
        }
    }

    /// The wait before the next attempt: the current step, plus up to half of it again.
    pub(super) fn next(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step + step.mul_f64(random_fraction() / 2.0)
    }

    pub(super) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Modification times of a set of files, to notice when any of them changes (a Secret or
/// ConfigMap volume swaps a symlink, which changes the target's mtime as seen through it).
#[derive(Debug)]
pub(super) struct FileWatch {
    files: Vec<PathBuf>,
    seen: Vec<Option<SystemTime>>,
}

impl FileWatch {
    /// Takes the times now, so a change after this call is seen.
    pub(super) fn new(files: Vec<PathBuf>) -> FileWatch {
        let seen = mtimes(&files);
        FileWatch { files, seen }
    }

    pub(super) fn changed(&mut self) -> bool {
        let now = mtimes(&self.files);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }
}

fn mtimes(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let waits: Vec<_> = (0..6).map(|_| b.next()).collect();
        for (w, step) in waits.iter().zip([100u64, 200, 400, 800, 800, 800]) {
            let step = Duration::from_millis(step);
            assert!(*w >= step && *w <= step + step / 2, "{w:?} for {step:?}");
        }
        b.reset();
        assert!(b.next() < Duration::from_millis(151));
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let xs: Vec<f64> = (0..64).map(|_| random_fraction()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().any(|x| (x - xs[0]).abs() > 1e-9), "{xs:?}");
    }
}
