//! How often the Kubernetes source may ask the API server again: an exponential backoff for
//! failing lists and watches (client-go's reflector figures), and a token bucket pacing status
//! writes (below what istiod allows its own client).

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::time::Instant;

/// Exponential backoff with jitter, as client-go's reflector runs its list-and-watch loop:
/// 0.8 s doubling to 30 s, each delay stretched by a random factor in [1, 2) so that many
/// clients do not retry in step, and back to the start once 2 minutes pass without a failure.
///
/// Only failures move it and only quiet time resets it. kube-runtime's `StreamBackoff` resets on
/// every successful item, and its watcher yields one before each relist, so a list failing
/// forever was retried every 0.8-1.6 s; here the delays keep growing until the list succeeds
/// and then stays healthy for the reset period.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    next: Duration,
    last_failure: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(
            Duration::from_millis(800),
            Duration::from_secs(30),
            Duration::from_secs(120),
        )
    }
}

impl Backoff {
    pub(super) fn new(initial: Duration, max: Duration, reset_after: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            reset_after,
            next: initial,
            last_failure: None,
        }
    }

    /// A failure: how long to wait before the next attempt.
    pub(super) fn failed(&mut self) -> Duration {
        let now = Instant::now();
        if self
            .last_failure
            .is_some_and(|t| now.duration_since(t) > self.reset_after)
        {
            self.next = self.initial;
        }
        self.last_failure = Some(now);
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        (base + base.mul_f64(jitter())).min(self.max)
    }

    /// The delay the next failure starts from, before jitter.
    #[cfg(test)]
    fn peek(&self) -> Duration {
        self.next
    }
}

/// A number in [0, 1): enough randomness to spread retries, without a dependency.
fn jitter() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// A token bucket: `burst` writes at once, then `rate` a second. client-go paces every request
/// of a client this way (istiod: 80 a second, bursts of 160).
#[derive(Debug)]
pub(super) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub(super) fn new(rate: f64, burst: u32) -> TokenBucket {
        TokenBucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: Instant::now(),
        }
    }

    /// Takes a token at `now`, going into debt when none is left, and says how long after `now`
    /// its turn comes. Writes reserved in turn get slots `1/rate` apart once the burst is used.
    pub(super) fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_to_the_cap_and_resets_only_after_quiet() {
        let mut b = Backoff::default();
        let mut bases = Vec::new();
        for _ in 0..8 {
            bases.push(b.peek());
            let d = b.failed();
            let base = *bases.last().unwrap();
            assert!(
                d >= base && d <= (base * 2).min(Duration::from_secs(30)),
                "{d:?} for {base:?}"
            );
            tokio::time::advance(d).await;
        }
        let ms: Vec<u128> = bases.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
        // Failing again soon after keeps the long delay...
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(b.failed() >= Duration::from_secs(30));
        // ...two quiet minutes start over.
        tokio::time::advance(Duration::from_secs(121)).await;
        assert!(b.failed() < Duration::from_millis(1600));
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let mut t = TokenBucket::new(50.0, 100);
        let start = Instant::now();
        for _ in 0..100 {
            assert!(t.reserve(Instant::now()).is_zero());
        }
        // The 101st waits 1/50 s, the 150th a whole second.
        let near =
            |d: Duration, ms: u64| d.abs_diff(Duration::from_millis(ms)) < Duration::from_micros(1);
        assert!(near(t.reserve(start), 20));
        for _ in 0..48 {
            t.reserve(start);
        }
        assert!(near(t.reserve(start), 1000));
        // Reserved all at once, 200 writes end 2 s past the burst.
        let mut t = TokenBucket::new(50.0, 100);
        let last = (0..200).map(|_| t.reserve(start)).max().unwrap();
        assert!(near(last, 2000), "{last:?}");
        // Time refills the bucket, up to the burst.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(t.reserve(Instant::now()).is_zero());
    }
}
