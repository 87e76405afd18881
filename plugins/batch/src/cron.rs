//! Five-field cron schedules (UTC): `minute hour day-of-month month day-of-week`, each field `*`,
//! `*/n`, `a`, `a/n` (from `a` to the field's end), `a-b`, `a-b/n`, or a comma list of those;
//! day-of-week 0–6 from Sunday (7 is Sunday too). As in cron, when both day fields are
//! restricted a day matches either.

use shoal_framework_common::time::civil_from_days;

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_any: bool,
    weekdays_any: bool,
}

fn field(text: &str, name: &str, min: u32, max: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("{name}: bad step in {part:?}"))?;
                if step == 0 {
                    return Err(format!("{name}: step 0 in {part:?}"));
                }
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a: u32 = a.parse().map_err(|_| format!("{name}: bad value in {part:?}"))?;
            let b: u32 = b.parse().map_err(|_| format!("{name}: bad value in {part:?}"))?;
            (a, b)
        } else {
            let a: u32 = range.parse().map_err(|_| format!("{name}: bad value in {part:?}"))?;
            // `a/n` runs from `a` to the field's end, whatever `n` (`a/1` too).
            (a, if step.is_some() { max } else { a })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{name}: {part:?} is outside {min}-{max}"));
        }
        // A step past the field's end takes the first value only (and must not overflow).
        for v in (lo..=hi).step_by(usize::try_from(step.unwrap_or(1)).unwrap_or(usize::MAX)) {
            bits |= 1 << v;
        }
    }
    Ok((bits, text == "*"))
}

impl Schedule {
    /// Parse `text`; the message names the field that is wrong.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!("schedule {text:?}: 5 fields (minute hour day month weekday) expected"));
        }
        let (minutes, _) = field(parts[0], "minute", 0, 59)?;
        let (hours, _) = field(parts[1], "hour", 0, 23)?;
        let (days, days_any) = field(parts[2], "day of month", 1, 31)?;
        let (months, _) = field(parts[3], "month", 1, 12)?;
        let (mut weekdays, weekdays_any) = field(parts[4], "day of week", 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Schedule { minutes, hours, days, months, weekdays, days_any, weekdays_any })
    }

    /// Whether the minute that starts at `minute_index` (minutes since the Unix epoch) matches.
    pub fn matches(&self, minute_index: u64) -> bool {
        let minute = minute_index % 60;
        let hour = (minute_index / 60) % 24;
        let days = (minute_index / 1440) as i64;
        let (_, month, day) = civil_from_days(days);
        let weekday = ((days + 4) % 7) as u64; // 1970-01-01 was a Thursday
        let bit = |set: u64, v: u64| set & (1 << v) != 0;
        let day_ok = match (self.days_any, self.weekdays_any) {
            (false, false) => bit(self.days, u64::from(day)) || bit(self.weekdays, weekday),
            _ => bit(self.days, u64::from(day)) && bit(self.weekdays, weekday),
        };
        bit(self.minutes, minute) && bit(self.hours, hour) && bit(self.months, u64::from(month)) && day_ok
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Minutes since the epoch of a UTC date and time.
    fn at(y: i64, m: u32, d: u32, hh: u64, mm: u64) -> u64 {
        shoal_framework_common::time::days_from_civil(y, m, d) as u64 * 1440 + hh * 60 + mm
    }

    #[test]
    fn fields_and_matching() {
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert!(every5.matches(at(2026, 11, 23, 10, 35)));
        assert!(!every5.matches(at(2026, 11, 23, 10, 36)));
        let nightly = Schedule::parse("30 2 * * *").unwrap();
        assert!(nightly.matches(at(2026, 1, 1, 2, 30)));
        assert!(!nightly.matches(at(2026, 1, 1, 3, 30)));
        // 2026-11-23 is a Monday.
        let mondays = Schedule::parse("0 9 * * 1").unwrap();
        assert!(mondays.matches(at(2026, 11, 23, 9, 0)));
        assert!(!mondays.matches(at(2026, 11, 24, 9, 0)));
        let sunday7 = Schedule::parse("0 0 * * 7").unwrap();
        assert!(sunday7.matches(at(2026, 11, 22, 0, 0)));
        // Both day fields restricted: either matches.
        let either = Schedule::parse("0 0 1 * 1").unwrap();
        assert!(either.matches(at(2026, 12, 1, 0, 0)) && either.matches(at(2026, 11, 23, 0, 0)));
        assert!(!either.matches(at(2026, 11, 24, 0, 0)));
        let list = Schedule::parse("0,15-16 * * 1-3 *").unwrap();
        assert!(list.matches(at(2026, 2, 3, 4, 16)) && !list.matches(at(2026, 4, 3, 4, 16)));
    }

    #[test]
    fn bad_schedules_name_the_field() {
        assert!(Schedule::parse("61 * * * *").unwrap_err().contains("minute"));
        assert!(Schedule::parse("* 24 * * *").unwrap_err().contains("hour"));
        assert!(Schedule::parse("* * 0 * *").unwrap_err().contains("day of month"));
        assert!(Schedule::parse("* * * * * *").unwrap_err().contains("5 fields"));
        assert!(Schedule::parse("*/0 * * * *").unwrap_err().contains("step"));
        assert!(Schedule::parse("a * * * *").unwrap_err().contains("minute"));
    }
}

