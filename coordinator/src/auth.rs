//! Bearer-token auth: clients send one of the configured client tokens, workers the join token,
//! as `authorization: Bearer <token>` metadata. Without configured tokens the coordinator only
//! listens on loopback (see `config`), and every caller is let in.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

/// Checks one class of callers' tokens. Tokens are compared by their SHA-256, so the comparison
/// time does not depend on how much of a guess matched.
#[derive(Clone)]
pub struct TokenCheck {
    accepted: Arc<Vec<[u8; 32]>>,
    who: &'static str,
}

impl TokenCheck {
    /// `who` names the callers ("client", "worker") in errors; an empty list lets everyone in.
    pub fn new(tokens: &[String], who: &'static str) -> TokenCheck {
        TokenCheck {
            accepted: Arc::new(tokens.iter().map(|t| digest(t)).collect()),
            who,
        }
    }

    pub fn check<T>(&self, request: Request<T>) -> Result<Request<T>, Status> {
        if self.accepted.is_empty() {
            return Ok(request);
        }
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return Err(Status::unauthenticated(format!(
                "missing {} token: send `authorization: Bearer <token>`",
                self.who
            )));
        };
        let presented = digest(token.trim());
        if self.accepted.contains(&presented) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(format!("wrong {} token", self.who)))
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            let v = format!("Bearer {t}").parse().expect("ascii");
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    #[test]
    fn tokens() {
        let check = TokenCheck::new(&["s3cret".into()], "client");
        assert!(check.check(with(Some("s3cret"))).is_ok());
        let e = check.check(with(Some("nope"))).expect_err("wrong");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = check.check(with(None)).expect_err("missing");
        assert!(e.message().contains("missing client token"));
        assert!(TokenCheck::new(&[], "client").check(with(None)).is_ok());
    }
}
