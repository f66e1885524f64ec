//! What one status write carries, shared by the policy writes ([`super::status_writer`]) and the
//! Gateway and GatewayClass writes ([`super::gateway_status`]); its own room so that neither of
//! those imports the other back.

use gateway_api_bindings::{Kind, ObjectKey};

/// One status write: a server-side apply of `body` on `kind`'s `/status` of `key`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Write {
    pub(super) kind: Kind,
    /// `namespace` empty for a cluster-scoped object (a GatewayClass).
    pub(super) key: ObjectKey,
    pub(super) body: serde_json::Value,
}
