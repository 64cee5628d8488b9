//! Cron schedules for `cron*` Procfile kinds: parsing, validation and "when next?".
//!
//! # Accepted syntax
//! Five fields, `minute hour day-of-month month day-of-week`, with the usual cron forms in
//! every field: `*`, `N`, `N-M`, lists `a,b,c`, steps `*/S`, `N-M/S` and `N/S` (N up to the
//! maximum), month names `jan`–`dec` and weekday names `sun`–`sat` (any case). Day-of-week
//! takes 0–7 (0 and 7 are both Sunday). When both day-of-month and day-of-week are restricted
//! a day matching either one fires (classic cron). piku's own subset (`N`, `*/N`, `*`) is
//! included. A sixth *leading* field of seconds is also accepted (`S M H DoM Mon DoW`).
//! Aliases: `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@hourly`.
//!
//! Refused, with a one-line error naming the field: out-of-range values (piku let hour 24
//! through), empty list elements, zero steps, reversed ranges, unknown names, `@reboot`,
//! the `L`/`W`/`#`/`?` extensions, and schedules that can never fire (`0 0 30 2 *`).
//!
//! # Splitting a Procfile cron line ([`split_cron_line`])
//! - A line starting with `@` has a one-token schedule; the rest is the command.
//! - Otherwise the schedule is the first 6 whitespace-separated tokens **only if** those 6
//!   parse as a schedule with seconds *and* a command remains after them; else it is the
//!   first 5 tokens. (A command whose first word is itself a valid cron field, such as `5`
//!   or `sun`, is therefore read as a seconds schedule; write the 5-field form with a
//!   command that does not start with such a word, e.g. `./5`.)
//! - The command is the rest of the line, trimmed, otherwise verbatim: unlike piku, a `*`
//!   in the command is never rewritten.

use std::fmt;

use chrono::{DateTime, Datelike, TimeZone, Timelike};
use serde::{Deserialize, Serialize};

/// A parsed, validated cron schedule.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CronSchedule {
    /// The schedule as written (fields joined by single spaces).
    text: String,
    has_seconds: bool,
    /// Boxed: croner's pattern is large and `ProcessClass::Cron` holds a `CronSchedule`.
    cron: Box<croner::Cron>,
}

/// Why a cron schedule or cron line was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("empty cron schedule")]
    Empty,
    #[error(
        "cron schedule '{}' has {count} fields; expected 5 (minute hour day-of-month month day-of-week), or 6 with leading seconds",
        .text.escape_debug()
    )]
    FieldCount { text: String, count: usize },
    #[error("invalid cron {field} field '{}': {problem}", .text.escape_debug())]
    Field {
        field: &'static str,
        text: String,
        problem: String,
    },
    #[error(
        "'@reboot' is not supported: cron jobs run on a schedule; use a worker for start-up work"
    )]
    Reboot,
    #[error(
        "unknown cron alias '{}' (known: @yearly, @annually, @monthly, @weekly, @daily, @hourly)",
        .0.escape_debug()
    )]
    UnknownAlias(String),
    #[error("cron schedule '{}' can never fire: no selected month has that day", .0.escape_debug())]
    NeverFires(String),
    #[error("cron schedule '{}' rejected: {reason}", .text.escape_debug())]
    Rejected { text: String, reason: String },
    #[error("cron line '{}' has no command after the schedule", .0.escape_debug())]
    NoCommand(String),
}

/// One position in a cron pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Second => "second",
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        }
    }

    fn range(self) -> (u32, u32) {
        match self {
            Field::Second | Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
        }
    }

    fn names(self) -> &'static [&'static str] {
        const MONTHS: [&str; 12] = [
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        match self {
            Field::Month => &MONTHS,
            Field::DayOfWeek => &DAYS,
            _ => &[],
        }
    }

    /// The number a name stands for. `sun` after `-` is 7 so `fri-sun` is a valid range.
    fn name_value(self, index: usize, after_dash: bool) -> u32 {
        match self {
            Field::Month => index as u32 + 1,
            _ if index == 0 && after_dash => 7,
            _ => index as u32,
        }
    }
}

const FIELDS_5: [Field; 5] = [
    Field::Minute,
    Field::Hour,
    Field::DayOfMonth,
    Field::Month,
    Field::DayOfWeek,
];
const FIELDS_6: [Field; 6] = [
    Field::Second,
    Field::Minute,
    Field::Hour,
    Field::DayOfMonth,
    Field::Month,
    Field::DayOfWeek,
];

