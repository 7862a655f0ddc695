//! The SIP layer: the message facade over `ezk-sip-types` with the gateway's own message-level
//! checks (`msg`), the SDP of a body, multipart included (`body`), transports (UDP, TCP, TLS; `tls_client` for the TLS connections we open),
//! name resolution with a short cache (`resolve`), transaction state machines (RFC 3261 §17) and
//! digest authentication (RFC 3261 §22, RFC 7616): the server side (`digest`) and the answers
//! to a carrier's challenges (`digest_client`). Pure parts (messages,
//! transactions, digest, stream framing in `framer`) are kept apart from sockets.
pub mod body;
pub mod digest;
pub mod digest_client;
pub mod framer;
pub mod msg;
pub mod registration;
pub mod resolve;
pub mod session_timer;
pub mod tls_client;
pub mod transaction;
pub mod transport;
