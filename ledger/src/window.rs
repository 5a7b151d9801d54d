//! Calendar windows of budgets, in UTC, computed from the leader's time alone.
//!
//! A budget counter remembers the start of the window its committed spend belongs to; when
//! the start computed from "now" differs, the window has rolled and committed spend resets.

use super::Window;

pub const HOUR_MS: u64 = 3_600_000;
pub const DAY_MS: u64 = 86_400_000;
/// 1970-01-01 was a Thursday, three days after a Monday.
const EPOCH_DAYS_SINCE_MONDAY: u64 = 3;

/// Start (ms since the Unix epoch) of the window that contains `now_ms`.
///
/// Lifetime never rolls (its start is 0). Weeks start on Monday 00:00 UTC (ISO 8601); the
/// first days of 1970 belong to a week clamped to start at 0. Month starts come from the
/// `time` crate; beyond its range (after year 9999) a month degrades to a day, so the
/// function never panics on any input.
pub fn window_start_ms(window: Window, now_ms: u64) -> u64 {
    match window {
        Window::Lifetime => 0,
        Window::Hour => now_ms - now_ms % HOUR_MS,
        Window::Day => now_ms - now_ms % DAY_MS,
        Window::Week => {
            let days = now_ms / DAY_MS;
            let days_since_monday = (days + EPOCH_DAYS_SINCE_MONDAY) % 7;
            days.saturating_sub(days_since_monday)
                .saturating_mul(DAY_MS)
        }
        Window::Month => month_start_ms(now_ms),
    }
}

/// The last second the `time` crate (and so this function's contract) knows as a date:
/// 9999-12-31T23:59:59Z. Beyond it a month degrades to a day.
const CALENDAR_SECONDS_MAX: u64 = 253_402_300_799;

