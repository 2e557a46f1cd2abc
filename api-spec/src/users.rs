//! Users and their API tokens (`/v1/me`, `/v1/users`, `/v1/tokens`): who may do what on a
//! shared daemon. A token is shown once, when it is created; the daemon keeps only its hash.

use serde::{Deserialize, Serialize};

/// The most characters of a user name.
pub const USER_NAME_MAX_CHARS: usize = 32;

/// A user of the daemon. Admins may manage users and everyone's tokens and jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct UserView {
    pub name: String,
    pub admin: bool,
    /// RFC 3339.
    pub created_at: String,
}

/// `POST /v1/users` (admins).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1 to 32 characters: letters, digits, `.`, `_`, `-`, starting with a letter or digit.
    #[cfg_attr(
        feature = "schema",
        schema(
            min_length = 1,
            max_length = 32,
            pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
        )
    )]
    pub name: String,
    #[serde(default)]
    pub admin: bool,
}

/// `POST /v1/tokens`: a token for yourself, or (admins) for `user`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Whose token; default: the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schema(
            min_length = 1,
            max_length = 32,
            pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
        )
    )]
    pub user: Option<String>,
    /// Seconds until it stops working (at most 10 years); absent: it never expires.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole_seconds"
    )]
    #[cfg_attr(feature = "schema", schema(minimum = 1, maximum = 315_360_000))]
    pub expires_in_s: Option<u64>,
}

/// A token as listed: never the token itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct TokenView {
    /// The token's public id (`orpoctl token revoke ID`); also its first characters after
    /// `orpod_`.
    pub id: String,
    pub user: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; absent: it never expires.
    pub expires_at: Option<String>,
}

/// `POST /v1/tokens`'s answer: the token, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    /// Send it as `Authorization: Bearer <token>`. The daemon keeps only its hash.
    pub token: String,
    pub info: TokenView,
}

/// `GET /v1/me`: who the daemon takes the caller for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct CallerView {
    pub user: String,
    pub admin: bool,
    /// True while the daemon has no users: it listens on loopback only, every caller is an
    /// admin and a job's owner is what the client names.
    pub open: bool,
}

/// Checks a user name: `Err` says what is wrong.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let ok_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok_start || !ok_rest || name.len() > USER_NAME_MAX_CHARS {
        return Err(format!(
            "user name {:?} is not valid: 1 to {USER_NAME_MAX_CHARS} letters, digits, '.', '_' \
             or '-', starting with a letter or digit",
            name.chars().take(40).collect::<String>()
        ));
    }
    Ok(())
}

/// Reads a lifetime such as `90d`, `12h`, `30m`, `2w` or `3600` (seconds) into seconds; `never`
/// is `None`.
pub fn parse_lifetime(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let bad = || format!("{text:?} is not a lifetime: write e.g. 90d, 12h, 30m, 2w or never");
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(scale) {
        Some(s) if (1..=MAX_TOKEN_LIFETIME_S).contains(&s) => Ok(Some(s)),
        _ => Err(format!(
            "{text:?}: a token lives from 1 second to 10 years (3650d)"
        )),
    }
}

/// The longest lifetime a token can be given: ten years.
pub const MAX_TOKEN_LIFETIME_S: u64 = 315_360_000;

/// Seconds as a JSON integer, or a number with no fraction (`3600.0` is 3600, as JSON Schema's
/// `integer` has it); anything else is an error naming what is expected.
fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(v) = Option::<f64>::deserialize(d)? else {
        return Ok(None);
    };
    if v.fract() != 0.0 || v < 0.0 || !v.is_finite() {
        return Err(serde::de::Error::custom(format!(
            "expires_in_s: {v} is not a whole number of seconds"
        )));
    }
    // Past u64 saturates; the route's bound (10 years) refuses it.
    Ok(Some(v as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for ok in ["alice", "a", "bob.smith", "x_1-2", "A9"] {
            assert_eq!(check_user_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".alice", "-x", "al ice", "ä", "a/b", &"a".repeat(33)] {
            assert!(check_user_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("90d"), Ok(Some(90 * 86_400)));
        assert_eq!(parse_lifetime("12h"), Ok(Some(43_200)));
        assert_eq!(parse_lifetime("2w"), Ok(Some(1_209_600)));
        assert_eq!(parse_lifetime("45"), Ok(Some(45)));
        assert_eq!(parse_lifetime("never"), Ok(None));
        for bad in [
            "",
            "d",
            "1y",
            "-1d",
            "0",
            "3651d",
            "99999999999999999999d",
            "inf",
        ] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }
}