/// A field after validation: its numeric text (names replaced) and the values it selects.
struct ParsedField {
    numeric: String,
    /// Bit `v` set when value `v` is selected.
    values: u64,
}

fn field_error(field: Field, text: &str, problem: impl Into<String>) -> CronError {
    CronError::Field {
        field: field.name(),
        text: text.to_owned(),
        problem: problem.into(),
    }
}

/// Replaces month/weekday names by numbers and refuses every character cron does not know.
fn replace_names(field: Field, text: &str) -> Result<String, CronError> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c.is_ascii_alphabetic() {
            let mut end = start + c.len_utf8();
            while let Some(&(i, next)) = chars.peek() {
                if !next.is_ascii_alphabetic() {
                    break;
                }
                end = i + next.len_utf8();
                chars.next();
            }
            let word = &text[start..end];
            let lower = word.to_ascii_lowercase();
            let Some(index) = field.names().iter().position(|n| *n == lower) else {
                let problem = if field.names().is_empty() {
                    format!("names are not allowed here (found '{word}')")
                } else {
                    format!("unknown name '{word}'")
                };
                return Err(field_error(field, text, problem));
            };
            let after_dash = out.ends_with('-');
            out.push_str(&field.name_value(index, after_dash).to_string());
        } else if c.is_ascii_digit() || matches!(c, '*' | '/' | ',' | '-') {
            out.push(c);
        } else {
            return Err(field_error(
                field,
                text,
                format!("unexpected character '{}'", c.escape_debug()),
            ));
        }
    }
    Ok(out)
}

fn parse_number(field: Field, text: &str, number: &str) -> Result<u32, CronError> {
    let (min, max) = field.range();
    let value: u32 = number
        .parse()
        .map_err(|_| field_error(field, text, format!("'{number}' is not a number")))?;
    if value < min || value > max {
        return Err(field_error(
            field,
            text,
            format!("{value} is out of range {min}-{max}"),
        ));
    }
    Ok(value)
}

fn parse_field(field: Field, text: &str) -> Result<ParsedField, CronError> {
    let numeric = replace_names(field, text)?;
    let (min, max) = field.range();
    let mut values = 0u64;
    for part in numeric.split(',') {
        if part.is_empty() {
            return Err(field_error(field, text, "empty list element"));
        }
        let (base, step) = match part.split_once('/') {
            Some((base, step)) => {
                let step: u32 = step.parse().map_err(|_| {
                    field_error(field, text, format!("step '{step}' is not a number"))
                })?;
                if step == 0 {
                    return Err(field_error(field, text, "step must be at least 1"));
                }
                (base, Some(step))
            }
            None => (part, None),
        };
        let (low, high) = if base == "*" {
            (min, max)
        } else if let Some((low, high)) = base.split_once('-') {
            let low = parse_number(field, text, low)?;
            let high = parse_number(field, text, high)?;
            if low > high {
                return Err(field_error(
                    field,
                    text,
                    format!("range {low}-{high} runs backwards"),
                ));
            }
            (low, high)
        } else {
            let value = parse_number(field, text, base)?;
            // `N/S` means "from N to the maximum, every S", as in croner and most crons.
            (value, if step.is_some() { max } else { value })
        };
        let step = step.unwrap_or(1);
        let mut value = low;
        while value <= high {
            values |= 1 << value;
            value += step;
        }
    }
    if field == Field::DayOfWeek && values & (1 << 7) != 0 {
        values = (values & !(1 << 7)) | 1;
    }
    Ok(ParsedField { numeric, values })
}

/// The longest each month can be (February in a leap year).
const MONTH_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

fn alias_pattern(alias: &str) -> Result<&'static str, CronError> {
    match alias.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => Ok("0 0 1 1 *"),
        "@monthly" => Ok("0 0 1 * *"),
        "@weekly" => Ok("0 0 * * 0"),
        "@daily" => Ok("0 0 * * *"),
        "@hourly" => Ok("0 * * * *"),
        "@reboot" => Err(CronError::Reboot),
        _ => Err(CronError::UnknownAlias(alias.to_owned())),
    }
}