/// The first day of the month, in integers (Howard Hinnant's `civil_from_days`, on the
/// proleptic Gregorian calendar as the `time` crate uses): this runs on every decision
/// that touches a monthly budget, several times per reservation.
fn month_start_ms(now_ms: u64) -> u64 {
    let days = now_ms / DAY_MS;
    if now_ms / 1000 > CALENDAR_SECONDS_MAX {
        return days * DAY_MS;
    }
    // Days since 0000-03-01, in 400-year eras of 146,097 days; years start in March so
    // the leap day is the last of the year.
    let shifted = days + 719_468;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day_of_month_0 = day_of_year - (153 * month_index + 2) / 5;
    (days - day_of_month_0) * DAY_MS
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Milliseconds since the epoch of a UTC calendar instant.
    pub(crate) fn utc_ms(y: i32, m: u8, d: u8, hh: u8, mm: u8, ss: u8, ms: u16) -> u64 {
        let date = time::Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d).unwrap();
        let t = time::Time::from_hms_milli(hh, mm, ss, ms).unwrap();
        let odt = time::PrimitiveDateTime::new(date, t).assume_utc();
        u64::try_from(odt.unix_timestamp()).unwrap() * 1000 + u64::from(ms)
    }

    #[test]
    fn day_window_rolls_exactly_at_midnight_utc() {
        let before = utc_ms(2024, 3, 10, 23, 59, 59, 999);
        let at = utc_ms(2024, 3, 11, 0, 0, 0, 0);
        assert_eq!(
            window_start_ms(Window::Day, before),
            utc_ms(2024, 3, 10, 0, 0, 0, 0)
        );
        assert_eq!(window_start_ms(Window::Day, at), at);
    }

    #[test]
    fn hour_window_rolls_exactly_on_the_hour() {
        let before = utc_ms(2024, 3, 10, 13, 59, 59, 999);
        let at = utc_ms(2024, 3, 10, 14, 0, 0, 0);
        assert_eq!(
            window_start_ms(Window::Hour, before),
            utc_ms(2024, 3, 10, 13, 0, 0, 0)
        );
        assert_eq!(window_start_ms(Window::Hour, at), at);
    }

    #[test]
    fn week_window_starts_monday_midnight_utc() {
        // 2024-03-10 is a Sunday, 2024-03-11 a Monday.
        let sunday_late = utc_ms(2024, 3, 10, 23, 59, 59, 999);
        let monday = utc_ms(2024, 3, 11, 0, 0, 0, 0);
        assert_eq!(
            window_start_ms(Window::Week, sunday_late),
            utc_ms(2024, 3, 4, 0, 0, 0, 0)
        );
        assert_eq!(window_start_ms(Window::Week, monday), monday);
        let wednesday = utc_ms(2024, 3, 13, 12, 0, 0, 0);
        assert_eq!(window_start_ms(Window::Week, wednesday), monday);
        // The epoch (a Thursday) is clamped into a week starting at 0.
        assert_eq!(window_start_ms(Window::Week, 0), 0);
        assert_eq!(
            window_start_ms(Window::Week, utc_ms(1970, 1, 5, 0, 0, 0, 0)),
            utc_ms(1970, 1, 5, 0, 0, 0, 0)
        );
    }

    #[test]
    fn month_window_rolls_dec_to_jan_and_through_leap_february() {
        let dec_last = utc_ms(2023, 12, 31, 23, 59, 59, 999);
        let jan_first = utc_ms(2024, 1, 1, 0, 0, 0, 0);
        assert_eq!(
            window_start_ms(Window::Month, dec_last),
            utc_ms(2023, 12, 1, 0, 0, 0, 0)
        );
        assert_eq!(window_start_ms(Window::Month, jan_first), jan_first);
        let leap_day = utc_ms(2024, 2, 29, 23, 59, 59, 999);
        assert_eq!(
            window_start_ms(Window::Month, leap_day),
            utc_ms(2024, 2, 1, 0, 0, 0, 0)
        );
        let march = utc_ms(2024, 3, 1, 0, 0, 0, 0);
        assert_eq!(window_start_ms(Window::Month, march), march);
        // 2023 is not a leap year: Feb 28 is followed by Mar 1.
        assert_eq!(
            window_start_ms(Window::Month, utc_ms(2023, 2, 28, 23, 59, 59, 999)),
            utc_ms(2023, 2, 1, 0, 0, 0, 0)
        );
    }

    /// The month start as the `time` crate computes it (the reference for the integer one).
    fn month_start_by_time_ms(now_ms: u64) -> u64 {
        let day_start_ms = now_ms - now_ms % DAY_MS;
        let Ok(now) = time::OffsetDateTime::from_unix_timestamp((now_ms / 1000) as i64) else {
            return day_start_ms;
        };
        let first_day = now.date().replace_day(1).unwrap();
        let start_s = first_day.midnight().assume_utc().unix_timestamp();
        u64::try_from(start_s).unwrap() * 1000
    }

    #[test]
    fn month_start_agrees_with_the_calendar_of_the_time_crate() {
        let mut now_ms = 0u64;
        // Every day from 1970 to beyond 9999, at a time of day that moves with the day.
        while now_ms < 260_000_000_000_000 {
            assert_eq!(
                month_start_ms(now_ms),
                month_start_by_time_ms(now_ms),
                "{now_ms}"
            );
            now_ms += DAY_MS + 3_599_999;
        }
        for now_ms in [
            CALENDAR_SECONDS_MAX * 1000,
            CALENDAR_SECONDS_MAX * 1000 + 999,
            (CALENDAR_SECONDS_MAX + 1) * 1000,
            utc_ms(2000, 2, 29, 12, 0, 0, 0),
            utc_ms(2100, 3, 1, 0, 0, 0, 0),
            utc_ms(2100, 2, 28, 23, 59, 59, 999),
            u64::MAX,
        ] {
            assert_eq!(
                month_start_ms(now_ms),
                month_start_by_time_ms(now_ms),
                "{now_ms}"
            );
        }
    }

    #[test]
    fn windows_never_panic_at_the_ends_of_time() {
        for w in [
            Window::Lifetime,
            Window::Hour,
            Window::Day,
            Window::Week,
            Window::Month,
        ] {
            let _ = window_start_ms(w, u64::MAX);
            assert_eq!(window_start_ms(w, 0), 0);
        }
    }
}
