//! Showing an error with its causes. Every error type here keeps its cause as a
//! `#[source]` and leaves it out of its own message, so `{}` shows one level only; where
//! the library itself has to turn an error into text (a log line, a string another crate
//! wants), [`Chain`] joins the levels as the CLI's `{:#}` does.

use std::error::Error;
use std::fmt;

/// Displays an error and each of its causes, joined by ": ".
///
/// ```
/// use nydus_image::error::Chain;
/// let e = std::io::Error::other("inner");
/// assert_eq!(Chain(&e).to_string(), "inner");
/// ```
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_level_is_shown_once() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(Chain(&e).to_string(), "outer: inner");
    }
}
