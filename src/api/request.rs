//! Reading a `POST /v1/certs` request: the public key line as raw bytes whatever the
//! content type among text/plain, application/octet-stream, none and
//! application/x-www-form-urlencoded (curl's default for `--data-binary`: never
//! form-decoded, or the `+` of base64 would break), or JSON
//! `{"public_key", "ttl", "principals", "reason"}`. Anything else is 415. `ttl`,
//! `principals` and `reason` may come in the query instead (not both).

use crate::audit::RefusalCode;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use serde::Deserialize;

use super::error::ApiError;
use crate::util::parse_duration;

/// Largest body accepted by `POST /v1/certs` (an RSA-16384 key line is about 2.8 KiB).
pub const MAX_CERT_BODY: usize = 16 * 1024;

/// Most bytes of a refused body read and dropped so that the answer reaches a client that
/// is still sending (64 times [`MAX_CERT_BODY`]; for at most a second).
pub const MAX_DRAIN: usize = 64 * MAX_CERT_BODY;

/// What the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    pub public_key: Vec<u8>,
    pub ttl: Option<Duration>,
    pub principals: Option<Vec<String>>,
    /// Why the access is needed (a ticket); checked by `issuer::plan::check_reason`.
    pub reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryParams {
    ttl: Option<String>,
    principals: Option<String>,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBody {
    public_key: String,
    ttl: Option<String>,
    principals: Option<Vec<String>>,
    reason: Option<String>,
}

enum BodyKind {
    Raw,
    Json,
}

fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyKind::Raw);
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim();
    match mime {
        "" | "text/plain" | "application/octet-stream" | "application/x-www-form-urlencoded" => {
            Ok(BodyKind::Raw)
        }
        "application/json" => Ok(BodyKind::Json),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RefusalCode::UnsupportedMediaType,
            format!(
                "content type {:?} is not accepted; send the public key line as text/plain \
                 (curl --data-binary @key.pub) or JSON {{\"public_key\": ...}}",
                crate::util::escape(other)
            ),
        )),
    }
}

/// Reads at most `limit` bytes of `body`; more is 413. Past the limit it goes on reading
/// and dropping (at most 64 times the limit, for at most a second) so that the 413 reaches
/// a client that is still sending instead of being lost to a TCP reset.
pub async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut out = Vec::new();
    let mut over = false;
    let mut dropped = 0usize;
    let drain_limit = limit.saturating_mul(MAX_DRAIN / MAX_CERT_BODY);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let frame = if over {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(f) => f,
                Err(_) => break,
            }
        } else {
            body.frame().await
        };
        let Some(frame) = frame else { break };
        let Ok(frame) = frame else {
            if over {
                break;
            }
            return Err(ApiError::bad_request(
                RefusalCode::BadBody,
                "the request body could not be read; send it again",
            ));
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if over {
            dropped += data.len();
            if dropped > drain_limit {
                break;
            }
        } else if out.len() + data.len() > limit {
            over = true;
        } else {
            out.extend_from_slice(&data);
        }
    }
    if over {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            RefusalCode::BodyTooLarge,
            format!("the request body is over {limit} bytes; send one public key line"),
        ));
    }
    Ok(out)
}

fn parse_ttl(s: &str) -> Result<Duration, ApiError> {
    let d = parse_duration(s).map_err(|e| ApiError::bad_request(RefusalCode::BadTtl, e))?;
    if d.is_zero() {
        return Err(ApiError::bad_request(
            RefusalCode::BadTtl,
            "ttl must be above zero",
        ));
    }
    Ok(d)
}

