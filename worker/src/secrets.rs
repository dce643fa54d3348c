//! Kiln's local secret provider: values for `env.parameter-store` names and `env.secrets-manager`
//! references, given on the command line (`--secret ID=VALUE`) or in a secrets file.
//!
//! The secrets file holds one `ID=VALUE` per line (`#` comments and blank lines ignored), or a JSON
//! object of ids to string values when it starts with `{`. Values never appear in `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use thiserror::Error;

/// Errors reading or resolving secrets. Messages name keys, never values.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("--secret {0:?}: expected ID=VALUE")]
    BadArgument(String),
    #[error("secrets file {path}: {reason}")]
    BadFile { path: String, reason: String },
    #[error("env.{section}.{var}: no secret {id:?} in Kiln's secret store; add it with --secret '{id}=VALUE' or to the --secrets-file")]
    Missing {
        section: &'static str,
        var: String,
        id: String,
    },
    #[error("env.secrets-manager.{var}: secret {id:?} is not a JSON object with a string or scalar key {key:?}")]
    MissingJsonKey {
        var: String,
        id: String,
        key: String,
    },
}

/// The local secret store: ids (secret names, ARNs, parameter names) to values.
#[derive(Clone, Default)]
pub struct SecretStore {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("ids", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A variable whose value came from a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedSecret {
    pub var: String,
    pub value: String,
}

impl fmt::Debug for ResolvedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResolvedSecret({} = ***)", self.var)
    }
}

impl SecretStore {
    /// Adds `ID=VALUE` from the command line.
    pub fn add_argument(&mut self, arg: &str) -> Result<(), SecretError> {
        let (id, value) = arg
            .split_once('=')
            .filter(|(id, _)| !id.is_empty())
            .ok_or_else(|| SecretError::BadArgument(arg.split('=').next().unwrap_or("").into()))?;
        self.values.insert(id.to_string(), value.to_string());
        Ok(())
    }

    /// Loads a secrets file (see the module docs for the format).
    pub fn load_file(&mut self, path: &Path) -> Result<(), SecretError> {
        let bad = |reason: String| SecretError::BadFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        if text.trim_start().starts_with('{') {
            // serde's message would quote the offending value, which may be a secret.
            let map: BTreeMap<String, String> = serde_json::from_str(&text).map_err(|e| {
                bad(format!(
                    "expected a JSON object of string values (line {}, column {})",
                    e.line(),
                    e.column()
                ))
            })?;
            self.values.extend(map);
            return Ok(());
        }
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.trim_end().is_empty() || trimmed.starts_with('#') {
                continue;
            }
            // The value is everything after the first `=`, exactly: secrets may have spaces.
            let (id, value) = trimmed
                .split_once('=')
                .filter(|(id, _)| !id.trim().is_empty())
                .ok_or_else(|| bad(format!("line {}: expected ID=VALUE", n + 1)))?;
            self.values.insert(id.trim().to_string(), value.to_string());
        }
        Ok(())
    }

    /// Resolves `env.parameter-store` (var -> parameter name) and `env.secrets-manager`
    /// (var -> `secret-id:json-key:version-stage:version-id`).
    pub fn resolve(
        &self,
        parameter_store: &[(String, String)],
        secrets_manager: &[(String, String)],
    ) -> Result<Vec<ResolvedSecret>, SecretError> {
        let mut out = Vec::new();
        for (var, name) in parameter_store {
            let value = self.values.get(name).ok_or_else(|| SecretError::Missing {
                section: "parameter-store",
                var: var.clone(),
                id: name.clone(),
            })?;
            out.push(ResolvedSecret {
                var: var.clone(),
                value: value.clone(),
            });
        }
        for (var, reference) in secrets_manager {
            out.push(ResolvedSecret {
                var: var.clone(),
                value: self.secrets_manager_value(var, reference)?,
            });
        }
        Ok(out)
    }

    fn secrets_manager_value(&self, var: &str, reference: &str) -> Result<String, SecretError> {
        // The whole reference first, so `--secret 'db:password=...'` works as written.
        if let Some(v) = self.values.get(reference) {
            return Ok(v.clone());
        }
        let (id, json_key) = split_secret_reference(reference);
        let value = self.values.get(id).ok_or_else(|| SecretError::Missing {
            section: "secrets-manager",
            var: var.to_string(),
            id: id.to_string(),
        })?;
        let Some(key) = json_key else {
            return Ok(value.clone());
        };
        let missing = || SecretError::MissingJsonKey {
            var: var.to_string(),
            id: id.to_string(),
            key: key.to_string(),
        };
        let doc: serde_json::Value = serde_json::from_str(value).map_err(|_| missing())?;
        match doc.get(key) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                Ok(v.to_string())
            }
            _ => Err(missing()),
        }
    }
}

