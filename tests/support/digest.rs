//! Checks a client's digest answer (RFC 7616 §3.4.1, qop=auth) independently of the gateway's
//! own code, to prove what a real client sent: the `response` recomputed from the header's own
//! parameters, the method and the password.

use md5::Md5;
use sha2::{Digest, Sha256};

/// The parameters of a `Digest ...` credentials value (quoted or not).
pub fn params(value: &str) -> Vec<(String, String)> {
    let body = value.trim().strip_prefix("Digest").unwrap_or(value).trim();
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let Some((name, after)) = rest.split_once('=') else { break };
        let name = name.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or_default())
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        out.push((name, value.to_string()));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

fn hex<D: Digest>(text: &str) -> String {
    D::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the `response` of `credentials` (a `Proxy-Authorization` value) is right for
/// `method` and `password`; `Err` names what is missing or unsupported.
pub fn answer_is_right(credentials: &str, method: &str, password: &str) -> Result<bool, String> {
    let params = params(credentials);
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| format!("no {name} in {credentials}"))
    };
    let algorithm = get("algorithm").unwrap_or("MD5");
    let h: fn(&str) -> String = match algorithm.to_ascii_uppercase().as_str() {
        "MD5" => hex::<Md5>,
        "SHA-256" => hex::<Sha256>,
        other => return Err(format!("algorithm {other} not checked here")),
    };
    let (username, realm, nonce, uri) =
        (get("username")?, get("realm")?, get("nonce")?, get("uri")?);
    let ha1 = h(&format!("{username}:{realm}:{password}"));
    let ha2 = h(&format!("{method}:{uri}"));
    let expected = match get("qop") {
        Ok(qop) => h(&format!("{ha1}:{nonce}:{}:{}:{qop}:{ha2}", get("nc")?, get("cnonce")?)),
        Err(_) => h(&format!("{ha1}:{nonce}:{ha2}")),
    };
    Ok(expected == get("response")?.to_ascii_lowercase())
}
