//! The typed value parsers of the flags: a whole number within bounds
//! ([`Bounded`]), an address, and an address or nothing. Bounds are
//! checked where a flag is declared; an error names the environment
//! variable (what operators set), the range, and what it got. clap adds
//! the flag: `invalid value '0' for '--lease-ttl-secs <LEASE_TTL_SECS>':
//! CENTRAL_LEASE_TTL_SECS: expected a positive whole number, got "0"`.

use std::ffi::OsStr;
use std::marker::PhantomData;
use std::net::{AddrParseError, SocketAddr};

use clap::builder::TypedValueParser;

/// A value a flag refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// Not a whole number, or out of its range.
    #[error("{var}: expected {expected}, got {got:?}")]
    OutOfRange {
        var: &'static str,
        expected: Expected,
        got: String,
    },
    /// Not an address such as `0.0.0.0:50051`.
    #[error("{var}: {source}")]
    Address {
        var: &'static str,
        source: AddrParseError,
    },
    /// Neither empty nor an address.
    #[error(
        "{var}: {source}: expected an address such as 127.0.0.1:9090, or empty for none, got {got:?}"
    )]
    OptionalAddress {
        var: &'static str,
        source: AddrParseError,
        got: String,
    },
}

/// What a bounded setting accepts, in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// `min..=max` whole numbers (`max` = `u64::MAX`: no upper bound).
    Number { min: u64, max: u64 },
    /// `min..=max` days.
    Days { min: u64, max: u64 },
    /// `min..=max` seconds.
    Seconds { min: u64, max: u64 },
    /// Calls per second, `0..=max`, 0 meaning no limit.
    Rate { max: u64 },
}

impl Expected {
    fn range(self) -> (u64, u64) {
        match self {
            Self::Number { min, max } | Self::Days { min, max } | Self::Seconds { min, max } => {
                (min, max)
            }
            Self::Rate { max } => (0, max),
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Number {
                min: 1,
                max: u64::MAX,
            } => f.write_str("a positive whole number"),
            Self::Number { min, max: u64::MAX } => write!(f, "a whole number of at least {min}"),
            Self::Number { min, max } => write!(f, "a whole number from {min} to {max}"),
            Self::Days { min, max } => write!(f, "a number of days from {min} to {max}"),
            Self::Seconds { min, max } => write!(f, "a number of seconds from {min} to {max}"),
            Self::Rate { max } => write!(f, "calls per second (0 = no limit, at most {max})"),
        }
    }
}

/// A whole number setting within bounds, parsed into `T` (`u32`, `u64`,
/// `usize`; each bound must fit `T`).
pub struct Bounded<T> {
    var: &'static str,
    expected: Expected,
    into: PhantomData<fn() -> T>,
}

impl<T> Clone for Bounded<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Bounded<T> {}

impl<T> Bounded<T> {
    const fn new(var: &'static str, expected: Expected) -> Self {
        Self {
            var,
            expected,
            into: PhantomData,
        }
    }

    /// 1 or more.
    pub const fn positive(var: &'static str) -> Self {
        Self::new(
            var,
            Expected::Number {
                min: 1,
                max: u64::MAX,
            },
        )
    }

    /// `min` or more.
    pub const fn at_least(var: &'static str, min: u64) -> Self {
        Self::new(var, Expected::Number { min, max: u64::MAX })
    }

    /// `min` to `max`.
    pub const fn within(var: &'static str, min: u64, max: u64) -> Self {
        Self::new(var, Expected::Number { min, max })
    }

    /// `min` to `max` days.
    pub const fn days(var: &'static str, min: u64, max: u64) -> Self {
        Self::new(var, Expected::Days { min, max })
    }

    /// `min` to `max` seconds.
    pub const fn seconds(var: &'static str, min: u64, max: u64) -> Self {
        Self::new(var, Expected::Seconds { min, max })
    }

    /// Calls per second, 0 (no limit) to `max`.
    pub const fn rate(var: &'static str, max: u64) -> Self {
        Self::new(var, Expected::Rate { max })
    }
}