/// Splits `secret-id:json-key:version-stage:version-id` into the id and the optional JSON key.
/// An ARN id (`arn:aws:secretsmanager:<region>:<account>:secret:<name>`) keeps its own colons.
/// The local store has one version of each secret, so version stage and id are ignored.
pub fn split_secret_reference(reference: &str) -> (&str, Option<&str>) {
    let id_parts = if reference.starts_with("arn:") { 7 } else { 1 };
    let mut cut = reference.len();
    let mut seen = 0;
    for (i, c) in reference.char_indices() {
        if c == ':' {
            seen += 1;
            if seen == id_parts {
                cut = i;
                break;
            }
        }
    }
    let id = &reference[..cut];
    let key = reference
        .get(cut + 1..)
        .and_then(|rest| rest.split(':').next())
        .filter(|k| !k.is_empty());
    (id, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(pairs: &[&str]) -> SecretStore {
        let mut s = SecretStore::default();
        for p in pairs {
            s.add_argument(p).expect("arg");
        }
        s
    }

    #[test]
    fn splits_plain_and_arn_references() {
        assert_eq!(split_secret_reference("prod/db"), ("prod/db", None));
        assert_eq!(
            split_secret_reference("prod/db:password"),
            ("prod/db", Some("password"))
        );
        assert_eq!(
            split_secret_reference("prod/db:password:AWSCURRENT"),
            ("prod/db", Some("password"))
        );
        assert_eq!(
            split_secret_reference("prod/db::AWSPREVIOUS"),
            ("prod/db", None)
        );
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf";
        assert_eq!(split_secret_reference(arn), (arn, None));
        assert_eq!(
            split_secret_reference(&format!("{arn}:user")),
            (arn, Some("user"))
        );
    }

    #[test]
    fn resolves_parameters_and_json_keys() {
        let s = store(&[
            "/CodeBuild/token=t0k",
            r#"prod/db={"password":"pw","port":5432}"#,
        ]);
        let got = s
            .resolve(
                &[("TOKEN".into(), "/CodeBuild/token".into())],
                &[
                    ("PW".into(), "prod/db:password".into()),
                    ("PORT".into(), "prod/db:port".into()),
                ],
            )
            .expect("resolve");
        let values: Vec<_> = got
            .iter()
            .map(|r| (r.var.as_str(), r.value.as_str()))
            .collect();
        assert_eq!(
            values,
            vec![("TOKEN", "t0k"), ("PW", "pw"), ("PORT", "5432")]
        );
    }

    #[test]
    fn missing_secret_names_the_key_not_a_value() {
        let s = store(&["other=hunter2"]);
        let err = s
            .resolve(&[("TOKEN".into(), "/CodeBuild/token".into())], &[])
            .expect_err("missing");
        let text = err.to_string();
        assert!(text.contains("env.parameter-store.TOKEN"), "{text}");
        assert!(text.contains("/CodeBuild/token"), "{text}");
        assert!(!text.contains("hunter2"));
    }

    #[test]
    fn missing_json_key_is_an_error() {
        let s = store(&[r#"prod/db={"user":"u"}"#]);
        let err = s
            .resolve(&[], &[("PW".into(), "prod/db:password".into())])
            .expect_err("missing key");
        assert!(matches!(err, SecretError::MissingJsonKey { .. }));
    }

    #[test]
    fn secrets_files_in_both_formats() {
        let dir = tempfile::tempdir().expect("tmp");
        let lines = dir.path().join("s.env");
        std::fs::write(&lines, "# c\n\n  prod/db = x=y \n").expect("write");
        let json = dir.path().join("s.json");
        std::fs::write(&json, r#"{"a":"b"}"#).expect("write");
        let mut s = SecretStore::default();
        s.load_file(&lines).expect("lines");
        s.load_file(&json).expect("json");
        assert_eq!(s.values.get("prod/db").map(String::as_str), Some(" x=y "));
        assert_eq!(s.values.get("a").map(String::as_str), Some("b"));
        std::fs::write(&lines, "novalue\n").expect("write");
        assert!(SecretStore::default().load_file(&lines).is_err());
        std::fs::write(&json, r#"{"a": 5432}"#).expect("write");
        let err = SecretStore::default()
            .load_file(&json)
            .expect_err("not a string");
        assert!(!err.to_string().contains("5432"), "{err}");
        assert!(!format!("{s:?}").contains("x=y"));
    }

    #[test]
    fn bad_argument() {
        assert!(SecretStore::default().add_argument("noequals").is_err());
        assert!(SecretStore::default().add_argument("=v").is_err());
    }
}
