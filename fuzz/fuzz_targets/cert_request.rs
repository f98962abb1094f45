//! `POST /v1/certs` request parsing (docs/threats.md T27, T28): query, content type and body,
//! then the key line, as the handler runs them. Every input is a request or an `ApiError`
//! with a 4xx status, never a panic.
//!
//! Input layout: byte 0 picks the content type; up to the first NUL is the query string;
//! the rest is the body.
#![no_main]

use http::{HeaderMap, HeaderValue, Uri, header};
use libfuzzer_sys::fuzz_target;

const TYPES: &[Option<&str>] = &[
    None,
    Some("text/plain"),
    Some("application/json"),
    Some("application/x-www-form-urlencoded"),
    Some("application/octet-stream"),
    Some("Application/JSON; charset=utf-8"),
    Some("image/png"),
    Some(""),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (query, body) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    let mut headers = HeaderMap::new();
    if let Some(ct) = TYPES[usize::from(pick) % TYPES.len()] {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    let mut path = b"/v1/certs?".to_vec();
    path.extend_from_slice(query);
    let Ok(uri) = Uri::try_from(path) else {
        return;
    };
    match drawbridge::api::request::parse_cert_request(&uri, &headers, body.to_vec()) {
        Ok(req) => {
            if let Some(p) = &req.principals {
                assert!(!p.is_empty());
            }
            if let Some(ttl) = req.ttl {
                assert!(!ttl.is_zero());
            }
            let _ = drawbridge::issuer::accept::accept_user_key(&req.public_key);
        }
        Err(e) => {
            assert!(e.status.is_client_error(), "{e}");
            assert!(!e.message.is_empty());
        }
    }
});
