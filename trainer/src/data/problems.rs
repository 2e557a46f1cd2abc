//! Bad rows, collected while checking a file so that one error reports them all.

use std::path::Path;

use super::MAX_REPORTED;
use crate::{Error, Result};

/// Bad rows, collected so one run of the checks reports them all.
#[derive(Default)]
pub(super) struct Problems {
    rows: Vec<(usize, String)>,
    total: usize,
}

impl Problems {
    pub(super) fn push(&mut self, line: usize, message: String) {
        self.total += 1;
        if self.rows.len() < MAX_REPORTED {
            self.rows.push((line, message));
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// `ok` when nothing went wrong; else one error at the first bad line whose message also
    /// lists the next ones, each as `path:line: message`.
    pub(super) fn into_result<T>(self, path: &Path, ok: T) -> Result<T> {
        let Some((line, first)) = self.rows.first().cloned() else {
            return Ok(ok);
        };
        let mut message = first;
        for (line, text) in &self.rows[1..] {
            message.push_str(&format!("\n{}:{line}: {text}", path.display()));
        }
        if self.total > self.rows.len() {
            message.push_str(&format!(
                "\n({} bad rows in all; the first {} are shown)",
                self.total,
                self.rows.len()
            ));
        }
        Err(Error::Data {
            path: path.to_path_buf(),
            line,
            message,
        })
    }
}
