//! Identity: access tokens with a fixed lifetime, 601/602/603.

use std::collections::HashMap;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Token lifetime in seconds.
pub const TOKEN_LIFETIME_SECS: i64 = 3600;

#[derive(Debug, Clone)]
struct Issued {
    expires_at: DateTime<Utc>,
    expiry_reported: bool,
}

/// Issued tokens.
#[derive(Debug, Default)]
pub struct AuthState {
    current: Option<String>,
    tokens: HashMap<String, Issued>,
}

/// Why a call's token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// 601: unknown token, or an expired one used again.
    Invalid,
    /// 602: first use of an expired token.
    Expired,
    /// 603: no token.
    Missing,
}

impl TokenError {
    /// Returns the Marketo (code, message).
    pub fn code(self) -> (&'static str, &'static str) {
        match self {
            TokenError::Invalid => ("601", "Access token invalid"),
            TokenError::Expired => ("602", "Access token expired"),
            TokenError::Missing => ("603", "Access denied"),
        }
    }
}

impl AuthState {
    /// Returns the current token and its remaining lifetime, minting a new one when the last
    /// has expired.
    pub fn token(&mut self, now: DateTime<Utc>, rng: &mut ChaCha8Rng) -> (String, i64) {
        if let Some(token) = &self.current
            && let Some(issued) = self.tokens.get(token)
        {
            let left = (issued.expires_at - now).num_seconds();
            if left > 0 {
                return (token.clone(), left);
            }
        }
        let bytes: [u8; 16] = rng.random();
        let token = format!(
            "{}-{}-{}-{}-{}:sim",
            hex::encode(&bytes[0..4]),
            hex::encode(&bytes[4..6]),
            hex::encode(&bytes[6..8]),
            hex::encode(&bytes[8..10]),
            hex::encode(&bytes[10..16])
        );
        let expires_at = now + ChronoDuration::seconds(TOKEN_LIFETIME_SECS);
        self.tokens.insert(
            token.clone(),
            Issued {
                expires_at,
                expiry_reported: false,
            },
        );
        self.current = Some(token.clone());
        (token, TOKEN_LIFETIME_SECS)
    }

    /// Checks a bearer token.
    ///
    /// # Errors
    ///
    /// Returns [`TokenError`] when the token is missing, unknown or expired.
    pub fn check(&mut self, token: Option<&str>, now: DateTime<Utc>) -> Result<(), TokenError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(TokenError::Missing);
        };
        let Some(issued) = self.tokens.get_mut(token) else {
            return Err(TokenError::Invalid);
        };
        if now < issued.expires_at {
            return Ok(());
        }
        if issued.expiry_reported {
            Err(TokenError::Invalid)
        } else {
            issued.expiry_reported = true;
            Err(TokenError::Expired)
        }
    }

    /// Expires every token now (admin).
    pub fn expire_all(&mut self, now: DateTime<Utc>) {
        for issued in self.tokens.values_mut() {
            if issued.expires_at > now {
                issued.expires_at = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn same_token_until_expiry_then_602_then_601() {
        let mut auth = AuthState::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let t0 = crate::sim::clock::parse_time("2024-01-01T00:00:00Z").unwrap();
        let (a, left) = auth.token(t0, &mut rng);
        assert_eq!(left, 3600);
        let (b, left) = auth.token(t0 + ChronoDuration::seconds(100), &mut rng);
        assert_eq!((a.as_str(), left), (b.as_str(), 3500));
        assert_eq!(
            auth.check(Some(&a), t0 + ChronoDuration::seconds(3599)),
            Ok(())
        );
        let late = t0 + ChronoDuration::seconds(3600);
        assert_eq!(auth.check(Some(&a), late), Err(TokenError::Expired));
        assert_eq!(auth.check(Some(&a), late), Err(TokenError::Invalid));
        assert_eq!(auth.check(None, late), Err(TokenError::Missing));
        let (c, _) = auth.token(late, &mut rng);
        assert_ne!(a, c);
    }
}