fn parse_principal_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// Builds the request from the URI's query, the headers and the body bytes.
pub fn parse_cert_request(
    uri: &Uri,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> Result<CertRequest, ApiError> {
    let kind = body_kind(headers)?;
    let query: QueryParams = match uri.query() {
        None | Some("") => QueryParams::default(),
        Some(_) => axum::extract::Query::<QueryParams>::try_from_uri(uri)
            .map(|q| q.0)
            .map_err(|e| {
                ApiError::bad_request(
                    RefusalCode::BadQuery,
                    format!(
                        "{}; the query takes ttl (e.g. 10m), principals (a,b) and reason (e.g. INC-4711)",
                        e.body_text()
                    ),
                )
            })?,
    };
    let mut req = match kind {
        BodyKind::Raw => CertRequest {
            public_key: body,
            ttl: None,
            principals: None,
            reason: None,
        },
        BodyKind::Json => {
            let j: JsonBody = serde_json::from_slice(&body).map_err(|e| {
                ApiError::bad_request(
                    RefusalCode::BadJson,
                    format!(
                        "the JSON body does not parse ({e}); send {{\"public_key\": \"ssh-ed25519 AAAA...\", \"ttl\": \"10m\", \"principals\": [\"role\"], \"reason\": \"INC-4711\"}}"
                    ),
                )
            })?;
            CertRequest {
                public_key: j.public_key.into_bytes(),
                ttl: j.ttl.as_deref().map(parse_ttl).transpose()?,
                principals: j.principals,
                reason: j.reason,
            }
        }
    };
    if let Some(t) = &query.ttl {
        if req.ttl.is_some() {
            return Err(ApiError::bad_request(
                RefusalCode::BadRequest,
                "ttl is given both in the query and in the body; give it once",
            ));
        }
        req.ttl = Some(parse_ttl(t)?);
    }
    if let Some(p) = &query.principals {
        if req.principals.is_some() {
            return Err(ApiError::bad_request(
                RefusalCode::BadRequest,
                "principals are given both in the query and in the body; give them once",
            ));
        }
        req.principals = Some(parse_principal_list(p));
    }
    if let Some(r) = query.reason {
        if req.reason.is_some() {
            return Err(ApiError::bad_request(
                RefusalCode::BadRequest,
                "reason is given both in the query and in the body; give it once",
            ));
        }
        req.reason = Some(r);
    }
    if let Some(p) = &req.principals
        && p.is_empty()
    {
        return Err(ApiError::bad_request(
            RefusalCode::BadPrincipals,
            "principals is empty; leave it out to get every role you hold",
        ));
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(ct: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        h
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI+/+x alice@laptop\n";

    #[test]
    fn raw_bodies_are_not_form_decoded() {
        for ct in [
            None,
            Some("text/plain"),
            Some("application/octet-stream"),
            Some("application/x-www-form-urlencoded"),
            Some("Text/Plain; charset=utf-8"),
        ] {
            let uri: Uri = "/v1/certs".parse().unwrap();
            let r = parse_cert_request(&uri, &headers(ct), KEY.as_bytes().to_vec()).unwrap();
            assert_eq!(r.public_key, KEY.as_bytes(), "{ct:?}");
            assert_eq!(r.ttl, None);
        }
    }

    #[test]
    fn query_and_json() {
        let uri: Uri = "/v1/certs?ttl=10m&principals=a,b".parse().unwrap();
        let r = parse_cert_request(&uri, &headers(None), KEY.into()).unwrap();
        assert_eq!(r.ttl, Some(Duration::from_secs(600)));
        assert_eq!(r.principals, Some(vec!["a".to_string(), "b".to_string()]));

        let uri: Uri = "/v1/certs".parse().unwrap();
        let body = serde_json::json!({"public_key": KEY, "ttl": "2m", "principals": ["x"]});
        let r = parse_cert_request(
            &uri,
            &headers(Some("application/json")),
            body.to_string().into_bytes(),
        )
        .unwrap();
        assert_eq!(r.public_key, KEY.as_bytes());
        assert_eq!(r.ttl, Some(Duration::from_secs(120)));
        assert_eq!(r.reason, None);
    }

    #[test]
    fn reason_in_the_query_or_the_body_once() {
        let uri: Uri = "/v1/certs?reason=INC-4711%3A%20disk%20full"
            .parse()
            .unwrap();
        let r = parse_cert_request(&uri, &headers(None), KEY.into()).unwrap();
        assert_eq!(r.reason.as_deref(), Some("INC-4711: disk full"));
        let body = serde_json::json!({"public_key": KEY, "reason": "INC-1"});
        let plain: Uri = "/v1/certs".parse().unwrap();
        let json = headers(Some("application/json"));
        let r = parse_cert_request(&plain, &json, body.to_string().into_bytes()).unwrap();
        assert_eq!(r.reason.as_deref(), Some("INC-1"));
        let both: Uri = "/v1/certs?reason=INC-2".parse().unwrap();
        let e = parse_cert_request(&both, &json, body.to_string().into_bytes()).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn refusals() {
        let uri: Uri = "/v1/certs".parse().unwrap();
        let e = parse_cert_request(&uri, &headers(Some("image/png")), KEY.into()).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = parse_cert_request(&uri, &headers(Some("application/json")), b"{".to_vec())
            .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let bad: Uri = "/v1/certs?tll=10m".parse().unwrap();
        let e = parse_cert_request(&bad, &headers(None), KEY.into()).unwrap_err();
        assert_eq!(e.code, "bad_query");
        let bad: Uri = "/v1/certs?ttl=forever".parse().unwrap();
        let e = parse_cert_request(&bad, &headers(None), KEY.into()).unwrap_err();
        assert_eq!(e.code, "bad_ttl");
        let bad: Uri = "/v1/certs?ttl=0s".parse().unwrap();
        assert!(parse_cert_request(&bad, &headers(None), KEY.into()).is_err());
        let bad: Uri = "/v1/certs?principals=".parse().unwrap();
        assert!(parse_cert_request(&bad, &headers(None), KEY.into()).is_err());
    }

    #[tokio::test]
    async fn oversized_body_is_413() {
        let e = read_body(Body::from(vec![b'a'; MAX_CERT_BODY + 1]), MAX_CERT_BODY)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let ok = read_body(Body::from(vec![b'a'; MAX_CERT_BODY]), MAX_CERT_BODY)
            .await
            .unwrap();
        assert_eq!(ok.len(), MAX_CERT_BODY);
    }
}
