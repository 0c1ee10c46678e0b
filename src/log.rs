//! Minimal leveled logging to stderr (stdout belongs to `--emit ndjson`). Never used per
//! event on the hot path; only on state changes and errors.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::config::LogLevel;

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

/// Sets the most verbose level that is written.
pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

#[doc(hidden)]
pub fn write(level: LogLevel, args: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let tag = match level {
        LogLevel::Error => "ERROR",
        LogLevel::Warn => "WARN ",
        LogLevel::Info => "INFO ",
        LogLevel::Debug => "DEBUG",
    };
    let mut ts = Vec::with_capacity(24);
    crate::clock::write_rfc3339_ms(crate::clock::wall_ms(), &mut ts);
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("main");
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{} {tag} [{name}] {args}",
        String::from_utf8_lossy(&ts)
    );
}

#[macro_export]
#[doc(hidden)]
macro_rules! log_at {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::log::enabled($lvl) {
            $crate::log::write($lvl, format_args!($($arg)*))
        }
    };
}

/// Logs at error level.
#[macro_export]
macro_rules! error { ($($arg:tt)*) => { $crate::log_at!($crate::config::LogLevel::Error, $($arg)*) }; }
/// Logs at warn level.
#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::log_at!($crate::config::LogLevel::Warn, $($arg)*) }; }
/// Logs at info level.
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::log_at!($crate::config::LogLevel::Info, $($arg)*) }; }
/// Logs at debug level.
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::log_at!($crate::config::LogLevel::Debug, $($arg)*) }; }
