//! The credential sources, one file each (as the proxy's `token/source/` mints them), and
//! the registry that maps a table's `source` to its reader.
//!
//! A source file holds the validated form the proxy reads (`EntraSource`...), the table as
//! written (`Table`, unknown keys refused by serde) and its [`SourceTable`] impl. Adding a
//! source is that file plus one line in [`all`]; the keys a source accepts are its
//! `Table`'s fields, read from serde, so there is no key list to keep by hand.

use std::path::Path;

use serde::de::{DeserializeOwned, IntoDeserializer as _};
use toml::Spanned;
use toml::de::DeValue;

use super::CredentialSource;
use super::check::Checker;

pub(crate) mod anthropic_wif;
pub(crate) mod aws_web_identity;
pub(crate) mod copilot;
pub(crate) mod entra;
pub(crate) mod entra_agent;
pub(crate) mod env;
pub(crate) mod file;
pub(crate) mod github_oidc;
pub(crate) mod per_actor;
pub(crate) mod spiffe_x509;
pub(crate) mod token_exchange;

/// One source's table: its keys besides `name`, `source` and `refresh_margin`, and how it
/// becomes a [`CredentialSource`].
pub(crate) trait SourceTable: DeserializeOwned {
    /// The `source` keyword, such as `"entra"`.
    const NAME: &'static str;

    /// The validated source; each bad or missing value is recorded in `check`. `dir`
    /// resolves relative paths.
    fn into_source(self, check: &mut Checker<'_>, dir: &Path) -> CredentialSource;
}

/// What the registry knows of one source.
pub(crate) struct Reader {
    /// The `source` keyword.
    pub(crate) name: &'static str,
    /// The keys its table accepts besides `name`, `source` and `refresh_margin`.
    pub(crate) keys: &'static [&'static str],
    /// Reads a table (those three keys removed): a type error is the parser's.
    pub(crate) read: fn(
        Spanned<DeValue<'_>>,
        &mut Checker<'_>,
        &Path,
    ) -> Result<CredentialSource, toml::de::Error>,
}

/// Every source, in the order messages list them.
pub(crate) fn all() -> [Reader; 11] {
    [
        reader::<github_oidc::Table>(),
        reader::<entra::Table>(),
        reader::<entra_agent::Table>(),
        reader::<token_exchange::Table>(),
        reader::<aws_web_identity::Table>(),
        reader::<anthropic_wif::Table>(),
        reader::<copilot::Table>(),
        reader::<env::Table>(),
        reader::<file::Table>(),
        reader::<per_actor::Table>(),
        reader::<spiffe_x509::Table>(),
    ]
}

fn reader<T: SourceTable>() -> Reader {
    Reader {
        name: T::NAME,
        keys: fields::<T>(),
        read: read::<T>,
    }
}

fn read<T: SourceTable>(
    table: Spanned<DeValue<'_>>,
    check: &mut Checker<'_>,
    dir: &Path,
) -> Result<CredentialSource, toml::de::Error> {
    let table = T::deserialize(table.into_deserializer())?;
    Ok(table.into_source(check, dir))
}

/// The field names of the struct `T` deserializes as, which serde hands to the deserializer.
fn fields<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// A deserializer that only records the field names a struct asks for, then fails.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("field names read"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_accepts_its_tables_fields() {
        let all = all();
        let keys = |name: &str| all.iter().find(|r| r.name == name).unwrap().keys;
        assert_eq!(keys("github-oidc"), ["audience"]);
        assert_eq!(keys("env"), ["var"]);
        assert_eq!(
            keys("copilot"),
            ["github_token", "mode", "scheme", "api_url"]
        );
        assert_eq!(keys("spiffe-x509"), ["socket", "spiffe_id"]);
        let names: Vec<_> = all.iter().map(|r| r.name).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(names.len(), unique.len());
        assert!(all.iter().all(|r| !r.keys.is_empty()), "{names:?}");
    }
}
