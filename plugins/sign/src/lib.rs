//! `sign`: a post-build plugin that signs each output's narinfo fingerprint
//! with the ed25519 key in the secret `signing-key` (Nix's secret-key
//! format, as `nix key generate-secret` writes it) and returns the
//! signatures in its outcome; Kiln records them and adds them to the store.
//!
//! It asks for nothing but that secret and `store.path-info`: it must not
//! add signatures to the store itself, upload, or log key material.

use kiln_narinfo::{Fingerprint, NarHash, SecretKey};
use kiln_plugin_sdk::{
    BuildInfo, Config, HostError, PathInfo, PathSignatures, PluginError, PluginInfo, PostBuild,
    StepOutcome, StoreOperation, WorldKind, export_post_build, log, secrets, store,
};

/// The secret holding the signing key.
const SECRET: &str = "signing-key";

struct Sign;

impl PostBuild for Sign {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            WorldKind::PostBuild,
            "sign",
            env!("CARGO_PKG_VERSION"),
            "Signs each output's narinfo fingerprint with the ed25519 key in secret `signing-key`",
        )
        .secret(SECRET)
        .store(StoreOperation::PathInfo)
    }

    fn run(build: BuildInfo, _config: Config) -> Result<StepOutcome, PluginError> {
        let text = secrets::get(SECRET).map_err(|e| {
            PluginError::failed(format!("cannot read secret `{SECRET}`: {}", e.describe()))
        })?;
        let key = parse_key(&text)?;
        let paths: Vec<&str> = build.outputs.iter().map(|o| o.path.as_str()).collect();
        let signatures = sign_paths(&key, &paths, store::path_info)?;
        for signed in &signatures {
            log::info!("signed {} with key `{}`", signed.path, key.name());
        }
        Ok(StepOutcome {
            message: format!(
                "signed {} output{} with key `{}`",
                signatures.len(),
                if signatures.len() == 1 { "" } else { "s" },
                key.name()
            ),
            signatures,
        })
    }
}

export_post_build!(Sign);

/// Reads the key text of the secret, with an error that names the secret
/// and says what format is expected (never the key itself).
fn parse_key(secret: &[u8]) -> Result<SecretKey, PluginError> {
    let text = std::str::from_utf8(secret).map_err(|_| {
        PluginError::failed(format!(
            "secret `{SECRET}` is not text; expected a Nix secret key \
             (`name:base64`, as `nix key generate-secret` writes)"
        ))
    })?;
    SecretKey::parse(text).map_err(|e| {
        PluginError::failed(format!(
            "secret `{SECRET}` is not a Nix secret key ({e}); expected `name:base64` \
             of 64 bytes, as `nix key generate-secret` writes"
        ))
    })
}

/// Signs every path's fingerprint, reading metadata through `path_info`.
fn sign_paths(
    key: &SecretKey,
    paths: &[&str],
    path_info: impl Fn(&str) -> Result<PathInfo, HostError>,
) -> Result<Vec<PathSignatures>, PluginError> {
    paths
        .iter()
        .map(|path| {
            let info = path_info(path).map_err(|e| {
                PluginError::failed(format!("cannot read path info of {path}: {}", e.describe()))
            })?;
            let nar_hash = NarHash::parse(&info.nar_hash)
                .map_err(|e| PluginError::failed(format!("path info of {path} has {e}")))?;
            let fingerprint = Fingerprint {
                store_path: &info.path,
                nar_hash: &nar_hash,
                nar_size: info.nar_size,
                references: &info.references,
            };
            Ok(PathSignatures {
                path: info.path.clone(),
                signatures: vec![key.sign(&fingerprint.to_string()).to_string()],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_sdk::HostErrorKind;

    // Vectors from Nix 2.8 (`nix store sign --key-file` in a separate store,
    // then `nix path-info --json --sigs`); see kiln-narinfo's tests.
    const SECRET_1: &str = "test-key-1:pLOsrzjWCWF0dsWL6TpW5HIcNRfGmtaUug9tEfWZ7j4CC+dK0pNxNG2AaJGd8irwVY9SZ9Uoi/tLha0l5iQhFg==\n";
    const SECRET_2: &str = "other-key:jB7aHXGGjKsvcfjsX4s/k1eb/V3TUNVkDGuGWltkKEnsjfr+RJeFBrrYmZnvbS7aq1YnYOIj7rA6W4NcUIjHvg==";
    const REFS: &str = "/nix/store/f9zdbw4iks7jjf9iplawjn3h1a5c1am7-refs";
    const REFS_SIG_1: &str = "test-key-1:hMZYNDBbkMiIaa/V+lR4AXKOyavPvygh1vERbJbdtaX3jh8zEjynopZl8RH1BXtr5tfKuDnno4gujupVyoCTDA==";
    const REFS_SIG_2: &str = "other-key:yONucVXq4L/M+Db6I82XaIsE9RjMqdsjqdGhyULSRXIYjmk6XmMF+y4NHtlpEVD/aEMbJfwyGyt6HX41JmknCQ==";

    fn path_info(path: &str) -> Result<PathInfo, HostError> {
        if path != REFS {
            return Err(HostError {
                kind: HostErrorKind::NotFound,
                message: format!("{path} is not valid"),
            });
        }
        Ok(PathInfo {
            path: REFS.into(),
            nar_hash: "sha256:1z0wc39wgd6dq163i64nkip6jyyhn13cbyqgn31i4adx8gjl901m".into(),
            nar_size: 224,
            references: vec![
                "/nix/store/3bhlpaycm0ccl7dd4a9g7fsji1jj4129-zeta".into(),
                "/nix/store/vqz3lnrzvq8gz3sjcxrx8dss43sy6zd9-alpha".into(),
            ],
            deriver: None,
            signatures: vec![],
            ca: None,
        })
    }

    #[test]
    fn signatures_equal_what_nix_store_sign_made() {
        for (secret, expected) in [(SECRET_1, REFS_SIG_1), (SECRET_2, REFS_SIG_2)] {
            let key = parse_key(secret.as_bytes()).unwrap();
            let signed = sign_paths(&key, &[REFS], path_info).unwrap();
            assert_eq!(
                signed,
                vec![PathSignatures {
                    path: REFS.into(),
                    signatures: vec![expected.into()],
                }]
            );
        }
    }

    #[test]
    fn malformed_key_names_the_secret() {
        for bad in [&b"not a key"[..], b"k:AAAA", &[0xff, 0xfe]] {
            let PluginError::Failed(message) = parse_key(bad).unwrap_err() else {
                panic!("not a permanent failure");
            };
            assert!(message.contains("secret `signing-key`"), "{message}");
            assert!(message.contains("nix key generate-secret"), "{message}");
        }
    }

    #[test]
    fn missing_path_is_a_clear_failure() {
        let key = parse_key(SECRET_1.as_bytes()).unwrap();
        let error = sign_paths(&key, &["/nix/store/x-missing"], path_info).unwrap_err();
        assert_eq!(
            error,
            PluginError::Failed(
                "cannot read path info of /nix/store/x-missing: not found: /nix/store/x-missing is not valid"
                    .into()
            )
        );
    }

    #[test]
    fn describe_asks_for_the_secret_and_path_info_only() {
        let info = Sign::describe();
        assert_eq!(info.capabilities.secrets, vec![SECRET.to_owned()]);
        assert_eq!(info.capabilities.store, vec![StoreOperation::PathInfo]);
        assert!(info.capabilities.hosts.is_empty() && !info.capabilities.kv);
    }
}
