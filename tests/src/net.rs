//! Loopback addresses: each mesh takes its own `127.a.b.0/24`, so every pod can listen on the
//! real HBONE port 15008 and several meshes can run in one process.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};

/// A /24 of loopback addresses.
#[derive(Debug, Clone, Copy)]
pub struct Block {
    a: u8,
    b: u8,
}

impl Block {
    /// A block no other call in this process returned; the process id spreads concurrent
    /// processes (a test run beside the demo) apart.
    pub fn allocate() -> Block {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() % 97 * 64;
        Block {
            a: 10 + u8::try_from(n / 250 % 240).unwrap_or(0),
            b: u8::try_from(n % 250).unwrap_or(0) + 1,
        }
    }

    /// `127.a.b.0/24`, for runs that configure other programs (nginx) with these addresses.
    pub fn fixed(a: u8, b: u8) -> Block {
        Block { a, b }
    }

    pub fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.a, self.b, host))
    }
}
