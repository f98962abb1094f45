//! The calls drawbridge makes to an identity provider for a device login: its discovery
//! document, the device authorization request and the token request (RFC 8628 3.1, 3.4).
//!
//! Every call has a timeout, follows no redirect, and reads at most [`MAX_RESPONSE`]
//! bytes; every URL the provider names must pass [`check_provider_url`]. The client secret,
//! when configured, is sent with HTTP Basic and never logged; the provider's device code
//! never leaves this process.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::identity::Secret;
use crate::identity::provider_url::check_provider_url;

/// Most bytes read from any answer of the provider.
pub const MAX_RESPONSE: usize = 64 * 1024;
/// Time allowed for one call, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The discovery document is fetched again after this long.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(600);
/// `expires_in` is capped to this, `interval` kept within 1..=60 s.
pub const MAX_EXPIRES_IN: u64 = 3600;

/// What a call to the provider can end in (the text is for the operator's log and the
/// audit record, never the client's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderError {
    /// It could not be reached, timed out or answered 5xx.
    Unreachable(String),
    /// It answered something drawbridge cannot use.
    Invalid(String),
}

/// The endpoints from the discovery document.
#[derive(Debug, Clone)]
struct Endpoints {
    device: reqwest::Url,
    token: reqwest::Url,
    fetched: Instant,
}

/// What the provider answered to a device authorization request.
pub struct Authorization {
    pub device_code: Secret<String>,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    pub interval: u64,
}

/// What the provider answered to a token request.
pub enum TokenAnswer {
    IdToken(Secret<String>),
    Pending,
    SlowDown,
    Expired,
    Denied,
    /// Another RFC 6749 error (`invalid_grant`, ...), with its name.
    Refused(String),
}

/// One provider's device-login client.
pub struct DeviceClient {
    issuer: String,
    client_id: String,
    client_secret: Option<Secret<String>>,
    scope: String,
    http: reqwest::Client,
    endpoints: tokio::sync::Mutex<Option<Endpoints>>,
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ProviderError::Unreachable(format!("reading the answer: {e}")))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_RESPONSE {
            return Err(ProviderError::Invalid(format!(
                "answer larger than {MAX_RESPONSE} bytes"
            )));
        }
    }
    Ok(body)
}

/// A string field of at most `max` bytes without control characters.
fn short_text(doc: &Value, field: &str, max: usize) -> Result<Option<String>, ProviderError> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(ProviderError::Invalid(format!(
            "\"{field}\" is not a string of at most {max} bytes"
        ))),
    }
}

fn number(doc: &Value, field: &str) -> Result<Option<u64>, ProviderError> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ProviderError::Invalid(format!("\"{field}\" is not a whole number"))),
    }
}

