//! Seeded fault injection per route family.
//!
//! A [`FaultProfile`] is a list of [`FaultRule`]s. It is parsed from a profile name (`none`,
//! `flaky`, `hostile`) or from a spec string: rules separated by `;`, each a comma-separated list
//! of `key=value` pairs, e.g. `route=leads,kind=5xx,rate=0.1;route=bulk_file,kind=truncate,rate=0.5`.
//! Keys: `route` (a route family name or `*`), `kind` (see [`FaultKind`]), `rate` (0..=1),
//! `delay_ms` (for `slow`, default 2000).

use std::str::FromStr;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The kind of a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answers 606 (rate limit) although the window is not full.
    Throttle,
    /// Answers HTTP 502 with an HTML body, as a gateway would.
    Http5xx,
    /// Answers 604 (request time-out); the call is not executed.
    Timeout,
    /// Answers 608 (API temporarily unavailable).
    Unavailable,
    /// Closes the connection without a response.
    Drop,
    /// Delays the response by `delay_ms`.
    Slow,
    /// Bulk file downloads answer 404 although the job is Completed.
    File404,
    /// Bulk file downloads stop half-way (the connection breaks after part of the body).
    Truncate,
}

impl FaultKind {
    /// Returns the name used in spec strings.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Throttle => "throttle",
            FaultKind::Http5xx => "5xx",
            FaultKind::Timeout => "timeout",
            FaultKind::Unavailable => "unavailable",
            FaultKind::Drop => "drop",
            FaultKind::Slow => "slow",
            FaultKind::File404 => "file404",
            FaultKind::Truncate => "truncate",
        }
    }
}

impl FromStr for FaultKind {
    type Err = FaultSpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text.trim().to_ascii_lowercase().as_str() {
            "throttle" | "606" => FaultKind::Throttle,
            "5xx" | "502" | "http5xx" => FaultKind::Http5xx,
            "timeout" | "604" => FaultKind::Timeout,
            "unavailable" | "608" => FaultKind::Unavailable,
            "drop" => FaultKind::Drop,
            "slow" => FaultKind::Slow,
            "file404" | "404" => FaultKind::File404,
            "truncate" => FaultKind::Truncate,
            other => return Err(FaultSpecError::UnknownKind(other.to_string())),
        })
    }
}

/// One fault rule: on calls to `route` (a family name or `*`), inject `kind` with probability `rate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// Route family (`leads`, `bulk_file`, ... see the route table) or `*` for every family.
    pub route: String,
    /// What happens.
    pub kind: FaultKind,
    /// Probability per call, 0..=1.
    pub rate: f64,
    /// Delay for `slow`, in milliseconds.
    pub delay_ms: u64,
}

/// A set of fault rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultProfile {
    /// The rules, checked in order; the first that fires wins.
    pub rules: Vec<FaultRule>,
}

/// A fault profile string that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultSpecError {
    /// The kind is not one of the known kinds.
    #[error(
        "unknown fault kind {0:?} (expected throttle, 5xx, timeout, unavailable, drop, slow, file404, truncate)"
    )]
    UnknownKind(String),
    /// A `key=value` pair is malformed or the key is unknown.
    #[error("bad fault rule item {0:?} (expected route=, kind=, rate= or delay_ms=)")]
    BadItem(String),
    /// A rule has no `kind`.
    #[error("fault rule {0:?} has no kind=")]
    MissingKind(String),
    /// The rate is not a number in 0..=1.
    #[error("bad fault rate {0:?} (expected a number from 0 to 1)")]
    BadRate(String),
}

impl FaultSpecError {
    /// Returns false: a bad profile is a configuration error.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

fn rule(route: &str, kind: FaultKind, rate: f64) -> FaultRule {
    FaultRule {
        route: route.to_string(),
        kind,
        rate,
        delay_ms: 2000,
    }
}

impl FaultProfile {
    /// Returns the profile with no faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Returns the `flaky` profile: occasional throttling, 5xx, time-outs and slow answers.
    pub fn flaky() -> Self {
        Self {
            rules: vec![
                rule("*", FaultKind::Throttle, 0.03),
                rule("*", FaultKind::Http5xx, 0.02),
                rule("*", FaultKind::Timeout, 0.02),
                FaultRule {
                    delay_ms: 500,
                    ..rule("*", FaultKind::Slow, 0.05)
                },
            ],
        }
    }

