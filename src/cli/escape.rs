//! Makes text from untrusted sources (buildpack and build-step output, names and messages
//! they influence) safe to print: no control sequence may retitle the window, move the
//! cursor, erase or overwrite a line, ring the bell, write the clipboard (OSC 52) or hide
//! what follows. Every control character is shown visibly (`\x1b`, `\r`, `\u{9b}`); on a
//! terminal, colours (SGR: `ESC [ digits ; : m`) are kept, as buildpacks use them.

use std::borrow::Cow;
use std::fmt::Write;

/// The longest SGR sequence kept (longer ones are escaped like any other).
const MAX_SGR: usize = 64;

/// `s` with every control character escaped; SGR sequences are kept when `keep_sgr`.
pub fn escape_controls(s: &str, keep_sgr: bool) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '\x1b' && keep_sgr {
            if let Some(n) = sgr_len(rest) {
                out.push_str(&rest[..n]);
                rest = &rest[n..];
                continue;
            }
        }
        if needs_escape(c) {
            match c {
                '\r' => out.push_str("\\r"),
                '\u{0}'..='\u{7f}' => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                _ => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
            }
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

/// C0 controls but tab, DEL, C1 controls, and the bidirectional overrides and isolates
/// that make a line read other than it is.
fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The length of the SGR sequence `s` starts with, if it starts with one.
fn sgr_len(s: &str) -> Option<usize> {
    let body = s.strip_prefix("\x1b[")?;
    let params = body.bytes().take_while(|b| b.is_ascii_digit() || *b == b';' || *b == b':').count();
    let n = 2 + params + 1;
    (body.as_bytes().get(params) == Some(&b'm') && n <= MAX_SGR).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_sequences_are_shown_not_obeyed() {
        // (input, on a terminal, in plain output)
        let cases: &[(&str, &str, &str)] = &[
            ("plain text, tab\there", "plain text, tab\there", "plain text, tab\there"),
            ("\x1b[1;32mgreen\x1b[0m", "\x1b[1;32mgreen\x1b[0m", "\\x1b[1;32mgreen\\x1b[0m"),
            ("\x1b[38:5:208mcolon sgr\x1b[m", "\x1b[38:5:208mcolon sgr\x1b[m", "\\x1b[38:5:208mcolon sgr\\x1b[m"),
            ("\x1b]0;pwned\x07title", "\\x1b]0;pwned\\x07title", "\\x1b]0;pwned\\x07title"),
            ("\x1b]2;pwned\x1b\\", "\\x1b]2;pwned\\x1b\\", "\\x1b]2;pwned\\x1b\\"),
            ("\x1b]52;c;cm0gLXJmIH4=\x07", "\\x1b]52;c;cm0gLXJmIH4=\\x07", "\\x1b]52;c;cm0gLXJmIH4=\\x07"),
            ("\x1b[2A\x1b[10;1Hmoved", "\\x1b[2A\\x1b[10;1Hmoved", "\\x1b[2A\\x1b[10;1Hmoved"),
            ("\x1b[2K\x1b[Jerased", "\\x1b[2K\\x1b[Jerased", "\\x1b[2K\\x1b[Jerased"),
            ("fake\rimgforge: ok", "fake\\rimgforge: ok", "fake\\rimgforge: ok"),
            ("abc\x08\x08\x08xyz", "abc\\x08\\x08\\x08xyz", "abc\\x08\\x08\\x08xyz"),
            ("bell\x07", "bell\\x07", "bell\\x07"),
            ("\u{9b}31mC1 CSI", "\\u{9b}31mC1 CSI", "\\u{9b}31mC1 CSI"),
            ("\u{9d}0;t\u{9c}", "\\u{9d}0;t\\u{9c}", "\\u{9d}0;t\\u{9c}"),
            ("nul\0del\x7f", "nul\\x00del\\x7f", "nul\\x00del\\x7f"),
            ("rtl \u{202e}txt.exe", "rtl \\u{202e}txt.exe", "rtl \\u{202e}txt.exe"),
            // An SGR that is not one: a private parameter, or no final `m`.
            ("\x1b[?25l", "\\x1b[?25l", "\\x1b[?25l"),
            ("\x1b[31", "\\x1b[31", "\\x1b[31"),
            ("\x1b", "\\x1b", "\\x1b"),
        ];
        for (input, tty, plain) in cases {
            assert_eq!(escape_controls(input, true), *tty, "terminal: {input:?}");
            assert_eq!(escape_controls(input, false), *plain, "plain: {input:?}");
        }
        // Invalid UTF-8 reaches the renderer replaced (U+FFFD), never as raw bytes.
        let lossy = String::from_utf8_lossy(b"\xff\xfe\x1b[31m\xc2\x9bx");
        let shown = escape_controls(&lossy, false);
        assert_eq!(shown, "\u{fffd}\u{fffd}\\x1b[31m\\u{9b}x");
        let long = format!("\x1b[{}m", "1;".repeat(40));
        assert!(escape_controls(&long, true).starts_with("\\x1b["), "an overlong SGR is escaped");
    }

    #[test]
    fn every_control_character_is_escaped_in_plain_output() {
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32).filter(|c| *c != '\t') {
            let s = format!("a{c}b");
            let out = escape_controls(&s, false);
            assert!(!out.chars().any(|o| o.is_control()), "{c:?} came through: {out:?}");
            let out = escape_controls(&s, true);
            assert!(!out.chars().any(|o| o.is_control()), "{c:?} came through on a terminal: {out:?}");
        }
    }
}
