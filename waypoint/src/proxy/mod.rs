//! The data path, in the order traffic takes it: a CONNECT arrives ([`inbound`]), passes layered
//! L4 policy when that is on ([`layered`]), and becomes a
//! [`tunnel`], its destination is resolved ([`destination`]), the inner protocol is chosen or
//! sniffed ([`sniff`]); HTTP/1 heads are judged as Envoy's codec judges them ([`http1`]); HTTP
//! goes through the Pingora app ([`http`]), which reads each request
//! as Envoy would ([`request`]), and opaque TCP through the relay ([`tcp`]); both are decided by
//! [`policy`] and reach endpoints through [`upstream`].

pub(crate) mod destination;
pub(crate) mod http;
pub mod http1;
pub(crate) mod idle;
pub(crate) mod inbound;
pub(crate) mod layered;
pub(crate) mod own;
pub mod policy;
pub mod request;
pub mod sniff;
pub(crate) mod tcp;
pub(crate) mod tunnel;
pub(crate) mod upstream;
