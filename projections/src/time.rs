//! Reading the stored times of events fast: every event carries at least one, and chrono's
//! general RFC 3339 parser spent about 110 ns on each, a tenth of decoding an event.
//!
//! The form EUCORA writes (`2026-01-01T04:00:00Z`, with up to nine digits of a second's fraction)
//! is read by hand; anything else (an offset, a lower-case `t` or `z`, a leap second, more than
//! nine digits) goes to chrono's parser, so every text reads exactly as chrono reads it.

use std::borrow::Cow;

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use serde::{Deserialize, Deserializer};

/// Reads a stored time: [`parse`], for `#[serde(deserialize_with)]`.
pub fn utc<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    let text = Cow::<'de, str>::deserialize(deserializer)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// Reads a stored time that may be null or absent (with `#[serde(default)]`).
pub fn utc_opt<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    let text = Option::<Cow<'de, str>>::deserialize(deserializer)?;
    text.map(|text| parse(&text).map_err(serde::de::Error::custom))
        .transpose()
}

/// An RFC 3339 time, read as chrono reads it (`DateTime<Utc>`'s own deserializer).
pub fn parse(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    match utc_form(text.as_bytes()) {
        Some(time) => Ok(time),
        None => text
            .parse::<DateTime<FixedOffset>>()
            .map(|t| t.with_timezone(&Utc)),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, a valid date and time; `None` for anything else.
fn utc_form(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return None;
    }
    let digits = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let punctuated = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')]
        .iter()
        .all(|&(i, c)| b[i] == c);
    if !punctuated {
        return None;
    }
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            digits(20, 20 + fraction.len())? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    let (year, month, day) = (digits(0, 4)?, digits(5, 7)?, digits(8, 10)?);
    let (hour, minute, second) = (digits(11, 13)?, digits(14, 16)?, digits(17, 19)?);
    // A leap second (60) is chrono's to read.
    if second >= 60 {
        return None;
    }
    NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?
        .and_hms_nano_opt(hour, minute, second, nanos)
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chrono(text: &str) -> Option<DateTime<Utc>> {
        text.parse::<DateTime<FixedOffset>>()
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    #[test]
    fn the_written_forms_read_by_hand_as_chrono_reads_them() {
        for text in [
            "2026-01-01T04:00:00Z",
            "2026-12-07T05:04:25.1Z",
            "2026-12-07T05:04:25.123456Z",
            "2026-12-07T05:04:25.123456789Z",
            "2024-02-29T23:59:59Z",
            "0001-01-01T00:00:00Z",
        ] {
            let by_hand = utc_form(text.as_bytes());
            assert!(by_hand.is_some(), "{text}");
            assert_eq!(by_hand, chrono(text), "{text}");
        }
    }

    #[test]
    fn other_forms_go_to_chrono_and_nonsense_is_refused() {
        for text in [
            "2026-01-01T04:00:00+02:00",
            "2026-01-01t04:00:00z",
            "2026-01-01 04:00:00Z",
            "2016-12-31T23:59:60Z",
            "2026-12-07T05:04:25.1234567891Z",
            "+026-01-01T00:00:00Z",
        ] {
            assert_eq!(utc_form(text.as_bytes()), None, "{text}");
            assert_eq!(parse(text).ok(), chrono(text), "{text}");
        }
        for text in [
            "",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00",
            "yesterday",
        ] {
            assert_eq!(utc_form(text.as_bytes()), None, "{text}");
            assert!(parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn a_stored_time_reads_from_json_and_null_reads_as_none() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "utc")]
            at: DateTime<Utc>,
            #[serde(default, deserialize_with = "utc_opt")]
            due: Option<DateTime<Utc>>,
            #[serde(default, deserialize_with = "utc_opt")]
            absent: Option<DateTime<Utc>>,
        }
        let t: T =
            serde_json::from_str(r#"{"at": "2026-01-01T04:00:00\u005a", "due": null}"#).unwrap();
        assert_eq!(t.at, chrono("2026-01-01T04:00:00Z").unwrap());
        assert_eq!((t.due, t.absent), (None, None));
        let bad = serde_json::from_str::<T>(r#"{"at": "2026-02-30T00:00:00Z"}"#);
        assert!(bad.is_err());
    }

    proptest! {
        /// Any time chrono writes reads back by hand, equal to chrono's reading.
        #[test]
        fn every_written_time_reads_as_chrono_reads_it(secs in 0i64..253_402_300_799, nanos in 0u32..1_000_000_000) {
            let time = DateTime::from_timestamp(secs, nanos).unwrap();
            let text = serde_json::to_value(time).unwrap();
            let text = text.as_str().unwrap();
            prop_assert_eq!(utc_form(text.as_bytes()), Some(time));
            prop_assert_eq!(utc_form(text.as_bytes()), chrono(text));
        }

        /// Whatever the text, the hand reading never disagrees with chrono's.
        #[test]
        fn no_text_reads_otherwise_than_chrono_reads_it(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,10})?Z?") {
            prop_assert_eq!(parse(&text).ok(), chrono(&text));
        }
    }
}
