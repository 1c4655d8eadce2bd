//! The `-p` progress indicator: `    (12.34/100%)` redrawn with a carriage
//! return, as qemu-img draws it, but on stderr so stdout stays clean.

use std::io::{self, Write};

/// Prints the share of work done whenever it moves by at least 1%.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    total: u64,
    last_shown: Option<f64>,
}

impl Progress {
    /// A progress indicator over `total` units of work; silent unless
    /// `enabled`.
    pub fn new(enabled: bool, total: u64) -> Self {
        let progress = Self {
            enabled,
            total,
            last_shown: None,
        };
        progress.draw(0.0);
        progress
    }

    /// Reports `done` units finished.
    pub fn update(&mut self, done: u64) {
        if !self.enabled {
            return;
        }
        let percent = if self.total == 0 {
            100.0
        } else {
            done.min(self.total) as f64 * 100.0 / self.total as f64
        };
        if self.last_shown.is_none_or(|last| percent - last >= 1.0) {
            self.last_shown = Some(percent);
            self.draw(percent);
        }
    }

    /// Shows 100% and ends the line.
    pub fn finish(&mut self) {
        if self.enabled {
            if self.last_shown != Some(100.0) {
                self.draw(100.0);
            }
            let _ = writeln!(io::stderr());
        }
    }

    fn draw(&self, percent: f64) {
        if self.enabled {
            let mut err = io::stderr().lock();
            let _ = write!(err, "    ({percent:.2}/100%)\r");
            let _ = err.flush();
        }
    }
}
