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

/// Which version of each of a set of files is there, to notice when any of them changes. A
/// Secret, ConfigMap or projected volume is updated by swapping a symlink to a new directory, so
/// the file seen through the link is a new one: another inode, and usually another mtime. The
/// inode and size count as well as the mtime because file times come from the kernel's coarse
/// clock: a replacement within the same tick keeps the mtime.
#[derive(Debug)]
pub(super) struct FileWatch {
    files: Vec<PathBuf>,
    seen: Vec<Option<FileVersion>>,
}

#[derive(Debug, PartialEq, Eq)]
struct FileVersion {
    modified: SystemTime,
    len: u64,
    /// (device, inode) on Unix; nothing elsewhere.
    file: Option<(u64, u64)>,
}

impl FileWatch {
    /// Takes the versions now, so a change after this call is seen.
    pub(super) fn new(files: Vec<PathBuf>) -> FileWatch {
        let seen = versions(&files);
        FileWatch { files, seen }
    }

    pub(super) fn changed(&mut self) -> bool {
        let now = versions(&self.files);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }
}

fn versions(files: &[PathBuf]) -> Vec<Option<FileVersion>> {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            #[cfg(unix)]
            let file = {
                use std::os::unix::fs::MetadataExt;
                Some((m.dev(), m.ino()))
            };
            #[cfg(not(unix))]
            let file = None;
            Some(FileVersion {
                modified: m.modified().ok()?,
                len: m.len(),
                file,
            })
        })
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

    /// The mesh root as the kubelet mounts it, from a ConfigMap or from a projected
    /// ClusterTrustBundle alike: `root-cert.pem -> ..data/root-cert.pem`, `..data` a symlink to a
    /// timestamped directory, replaced whole by re-pointing `..data`. The watch follows the
    /// links, so the swap is seen, and the file reads as every root it holds.
    #[cfg(unix)]
    #[test]
    fn a_kubelet_volume_update_is_seen_and_read_whole() {
        use crate::tls::dev_ca::DevCa;
        use std::os::unix::fs::symlink;

        let dir = std::env::temp_dir().join(format!("waypoint-rotation-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (old, new) = (
            dir.join("..2026_01_01_00_00_00.1"),
            dir.join("..2026_01_02_00_00_00.2"),
        );
        std::fs::create_dir_all(&old).unwrap();
        std::fs::create_dir_all(&new).unwrap();
        let (r1, r2) = (DevCa::new("root 1").unwrap(), DevCa::new("root 2").unwrap());
        std::fs::write(old.join("root-cert.pem"), r1.root_pem()).unwrap();
        symlink(old.file_name().unwrap(), dir.join("..data")).unwrap();
        symlink("..data/root-cert.pem", dir.join("root-cert.pem")).unwrap();
        let file = dir.join("root-cert.pem");
        let mut watch = FileWatch::new(vec![file.clone()]);
        assert!(!watch.changed());
        assert_eq!(super::super::read_pem_certs(&file).unwrap().len(), 1);

        // A rotation: the bundle holds the old and the new root; the kubelet writes the new
        // directory, then renames a fresh `..data` link over the old one.
        std::fs::write(
            new.join("root-cert.pem"),
            format!("{}{}", r1.root_pem(), r2.root_pem()),
        )
        .unwrap();
        symlink(new.file_name().unwrap(), dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert!(watch.changed());
        assert!(!watch.changed());
        assert_eq!(super::super::read_pem_certs(&file).unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let xs: Vec<f64> = (0..64).map(|_| random_fraction()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().any(|x| (x - xs[0]).abs() > 1e-9), "{xs:?}");
    }
}
