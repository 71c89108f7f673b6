//! Progress on stderr: a bar with bytes, rate and ETA when the size is
//! known, a spinner with bytes and rate when not; nothing at all when
//! stderr is not a terminal or with `--quiet`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Prints a line to stderr whatever `--quiet` says (a code the user must
/// pass on); a closed stderr is ignored rather than fatal.
pub fn always(line: impl AsRef<str>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{}", line.as_ref());
}

/// How the user asked to be told about progress.
#[derive(Clone, Copy, Debug)]
pub struct Feedback {
    /// Progress bars (stderr is a terminal and not `--quiet`).
    pub bars: bool,
    /// Informational lines (not `--quiet`).
    pub info: bool,
}

impl Feedback {
    pub fn new(quiet: bool) -> Self {
        Self {
            bars: !quiet && std::io::stderr().is_terminal(),
            info: !quiet,
        }
    }

    /// Prints an informational line to stderr.
    pub fn say(&self, line: impl AsRef<str>) {
        if self.info {
            always(line);
        }
    }

    /// A spinner while waiting for the other side.
    pub fn waiting(&self, message: &str) -> ProgressBar {
        if !self.bars {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    /// A bar for `total` bytes (a spinner when unknown).
    pub fn transfer(&self, verb: &str, total: Option<u64>) -> Transfer {
        let bar = if self.bars {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(10));
            let template = match total {
                Some(_) => "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
                None => "{spinner} {prefix} {binary_bytes} {binary_bytes_per_sec} {elapsed}",
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(verb.to_owned());
            bar
        } else {
            ProgressBar::hidden()
        };
        Transfer {
            bar,
            verb: verb.to_owned(),
            started: Instant::now(),
            feedback: *self,
        }
    }
}

/// One transfer's bar and its closing summary line.
pub struct Transfer {
    pub bar: ProgressBar,
    verb: String,
    started: Instant,
    feedback: Feedback,
}

impl Transfer {
    /// Clears the bar and prints `sent 1.00 GiB in 2.1 s (487.6 MiB/s)`.
    pub fn done(&self) {
        self.bar.finish_and_clear();
        let bytes = self.bar.position();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        self.feedback.say(format!(
            "{} {} in {:.1} s ({}/s)",
            self.verb,
            HumanBytes(bytes),
            secs,
            HumanBytes((bytes as f64 / secs) as u64)
        ));
    }

    /// Clears the bar after a failure.
    pub fn abandon(&self) {
        self.bar.abandon();
    }
}
