//! Logging into the log of the job (or request) the plugin serves, through
//! the host's `log` interface: `log::info!("signed {path}")`, or
//! `log::log(Level::Warn, "…")`.
//!
//! This module formats and forwards; it must not buffer or write to stdout
//! (stdout is captured too, but without a level).

pub use crate::wit::post_build::kiln::plugin::log::Level;

/// Logs `message` at `level`.
pub fn log(level: Level, message: &str) {
    crate::wit::post_build::kiln::plugin::log::log(level, message);
}

#[doc(hidden)]
#[macro_export]
macro_rules! __kiln_log {
    ($level:ident, $($arg:tt)+) => {
        $crate::log::log($crate::log::Level::$level, &::std::format!($($arg)+))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __kiln_debug { ($($arg:tt)+) => { $crate::__kiln_log!(Debug, $($arg)+) }; }
#[doc(hidden)]
#[macro_export]
macro_rules! __kiln_info { ($($arg:tt)+) => { $crate::__kiln_log!(Info, $($arg)+) }; }
#[doc(hidden)]
#[macro_export]
macro_rules! __kiln_warn { ($($arg:tt)+) => { $crate::__kiln_log!(Warn, $($arg)+) }; }
#[doc(hidden)]
#[macro_export]
macro_rules! __kiln_error { ($($arg:tt)+) => { $crate::__kiln_log!(Error, $($arg)+) }; }

/// Logs a formatted message at debug level: `log::debug!("x = {x}")`.
#[doc(inline)]
pub use crate::__kiln_debug as debug;
/// Logs a formatted message at error level.
#[doc(inline)]
pub use crate::__kiln_error as error;
/// Logs a formatted message at info level.
#[doc(inline)]
pub use crate::__kiln_info as info;
/// Logs a formatted message at warning level.
#[doc(inline)]
pub use crate::__kiln_warn as warn;