/// Property tests of schedules: jobs' schedules come from outside.
#[cfg(test)]
mod props {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// One comma-separated item of a field.
    #[derive(Clone, Debug)]
    enum Item {
        Star,
        StarStep(u32),
        Value(u32),
        /// `a/n`: from `a` to the field's end.
        ValueStep(u32, u32),
        Range(u32, u32),
        RangeStep(u32, u32, u32),
    }

    fn item(min: u32, max: u32) -> impl Strategy<Value = Item> {
        let v = move || min..=max;
        prop_oneof![
            1 => Just(Item::Star),
            1 => (1u32..=70).prop_map(Item::StarStep),
            4 => v().prop_map(Item::Value),
            1 => (v(), 1u32..=70).prop_map(|(a, n)| Item::ValueStep(a, n)),
            2 => (v(), v()).prop_map(|(a, b)| Item::Range(a.min(b), a.max(b))),
            1 => (v(), v(), 1u32..=70).prop_map(|(a, b, n)| Item::RangeStep(a.min(b), a.max(b), n)),
        ]
    }

    /// A field's text and the values it allows, computed without the parser.
    fn field_of(min: u32, max: u32) -> impl Strategy<Value = (String, BTreeSet<u32>)> {
        prop_oneof![
            1 => Just(vec![Item::Star]),
            3 => prop::collection::vec(item(min, max), 1..4),
        ]
        .prop_map(move |items| {
            let mut allowed = BTreeSet::new();
            let mut texts = Vec::new();
            for item in items {
                let (text, lo, hi, step) = match item {
                    Item::Star => ("*".to_owned(), min, max, 1),
                    Item::StarStep(n) => (format!("*/{n}"), min, max, n),
                    Item::Value(a) => (a.to_string(), a, a, 1),
                    Item::ValueStep(a, n) => (format!("{a}/{n}"), a, max, n),
                    Item::Range(a, b) => (format!("{a}-{b}"), a, b, 1),
                    Item::RangeStep(a, b, n) => (format!("{a}-{b}/{n}"), a, b, n),
                };
                allowed.extend((lo..=hi).step_by(step as usize));
                texts.push(text);
            }
            (texts.join(","), allowed)
        })
    }

    /// Year, month and day of a day since the epoch, counted the slow way.
    fn date_of(mut days: u64) -> (u64, u64, u64) {
        let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        let mut year = 1970;
        while days >= if leap(year) { 366 } else { 365 } {
            days -= if leap(year) { 366 } else { 365 };
            year += 1;
        }
        let lengths = [31, if leap(year) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let mut month = 1;
        for length in lengths {
            if days < length {
                break;
            }
            days -= length;
            month += 1;
        }
        (year, month, days + 1)
    }

    /// A schedule's five fields, and whether a minute matches them, computed without the parser.
    #[derive(Debug)]
    struct Model {
        text: String,
        fields: [BTreeSet<u32>; 5],
        days_any: bool,
        weekdays_any: bool,
    }

    impl Model {
        fn matches(&self, minute_index: u64) -> bool {
            let has = |f: usize, v: u64| self.fields[f].contains(&(v as u32));
            let days = minute_index / 1440;
            let (_, month, day) = date_of(days);
            // 1970-01-01 was a Thursday; 7 is Sunday as well as 0.
            let weekday = (days + 4) % 7;
            let weekday_ok = has(4, weekday) || (weekday == 0 && has(4, 7));
            let day_ok =
                if self.days_any || self.weekdays_any { has(2, day) && weekday_ok } else { has(2, day) || weekday_ok };
            has(0, minute_index % 60) && has(1, minute_index / 60 % 24) && has(3, month) && day_ok
        }
    }

    fn model() -> impl Strategy<Value = Model> {
        (field_of(0, 59), field_of(0, 23), field_of(1, 31), field_of(1, 12), field_of(0, 7)).prop_map(
            |(minute, hour, day, month, weekday)| Model {
                text: [&minute.0, &hour.0, &day.0, &month.0, &weekday.0].map(String::as_str).join(" "),
                days_any: day.0 == "*",
                weekdays_any: weekday.0 == "*",
                fields: [minute.1, hour.1, day.1, month.1, weekday.1],
            },
        )
    }

    /// Minutes from 1970 to about 2200.
    const SPAN: u64 = 230 * 366 * 1440;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any text parses or is refused, without panicking or looping.
        #[test]
        fn any_expression_parses_or_is_refused(text in prop_oneof![
            any::<String>(),
            "([0-9*/,-]{1,6} ){4}[0-9*/,-]{1,6}",
            "(\\*|[0-9]{1,2})/(4294967295|4294967296|99999999999|0|1) \\* \\* \\* \\*",
        ]) {
            if let Ok(schedule) = Schedule::parse(&text) {
                prop_assert_eq!(Schedule::parse(&text), Ok(schedule));
            }
        }

        /// A parsed schedule matches exactly the minutes its fields allow: over a day and a
        /// half minute by minute after `now` (so the next fire time is the model's), and at
        /// minutes anywhere from 1970 to 2200.
        #[test]
        fn schedules_match_what_their_fields_say(
            model in model(),
            now in 0..SPAN,
            anywhere in prop::collection::vec(0..SPAN, 64),
        ) {
            let schedule = Schedule::parse(&model.text).map_err(TestCaseError::fail)?;
            let next = (now + 1..now + 2160).find(|m| schedule.matches(*m));
            prop_assert_eq!(next, (now + 1..now + 2160).find(|m| model.matches(*m)), "{}", model.text);
            for m in (now..now + 2160).chain(anywhere) {
                prop_assert_eq!(schedule.matches(m), model.matches(m), "{} at minute {}", model.text, m);
            }
        }
    }
}
