//! URL checks shared by the tables that name an endpoint (credentials, `[provenance]`,
//! `[copilot]`). A leaf: it imports nothing from the crate.

/// An `https://` URL without query, fragment or user info; `http://` only on loopback.
pub(crate) fn check_authority(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => return Err("the URL has no host".to_owned()),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err("use https:// (http:// only for loopback test servers)".into()),
        other => return Err(format!("scheme '{other}' is not https")),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("remove the query or fragment: write only scheme, host and path".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("remove the user name or password from the URL".into());
    }
    Ok(())
}
