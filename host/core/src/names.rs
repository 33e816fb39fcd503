//! Names chosen by users and ids minted by the server, as distinct types that can only be
//! built by parsing (so a `Name` in hand is always valid).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// An RFC 1123 label: 1–63 chars of `[a-z0-9-]`, starting and ending alphanumeric. Used for
/// tenant ids and service names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    pub fn parse(field: &str, value: &str) -> Result<Name, Error> {
        match check_label(value) {
            Ok(()) => Ok(Name(value.to_string())),
            Err(why) => Err(Error::invalid_argument(
                field,
                format!("{value:?} is not a valid name: {why} (names are 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit)"),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_label(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("it is empty");
    }
    if value.len() > 63 {
        return Err("it is longer than 63 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("it has a character outside a-z, 0-9 and '-'");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err("it starts or ends with '-'");
    }
    Ok(())
}

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        check_label(&value)
            .map(|()| Name(value.clone()))
            .map_err(|why| format!("{value:?} is not a valid name: {why}"))
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Generates the server-minted id types: a fixed prefix and 26 lowercase Crockford base32
/// characters of a UUIDv7 (time-ordered, so ids sort by creation; 74 random bits, so they are
/// unguessable; never reused).
macro_rules! server_id {
    ($(#[$doc:meta])* $ty:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            pub const PREFIX: &'static str = $prefix;

            pub fn generate() -> Self {
                $ty(format!("{}{}", $prefix, base32_uuid_v7()))
            }

            pub fn parse(field: &str, value: &str) -> Result<Self, Error> {
                if is_server_id(value, $prefix) {
                    Ok($ty(value.to_string()))
                } else {
                    Err(Error::invalid_argument(
                        field,
                        format!("{value:?} is not a valid id: expected {:?} followed by 26 base32 characters", $prefix),
                    ))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                if is_server_id(&value, $prefix) {
                    Ok($ty(value))
                } else {
                    Err(format!("{value:?} is not a valid id: expected {:?} followed by 26 base32 characters", $prefix))
                }
            }
        }

        impl From<$ty> for String {
            fn from(id: $ty) -> String {
                id.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

server_id!(
    /// A sandbox, e.g. `sbx_01jd…`.
    SandboxId,
    "sbx_"
);
server_id!(
    /// A session, e.g. `ses_01jd…`.
    SessionId,
    "ses_"
);
server_id!(
    /// A credential, e.g. `cred_01jd…`.
    CredentialId,
    "cred_"
);
server_id!(
    /// An audit event.
    AuditId,
    "aud_"
);

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

fn base32_uuid_v7() -> String {
    let value = u128::from_be_bytes(*uuid::Uuid::now_v7().as_bytes());
    // 26 characters carry 130 bits; the top character holds the top 3 bits.
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((value >> (i * 5)) & 0x1f) as usize] as char)
        .collect()
}

fn is_server_id(value: &str, prefix: &str) -> bool {
    match value.strip_prefix(prefix) {
        Some(rest) => rest.len() == 26 && rest.bytes().all(|b| CROCKFORD.contains(&b)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_parse() {
        for ok in ["a", "worker", "web-1", "0", &"a".repeat(63)] {
            assert!(Name::parse("name", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn invalid_names_are_rejected_naming_the_field() {
        for bad in ["", "-a", "a-", "Worker", "a_b", "a.b", &"a".repeat(64), "é"] {
            let err = Name::parse("name", bad).unwrap_err();
            assert_eq!(err.code, crate::error::ErrorCode::InvalidArgument);
            assert_eq!(err.details["field"], "name", "{bad}");
        }
    }

    #[test]
    fn generated_ids_parse_sort_by_time_and_differ() {
        let a = SandboxId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = SandboxId::generate();
        assert!(SandboxId::parse("id", a.as_str()).is_ok());
        assert_eq!(a.as_str().len(), 4 + 26);
        assert!(a < b);
        assert!(SessionId::parse("id", a.as_str()).is_err());
    }
}
