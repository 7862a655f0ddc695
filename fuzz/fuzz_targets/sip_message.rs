//! SIP message parsing and the message-level checks (`sip::msg`): one datagram or stream
//! buffer from a hostile peer. Parsing never panics; a request that parses can be answered
//! (`Response::to_request`) and printed, and what it prints parses again as the same request;
//! stream framing (`frame`) never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trunkline::sip::msg::{
    self, DialogHeaders, Frame, Message, NameAddr, Response, SipUri, Via, split_list,
};

fuzz_target!(|data: &[u8]| {
    match msg::frame(data, msg::MAX_MESSAGE_SIZE) {
        Frame::Message(n) | Frame::KeepAlive(n) => assert!(n > 0 && n <= data.len()),
        Frame::Incomplete | Frame::Invalid(..) => {}
    }
    let message = match msg::parse(data) {
        Ok(message) => message,
        Err(error) => {
            assert!(matches!(error.status, 400 | 505 | 513), "{}", error.status);
            if let Some(partial) = error.partial {
                // A refused request with a Via is answered: that must not panic either.
                let _ = Response::to_request(&partial, error.status, "Bad Request", Some("t"))
                    .to_bytes();
            }
            return;
        }
    };
    match &message {
        Message::Request(request) => {
            headers_of(request);
            let _ = request.max_forwards();
            let _ = SipUri::parse(&request.uri);
            let _ = Response::to_request(request, 200, "OK", Some("fuzz")).to_bytes();
            let printed = request.to_bytes();
            match msg::parse(&printed) {
                Ok(Message::Request(again)) => {
                    assert_eq!(again.method, request.method);
                    assert_eq!(again.uri, request.uri);
                    assert_eq!(again.body, request.body);
                    assert_eq!(again.call_id(), request.call_id());
                    assert_eq!(again.cseq(), request.cseq());
                }
                other => panic!("a parsed request printed as {other:?}"),
            }
        }
        Message::Response(response) => {
            headers_of(response);
            let printed = response.to_bytes();
            match msg::parse(&printed) {
                Ok(Message::Response(again)) => {
                    assert_eq!(again.status, response.status);
                    assert_eq!(again.body, response.body);
                    assert_eq!(again.cseq(), response.cseq());
                }
                other => panic!("a parsed response printed as {other:?}"),
            }
        }
    }
});

/// Every accessor the call code uses on a message's headers.
fn headers_of(m: &impl DialogHeaders) {
    let _ = m.top_via();
    let _ = m.from().map(|f| (f.tag().map(str::to_owned), f.to_header()));
    let _ = m.to().map(|t| t.to_header());
    let _ = m.call_id();
    let _ = m.cseq();
    let _ = m.contact_uri().map(|u| SipUri::parse(&u));
    for (_, value) in m.headers().iter() {
        for item in split_list(value) {
            let _ = Via::parse(item);
            let _ = NameAddr::parse(item);
        }
    }
}