impl DeviceClient {
    /// A client for `issuer` (checked by [`check_provider_url`]).
    pub fn new(
        issuer: &str,
        client_id: &str,
        client_secret: Option<Secret<String>>,
        scope: &str,
    ) -> Result<DeviceClient, String> {
        check_provider_url(issuer)?;
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(DeviceClient {
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            client_secret,
            scope: scope.to_owned(),
            http,
            endpoints: tokio::sync::Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    async fn post_form(
        &self,
        url: &reqwest::Url,
        form: &[(&str, &str)],
    ) -> Result<(u16, Value), ProviderError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut req = self
            .http
            .post(url.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body);
        if let Some(secret) = &self.client_secret {
            req = req.basic_auth(&self.client_id, Some(secret.expose()));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ProviderError::Unreachable(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        if status >= 500 {
            return Err(ProviderError::Unreachable(format!("{url}: HTTP {status}")));
        }
        let body = read_limited(resp).await?;
        let doc = serde_json::from_slice(&body)
            .map_err(|_| ProviderError::Invalid(format!("{url}: HTTP {status}, not JSON")))?;
        Ok((status, doc))
    }

    /// The device authorization and token endpoints, from the discovery document (cached
    /// for [`DISCOVERY_TTL`]).
    async fn endpoints(&self) -> Result<Endpoints, ProviderError> {
        let mut held = self.endpoints.lock().await;
        if let Some(e) = held.as_ref()
            && e.fetched.elapsed() < DISCOVERY_TTL
        {
            return Ok(e.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| ProviderError::Unreachable(format!("{url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(ProviderError::Unreachable(format!(
                "{url}: HTTP {}",
                resp.status().as_u16()
            )));
        }
        let doc: Value = serde_json::from_slice(&read_limited(resp).await?)
            .map_err(|_| ProviderError::Invalid(format!("{url}: not JSON")))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(ProviderError::Invalid(format!(
                "{url}: its \"issuer\" is not {:?}",
                self.issuer
            )));
        }
        let endpoint = |field: &str| -> Result<reqwest::Url, ProviderError> {
            let text = short_text(&doc, field, 2048)?
                .ok_or_else(|| ProviderError::Invalid(format!("{url}: no \"{field}\"")))?;
            check_provider_url(&text).map_err(|e| ProviderError::Invalid(format!("{field}: {e}")))
        };
        let found = Endpoints {
            device: endpoint("device_authorization_endpoint")?,
            token: endpoint("token_endpoint")?,
            fetched: Instant::now(),
        };
        *held = Some(found.clone());
        Ok(found)
    }

    /// Starts a device authorization (RFC 8628 3.1).
    pub async fn start(&self) -> Result<Authorization, ProviderError> {
        let ep = self.endpoints().await?;
        let (status, doc) = self
            .post_form(
                &ep.device,
                &[("client_id", &self.client_id), ("scope", &self.scope)],
            )
            .await?;
        if status != 200 {
            let error = short_text(&doc, "error", 64)
                .ok()
                .flatten()
                .unwrap_or_default();
            return Err(ProviderError::Invalid(format!(
                "device authorization refused: HTTP {status} {error}"
            )));
        }
        parse_authorization(&doc)
    }

    /// Asks for the tokens of a device authorization (RFC 8628 3.4, 3.5).
    pub async fn poll(&self, device_code: &Secret<String>) -> Result<TokenAnswer, ProviderError> {
        let ep = self.endpoints().await?;
        let (status, doc) = self
            .post_form(
                &ep.token,
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", device_code.expose()),
                    ("client_id", &self.client_id),
                ],
            )
            .await?;
        if status == 200 {
            let token = short_text(&doc, "id_token", 16 * 1024)?.ok_or_else(|| {
                ProviderError::Invalid(
                    "token answer without an \"id_token\" (is \"openid\" in device_scope?)".into(),
                )
            })?;
            return Ok(TokenAnswer::IdToken(Secret::new(token)));
        }
        let error = short_text(&doc, "error", 64)?.unwrap_or_default();
        Ok(match error.as_str() {
            "authorization_pending" => TokenAnswer::Pending,
            "slow_down" => TokenAnswer::SlowDown,
            "expired_token" => TokenAnswer::Expired,
            "access_denied" => TokenAnswer::Denied,
            "" => {
                return Err(ProviderError::Invalid(format!(
                    "token answer HTTP {status} without \"error\""
                )));
            }
            other => TokenAnswer::Refused(other.to_owned()),
        })
    }
}

/// Reads a device authorization answer (RFC 8628 3.2): every string bounded, every URL one
/// we would call, `expires_in` capped at [`MAX_EXPIRES_IN`], `interval` within 1..=60 s.
pub fn parse_authorization(doc: &Value) -> Result<Authorization, ProviderError> {
    let missing = |f: &str| ProviderError::Invalid(format!("device authorization: no \"{f}\""));
    let device_code =
        short_text(doc, "device_code", 4096)?.ok_or_else(|| missing("device_code"))?;
    let user_code = short_text(doc, "user_code", 64)?.ok_or_else(|| missing("user_code"))?;
    // Google names it `verification_url`.
    let verification_uri = match short_text(doc, "verification_uri", 2048)? {
        Some(u) => u,
        None => {
            short_text(doc, "verification_url", 2048)?.ok_or_else(|| missing("verification_uri"))?
        }
    };
    check_provider_url(&verification_uri).map_err(ProviderError::Invalid)?;
    let complete = short_text(doc, "verification_uri_complete", 2048)?;
    if let Some(c) = &complete {
        check_provider_url(c).map_err(ProviderError::Invalid)?;
    }
    let expires_in = number(doc, "expires_in")?
        .ok_or_else(|| missing("expires_in"))?
        .clamp(1, MAX_EXPIRES_IN);
    let interval = number(doc, "interval")?.unwrap_or(5).clamp(1, 60);
    Ok(Authorization {
        device_code: Secret::new(device_code),
        user_code,
        verification_uri,
        verification_uri_complete: complete,
        expires_in,
        interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Value {
        serde_json::json!({
            "device_code": "dc", "user_code": "ABCD-EFGH",
            "verification_uri": "https://idp.example.org/device",
            "verification_uri_complete": "https://idp.example.org/device?user_code=ABCD-EFGH",
            "expires_in": 600, "interval": 5,
        })
    }

    #[test]
    fn a_good_answer_and_the_bounds() {
        let a = parse_authorization(&answer()).unwrap();
        assert_eq!((a.expires_in, a.interval), (600, 5));
        let mut v = answer();
        v["expires_in"] = 10_000_000.into();
        v["interval"] = 0.into();
        let a = parse_authorization(&v).unwrap();
        assert_eq!((a.expires_in, a.interval), (MAX_EXPIRES_IN, 1));
        // Google's name for it, and no interval (RFC 8628: 5 s).
        let mut v = answer();
        let uri = v
            .as_object_mut()
            .unwrap()
            .remove("verification_uri")
            .unwrap();
        v["verification_url"] = uri;
        v.as_object_mut().unwrap().remove("interval");
        assert_eq!(parse_authorization(&v).unwrap().interval, 5);
    }

    #[test]
    fn unusable_answers_are_refused() {
        let cases: Vec<(&str, Value)> = vec![
            ("device_code", Value::Null),
            ("device_code", "x".repeat(5000).into()),
            ("user_code", "a\nb".into()),
            ("user_code", 5.into()),
            ("verification_uri", "http://idp.example.org/device".into()),
            ("verification_uri_complete", "javascript:alert(1)".into()),
            ("expires_in", "600".into()),
            ("expires_in", (-1).into()),
        ];
        for (field, value) in cases {
            let mut v = answer();
            v[field] = value.clone();
            assert!(
                matches!(parse_authorization(&v), Err(ProviderError::Invalid(_))),
                "{field} = {value}"
            );
        }
    }
}