impl<T: TryFrom<u64>> Bounded<T> {
    /// `s` as a `T` within the bounds.
    pub fn check(&self, s: &str) -> Result<T, SettingError> {
        let (min, max) = self.expected.range();
        s.parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| SettingError::OutOfRange {
                var: self.var,
                expected: self.expected,
                got: s.to_owned(),
            })
    }
}

impl<T> TypedValueParser for Bounded<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        // Through clap's own `Fn(&str)` parser, so that the message says
        // which flag got which value, as for every other flag.
        let this = *self;
        (move |s: &str| this.check(s)).parse_ref(cmd, arg, value)
    }
}

/// An address to listen on, for the setting `var`.
pub fn address(var: &'static str) -> impl Fn(&str) -> Result<SocketAddr, SettingError> + Clone {
    move |s| {
        s.parse()
            .map_err(|source| SettingError::Address { var, source })
    }
}

/// An address to listen on, or empty for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

/// An [`OptionalAddr`] for the setting `var`.
pub fn optional_address(
    var: &'static str,
) -> impl Fn(&str) -> Result<OptionalAddr, SettingError> + Clone {
    move |s| {
        let t = s.trim();
        if t.is_empty() {
            return Ok(OptionalAddr(None));
        }
        t.parse()
            .map(|a| OptionalAddr(Some(a)))
            .map_err(|source| SettingError::OptionalAddress {
                var,
                source,
                got: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold_at_both_ends_and_errors_say_the_range() {
        let b = Bounded::<u32>::within("CENTRAL_X", 2, 64);
        assert_eq!(b.check("2"), Ok(2));
        assert_eq!(b.check("64"), Ok(64));
        for bad in ["1", "65", "-1", "x", "", " 3"] {
            assert_eq!(
                b.check(bad).unwrap_err().to_string(),
                format!("CENTRAL_X: expected a whole number from 2 to 64, got {bad:?}")
            );
        }
        let p = Bounded::<u64>::positive("CENTRAL_P");
        assert_eq!(p.check("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            p.check("0").unwrap_err().to_string(),
            "CENTRAL_P: expected a positive whole number, got \"0\""
        );
        let r = Bounded::<u32>::rate("CENTRAL_R", 1_000_000);
        assert_eq!(r.check("0"), Ok(0));
        assert_eq!(
            r.check("1000001").unwrap_err().to_string(),
            "CENTRAL_R: expected calls per second (0 = no limit, at most 1000000), got \"1000001\""
        );
        let d = Bounded::<u32>::days("CENTRAL_D", 1, 36_500);
        assert_eq!(
            d.check("0").unwrap_err().to_string(),
            "CENTRAL_D: expected a number of days from 1 to 36500, got \"0\""
        );
        let m = Bounded::<usize>::at_least("CENTRAL_M", 1024);
        assert_eq!(
            m.check("1023").unwrap_err().to_string(),
            "CENTRAL_M: expected a whole number of at least 1024, got \"1023\""
        );
        // A value within the bounds that does not fit the type is refused.
        let t = Bounded::<u32>::positive("CENTRAL_T");
        assert!(t.check("4294967296").is_err());
    }

    #[test]
    fn addresses_name_their_variable() {
        assert_eq!(
            address("CENTRAL_A")("127.0.0.1:1"),
            Ok("127.0.0.1:1".parse().unwrap())
        );
        assert!(
            address("CENTRAL_A")("nowhere")
                .unwrap_err()
                .to_string()
                .starts_with("CENTRAL_A: ")
        );
        let o = optional_address("CENTRAL_O");
        assert_eq!(o(" "), Ok(OptionalAddr(None)));
        assert_eq!(
            o("127.0.0.1:9090"),
            Ok(OptionalAddr(Some("127.0.0.1:9090".parse().unwrap())))
        );
        let e = o("nowhere").unwrap_err().to_string();
        assert!(e.starts_with("CENTRAL_O: "), "{e}");
        assert!(
            e.ends_with(
                ": expected an address such as 127.0.0.1:9090, or empty for none, got \"nowhere\""
            ),
            "{e}"
        );
    }
}
