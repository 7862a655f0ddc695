//! Requests inside an answered call: re-INVITE, UPDATE and INFO from one bridged leg go to the
//! other as new requests of that leg's dialog (our Via, CSeq, Contact), their SDP through the
//! codec policy and the relay's rewrite; the responses come back the same way.

use std::time::Instant;

use crate::sip::msg::{DialogHeaders, Headers, Method, Request, Response, name};
use crate::sip::transaction::ServerKey;

use super::leg::LegId;
use super::tx::Purpose;
use super::{Call, State};

/// Headers that travel with a relayed in-dialog request or response body.
const BODY_HEADERS: &[&str] =
    &[name::CONTENT_TYPE, "Content-Disposition", "Info-Package", name::REASON];

/// The body of a message and the headers that describe it, copied into `to`. A multipart body
/// is not copied: its SDP is what the gateway relays (rewritten, [`set_sdp`]) and the rest is
/// carrier-internal (SIP-I's ISUP; `sip::body`).
pub(super) fn copy_body(from: &Headers, body: &bytes::Bytes, to: &mut Headers) -> bytes::Bytes {
    let multipart = from.get(name::CONTENT_TYPE).is_some_and(|t| {
        t.trim_start().get(..10).is_some_and(|p| p.eq_ignore_ascii_case("multipart/"))
    });
    if multipart {
        return bytes::Bytes::new();
    }
    for h in BODY_HEADERS {
        to.copy_from(from, h);
    }
    body.clone()
}

/// `sdp` as the body of `out`, whatever body (and type) was copied there before.
pub(super) fn set_sdp(out_headers: &mut Headers, out_body: &mut bytes::Bytes, sdp: bytes::Bytes) {
    out_headers.remove(name::CONTENT_TYPE);
    out_headers.remove("Content-Disposition");
    out_headers.push(name::CONTENT_TYPE, "application/sdp");
    *out_body = sdp;
}

impl Call {
    /// A re-INVITE, UPDATE or INFO from `leg` (its server transaction `key` is open).
    pub(super) fn on_in_dialog(
        &mut self,
        now: Instant,
        key: &ServerKey,
        leg: LegId,
        req: &Request,
    ) {
        if self.state != State::Answered && req.method == Method::Invite {
            // Glare with our own INVITE, or a re-INVITE before the call is up (RFC 3261 §14.2).
            return self.respond_status(now, key, 491);
        }
        let to = self.peer(leg);
        if self.leg(to).dialog.remote_tag.is_none() {
            return self.respond_status(now, key, 500);
        }
        let body = match self.relay_offer(key, leg, req) {
            Ok(body) => body,
            Err(refused) => return self.refuse_offer(now, key, refused),
        };
        let ua = self.config.user_agent.clone();
        let branch = self.ids.branch();
        let mut out = self.leg_mut(to).dialog.request(req.method.clone(), &branch, &ua);
        out.body = copy_body(&req.headers, &req.body, &mut out.headers);
        if let Some(body) = body {
            set_sdp(&mut out.headers, &mut out.body, body);
        }
        self.send_client(now, to, out, Purpose::Relay(key.clone()));
    }

    /// A response to a request we relayed to `leg`, passed back in server transaction
    /// `server`.
    pub(super) fn relay_response(
        &mut self,
        now: Instant,
        leg: LegId,
        method: &Method,
        server: &ServerKey,
        resp: &Response,
    ) {
        if *method == Method::Invite && (200..300).contains(&resp.status) {
            // The B2BUA acknowledges its own leg; the other side's ACK is absorbed.
            let cseq = resp.cseq().map(|(n, _)| n).unwrap_or_default();
            self.learn_target(leg, resp);
            self.ack_2xx(leg, cseq);
        }
        if resp.status <= 100 {
            return;
        }
        let Some(mut out) = self.response_for(server, resp.status) else { return };
        out.body = copy_body(&resp.headers, &resp.body, &mut out.headers);
        if !resp.body.is_empty() && self.reoffers.contains_key(server) {
            match self.relay_answer(server, leg, resp) {
                Some(body) => set_sdp(&mut out.headers, &mut out.body, body),
                None => {
                    out.body = bytes::Bytes::new();
                    out.headers.remove(name::CONTENT_TYPE);
                }
            }
        }
        if resp.status >= 200 {
            self.reoffers.remove(server);
        }
        if resp.status < 300 {
            let other = self.servers.get(server).map(|t| t.leg).unwrap_or_else(|| self.peer(leg));
            out.headers.push(name::CONTACT, self.leg(other).dialog.contact());
            // A refresh (re-INVITE or UPDATE) from a leg with a session timer accepted:
            // another interval.
            if (200..300).contains(&resp.status)
                && matches!(method, Method::Invite | Method::Update)
            {
                self.session_refreshed(now, other, &mut out);
            }
        }
        self.respond(now, server, out);
    }
}
