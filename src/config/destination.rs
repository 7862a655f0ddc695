//! A destination URI of a spec (`spec.destination.uri` of an InboundTrunk, a SIP
//! TransferDestination's `uri`), parsed once when the spec is compiled: the call path reads its
//! host, port and transport and puts the agent in its user part without parsing it again.

use serde::{Serialize, Serializer};

use super::model::Transport;

/// A `sip:`/`sips:` URI with a host, an optional port and only known transports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipDestination {
    /// As written in the spec.
    pub uri: String,
    /// The host, IPv6 without its brackets.
    pub host: String,
    pub port: Option<u16>,
    /// `transport=` as written, else TLS for `sips:` and UDP for `sip:`.
    pub transport: Transport,
    /// The scheme as written (`sip`, `SIPS`...), for [`SipDestination::with_user`].
    scheme: String,
    /// What follows the user part: `host[:port][;params][?headers]`.
    host_and_more: String,
}

impl SipDestination {
    /// Parses `uri`, or says what is wrong with it (the message quotes the URI).
    pub fn parse(uri: &str) -> Result<SipDestination, String> {
        let (scheme, rest) = uri
            .split_once(':')
            .filter(|(s, _)| s.eq_ignore_ascii_case("sip") || s.eq_ignore_ascii_case("sips"))
            .ok_or_else(|| format!("{uri:?} is not a sip: or sips: URI"))?;
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{uri:?} contains white space"));
        }
        // The user part ends at the last `@` before any `;params` or `?headers`.
        let end = rest.find(['?', ';']).unwrap_or(rest.len());
        let host_and_more = match rest[..end].rfind('@') {
            Some(at) => &rest[at + 1..],
            None => match rest.find('?').map(|q| &rest[..q]).unwrap_or(rest).rfind('@') {
                // `sip:+1;user=phone@host`: parameters of the user part before the `@`.
                Some(at) => &rest[at + 1..],
                None => rest,
            },
        };
        let (before_params, params) = host_and_more.split_once(';').unwrap_or((host_and_more, ""));
        let hostport = before_params.split('?').next().unwrap_or_default();
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{uri:?} has an unclosed IPv6 bracket"))?;
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{uri:?}: {addr:?} is not an IPv6 address"));
            }
            (addr, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{uri:?} has no host"));
        }
        if !hostport.starts_with('[') {
            check_host(host)
                .map_err(|_| format!("{uri:?}: {host:?} is not a host name or an IP address"))?;
        }
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => return Err(format!("{uri:?}: {p:?} is not a port")),
            },
        };
        let secure = scheme.eq_ignore_ascii_case("sips");
        let mut transport = if secure { Transport::Tls } else { Transport::Udp };
        for param in params.split(';').filter(|p| !p.is_empty()) {
            let lower = param.split('?').next().unwrap_or_default().to_ascii_lowercase();
            if let Some(t) = lower.strip_prefix("transport=") {
                transport = match t {
                    "udp" => Transport::Udp,
                    "tcp" => Transport::Tcp,
                    "tls" => Transport::Tls,
                    _ => return Err(format!("{uri:?}: transport {t:?} is not udp, tcp or tls")),
                };
            }
        }
        Ok(SipDestination {
            uri: uri.to_string(),
            host: host.to_string(),
            port,
            transport,
            scheme: scheme.to_string(),
            host_and_more: host_and_more.to_string(),
        })
    }

    /// The URI with its user part set to `user` (added, or replacing the one it has): scheme,
    /// host, port, parameters and headers as written. `user` is an agent id, URI-safe by the
    /// schema.
    pub fn with_user(&self, user: &str) -> String {
        format!("{}:{user}@{}", self.scheme, self.host_and_more)
    }

    /// The port to send to: the URI's, else 5061 for TLS and 5060 otherwise.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(if self.transport == Transport::Tls { 5061 } else { 5060 })
    }
}

/// Written as the URI: what `explain` shows and the config hash covers stays the spec's text.
impl Serialize for SipDestination {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

/// A host name or an IP address, nothing else (the schema has the same rule; compile keeps it
/// for objects that came in under an older schema).
pub fn check_host(host: &str) -> Result<(), String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let lower = host.to_ascii_lowercase();
    if lower.starts_with("sip:") || lower.starts_with("sips:") {
        return Err(format!(
            "host {host:?} is a SIP URI: write only the host name ({:?}) and put a port in spec.port",
            host.split_once(':').map_or(host, |(_, rest)| rest)
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.len() <= 253 && host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "host {host:?} is not a host name or an IP address (no scheme, port or path; the port goes in spec.port)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> SipDestination {
        SipDestination::parse(uri).unwrap()
    }

    #[test]
    fn host_port_and_transport_are_read_once() {
        let d = parse("sip:agents.voice.svc.cluster.local:5070;transport=tcp");
        assert_eq!(
            (d.host.as_str(), d.port, d.transport),
            ("agents.voice.svc.cluster.local", Some(5070), Transport::Tcp)
        );
        let d = parse("sips:runtime@[2001:db8::5]:5071");
        assert_eq!(
            (d.host.as_str(), d.port, d.transport),
            ("2001:db8::5", Some(5071), Transport::Tls)
        );
        assert_eq!(parse("sip:10.0.0.1").port_or_default(), 5060);
        assert_eq!(parse("sips:host.example").port_or_default(), 5061);
        assert_eq!(parse("sip:h;TRANSPORT=TLS").port_or_default(), 5061);
    }

    #[test]
    fn with_user_adds_or_replaces_the_user_part() {
        let d = parse("sip:agents.voice.svc.cluster.local:5070;transport=tcp");
        assert_eq!(
            d.with_user("support"),
            "sip:support@agents.voice.svc.cluster.local:5070;transport=tcp"
        );
        assert_eq!(parse("sip:agents").with_user("a"), "sip:a@agents");
        assert_eq!(parse("sip:old@host:5060").with_user("new"), "sip:new@host:5060");
        assert_eq!(parse("sip:old:pw@host").with_user("new"), "sip:new@host");
        assert_eq!(
            parse("sip:+1;user=phone@host;transport=udp").with_user("new"),
            "sip:new@host;transport=udp"
        );
        assert_eq!(
            parse("sip:[2001:db8::1]:5070;transport=tcp").with_user("a"),
            "sip:a@[2001:db8::1]:5070;transport=tcp"
        );
        assert_eq!(parse("sip:[::1]").with_user("a"), "sip:a@[::1]");
        assert_eq!(parse("sip:host?subject=x@y").with_user("a"), "sip:a@host?subject=x@y");
        assert_eq!(parse("sips:host.example").with_user("a"), "sips:a@host.example");
        assert_eq!(parse("SIP:host.example").with_user("a"), "SIP:a@host.example");
    }

    #[test]
    fn what_is_not_a_usable_sip_uri_is_refused_with_the_uri_quoted() {
        for bad in [
            "tel:+14155550100",
            "agents.svc",
            "sip:",
            "sip:user@",
            "sip:;transport=tcp",
            "sip:host;transport=sctp",
            "sip:host:0",
            "sip:host:99999",
            "sip:[2001:db8::1",
            "sip:[nothost]",
            "sip:bad host",
            "http://agents",
        ] {
            let e = SipDestination::parse(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn it_serialises_as_the_uri_written() {
        let d = parse("sip:Agents:5070;transport=TCP");
        assert_eq!(serde_json::to_value(&d).unwrap(), "sip:Agents:5070;transport=TCP");
    }
}
