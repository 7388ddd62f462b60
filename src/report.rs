//! How errors are printed: the one place that walks an error's `source()` chain, so that the
//! root cause (a SQLite error code, an I/O error) reaches the journal and the terminal, not only
//! the outermost message. Used by the CLI's exit path, the supervisor and the API's error log.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources: `outer: cause: root cause`.
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(s) = cur {
            // `#[error(transparent)]` and "{0}" wrappers repeat their source's text: skip it.
            let text = s.to_string();
            if !text.is_empty() {
                write!(f, ": {text}")?;
            }
            cur = s.source();
        }
        Ok(())
    }
}

/// `Chain` as a string.
pub fn chain(e: &(dyn Error + '_)) -> String {
    Chain(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("disk I/O error (code 10)")]
        Io,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("database error")]
        Db(#[source] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    enum Task {
        #[error("storage failed")]
        Store(#[from] Outer),
    }

    #[test]
    fn the_root_cause_is_printed_after_every_wrapper() {
        let e = Task::Store(Outer::Db(Inner::Io));
        assert_eq!(
            chain(&e),
            "storage failed: database error: disk I/O error (code 10)"
        );
        assert_eq!(chain(&Inner::Io), "disk I/O error (code 10)");
    }
}
