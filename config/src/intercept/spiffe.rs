//! The SPIFFE keys of an `[[intercept]]` rule: `spiffe`, `upstream_spiffe_ids`,
//! `upstream_trust_domain` (see the parent module's "SPIFFE workload identity"), and the check
//! that the rules of one host agree on them.

use super::{FileIntercept, InterceptRule, SpiffeUpstream};
use crate::error::{ErrorKind, Location};
use crate::policy::Origin;

/// Why `rule` cannot join `existing`: another rule for the same host names different SPIFFE
/// settings (mTLS is per connection, so one host has one client identity and one peer check).
pub(crate) fn spiffe_conflict(existing: &[InterceptRule], rule: &InterceptRule) -> Option<String> {
    let theirs = existing
        .iter()
        .filter(|r| r.host.text == rule.host.text)
        .find_map(|r| r.spiffe.as_ref())?;
    match &rule.spiffe {
        Some(ours) if ours != theirs => Some(format!(
            "another [[intercept]] for '{}' names different SPIFFE settings (spiffe = \"{}\"): \
             mTLS applies to the whole host, so give its rules the same `spiffe` and upstream IDs",
            rule.host.text, theirs.svid
        )),
        _ => None,
    }
}

/// `spiffe`, `upstream_spiffe_ids`, `upstream_trust_domain`: a `spiffe-x509` credential and
/// exactly one way to authorize the upstream's SPIFFE ID.
pub(super) fn parse(
    table: &FileIntercept,
    place: &dyn Fn(usize) -> (Origin, Location),
    credentials: &[crate::Credential],
    errors: &mut Vec<crate::Error>,
) -> Option<SpiffeUpstream> {
    use crate::spiffe::{PeerAuthorization, SpiffeId, TrustDomain};
    let mut fail = |offset: usize, why: String| {
        errors.push(crate::Error::at(
            place(offset).1,
            ErrorKind::InvalidValue(why),
        ));
    };
    let Some(svid) = &table.spiffe else {
        if let Some(first) = table.upstream_spiffe_ids.first() {
            fail(
                first.span().start,
                "`upstream_spiffe_ids` applies only with `spiffe`: name a spiffe-x509 credential"
                    .to_owned(),
            );
        }
        if let Some(domain) = &table.upstream_trust_domain {
            fail(
                domain.span().start,
                "`upstream_trust_domain` applies only with `spiffe`: name a spiffe-x509 credential"
                    .to_owned(),
            );
        }
        return None;
    };
    match credentials.iter().find(|c| c.name == *svid.get_ref()) {
        Some(c) if c.is_x509_identity() => {}
        Some(c) => fail(
            svid.span().start,
            format!(
                "`spiffe` names '{}', a {} credential: name a spiffe-x509 credential (tokens go in `credential`)",
                c.name,
                c.source_name()
            ),
        ),
        None => fail(
            svid.span().start,
            format!(
                "no [[credential]] named '{}': define one with source = \"spiffe-x509\"",
                svid.get_ref()
            ),
        ),
    }
    let mut ids = Vec::new();
    for text in &table.upstream_spiffe_ids {
        match SpiffeId::parse(text.get_ref()) {
            Ok(id) => ids.push(id),
            Err(why) => fail(text.span().start, format!("`upstream_spiffe_ids`: {why}")),
        }
    }
    let peer = match (
        &table.upstream_trust_domain,
        table.upstream_spiffe_ids.is_empty(),
    ) {
        (None, true) => {
            fail(
                svid.span().start,
                "`spiffe` needs `upstream_spiffe_ids` or `upstream_trust_domain`: say which \
                 SPIFFE IDs the upstream may present"
                    .to_owned(),
            );
            return None;
        }
        (Some(domain), false) => {
            fail(
                domain.span().start,
                "give `upstream_spiffe_ids` or `upstream_trust_domain`, not both".to_owned(),
            );
            return None;
        }
        (None, false) => PeerAuthorization::Ids(ids),
        (Some(domain), true) => match TrustDomain::parse(domain.get_ref()) {
            Ok(domain) => PeerAuthorization::TrustDomain(domain),
            Err(why) => {
                fail(
                    domain.span().start,
                    format!("`upstream_trust_domain`: {why}"),
                );
                return None;
            }
        },
    };
    Some(SpiffeUpstream {
        svid: svid.get_ref().clone(),
        peer,
    })
}