    /// Returns the `hostile` profile: frequent faults of every kind, including dropped
    /// connections, Completed-but-404 files and truncated downloads.
    pub fn hostile() -> Self {
        Self {
            rules: vec![
                rule("bulk_file", FaultKind::File404, 0.2),
                rule("bulk_file", FaultKind::Truncate, 0.3),
                rule("*", FaultKind::Throttle, 0.08),
                rule("*", FaultKind::Http5xx, 0.05),
                rule("*", FaultKind::Timeout, 0.05),
                rule("*", FaultKind::Unavailable, 0.03),
                rule("*", FaultKind::Drop, 0.03),
                FaultRule {
                    delay_ms: 3000,
                    ..rule("*", FaultKind::Slow, 0.1)
                },
            ],
        }
    }

    /// Returns the first rule that fires for a call to `family`, drawing from `rng`.
    ///
    /// File faults (`file404`, `truncate`) only fire on the `bulk_file` family.
    pub fn pick(&self, family: &str, rng: &mut ChaCha8Rng) -> Option<FaultRule> {
        for candidate in &self.rules {
            if candidate.route != "*" && candidate.route != family {
                continue;
            }
            let file_only = matches!(candidate.kind, FaultKind::File404 | FaultKind::Truncate);
            if file_only && family != "bulk_file" {
                continue;
            }
            if rng.random_bool(candidate.rate.clamp(0.0, 1.0)) {
                return Some(candidate.clone());
            }
        }
        None
    }
}

impl FromStr for FaultProfile {
    type Err = FaultSpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "" | "none" => return Ok(Self::none()),
            "flaky" => return Ok(Self::flaky()),
            "hostile" => return Ok(Self::hostile()),
            _ => {}
        }
        let mut rules = Vec::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let mut route = "*".to_string();
            let mut kind = None;
            let mut rate = 1.0;
            let mut delay_ms = 2000;
            for item in part.split(',').map(str::trim) {
                let (key, value) = item
                    .split_once('=')
                    .ok_or_else(|| FaultSpecError::BadItem(item.to_string()))?;
                match key.trim() {
                    "route" => route = value.trim().to_string(),
                    "kind" => kind = Some(value.parse::<FaultKind>()?),
                    "rate" => {
                        rate = value
                            .trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|r| (0.0..=1.0).contains(r))
                            .ok_or_else(|| FaultSpecError::BadRate(value.to_string()))?
                    }
                    "delay_ms" => {
                        delay_ms = value
                            .trim()
                            .parse()
                            .map_err(|_| FaultSpecError::BadItem(item.to_string()))?
                    }
                    _ => return Err(FaultSpecError::BadItem(item.to_string())),
                }
            }
            let kind = kind.ok_or_else(|| FaultSpecError::MissingKind(part.to_string()))?;
            rules.push(FaultRule {
                route,
                kind,
                rate,
                delay_ms,
            });
        }
        Ok(Self { rules })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn parses_names_and_specs() {
        assert_eq!(
            "none".parse::<FaultProfile>().unwrap(),
            FaultProfile::none()
        );
        assert_eq!(
            "hostile".parse::<FaultProfile>().unwrap(),
            FaultProfile::hostile()
        );
        let profile: FaultProfile =
            "route=leads,kind=5xx,rate=0.1;route=bulk_file,kind=slow,rate=1,delay_ms=50"
                .parse()
                .unwrap();
        assert_eq!(profile.rules.len(), 2);
        assert_eq!(profile.rules[0].kind, FaultKind::Http5xx);
        assert_eq!(profile.rules[1].delay_ms, 50);
        assert!(matches!(
            "route=leads,kind=boom".parse::<FaultProfile>(),
            Err(FaultSpecError::UnknownKind(_))
        ));
        assert!(matches!(
            "route=leads,rate=2,kind=drop".parse::<FaultProfile>(),
            Err(FaultSpecError::BadRate(_))
        ));
        assert!(matches!(
            "route=leads".parse::<FaultProfile>(),
            Err(FaultSpecError::MissingKind(_))
        ));
    }

    #[test]
    fn rules_apply_only_to_their_family() {
        let profile: FaultProfile = "route=leads,kind=timeout,rate=1".parse().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert!(profile.pick("companies", &mut rng).is_none());
        assert_eq!(
            profile.pick("leads", &mut rng).unwrap().kind,
            FaultKind::Timeout
        );
    }
}
