//! Which URLs of an identity provider drawbridge talks to: `https://` anywhere, and
//! `http://` only to a loopback address written as an IP literal (`127.0.0.0/8`, `::1`),
//! where nothing crosses a network (a provider on the same machine, the tests). A host
//! *name* such as `localhost` is not enough for `http`: a resolver decides where it goes.

use std::net::IpAddr;

/// The URL parsed, or why it is not one we call.
pub fn check_provider_url(url: &str) -> Result<reqwest::Url, String> {
    if url.len() > 2048 {
        return Err("URL longer than 2048 bytes".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback_literal(&parsed) => Ok(parsed),
        "http" => Err(format!(
            "{url:?} is plain http: only https, or http to a loopback address (127.0.0.1, [::1])"
        )),
        other => Err(format!("{url:?}: scheme {other:?} is not https")),
    }
}

fn is_loopback_literal(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(a)) => IpAddr::V4(a).is_loopback(),
        Some(url::Host::Ipv6(a)) => IpAddr::V6(a).is_loopback(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::check_provider_url;

    #[test]
    fn https_anywhere_http_only_to_loopback_literals() {
        for ok in [
            "https://idp.example.org",
            "https://idp.example.org/realms/x/.well-known/openid-configuration",
            "http://127.0.0.1:8080",
            "http://127.5.6.7/x",
            "http://[::1]:9000/jwks",
        ] {
            assert!(check_provider_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example.org",
            "http://localhost:8080",
            "http://10.0.0.1",
            "http://[::ffff:127.0.0.1]/",
            "ftp://127.0.0.1/",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(check_provider_url(bad).is_err(), "{bad}");
        }
    }
}
