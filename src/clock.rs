//! Time sources: a monotonic nanosecond clock for latency, wall-clock milliseconds for `ts`,
//! and an allocation-free RFC 3339 renderer.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Monotonic nanoseconds since the first call in this process.
#[inline]
pub fn mono_ns() -> u64 {
    origin().elapsed().as_nanos() as u64
}

/// Milliseconds since the Unix epoch.
#[inline]
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Writes `ms` since the epoch as `2026-12-03T12:00:00.123Z`.
pub fn write_rfc3339_ms(ms: i64, out: &mut Vec<u8>) {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    let mut b = [0u8; 24];
    put4(&mut b[0..4], y as u32);
    b[4] = b'-';
    put2(&mut b[5..7], m);
    b[7] = b'-';
    put2(&mut b[8..10], d);
    b[10] = b'T';
    put2(&mut b[11..13], sod / 3600);
    b[13] = b':';
    put2(&mut b[14..16], sod / 60 % 60);
    b[16] = b':';
    put2(&mut b[17..19], sod % 60);
    b[19] = b'.';
    b[20] = b'0' + (millis / 100) as u8;
    b[21] = b'0' + (millis / 10 % 10) as u8;
    b[22] = b'0' + (millis % 10) as u8;
    b[23] = b'Z';
    out.extend_from_slice(&b);
}

fn put2(b: &mut [u8], v: u32) {
    b[0] = b'0' + (v / 10 % 10) as u8;
    b[1] = b'0' + (v % 10) as u8;
}

fn put4(b: &mut [u8], v: u32) {
    put2(&mut b[0..2], v / 100);
    put2(&mut b[2..4], v % 100);
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(ms: i64) -> String {
        let mut v = Vec::new();
        write_rfc3339_ms(ms, &mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn renders_rfc3339() {
        assert_eq!(render(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(render(1_672_515_782_136), "2022-12-31T19:43:02.136Z");
        assert_eq!(render(1_796_299_200_123), "2026-12-03T12:00:00.123Z");
        assert_eq!(render(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