impl CronSchedule {
    /// Parses a 5-field schedule, a 6-field one with leading seconds, or an `@alias`.
    pub fn parse(text: &str) -> Result<CronSchedule, CronError> {
        let tokens: Vec<&str> = text.split_whitespace().collect();
        let written = tokens.join(" ");
        let pattern = match tokens.as_slice() {
            [] => return Err(CronError::Empty),
            [alias] if alias.starts_with('@') => alias_pattern(alias)?,
            _ => written.as_str(),
        };
        let tokens: Vec<&str> = pattern.split_whitespace().collect();
        let fields: &[Field] = match tokens.len() {
            5 => &FIELDS_5,
            6 => &FIELDS_6,
            count => {
                return Err(CronError::FieldCount {
                    text: written,
                    count,
                });
            }
        };
        let mut parsed = Vec::with_capacity(fields.len());
        for (field, token) in fields.iter().zip(&tokens) {
            parsed.push(parse_field(*field, token)?);
        }
        let offset = fields.len() - 5;
        let (dom, month) = (&parsed[offset + 2], &parsed[offset + 3]);
        // With a day-of-week restriction some day always matches; without one, some selected
        // month must be long enough for the earliest selected day.
        let dow_is_star = tokens[offset + 4] == "*";
        if dow_is_star {
            let first_day = dom.values.trailing_zeros();
            let fits = (1..=12u32)
                .filter(|m| month.values & (1 << m) != 0)
                .any(|m| MONTH_DAYS[(m - 1) as usize] >= first_day);
            if !fits {
                return Err(CronError::NeverFires(written));
            }
        }
        let numeric: Vec<&str> = parsed.iter().map(|p| p.numeric.as_str()).collect();
        let mut cron = croner::Cron::new(&numeric.join(" "));
        if offset == 1 {
            cron.with_seconds_required();
        }
        let cron = cron.parse().map_err(|e| CronError::Rejected {
            text: written.clone(),
            reason: e.to_string(),
        })?;
        Ok(CronSchedule {
            text: written,
            has_seconds: offset == 1,
            cron: Box::new(cron),
        })
    }

    /// The schedule as written, fields separated by single spaces.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for a 6-field schedule with leading seconds.
    pub fn has_seconds(&self) -> bool {
        self.has_seconds
    }

    /// The first time strictly after `t` at which the schedule fires, in `t`'s time zone;
    /// `None` only if the search runs past croner's limit (year 5000).
    pub fn next_after<Tz: TimeZone>(&self, t: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        // Schedules have whole-second resolution; dropping the fraction keeps results on the
        // second and still strictly after `t`, because croner starts one second later.
        let whole = t.with_nanosecond(0)?;
        let next = self.cron.find_next_occurrence(&whole, false).ok()?;
        debug_assert!(next.naive_utc() > t.naive_utc() || next.year() >= 5000);
        Some(next)
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for CronSchedule {}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for CronSchedule {
    type Err = CronError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CronSchedule::parse(s)
    }
}

impl TryFrom<String> for CronSchedule {
    type Error = CronError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        CronSchedule::parse(&s)
    }
}

impl From<CronSchedule> for String {
    fn from(s: CronSchedule) -> String {
        s.text
    }
}

