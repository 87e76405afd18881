//! Five-field cron schedules (UTC): `minute hour day-of-month month day-of-week`, each field `*`,
//! `*/n`, `a`, `a-b`, `a-b/n`, or a comma list of those; day-of-week 0–6 from Sunday (7 is Sunday
//! too). As in cron, when both day fields are restricted a day matches either.

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
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a: u32 = a.parse().map_err(|_| format!("{name}: bad value in {part:?}"))?;
            let b: u32 = b.parse().map_err(|_| format!("{name}: bad value in {part:?}"))?;
            (a, b)
        } else {
            let a: u32 = range.parse().map_err(|_| format!("{name}: bad value in {part:?}"))?;
            (a, if step > 1 { max } else { a })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{name}: {part:?} is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
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
