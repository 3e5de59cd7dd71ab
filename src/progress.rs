//! Where the diagnostics' text goes while they run. `doctor` and `bench` report as they go (a
//! check or a timing can take minutes), but as library code they print nothing themselves: they
//! hand each piece of text to a [`Progress`], and the command line prints it.

/// Receives text as a diagnostic produces it, each piece whole (ending in a newline).
pub trait Progress {
    /// Results: check lines and tables (the command line prints them on stdout).
    fn out(&mut self, text: &str);
    /// Notes on the work in progress (the command line prints them on stderr).
    fn note(&mut self, text: &str);
}

/// Keeps everything, each stream in order: for tests.
#[derive(Debug, Default, Clone)]
pub struct Collect {
    pub out: String,
    pub notes: String,
}

impl Progress for Collect {
    fn out(&mut self, text: &str) {
        self.out.push_str(text);
    }
    fn note(&mut self, text: &str) {
        self.notes.push_str(text);
    }
}
