//! Text that a client or a policy controls, made safe to put in a log
//! line: a review's uid, name or namespace, a policy's message or log
//! output. A newline would let it forge a line of its own (`uid=FORGED
//! allowed=true`), an escape sequence would repaint the operator's
//! terminal, and a 7 MB uid would become a 7 MB line.

use std::fmt;

/// Most bytes of one value written to a log line; the rest is counted.
pub const MAX_LOG_TEXT: usize = 512;

/// Displays text with control characters (and Unicode line separators and
/// direction overrides) escaped, cut at [`MAX_LOG_TEXT`] bytes.
#[derive(Debug, Clone, Copy)]
pub struct LogText<'a>(pub &'a str);

impl fmt::Display for LogText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut written = 0;
        for (at, c) in self.0.char_indices() {
            if written >= MAX_LOG_TEXT {
                return write!(f, "... ({} more bytes)", self.0.len() - at);
            }
            if needs_escape(c) {
                let escaped = c.escape_default();
                written += escaped.len();
                write!(f, "{escaped}")?;
            } else {
                written += c.len_utf8();
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Characters that end, rewrite or reorder a terminal line.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{2028}' | '\u{2029}'            // line and paragraph separators
            | '\u{202a}'..='\u{202e}'          // direction embeddings, overrides
            | '\u{2066}'..='\u{2069}'          // direction isolates
            | '\u{061c}' | '\u{200e}' | '\u{200f}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_and_escapes_cannot_forge_or_repaint() {
        let text = "abc\nuid=FORGED allowed=true\r\u{1b}[31mred\u{202e}";
        let shown = LogText(text).to_string();
        assert_eq!(
            shown,
            "abc\\nuid=FORGED allowed=true\\r\\u{1b}[31mred\\u{202e}"
        );
        assert!(!shown.chars().any(char::is_control));
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        for text in ["web-7d9f", "kube-system", "ünïcödé name", "a\\nb"] {
            assert_eq!(LogText(text).to_string(), text);
        }
    }

    #[test]
    fn long_text_is_cut_and_counted() {
        let text = "x".repeat(10_000);
        let shown = LogText(&text).to_string();
        assert!(shown.starts_with(&"x".repeat(MAX_LOG_TEXT)));
        assert!(shown.ends_with(&format!("... ({} more bytes)", 10_000 - MAX_LOG_TEXT)));
        assert!(shown.len() < MAX_LOG_TEXT + 32);
    }
}