/// Splits the first `n` whitespace-separated tokens off `line`, returning them and the rest
/// (trimmed), or `None` if the line has fewer than `n` tokens.
fn split_tokens(line: &str, n: usize) -> Option<(Vec<&str>, &str)> {
    let mut tokens = Vec::with_capacity(n);
    let mut rest = line.trim_start();
    for _ in 0..n {
        if rest.is_empty() {
            return None;
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        tokens.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    Some((tokens, rest.trim_end()))
}

/// Splits a Procfile cron line into its schedule and its command (see the module docs for
/// the rule). `"*/5 * * * * cmd args"` gives (`*/5 * * * *`, `"cmd args"`).
pub fn split_cron_line(line: &str) -> Result<(CronSchedule, String), CronError> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Err(CronError::Empty);
    }
    if trimmed.starts_with('@') {
        let (tokens, command) = split_tokens(trimmed, 1).ok_or(CronError::Empty)?;
        let schedule = CronSchedule::parse(tokens[0])?;
        if command.is_empty() {
            return Err(CronError::NoCommand(trimmed.to_owned()));
        }
        return Ok((schedule, command.to_owned()));
    }
    if let Some((tokens, command)) = split_tokens(trimmed, 6)
        && !command.is_empty()
        && let Ok(schedule) = CronSchedule::parse(&tokens.join(" "))
    {
        return Ok((schedule, command.to_owned()));
    }
    let Some((tokens, command)) = split_tokens(trimmed, 5) else {
        return Err(CronError::FieldCount {
            text: trimmed.to_owned(),
            count: trimmed.split_whitespace().count(),
        });
    };
    let schedule = CronSchedule::parse(&tokens.join(" "))?;
    if command.is_empty() {
        return Err(CronError::NoCommand(trimmed.to_owned()));
    }
    Ok((schedule, command.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{FixedOffset, Utc};

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn next(schedule: &str, t: DateTime<Utc>) -> DateTime<Utc> {
        CronSchedule::parse(schedule)
            .unwrap()
            .next_after(&t)
            .unwrap()
    }

    fn err(schedule: &str) -> String {
        CronSchedule::parse(schedule).unwrap_err().to_string()
    }

    #[test]
    fn piku_subset_is_accepted() {
        for s in [
            "* * * * *",
            "*/5 * * * *",
            "0 0 * * *",
            "30 23 31 12 7",
            "0 */2 * * 0",
        ] {
            assert_eq!(CronSchedule::parse(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn full_syntax_is_accepted() {
        for s in [
            "*/15 9-17 * * MON-FRI",
            "0,30 8-18/2 1,15 jan-jun,dec sun",
            "5/10 * * * *",
            "0 0 * * fri-sun",
            "0 12 * Feb Sat",
        ] {
            CronSchedule::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    #[test]
    fn whitespace_is_normalised_in_as_str() {
        let s = CronSchedule::parse("  */5   *\t* * *  ").unwrap();
        assert_eq!(s.as_str(), "*/5 * * * *");
        assert_eq!(s.to_string(), "*/5 * * * *");
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        assert_eq!(
            err("0 24 * * *"),
            "invalid cron hour field '24': 24 is out of range 0-23"
        );
        assert_eq!(
            err("60 * * * *"),
            "invalid cron minute field '60': 60 is out of range 0-59"
        );
        assert!(err("* * 0 * *").starts_with("invalid cron day-of-month field '0'"));
        assert!(err("* * 32 * *").starts_with("invalid cron day-of-month field '32'"));
        assert!(err("* * * 13 *").starts_with("invalid cron month field '13'"));
        assert!(err("* * * * 8").starts_with("invalid cron day-of-week field '8'"));
        assert!(err("60 * * * * *").starts_with("invalid cron second field '60'"));
        assert!(err("* 1-24 * * *").starts_with("invalid cron hour field '1-24'"));
    }

    #[test]
    fn malformed_fields_are_refused() {
        assert_eq!(
            err("1,,2 * * * *"),
            "invalid cron minute field '1,,2': empty list element"
        );
        assert_eq!(
            err("*/0 * * * *"),
            "invalid cron minute field '*/0': step must be at least 1"
        );
        assert_eq!(
            err("* 17-9 * * *"),
            "invalid cron hour field '17-9': range 17-9 runs backwards"
        );
        assert_eq!(
            err("*/x * * * *"),
            "invalid cron minute field '*/x': names are not allowed here (found 'x')"
        );
        assert_eq!(
            err("* * * * funday"),
            "invalid cron day-of-week field 'funday': unknown name 'funday'"
        );
        assert_eq!(
            err("* * * mon *"),
            "invalid cron month field 'mon': unknown name 'mon'"
        );
        assert_eq!(
            err("* * L * *"),
            "invalid cron day-of-month field 'L': names are not allowed here (found 'L')"
        );
        assert!(err("? * * * *").contains("unexpected character '?'"));
        assert!(err("1-2-3 * * * *").contains("'2-3' is not a number"));
        assert!(err("*/ * * * *").contains("step '' is not a number"));
        assert!(err("- * * * *").contains("'' is not a number"));
    }

    #[test]
    fn wrong_field_counts_are_refused() {
        assert_eq!(err(""), "empty cron schedule");
        assert_eq!(
            err("* * * *"),
            "cron schedule '* * * *' has 4 fields; expected 5 (minute hour day-of-month month day-of-week), or 6 with leading seconds"
        );
        assert!(err("* * * * * * *").contains("has 7 fields"));
    }

    #[test]
    fn aliases() {
        let daily = CronSchedule::parse("@daily").unwrap();
        assert_eq!(daily.as_str(), "@daily");
        assert_eq!(
            daily.next_after(&utc(2026, 3, 4, 10, 0, 0)).unwrap(),
            utc(2026, 3, 5, 0, 0, 0)
        );
        assert_eq!(
            next("@HOURLY", utc(2026, 3, 4, 10, 0, 0)),
            utc(2026, 3, 4, 11, 0, 0)
        );
        assert_eq!(
            next("@weekly", utc(2026, 3, 4, 10, 0, 0)),
            utc(2026, 3, 8, 0, 0, 0)
        );
        assert_eq!(
            next("@monthly", utc(2026, 3, 4, 10, 0, 0)),
            utc(2026, 4, 1, 0, 0, 0)
        );
        assert_eq!(
            next("@yearly", utc(2026, 3, 4, 10, 0, 0)),
            utc(2027, 1, 1, 0, 0, 0)
        );
        CronSchedule::parse("@annually").unwrap();
        assert_eq!(err("@reboot"), CronError::Reboot.to_string());
        assert!(err("@reboot").contains("not supported"));
        assert!(err("@fortnightly").starts_with("unknown cron alias '@fortnightly'"));
    }

    #[test]
    fn impossible_dates_are_refused() {
        assert_eq!(
            err("0 0 30 2 *"),
            "cron schedule '0 0 30 2 *' can never fire: no selected month has that day"
        );
        assert!(err("0 0 31 4,6,9,11 *").contains("can never fire"));
        // Feb 29 fires in leap years; a weekday restriction makes any day-of-month possible.
        assert_eq!(
            next("0 0 29 2 *", utc(2026, 1, 1, 0, 0, 0)),
            utc(2028, 2, 29, 0, 0, 0)
        );
        CronSchedule::parse("0 0 30 2 mon").unwrap();
    }

    #[test]
    fn weekday_range_from_friday_evening_lands_on_monday() {
        // 2026-01-02 is a Friday.
        let friday = utc(2026, 1, 2, 17, 50, 0);
        assert_eq!(friday.weekday(), chrono::Weekday::Fri);
        assert_eq!(
            next("*/15 9-17 * * MON-FRI", friday),
            utc(2026, 1, 5, 9, 0, 0)
        );
        assert_eq!(
            next("*/15 9-17 * * MON-FRI", utc(2026, 1, 2, 17, 44, 59)),
            utc(2026, 1, 2, 17, 45, 0)
        );
    }

    #[test]
    fn next_after_is_strictly_after() {
        assert_eq!(
            next("*/5 * * * *", utc(2026, 1, 1, 12, 0, 0)),
            utc(2026, 1, 1, 12, 5, 0)
        );
        assert_eq!(
            next("*/5 * * * *", utc(2026, 1, 1, 12, 4, 59)),
            utc(2026, 1, 1, 12, 5, 0)
        );
        let fractional = utc(2026, 1, 1, 12, 4, 59) + chrono::Duration::milliseconds(999);
        assert_eq!(next("*/5 * * * *", fractional), utc(2026, 1, 1, 12, 5, 0));
        assert_eq!(
            next("0 0 31 12 *", utc(2026, 12, 31, 0, 0, 0)),
            utc(2027, 12, 31, 0, 0, 0)
        );
    }

    #[test]
    fn sunday_is_0_and_7() {
        // 2026-01-04 is a Sunday.
        let saturday = utc(2026, 1, 3, 12, 0, 0);
        assert_eq!(next("0 0 * * 0", saturday), utc(2026, 1, 4, 0, 0, 0));
        assert_eq!(next("0 0 * * 7", saturday), utc(2026, 1, 4, 0, 0, 0));
        assert_eq!(
            next("0 0 * * fri-sun", utc(2026, 1, 4, 12, 0, 0)),
            utc(2026, 1, 9, 0, 0, 0)
        );
    }

    #[test]
    fn names_are_case_insensitive_and_mix_with_numbers() {
        let a = CronSchedule::parse("0 0 1 JAN,Jul,12 SAT-SUN").unwrap();
        // 2026-01-03 is a Saturday; 2026-01-01 is the 1st of a selected month.
        assert_eq!(
            a.next_after(&utc(2025, 12, 31, 12, 0, 0)).unwrap(),
            utc(2026, 1, 1, 0, 0, 0)
        );
        assert_eq!(
            a.next_after(&utc(2026, 1, 1, 0, 0, 0)).unwrap(),
            utc(2026, 1, 3, 0, 0, 0)
        );
        assert_eq!(
            next("0 0 * * sun-sat", utc(2026, 1, 1, 0, 0, 0)),
            utc(2026, 1, 2, 0, 0, 0)
        );
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Classic cron: restricted DoM and DoW fire on either. 2026-01-05 is a Monday.
        assert_eq!(
            next("0 0 15 * mon", utc(2026, 1, 1, 0, 0, 0)),
            utc(2026, 1, 5, 0, 0, 0)
        );
    }

    #[test]
    fn seconds_field() {
        let s = CronSchedule::parse("*/2 * * * * *").unwrap();
        assert!(s.has_seconds());
        assert_eq!(
            s.next_after(&utc(2026, 1, 1, 0, 0, 1)).unwrap(),
            utc(2026, 1, 1, 0, 0, 2)
        );
        assert!(!CronSchedule::parse("* * * * *").unwrap().has_seconds());
    }

    #[test]
    fn next_after_keeps_the_time_zone() {
        let tz = FixedOffset::east_opt(2 * 3600).unwrap();
        let t = tz.with_ymd_and_hms(2026, 6, 1, 8, 59, 0).unwrap();
        let n = CronSchedule::parse("0 9 * * *")
            .unwrap()
            .next_after(&t)
            .unwrap();
        assert_eq!(n, tz.with_ymd_and_hms(2026, 6, 1, 9, 0, 0).unwrap());
        assert_eq!(n.offset(), &tz);
        assert_eq!(n.with_timezone(&Utc), utc(2026, 6, 1, 7, 0, 0));
    }

    #[test]
    fn split_five_field_line() {
        let (s, cmd) = split_cron_line("*/5 * * * * rm /tmp/*.log").unwrap();
        assert_eq!(s.as_str(), "*/5 * * * *");
        assert_eq!(cmd, "rm /tmp/*.log");
        let (s, cmd) = split_cron_line("  0 3 * * MON-FRI   ./backup.sh  --all ").unwrap();
        assert_eq!(s.as_str(), "0 3 * * MON-FRI");
        assert_eq!(cmd, "./backup.sh  --all");
    }

    #[test]
    fn split_six_field_line() {
        let (s, cmd) = split_cron_line("*/2 * * * * * echo tick").unwrap();
        assert!(s.has_seconds());
        assert_eq!(s.as_str(), "*/2 * * * * *");
        assert_eq!(cmd, "echo tick");
        // The sixth token is the command when it is not a cron field.
        let (s, cmd) = split_cron_line("* * * * * echo * tick").unwrap();
        assert!(!s.has_seconds());
        assert_eq!(cmd, "echo * tick");
        // Six schedule-like tokens and nothing after them: five fields and a command.
        let (s, cmd) = split_cron_line("* * * * * 5").unwrap();
        assert_eq!(s.as_str(), "* * * * *");
        assert_eq!(cmd, "5");
    }

    #[test]
    fn split_alias_line() {
        let (s, cmd) = split_cron_line("@hourly python job.py").unwrap();
        assert_eq!(s.as_str(), "@hourly");
        assert_eq!(cmd, "python job.py");
        assert!(matches!(
            split_cron_line("@reboot ./start"),
            Err(CronError::Reboot)
        ));
        assert!(matches!(
            split_cron_line("@daily"),
            Err(CronError::NoCommand(_))
        ));
    }

    #[test]
    fn split_bad_lines() {
        assert_eq!(split_cron_line("   ").unwrap_err(), CronError::Empty);
        assert!(matches!(
            split_cron_line("* * * * *"),
            Err(CronError::NoCommand(_))
        ));
        assert!(matches!(
            split_cron_line("* * cmd"),
            Err(CronError::FieldCount { count: 3, .. })
        ));
        assert_eq!(
            split_cron_line("0 24 * * * cmd").unwrap_err().to_string(),
            "invalid cron hour field '24': 24 is out of range 0-23"
        );
        // piku accepted this line and uWSGI misread it (#331); we read it properly.
        let (s, cmd) = split_cron_line("* 6-13 * * 1-5 ./bin/cron_job.sh").unwrap();
        assert_eq!(s.as_str(), "* 6-13 * * 1-5");
        assert_eq!(cmd, "./bin/cron_job.sh");
    }

    #[test]
    fn control_characters_are_escaped_in_errors() {
        // A terminal escape in a Procfile must not reach the deployer's terminal raw.
        let e = err("0 0 * * \u{1b}[31m");
        assert!(!e.contains('\u{1b}'), "{e}");
        assert!(e.contains("\\u{1b}"), "{e}");
    }

    #[test]
    fn serde_as_string() {
        let s = CronSchedule::parse("*/5 * * * *").unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"*/5 * * * *\"");
        assert_eq!(serde_json::from_str::<CronSchedule>(&json).unwrap(), s);
        assert!(serde_json::from_str::<CronSchedule>("\"0 24 * * *\"").is_err());
    }
}
