//! Image references: `[registry[:port]/]repository[:tag][@digest]`, normalised the way the
//! Docker tooling does (`alpine` → `docker.io/library/alpine:latest`).

use std::fmt;

/// The registry host Docker Hub references resolve to.
pub const DOCKER_HUB: &str = "docker.io";
/// The API endpoint that actually serves Docker Hub.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/alpine`.
    pub repository: String,
    /// Tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// Manifest digest pinned in the reference (`sha256:…`).
    pub digest: Option<String>,
}

/// Why a reference string is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image reference {reference:?} is not valid: {reason}")]
pub struct BadReference {
    pub reference: String,
    pub reason: &'static str,
}

/// The request's rule for a registry host (see [`nimbus_core::spec::check_registry_host`]).
pub(crate) fn check_registry_host(registry: &str) -> Result<(), &'static str> {
    nimbus_core::spec::check_registry_host(registry)
}

impl ImageRef {
    pub fn parse(input: &str) -> Result<Self, BadReference> {
        let bad = |reason| BadReference {
            reference: input.to_string(),
            reason,
        };
        if input.is_empty() || input.len() > 512 {
            return Err(bad("must be 1 to 512 characters"));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("must not contain whitespace"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("digest must be sha256:<64 hex>"))?;
                if hex.len() != 64
                    || !hex
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                {
                    return Err(bad("digest must be sha256:<64 lowercase hex>"));
                }
                (r, Some(d.to_string()))
            }
            None => (input, None),
        };
        // A tag is the part after the last ':' provided no '/' follows it (else it is a port).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => {
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad(
                    "tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
                ));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        // Host names are case-insensitive: `DOCKER.IO/x` is Docker Hub, and one store entry.
        let registry = registry.to_ascii_lowercase();
        check_registry_host(&registry).map_err(bad)?;
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || repository.split('/').any(|c| {
                c.is_empty()
                    || !c.chars().all(|ch| {
                        ch.is_ascii_lowercase()
                            || ch.is_ascii_digit()
                            || matches!(ch, '.' | '_' | '-')
                    })
            })
        {
            return Err(bad(
                "repository must be lowercase path components of [a-z0-9._-]",
            ));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The host the distribution API is served from (Docker Hub's API lives elsewhere).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// True when the registry is on this machine's loopback, where plain HTTP is accepted
    /// without configuration.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
pub fn is_loopback_host(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_normalise_to_docker_hub_library() {
        let r = ImageRef::parse("alpine").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = ImageRef::parse("python:3.12-slim").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/python:3.12-slim");
        let r = ImageRef::parse("bitnami/redis:7").unwrap();
        assert_eq!(r.to_string(), "docker.io/bitnami/redis:7");
    }

    #[test]
    fn registry_with_port_is_not_mistaken_for_a_tag() {
        let r = ImageRef::parse("127.0.0.1:5000/tools/busybox").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "tools/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert!(r.is_loopback());
        let r = ImageRef::parse("localhost:5000/a:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.tag.as_deref()),
            ("localhost:5000", Some("v1"))
        );
    }

    #[test]
    fn registry_hosts_are_case_insensitive() {
        let r = ImageRef::parse("DOCKER.IO/library/alpine").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        let r = ImageRef::parse("Reg.Example:5000/a/b:v1").unwrap();
        assert_eq!(r.registry, "reg.example:5000");
        assert!(ImageRef::parse("[::1]:5000/a/b").is_ok());
    }

    #[test]
    fn digest_references_keep_no_implicit_tag() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("ghcr.io/o/r@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), d);
    }

    #[test]
    fn malformed_references_are_rejected() {
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "x@sha256:zz",
            "repo:-tag",
            "reg.io//x",
            "127.0.0.1:99999/p/bb",
            "127.0.0.1:0/p/bb",
            "reg.io:/p/bb",
            "reg.io:5x/p/bb",
            "re%g.io/p/bb",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
