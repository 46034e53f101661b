//! Colour and escape codes in output only on a terminal, never with `NO_COLOR` (issue 21).

use quorate_telemetry::color_allowed;
use std::ffi::OsStr;

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    assert!(color_allowed(true, None), "a terminal, NO_COLOR unset");
    assert!(color_allowed(true, Some(OsStr::new(""))), "an empty NO_COLOR does not count (no-color.org)");
    assert!(!color_allowed(true, Some(OsStr::new("1"))), "NO_COLOR set");
    assert!(!color_allowed(false, None), "a file or a pipe");
    assert!(!color_allowed(false, Some(OsStr::new("1"))));
}
